import type { ServiceName } from "../catalog.js";
import type { Role } from "./principal.js";

/**
 * Who may call what: the one table, method by method. `roles` are end-user roles (from the JWT);
 * `services` are the mesh services allowed to call it with their workload identity, which must
 * agree with the call graph in catalog.ts (a test checks both, and that every RPC of every
 * contract has an entry, so a new RPC without one fails the build).
 *
 * Levels: read = viewer and up; write = operator and up; admin = admin only; worker = the
 * `system` role used by external task workers. `system` may also do what services do.
 */
export interface AccessRule {
  roles: readonly Role[];
  services: readonly ServiceName[];
}

const READ: Role[] = ["viewer", "operator", "admin", "system"];
const WRITE: Role[] = ["operator", "admin", "system"];
const ADMIN: Role[] = ["admin"];
const WORKER: Role[] = ["system", "admin"];

const rule = (roles: Role[], services: ServiceName[] = []): AccessRule => ({ roles, services });

/** Methods anyone may call, authenticated or not: health checks and reflection. */
export const PUBLIC_SERVICES = new Set(["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"]);

export const ACCESS_TABLE: Record<string, AccessRule> = {
  // Orchestrator: the Scheduler starts runs (and cancels them for CANCEL_OTHER overlap); the
  // Monitor starts recovery workflows.
  "orca.orchestrator.v1.OrchestratorService/RegisterWorkflow": rule(WRITE),
  "orca.orchestrator.v1.OrchestratorService/GetWorkflow": rule(READ, ["scheduler", "monitor"]),
  "orca.orchestrator.v1.OrchestratorService/ListWorkflows": rule(READ),
  "orca.orchestrator.v1.OrchestratorService/StartRun": rule(WRITE, ["scheduler", "monitor"]),
  "orca.orchestrator.v1.OrchestratorService/GetRun": rule(READ, ["scheduler", "monitor"]),
  "orca.orchestrator.v1.OrchestratorService/ListRuns": rule(READ, ["scheduler"]),
  "orca.orchestrator.v1.OrchestratorService/CancelRun": rule(WRITE, ["scheduler"]),
  "orca.orchestrator.v1.OrchestratorService/WatchRun": rule(READ),
  "orca.orchestrator.v1.OrchestratorService/PollTasks": rule(WORKER),
  "orca.orchestrator.v1.OrchestratorService/HeartbeatTask": rule(WORKER),
  "orca.orchestrator.v1.OrchestratorService/CompleteTask": rule(WORKER),
  "orca.orchestrator.v1.OrchestratorService/FailTask": rule(WORKER),

  // Scheduler: no service calls it.
  "orca.scheduler.v1.SchedulerService/CreateSchedule": rule(WRITE),
  "orca.scheduler.v1.SchedulerService/UpdateSchedule": rule(WRITE),
  "orca.scheduler.v1.SchedulerService/DeleteSchedule": rule(WRITE),
  "orca.scheduler.v1.SchedulerService/PauseSchedule": rule(WRITE),
  "orca.scheduler.v1.SchedulerService/ResumeSchedule": rule(WRITE),
  "orca.scheduler.v1.SchedulerService/GetSchedule": rule(READ),
  "orca.scheduler.v1.SchedulerService/ListSchedules": rule(READ),
  "orca.scheduler.v1.SchedulerService/PreviewSchedule": rule(READ),
  "orca.scheduler.v1.SchedulerService/TriggerSchedule": rule(WRITE),
  "orca.scheduler.v1.SchedulerService/BackfillSchedule": rule(WRITE),
  "orca.scheduler.v1.SchedulerService/ListFirings": rule(READ),
  "orca.scheduler.v1.SchedulerService/PublishEvent": rule(WRITE),
  "orca.scheduler.v1.SchedulerService/CreateTrigger": rule(WRITE),
  "orca.scheduler.v1.SchedulerService/GetTrigger": rule(READ),
  "orca.scheduler.v1.SchedulerService/ListTriggers": rule(READ),
  "orca.scheduler.v1.SchedulerService/DeleteTrigger": rule(WRITE),

  // Policy: the Orchestrator asks before starting runs; bundles are an admin matter.
  "orca.policy.v1.PolicyService/Decide": rule(READ, ["orchestrator"]),
  "orca.policy.v1.PolicyService/BatchDecide": rule(READ, ["orchestrator"]),
  "orca.policy.v1.PolicyService/PutBundle": rule(ADMIN),
  "orca.policy.v1.PolicyService/ActivateBundle": rule(ADMIN),
  "orca.policy.v1.PolicyService/Rollback": rule(ADMIN),
  "orca.policy.v1.PolicyService/ListBundles": rule(READ),
  "orca.policy.v1.PolicyService/GetBundle": rule(READ),
  "orca.policy.v1.PolicyService/ValidateBundle": rule(WRITE),
  "orca.policy.v1.PolicyService/SetShadow": rule(ADMIN),
  "orca.policy.v1.PolicyService/GetShadowReport": rule(READ),
  "orca.policy.v1.PolicyService/BenchmarkPolicy": rule(ADMIN),
  "orca.policy.v1.PolicyService/GetStats": rule(READ),

  // Lock: the Orchestrator runs lock-keyed tasks; the Scheduler elects its firer.
  "orca.lock.v1.LockService/Acquire": rule(WRITE, ["orchestrator", "scheduler"]),
  "orca.lock.v1.LockService/Release": rule(WRITE, ["orchestrator", "scheduler"]),
  "orca.lock.v1.LockService/Extend": rule(WRITE, ["orchestrator", "scheduler"]),
  "orca.lock.v1.LockService/KeepAlive": rule(WRITE, ["orchestrator", "scheduler"]),
  "orca.lock.v1.LockService/GetLock": rule(READ, ["orchestrator", "scheduler"]),
  "orca.lock.v1.LockService/ListLocks": rule(READ),
  "orca.lock.v1.LockService/WatchLocks": rule(READ),

  // Cache: the Orchestrator memoizes task results.
  "orca.cache.v1.CacheService/Get": rule(READ, ["orchestrator"]),
  "orca.cache.v1.CacheService/BatchGet": rule(READ, ["orchestrator"]),
  "orca.cache.v1.CacheService/Set": rule(WRITE, ["orchestrator"]),
  "orca.cache.v1.CacheService/Delete": rule(WRITE, ["orchestrator"]),
  "orca.cache.v1.CacheService/Invalidate": rule(WRITE, ["orchestrator"]),
  "orca.cache.v1.CacheService/GetStats": rule(READ),
  "orca.cache.v1.CacheService/WatchInvalidations": rule(READ),

  // Monitor: only people (and the Monitor's own probes, which use health).
  "orca.monitor.v1.MonitorService/RegisterTarget": rule(ADMIN),
  "orca.monitor.v1.MonitorService/DeregisterTarget": rule(ADMIN),
  "orca.monitor.v1.MonitorService/ListTargets": rule(READ),
  "orca.monitor.v1.MonitorService/GetHealth": rule(READ),
  "orca.monitor.v1.MonitorService/WatchHealth": rule(READ),
  "orca.monitor.v1.MonitorService/CreateAlertRule": rule(WRITE),
  "orca.monitor.v1.MonitorService/DeleteAlertRule": rule(WRITE),
  "orca.monitor.v1.MonitorService/ListAlertRules": rule(READ),
  "orca.monitor.v1.MonitorService/ListAlerts": rule(READ),
  "orca.monitor.v1.MonitorService/SilenceAlert": rule(WRITE),
  "orca.monitor.v1.MonitorService/ListSilences": rule(READ),
  "orca.monitor.v1.MonitorService/AckAlert": rule(WRITE),
  "orca.monitor.v1.MonitorService/ListDeliveries": rule(READ),

  // The kit's conformance service (tests and benchmarks only).
  "orca.testing.v1.EchoService/Echo": rule(READ),
  "orca.testing.v1.EchoService/EchoStream": rule(READ),
};
