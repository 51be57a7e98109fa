import { Counter, Gauge, Histogram, type Registry } from "prom-client";
import type { AfterCommit } from "./store.js";

/** The Orchestrator's metrics, on the service's own registry (served on its admin port). */
export class OrchestratorMetrics {
  readonly runsStarted: Counter;
  readonly runsFinished: Counter<"status">;
  readonly tasksFinished: Counter<"plugin" | "status">;
  readonly taskDuration: Histogram<"plugin" | "status">;
  readonly queueDepth: Gauge<"tenant" | "queue">;
  readonly readyTasks: Gauge;
  readonly leaseExpiries: Counter;
  readonly cacheHits: Counter;
  readonly cacheLookups: Counter;
  readonly runningAttempts: Gauge<"plugin">;

  constructor(registry: Registry) {
    const registers = [registry];
    this.runsStarted = new Counter({ name: "orca_orchestrator_runs_started_total", help: "Runs started by an executor (PENDING -> RUNNING).", registers });
    this.runsFinished = new Counter({ name: "orca_orchestrator_runs_finished_total", help: "Runs that reached a final status.", labelNames: ["status"], registers });
    this.tasksFinished = new Counter({ name: "orca_orchestrator_tasks_finished_total", help: "Tasks that reached a final status.", labelNames: ["plugin", "status"], registers });
    this.taskDuration = new Histogram({
      name: "orca_orchestrator_task_duration_seconds",
      help: "Duration of successful task attempts, from lease to completion.",
      labelNames: ["plugin", "status"],
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 1800],
      registers,
    });
    this.queueDepth = new Gauge({ name: "orca_orchestrator_queue_depth", help: "READY tasks waiting in each worker queue.", labelNames: ["tenant", "queue"], registers });
    this.readyTasks = new Gauge({ name: "orca_orchestrator_ready_tasks", help: "READY tasks of built-in plugins waiting to be claimed.", registers });
    this.leaseExpiries = new Counter({ name: "orca_orchestrator_lease_expiries_total", help: "Task leases that lapsed (executor or worker died or stalled).", registers });
    this.cacheHits = new Counter({ name: "orca_orchestrator_cache_hits_total", help: "Tasks recorded CACHED from the Cache service.", registers });
    this.cacheLookups = new Counter({ name: "orca_orchestrator_cache_lookups_total", help: "Result cache lookups.", registers });
    this.runningAttempts = new Gauge({ name: "orca_orchestrator_running_attempts", help: "Built-in attempts running on this replica.", labelNames: ["plugin"], registers });
  }

  record(after: AfterCommit): void {
    if (after.runsStarted) this.runsStarted.inc(after.runsStarted);
    for (const status of after.runsFinished) this.runsFinished.inc({ status });
    for (const t of after.tasksFinished) {
      this.tasksFinished.inc({ plugin: t.plugin, status: t.status });
      if (t.seconds !== undefined) this.taskDuration.observe({ plugin: t.plugin, status: t.status }, t.seconds);
    }
    if (after.leaseExpiries) this.leaseExpiries.inc(after.leaseExpiries);
    if (after.cacheHits) this.cacheHits.inc(after.cacheHits);
  }
}
