import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create, toJson, type DescMethod, type DescService, type JsonObject } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CacheService } from "../../gen/orca/cache/v1/cache_pb.js";
import { LockService } from "../../gen/orca/lock/v1/lock_pb.js";
import { AlertState, HealthStatus, MonitorService, Severity } from "../../gen/orca/monitor/v1/monitor_pb.js";
import { OrchestratorService, RunStatus } from "../../gen/orca/orchestrator/v1/orchestrator_pb.js";
import { BundleStatus, Engine, PolicyService } from "../../gen/orca/policy/v1/policy_pb.js";
import { SchedulerService } from "../../gen/orca/scheduler/v1/scheduler_pb.js";
import type { ServiceName } from "../../services/kit/catalog.js";
import { openMemoryDatabase, type Database } from "../../services/kit/db/database.js";
import { SERVICE_MODULES } from "../../services/modules.js";
import { makeIssuer } from "../support/jwt.js";
import { startServiceHarness, type ServiceHarness } from "../support/service-harness.js";

/**
 * The cross-tenant sweep (issue 9): the six real services with authentication ON on one PGlite
 * database. Tenant "acme" creates one object of every kind; tenant "globex" (with the same
 * roles: admin, operator and system) then calls every RPC of every service that could touch
 * them, with acme's ids, keys and names. Each call must be denied (PermissionDenied when it
 * names acme, NotFound when it addresses an acme object by id) or answer only globex's own,
 * empty, world; and acme's objects must read back unchanged. The list of RPCs comes from the
 * service descriptors: an RPC neither swept nor in NOT_TENANT_SCOPED (with a reason) fails.
 *
 * Service-to-service calls carry the x-forwarded-client-cert an Istio sidecar would add
 * (ORCA_TRUST_XFCC=1), so peers know the caller's workload identity as in the mesh.
 */

const SECRET = "acme-secret";
const SECRET_B64 = Buffer.from(SECRET).toString("base64").slice(0, 12);
const ROLES = ["admin", "operator", "system"];

/** RPCs that touch no tenant-owned object, with the reason. */
const NOT_TENANT_SCOPED: Record<string, string> = {
  "orca.policy.v1.PolicyService/GetStats": "per-replica decision counters and cache figures; no tenant's objects",
};

/** What acme created, by kind. */
interface AcmeIds {
  lockResource: string;
  leaseId: string;
  fencingToken: bigint;
  cacheNamespace: string;
  cacheKey: string;
  bundleName: string;
  workflowName: string;
  runId: string;
  idempotencyKey: string;
  taskLeaseId: string;
  queue: string;
  scheduleId: string;
  triggerId: string;
  eventType: string;
  targetId: string;
  ruleId: string;
  ruleName: string;
  alertId: string;
}

/**
 * - denied: PermissionDenied (the request names acme) or NotFound (an acme object by id).
 * - isolated: may succeed (or fail) inside globex's own tenant, but must show nothing of acme;
 *   `check` adds what the answer must be (empty, not found, nothing deleted).
 */
interface Probe {
  label: string;
  request: (ids: AcmeIds) => Record<string, unknown>;
  expect: "denied" | "isolated";
  check?: (messages: Record<string, unknown>[]) => void;
}

const denied = (label: string, request: Probe["request"]): Probe => ({ label, request, expect: "denied" });
const isolated = (label: string, request: Probe["request"], check?: Probe["check"]): Probe => ({ label, request, expect: "isolated", check });
const ttl = { seconds: 600n };
const firstEmpty = (field: string) => (m: Record<string, unknown>[]) => expect(m.flatMap((x) => (x[field] as unknown[] | undefined) ?? [])).toEqual([]);

const SWEEP: Record<string, Probe[]> = {
  // ----------------------------------------------------------------------------------- Lock
  "orca.lock.v1.LockService/Acquire": [
    denied("tenant acme", (i) => ({ tenant: "acme", resource: i.lockResource, ttl })),
    // Same resource name in globex: a different lock, granted at once although acme holds its own.
    isolated("same resource name, own tenant", (i) => ({ resource: i.lockResource, ttl: { seconds: 5n }, owner: "globex" }), (m) => expect(m).toHaveLength(1)),
  ],
  "orca.lock.v1.LockService/Release": [
    denied("tenant acme", (i) => ({ tenant: "acme", leaseId: i.leaseId, fencingToken: i.fencingToken })),
    denied("acme lease id", (i) => ({ leaseId: i.leaseId, fencingToken: i.fencingToken })),
  ],
  "orca.lock.v1.LockService/Extend": [
    denied("tenant acme", (i) => ({ tenant: "acme", leaseId: i.leaseId, fencingToken: i.fencingToken, ttl })),
    denied("acme lease id", (i) => ({ leaseId: i.leaseId, fencingToken: i.fencingToken, ttl })),
  ],
  "orca.lock.v1.LockService/KeepAlive": [
    denied("tenant acme", (i) => ({ tenant: "acme", leaseId: i.leaseId, fencingToken: i.fencingToken })),
    denied("acme lease id", (i) => ({ leaseId: i.leaseId, fencingToken: i.fencingToken })),
  ],
  "orca.lock.v1.LockService/GetLock": [
    denied("tenant acme", (i) => ({ tenant: "acme", resource: i.lockResource })),
    isolated("acme resource name", (i) => ({ resource: `${i.lockResource}-unused` })),
  ],
  "orca.lock.v1.LockService/ListLocks": [denied("tenant acme", () => ({ tenant: "acme" })), isolated("own tenant", () => ({}))],
  "orca.lock.v1.LockService/WatchLocks": [denied("tenant acme", () => ({ tenant: "acme", includeCurrent: true })), isolated("own tenant", () => ({ includeCurrent: true, prefix: "jobs/acme" }))],

  // ---------------------------------------------------------------------------------- Cache
  "orca.cache.v1.CacheService/Get": [
    denied("tenant acme", (i) => ({ tenant: "acme", namespace: i.cacheNamespace, key: i.cacheKey })),
    isolated("acme namespace and key", (i) => ({ namespace: i.cacheNamespace, key: i.cacheKey }), (m) => expect((m[0].result as { found?: boolean }).found ?? false).toBe(false)),
  ],
  "orca.cache.v1.CacheService/BatchGet": [
    denied("tenant acme", (i) => ({ tenant: "acme", namespace: i.cacheNamespace, keys: [i.cacheKey] })),
    isolated("acme namespace and key", (i) => ({ namespace: i.cacheNamespace, keys: [i.cacheKey] }), (m) =>
      expect((m[0].results as { found?: boolean }[]).map((r) => r.found ?? false)).toEqual([false]),
    ),
  ],
  "orca.cache.v1.CacheService/Set": [denied("tenant acme", (i) => ({ tenant: "acme", namespace: i.cacheNamespace, key: i.cacheKey, value: Buffer.from("pwned") }))],
  "orca.cache.v1.CacheService/Delete": [
    denied("tenant acme", (i) => ({ tenant: "acme", namespace: i.cacheNamespace, key: i.cacheKey })),
    isolated("acme namespace and key", (i) => ({ namespace: i.cacheNamespace, key: i.cacheKey }), (m) => expect(m[0].deleted ?? false).toBe(false)),
  ],
  "orca.cache.v1.CacheService/Invalidate": [
    denied("tenant acme", (i) => ({ tenant: "acme", namespace: i.cacheNamespace, selector: { selector: { case: "pattern", value: "*" } } })),
    isolated("acme namespace, every key", (i) => ({ namespace: i.cacheNamespace, selector: { selector: { case: "pattern", value: "*" } } }), (m) => expect(m[0].count ?? "0").toBe("0")),
  ],
  "orca.cache.v1.CacheService/GetStats": [
    denied("tenant acme", () => ({ tenant: "acme" })),
    // globex's own misses on acme's namespace name are counted for globex; nothing is stored.
    isolated("own tenant", () => ({}), (m) => {
      const tiers = (m[0].namespaces as { tiers?: { entries?: string; bytes?: string }[] }[] | undefined ?? []).flatMap((n) => n.tiers ?? []);
      expect(tiers.filter((t) => (t.entries ?? "0") !== "0" || (t.bytes ?? "0") !== "0")).toEqual([]);
    }),
  ],
  "orca.cache.v1.CacheService/WatchInvalidations": [denied("tenant acme", (i) => ({ tenant: "acme", namespaces: [i.cacheNamespace] })), isolated("acme namespace", (i) => ({ namespaces: [i.cacheNamespace] }))],

  // --------------------------------------------------------------------------------- Policy
  "orca.policy.v1.PolicyService/Decide": [
    denied("bundle_tenant acme", (i) => ({ bundleTenant: "acme", bundle: i.bundleName, action: "read" })),
    denied("tenant acme", () => ({ tenant: "acme", action: "start" })),
  ],
  "orca.policy.v1.PolicyService/BatchDecide": [
    denied("requests[].bundle_tenant acme", (i) => ({ requests: [{ action: "start" }, { bundleTenant: "acme", bundle: i.bundleName, action: "read" }] })),
    denied("requests[].tenant acme", () => ({ requests: [{ tenant: "acme", action: "start" }] })),
  ],
  "orca.policy.v1.PolicyService/PutBundle": [denied("bundle.tenant acme", (i) => ({ bundle: { tenant: "acme", name: i.bundleName, engine: Engine.CEDAR, content: Buffer.from(PERMIT_ALL) }, activate: true }))],
  "orca.policy.v1.PolicyService/ActivateBundle": [
    denied("tenant acme", (i) => ({ tenant: "acme", name: i.bundleName, version: 1n })),
    denied("acme bundle name", (i) => ({ name: i.bundleName, version: 1n })),
  ],
  "orca.policy.v1.PolicyService/Rollback": [denied("tenant acme", (i) => ({ tenant: "acme", name: i.bundleName })), isolated("acme bundle name", (i) => ({ name: i.bundleName }))],
  "orca.policy.v1.PolicyService/ListBundles": [denied("tenant acme", () => ({ tenant: "acme" })), isolated("own tenant", () => ({}), firstEmpty("bundles"))],
  "orca.policy.v1.PolicyService/GetBundle": [denied("tenant acme", (i) => ({ tenant: "acme", name: i.bundleName })), denied("acme bundle name", (i) => ({ name: i.bundleName }))],
  "orca.policy.v1.PolicyService/ValidateBundle": [denied("bundle.tenant acme", (i) => ({ bundle: { tenant: "acme", name: i.bundleName, engine: Engine.CEDAR, content: Buffer.from(PERMIT_ALL) } }))],
  "orca.policy.v1.PolicyService/SetShadow": [
    denied("tenant acme", (i) => ({ tenant: "acme", name: i.bundleName, version: 1n })),
    isolated("acme bundle name", (i) => ({ name: i.bundleName, version: 1n })),
  ],
  "orca.policy.v1.PolicyService/GetShadowReport": [denied("tenant acme", (i) => ({ tenant: "acme", name: i.bundleName })), isolated("acme bundle name", (i) => ({ name: i.bundleName }))],
  "orca.policy.v1.PolicyService/BenchmarkPolicy": [
    denied("tenant acme", (i) => ({ tenant: "acme", name: i.bundleName, iterations: 1, warmupIterations: 1 })),
    isolated("acme bundle name", (i) => ({ name: i.bundleName, iterations: 1, warmupIterations: 1 })),
  ],

  // --------------------------------------------------------------------------- Orchestrator
  "orca.orchestrator.v1.OrchestratorService/RegisterWorkflow": [denied("tenant acme", (i) => ({ tenant: "acme", name: i.workflowName, tasks: [{ id: "x", plugin: "worker", queue: i.queue }] }))],
  "orca.orchestrator.v1.OrchestratorService/GetWorkflow": [denied("tenant acme", (i) => ({ tenant: "acme", name: i.workflowName })), denied("acme workflow name", (i) => ({ name: i.workflowName }))],
  "orca.orchestrator.v1.OrchestratorService/ListWorkflows": [
    denied("tenant acme", () => ({ tenant: "acme" })),
    isolated("own tenant, acme's name", (i) => ({ name: i.workflowName }), firstEmpty("workflows")),
  ],
  "orca.orchestrator.v1.OrchestratorService/StartRun": [
    denied("tenant acme", (i) => ({ tenant: "acme", workflowName: i.workflowName })),
    denied("acme workflow and idempotency key", (i) => ({ workflowName: i.workflowName, idempotencyKey: i.idempotencyKey })),
  ],
  "orca.orchestrator.v1.OrchestratorService/GetRun": [denied("acme run id", (i) => ({ runId: i.runId }))],
  "orca.orchestrator.v1.OrchestratorService/ListRuns": [
    denied("tenant acme", () => ({ tenant: "acme" })),
    denied('tenant "*"', () => ({ tenant: "*" })),
    isolated("own tenant, acme's workflow name", (i) => ({ workflowName: i.workflowName }), firstEmpty("runs")),
  ],
  "orca.orchestrator.v1.OrchestratorService/CancelRun": [denied("acme run id", (i) => ({ runId: i.runId, reason: "globex" }))],
  "orca.orchestrator.v1.OrchestratorService/WatchRun": [denied("acme run id", (i) => ({ runId: i.runId }))],
  "orca.orchestrator.v1.OrchestratorService/PollTasks": [
    denied("tenant acme", (i) => ({ tenant: "acme", queue: i.queue, workerId: "globex-worker", waitTimeout: { nanos: 1_000_000 } })),
    isolated("acme queue name", (i) => ({ queue: i.queue, workerId: "globex-worker", waitTimeout: { nanos: 1_000_000 } }), firstEmpty("tasks")),
  ],
  "orca.orchestrator.v1.OrchestratorService/HeartbeatTask": [denied("acme task lease", (i) => ({ leaseId: i.taskLeaseId }))],
  "orca.orchestrator.v1.OrchestratorService/CompleteTask": [denied("acme task lease", (i) => ({ leaseId: i.taskLeaseId, output: { by: "globex" } }))],
  "orca.orchestrator.v1.OrchestratorService/FailTask": [denied("acme task lease", (i) => ({ leaseId: i.taskLeaseId, error: { kind: "globex", message: "x" }, nonRetryable: true }))],

  // ------------------------------------------------------------------------------ Scheduler
  "orca.scheduler.v1.SchedulerService/CreateSchedule": [
    denied("schedule.tenant acme", (i) => ({ schedule: { tenant: "acme", name: "globex", cron: "0 0 0 1 1 *", workflowName: i.workflowName } })),
  ],
  "orca.scheduler.v1.SchedulerService/UpdateSchedule": [
    denied("acme schedule id", (i) => ({ schedule: { id: i.scheduleId, name: "renamed-by-globex" }, updateMask: { paths: ["name"] } })),
    denied("acme schedule id, schedule.tenant acme", (i) => ({ schedule: { id: i.scheduleId, tenant: "acme", name: "renamed-by-globex" }, updateMask: { paths: ["name"] } })),
  ],
  "orca.scheduler.v1.SchedulerService/DeleteSchedule": [denied("acme schedule id", (i) => ({ id: i.scheduleId }))],
  "orca.scheduler.v1.SchedulerService/PauseSchedule": [denied("acme schedule id", (i) => ({ id: i.scheduleId, note: "globex" }))],
  "orca.scheduler.v1.SchedulerService/ResumeSchedule": [denied("acme schedule id", (i) => ({ id: i.scheduleId }))],
  "orca.scheduler.v1.SchedulerService/GetSchedule": [denied("acme schedule id", (i) => ({ id: i.scheduleId }))],
  "orca.scheduler.v1.SchedulerService/ListSchedules": [denied("tenant acme", () => ({ tenant: "acme" })), isolated("own tenant", () => ({}), firstEmpty("schedules"))],
  "orca.scheduler.v1.SchedulerService/PreviewSchedule": [denied("acme schedule id", (i) => ({ target: { case: "scheduleId", value: i.scheduleId }, count: 1 }))],
  "orca.scheduler.v1.SchedulerService/TriggerSchedule": [denied("acme schedule id", (i) => ({ id: i.scheduleId }))],
  "orca.scheduler.v1.SchedulerService/BackfillSchedule": [
    denied("acme schedule id", (i) => ({ id: i.scheduleId, from: { seconds: BigInt(Math.floor(Date.now() / 1000) - 86_400 * 400) }, to: { seconds: BigInt(Math.floor(Date.now() / 1000) - 60) } })),
  ],
  "orca.scheduler.v1.SchedulerService/ListFirings": [
    denied("acme schedule id", (i) => ({ scheduleId: i.scheduleId })),
    denied("tenant acme", () => ({ tenant: "acme" })),
    isolated("own tenant", () => ({}), firstEmpty("firings")),
  ],
  "orca.scheduler.v1.SchedulerService/PublishEvent": [
    denied("tenant acme", (i) => ({ tenant: "acme", type: i.eventType, idempotencyKey: "globex-1" })),
    // acme's trigger listens for this type: a globex event must not start acme's workflow.
    isolated("acme's event type, own tenant", (i) => ({ type: i.eventType, idempotencyKey: "globex-2", payload: { by: "globex" } }), firstEmpty("dispatches")),
  ],
  "orca.scheduler.v1.SchedulerService/CreateTrigger": [denied("trigger.tenant acme", (i) => ({ trigger: { tenant: "acme", name: "globex", eventType: i.eventType, workflowName: i.workflowName } }))],
  "orca.scheduler.v1.SchedulerService/GetTrigger": [denied("acme trigger id", (i) => ({ id: i.triggerId }))],
  "orca.scheduler.v1.SchedulerService/ListTriggers": [denied("tenant acme", () => ({ tenant: "acme" })), isolated("own tenant, acme's event type", (i) => ({ eventType: i.eventType }), firstEmpty("triggers"))],
  "orca.scheduler.v1.SchedulerService/DeleteTrigger": [denied("acme trigger id", (i) => ({ id: i.triggerId }))],

  // -------------------------------------------------------------------------------- Monitor
  "orca.monitor.v1.MonitorService/RegisterTarget": [
    denied("target.tenant acme", () => ({ target: { tenant: "acme", name: "globex", probe: { case: "http", value: { url: "http://127.0.0.1:1/healthz" } } } })),
  ],
  "orca.monitor.v1.MonitorService/DeregisterTarget": [denied("acme target id", (i) => ({ id: i.targetId }))],
  "orca.monitor.v1.MonitorService/ListTargets": [denied("tenant acme", () => ({ tenant: "acme" })), isolated("own tenant", () => ({}), firstEmpty("targets"))],
  "orca.monitor.v1.MonitorService/GetHealth": [denied("acme target id", (i) => ({ targetId: i.targetId }))],
  "orca.monitor.v1.MonitorService/WatchHealth": [
    denied("acme target id", (i) => ({ targetIds: [i.targetId], sendInitial: true })),
    denied("tenant acme", () => ({ tenant: "acme", sendInitial: true })),
    isolated("own tenant", () => ({ sendInitial: true })),
  ],
  "orca.monitor.v1.MonitorService/CreateAlertRule": [
    denied("rule.tenant acme", () => ({ rule: { tenant: "acme", name: "globex", condition: { case: "status", value: {} }, severity: Severity.INFO } })),
    denied("rule.target_id of acme", (i) => ({ rule: { name: "globex-on-acme-target", targetId: i.targetId, condition: { case: "status", value: {} }, severity: Severity.INFO } })),
  ],
  "orca.monitor.v1.MonitorService/DeleteAlertRule": [denied("acme rule id", (i) => ({ id: i.ruleId }))],
  "orca.monitor.v1.MonitorService/ListAlertRules": [
    denied("tenant acme", () => ({ tenant: "acme" })),
    isolated("own tenant, acme's target id", (i) => ({ targetId: i.targetId }), firstEmpty("rules")),
  ],
  "orca.monitor.v1.MonitorService/ListAlerts": [
    denied("tenant acme", () => ({ tenant: "acme" })),
    isolated("own tenant, acme's rule id", (i) => ({ ruleId: i.ruleId }), firstEmpty("alerts")),
  ],
  "orca.monitor.v1.MonitorService/SilenceAlert": [
    denied("tenant acme", (i) => ({ tenant: "acme", matchers: [{ name: "alertname", value: i.ruleName, operator: 1 }], duration: { seconds: 3600n } })),
    // A globex silence matching acme's alert by name must not silence it (checked afterwards).
    isolated("acme's alert name, own tenant", (i) => ({ matchers: [{ name: "alertname", value: i.ruleName, operator: 1 }], duration: { seconds: 3600n } })),
  ],
  "orca.monitor.v1.MonitorService/ListSilences": [denied("tenant acme", () => ({ tenant: "acme" })), isolated("own tenant", () => ({ includeExpired: true }))],
  "orca.monitor.v1.MonitorService/AckAlert": [denied("acme alert id", (i) => ({ alertId: i.alertId, comment: "globex" }))],
  "orca.monitor.v1.MonitorService/ListDeliveries": [denied("tenant acme", () => ({ tenant: "acme" })), denied("acme alert id", (i) => ({ alertId: i.alertId }))],
};

const PERMIT_ALL = `// ${SECRET}-bundle\n@id("acme-allow-read") @reason("acme may read") permit (principal, action == Action::"read", resource);`;

/** Calls any method with one request; returns the answers (as proto JSON) and the error. */
async function invoke(
  client: Record<string, (...args: unknown[]) => unknown>,
  method: DescMethod,
  init: Record<string, unknown>,
  headers: Record<string, string>,
): Promise<{ messages: Record<string, unknown>[]; error?: ConnectError }> {
  const fn = client[method.localName];
  const message = create(method.input, init as never);
  const streaming = method.methodKind !== "unary";
  const options = { headers, timeoutMs: streaming ? 1_500 : 10_000 };
  const messages: Record<string, unknown>[] = [];
  const keep = (m: unknown) => messages.push(toJson(method.output, m as never) as Record<string, unknown>);
  try {
    switch (method.methodKind) {
      case "unary":
        keep(await fn(message, options));
        break;
      case "server_streaming":
        for await (const m of fn(message, options) as AsyncIterable<unknown>) keep(m);
        break;
      case "client_streaming":
        keep(await fn((async function* () { yield message; })(), options));
        break;
      case "bidi_streaming":
        for await (const m of fn((async function* () { yield message; })(), options) as AsyncIterable<unknown>) keep(m);
        break;
    }
    return { messages };
  } catch (error) {
    const e = ConnectError.from(error);
    // A stream that stays open and quiet until our deadline answered nothing.
    if (streaming && e.code === Code.DeadlineExceeded) return { messages };
    return { messages, error: e };
  }
}

async function waitFor<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const value = await fn().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const serviceDescriptors: DescService[] = Object.values(SERVICE_MODULES).map((m) => m.descriptor);
const allMethods = serviceDescriptors.flatMap((service) => service.methods.map((method) => ({ service, method, key: `${service.typeName}/${method.name}` })));

describe("tenant isolation across every RPC", () => {
  it("sweeps or explicitly exempts every RPC of every service", () => {
    const unaccounted = allMethods.filter((m) => !(m.key in SWEEP) && !(m.key in NOT_TENANT_SCOPED)).map((m) => m.key);
    expect(unaccounted, "RPCs neither swept nor listed as not tenant-scoped").toEqual([]);
    const known = new Set(allMethods.map((m) => m.key));
    expect([...Object.keys(SWEEP), ...Object.keys(NOT_TENANT_SCOPED)].filter((k) => !known.has(k))).toEqual([]);
    for (const key of Object.keys(SWEEP)) expect(key in NOT_TENANT_SCOPED, key).toBe(false);
    for (const [key, reason] of Object.entries(NOT_TENANT_SCOPED)) expect(reason.length, key).toBeGreaterThan(10);
  });

  describe("with the real services, authentication on", () => {
    const harnesses = new Map<ServiceName, ServiceHarness>();
    const restoreEnv: Record<string, string | undefined> = {};
    let database: Database;
    let keyDir: string;
    let acme: Record<string, string>;
    let globex: Record<string, string>;
    let ids: AcmeIds;
    const clients = new Map<string, Client<DescService>>();
    const client = <S extends DescService>(service: S): Client<S> => clients.get(service.typeName) as unknown as Client<S>;

    beforeAll(async () => {
      const issuer = await makeIssuer();
      keyDir = mkdtempSync(join(tmpdir(), "orca-cross-tenant-"));
      const keyFile = join(keyDir, "jwt.pem");
      writeFileSync(keyFile, issuer.publicPem);
      // Module-specific settings are read from process.env by the modules' create().
      const processEnv: Record<string, string> = {
        ORCA_MONITOR_BUILTIN_TARGETS: "0",
        ORCA_MONITOR_MIN_INTERVAL_MS: "100",
        ORCA_MONITOR_PROBE_INTERVAL_MS: "200",
        ORCA_MONITOR_TICK_MS: "100",
        ORCA_SCHEDULER_LEADER_TTL_MS: "2000",
      };
      for (const [k, v] of Object.entries(processEnv)) {
        restoreEnv[k] = process.env[k];
        process.env[k] = v;
      }
      const env = {
        ORCA_JWT_ISSUER: issuer.issuer,
        ORCA_JWT_AUDIENCE: issuer.audience,
        ORCA_JWT_PUBLIC_KEY_FILE: keyFile,
        ORCA_JWT_ALGORITHMS: "RS256",
        ORCA_TRUST_XFCC: "1",
      };
      database = await openMemoryDatabase();
      const identity = (name: ServiceName): Interceptor => (next) => (req) => {
        req.header.set("x-forwarded-client-cert", `By=spiffe://cluster.local/ns/orca/sa/orca-${name};URI=spiffe://cluster.local/ns/orca/sa/orca-${name}`);
        return next(req);
      };
      const start = async (name: ServiceName, peers: ServiceName[]) => {
        const harness = await startServiceHarness(SERVICE_MODULES[name], {
          database,
          env,
          defaultAuthMode: "on",
          peers: Object.fromEntries(peers.map((p) => [p, harnesses.get(p)!.url])),
          clientInterceptors: [identity(name)],
        });
        harnesses.set(name, harness);
        const transport = createGrpcTransport({ baseUrl: harness.url });
        clients.set(SERVICE_MODULES[name].descriptor.typeName, createClient(SERVICE_MODULES[name].descriptor, transport));
      };
      await start("policy", []);
      await start("lock", []);
      await start("cache", []);
      await start("orchestrator", ["policy", "lock", "cache"]);
      await start("scheduler", ["lock", "orchestrator"]);
      await start("monitor", ["orchestrator", "scheduler", "policy", "lock", "cache"]);

      acme = { authorization: `Bearer ${await issuer.sign({ sub: "alice", roles: ROLES, tenant: "acme" })}` };
      globex = { authorization: `Bearer ${await issuer.sign({ sub: "mallory", roles: ROLES, tenant: "globex" })}` };
      const h = { headers: acme };

      // ------------------------------------------------ acme creates one object of every kind
      const lock = await client(LockService).acquire({ resource: "jobs/acme-nightly", owner: `${SECRET}-owner`, ttl }, h);
      await client(CacheService).set({ namespace: "acme-ns", key: "k1", value: Buffer.from(`${SECRET}-value`), tags: ["acme-tag"] }, h);
      const bundle = await client(PolicyService).putBundle({ bundle: { name: "acme-rules", engine: Engine.CEDAR, content: Buffer.from(PERMIT_ALL) }, activate: true }, h);
      expect(bundle.bundle?.status).toBe(BundleStatus.ACTIVE);
      const orchestrator = client(OrchestratorService);
      await orchestrator.registerWorkflow(
        {
          name: "acme-flow",
          description: `${SECRET}-description`,
          tasks: [{ id: "work", plugin: "worker", queue: "acme-q", timeouts: { heartbeat: { seconds: 600n }, startToClose: { seconds: 3600n } } }],
        },
        h,
      );
      const { run } = await orchestrator.startRun({ workflowName: "acme-flow", input: { secret: `${SECRET}-input` }, idempotencyKey: "acme-key-1" }, h);
      const leased = await waitFor("acme's worker task", async () => {
        const r = await orchestrator.pollTasks({ queue: "acme-q", workerId: "acme-worker", waitTimeout: { seconds: 2n } }, h);
        return r.tasks[0];
      });
      const scheduler = client(SchedulerService);
      const { schedule } = await scheduler.createSchedule({ schedule: { name: `${SECRET}-schedule`, cron: "0 0 0 1 1 *", timezone: "UTC", workflowName: "acme-flow", input: { secret: `${SECRET}-input` } } }, h);
      const { trigger } = await scheduler.createTrigger({ trigger: { name: `${SECRET}-trigger`, eventType: "acme.event", workflowName: "acme-flow", enabled: true } }, h);
      const monitor = client(MonitorService);
      const { target } = await monitor.registerTarget(
        { target: { name: `${SECRET}-target`, probe: { case: "http", value: { url: `http://127.0.0.1:${harnesses.get("policy")!.adminPort}/healthz` } }, interval: { nanos: 200_000_000 } } },
        h,
      );
      // A rule that holds while the target is healthy, so acme has a firing alert to protect.
      const { rule } = await monitor.createAlertRule(
        { rule: { name: "acme-rule", description: `${SECRET}-rule`, targetId: target!.id, condition: { case: "status", value: { statuses: [HealthStatus.SERVING] } }, severity: Severity.WARNING } },
        h,
      );
      const alert = await waitFor("acme's alert", async () => (await monitor.listAlerts({ ruleId: rule!.id, state: AlertState.FIRING }, h)).alerts[0]);
      ids = {
        lockResource: "jobs/acme-nightly",
        leaseId: lock.lease!.leaseId,
        fencingToken: lock.lease!.fencingToken,
        cacheNamespace: "acme-ns",
        cacheKey: "k1",
        bundleName: "acme-rules",
        workflowName: "acme-flow",
        runId: run!.id,
        idempotencyKey: "acme-key-1",
        taskLeaseId: leased.leaseId,
        queue: "acme-q",
        scheduleId: schedule!.id,
        triggerId: trigger!.id,
        eventType: "acme.event",
        targetId: target!.id,
        ruleId: rule!.id,
        ruleName: "acme-rule",
        alertId: alert.id,
      };
    }, 120_000);

    afterAll(async () => {
      for (const name of ["monitor", "scheduler", "orchestrator", "cache", "lock", "policy"] as ServiceName[]) await harnesses.get(name)?.stop().catch(() => undefined);
      await database?.close().catch(() => undefined);
      for (const [k, v] of Object.entries(restoreEnv)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
      if (keyDir) rmSync(keyDir, { recursive: true, force: true });
    });

    /** What acme can see of its objects, without fields that change by themselves (probes, clocks). */
    async function acmeSnapshot() {
      const h = { headers: acme };
      const lock = await client(LockService).getLock({ resource: ids.lockResource }, h);
      const cached = await client(CacheService).get({ namespace: ids.cacheNamespace, key: ids.cacheKey }, h);
      const bundles = await client(PolicyService).listBundles({}, h);
      const orchestrator = client(OrchestratorService);
      const { run } = await orchestrator.getRun({ runId: ids.runId }, h);
      const runs = await orchestrator.listRuns({}, h);
      const workflow = await orchestrator.getWorkflow({ name: ids.workflowName }, h);
      const scheduler = client(SchedulerService);
      const { schedule } = await scheduler.getSchedule({ id: ids.scheduleId }, h);
      const { trigger } = await scheduler.getTrigger({ id: ids.triggerId }, h);
      const firings = await scheduler.listFirings({ scheduleId: ids.scheduleId }, h);
      const monitor = client(MonitorService);
      const targets = await monitor.listTargets({}, h);
      const rules = await monitor.listAlertRules({}, h);
      const alerts = await monitor.listAlerts({}, h);
      const silences = await monitor.listSilences({ includeExpired: true }, h);
      return {
        lock: lock.lock!.holders.map((l) => [l.owner, l.fencingToken, l.expiresAt?.seconds]),
        cache: [cached.result?.found, Buffer.from(cached.result?.entry?.value ?? new Uint8Array()).toString()],
        bundles: bundles.bundles.map((b) => [b.name, b.version, b.status, b.digest]),
        run: [run!.status, run!.tasks.map((t) => [t.taskId, t.status, t.attempts.length, t.error?.kind ?? ""])],
        runs: runs.runs.map((r) => r.id),
        workflow: [workflow.workflow?.version, workflow.workflow?.description],
        schedule: [schedule!.name, schedule!.revision, schedule!.paused, schedule!.nextFireAt?.seconds],
        trigger: [trigger!.name, trigger!.enabled],
        firings: firings.firings.map((f) => f.id),
        targets: targets.targets.map((t) => [t.id, t.name]),
        rules: rules.rules.map((r) => [r.id, r.name]),
        alerts: alerts.alerts.map((a) => [a.id, a.state, a.ackedBy, a.silenced, a.silenceIds]),
        silences: silences.silences.map((s) => s.id),
      };
    }

    it("denies globex every RPC that could touch acme's objects, and leaves them unchanged", async () => {
      const before = await acmeSnapshot();
      expect(before.lock).toHaveLength(1);
      expect(before.cache).toEqual([true, `${SECRET}-value`]);
      expect(before.run[0]).toBe(RunStatus.RUNNING);
      expect(before.alerts).toHaveLength(1);

      const failures: string[] = [];
      const covered: string[] = [];
      for (const { service, method, key } of allMethods) {
        for (const probe of SWEEP[key] ?? []) {
          const c = clients.get(service.typeName) as unknown as Record<string, (...args: unknown[]) => unknown>;
          const { messages, error } = await invoke(c, method, probe.request(ids), globex);
          const where = `${key} [${probe.label}]`;
          covered.push(where);
          const shown = JSON.stringify(messages) + (error?.rawMessage ?? "");
          if (shown.includes(SECRET) || shown.includes(SECRET_B64) || shown.includes('"tenant":"acme"')) failures.push(`${where}: answered with acme's data: ${shown.slice(0, 300)}`);
          if (probe.expect === "denied") {
            if (!error) failures.push(`${where}: succeeded; expected PermissionDenied or NotFound`);
            else if (error.code !== Code.PermissionDenied && error.code !== Code.NotFound) failures.push(`${where}: ${Code[error.code]} (${error.rawMessage}); expected PermissionDenied or NotFound`);
          } else if (probe.check) {
            if (error) failures.push(`${where}: ${Code[error.code]} (${error.rawMessage}); expected an answer for globex's own tenant`);
            else {
              try {
                probe.check(messages);
              } catch (e) {
                failures.push(`${where}: ${(e as Error).message}`);
              }
            }
          }
        }
      }
      expect(failures).toEqual([]);
      expect(covered.length).toBeGreaterThan(Object.keys(SWEEP).length);

      // A moment for anything asynchronous a call might have set off (runs, firings, alerts).
      await new Promise((r) => setTimeout(r, 1_000));
      expect(await acmeSnapshot()).toEqual(before);
    }, 120_000);

    it("keeps a globex workflow's grpc tasks (the Orchestrator's own identity) out of acme's objects", async () => {
      const h = { headers: globex };
      const orchestrator = client(OrchestratorService);
      const calls: Record<string, JsonObject> = {
        "cache-get": { service: "orca.cache.v1.CacheService", method: "Get", request: { tenant: "acme", namespace: ids.cacheNamespace, key: ids.cacheKey } },
        "cache-set": { service: "orca.cache.v1.CacheService", method: "Set", request: { tenant: "acme", namespace: ids.cacheNamespace, key: ids.cacheKey, value: Buffer.from("pwned").toString("base64") } },
        "lock-release": { service: "orca.lock.v1.LockService", method: "Release", request: { tenant: "acme", leaseId: ids.leaseId, fencingToken: String(ids.fencingToken) } },
        "policy-decide": { service: "orca.policy.v1.PolicyService", method: "Decide", request: { bundleTenant: "acme", bundle: ids.bundleName, action: "read" } },
      };
      const before = await acmeSnapshot();
      const runIds: string[] = [];
      for (const [name, config] of Object.entries(calls)) {
        await orchestrator.registerWorkflow({ name: `globex-${name}`, tasks: [{ id: "call", plugin: "grpc", config, retry: { maxAttempts: 1 } }] }, h);
        runIds.push((await orchestrator.startRun({ workflowName: `globex-${name}` }, h)).run!.id);
      }
      for (const runId of runIds) {
        const run = await waitFor(`globex run ${runId}`, async () => {
          const r = (await orchestrator.getRun({ runId }, h)).run!;
          return r.status === RunStatus.SUCCEEDED || r.status === RunStatus.FAILED ? r : undefined;
        });
        expect(JSON.stringify(toJson(OrchestratorService.method.getRun.output, { $typeName: "orca.orchestrator.v1.GetRunResponse", run } as never))).not.toContain(SECRET_B64);
        expect([run.workflowName, run.status, run.tasks[0]?.error?.kind]).toEqual([run.workflowName, RunStatus.FAILED, "grpc.permission_denied"]);
      }
      expect(await acmeSnapshot()).toEqual(before);
    }, 60_000);
  });
});
