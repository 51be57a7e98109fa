import type { JsonObject } from "@bufbuild/protobuf";
import type { Client } from "@connectrpc/connect";
import { OrchestratorService, RunStatus, type Run } from "../../gen/orca/orchestrator/v1/orchestrator_pb.js";
import type { Database } from "../../services/kit/db/database.js";
import type { LockGrant, LockProvider, PolicyGate, PolicyOutcome, ResultCache } from "../../services/orchestrator/deps.js";
import { createOrchestratorModule, type OrchestratorInstance, type OrchestratorOverrides } from "../../services/orchestrator/index.js";
import { TaskFailure, type Plugin } from "../../services/orchestrator/plugins/types.js";
import { startServiceHarness, type ServiceHarness } from "../support/service-harness.js";

/**
 * Test doubles for the Orchestrator's engine tests. Everything named Fake* is an in-memory
 * stand-in for a mesh service (Policy, Lock, Cache); the integration tests use the real ones.
 * Test plugins ("test.*") are added to the service only in tests and the benchmark.
 */
export class FakePolicyGate implements PolicyGate {
  calls: { tenant: string; workflow: string }[] = [];
  next: Partial<PolicyOutcome> = { effect: "ALLOW" };
  async decide(req: { tenant: string; workflow: string }): Promise<PolicyOutcome> {
    this.calls.push({ tenant: req.tenant, workflow: req.workflow });
    return { effect: "ALLOW", reasons: [], delayMs: 0, bundleName: "fake", bundleVersion: "1", decisionId: `d-${this.calls.length}`, cached: false, divertTarget: "", ...this.next };
  }
}

/** A mutex per resource with strictly increasing fencing tokens and a FIFO wait queue. */
export class FakeLockProvider implements LockProvider {
  private token = 0n;
  private readonly held = new Map<string, { leaseId: string; token: bigint }>();
  private readonly waiters = new Map<string, (() => void)[]>();
  private readonly leases = new Map<string, string>();
  grants: { resource: string; token: bigint }[] = [];
  released: string[] = [];
  async acquire(req: { tenant: string; resource: string; ttlMs: number; waitMs: number; signal: AbortSignal }): Promise<LockGrant> {
    const key = `${req.tenant}/${req.resource}`;
    const deadline = Date.now() + req.waitMs;
    while (this.held.has(key)) {
      if (req.signal.aborted || Date.now() >= deadline) throw new Error("not granted");
      await new Promise<void>((resolve) => {
        const list = this.waiters.get(key) ?? [];
        list.push(resolve);
        this.waiters.set(key, list);
        setTimeout(resolve, Math.max(1, deadline - Date.now()));
      });
    }
    this.token += 1n;
    const leaseId = `lease-${this.token}`;
    this.held.set(key, { leaseId, token: this.token });
    this.leases.set(leaseId, key);
    this.grants.push({ resource: req.resource, token: this.token });
    return { leaseId, token: this.token, ttlMs: req.ttlMs };
  }
  keepAlive(): void {}
  async extend(req: { leaseId: string }): Promise<boolean> {
    return this.leases.has(req.leaseId);
  }
  async release(req: { leaseId: string }): Promise<void> {
    const key = this.leases.get(req.leaseId);
    if (!key) return;
    this.leases.delete(req.leaseId);
    this.released.push(req.leaseId);
    if (this.held.get(key)?.leaseId === req.leaseId) this.held.delete(key);
    const next = this.waiters.get(key)?.shift();
    next?.();
  }
}

export class FakeResultCache implements ResultCache {
  readonly entries = new Map<string, JsonObject>();
  gets = 0;
  async get(tenant: string, key: string) {
    this.gets++;
    return this.entries.get(`${tenant}/${key}`);
  }
  async set(tenant: string, key: string, output: JsonObject) {
    this.entries.set(`${tenant}/${key}`, output);
  }
}

/** Records what test plugins did, for ordering and overlap assertions. */
export class Journal {
  entries: { plugin: string; runId: string; taskId: string; attempt: number; start: number; end?: number; token: bigint; resource: string; outcome?: string }[] = [];
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => (clearTimeout(timer), reject(signal.reason)), { once: true });
  });
}

/**
 * test.noop: returns {ok: true, config}. test.sleep: sleeps config.ms (honours the AbortSignal).
 * test.flaky: fails (kind config.kind ?? "test.flaky") until attempt > config.fail_times.
 */
export function testPlugins(journal = new Journal()): Plugin[] {
  const wrap = (name: string, body: (call: Parameters<Plugin["execute"]>[0]) => Promise<JsonObject>): Plugin => ({
    name,
    validate: () => [],
    async execute(call) {
      const entry = { plugin: name, runId: call.runId, taskId: call.taskId, attempt: call.attempt, start: performance.now(), token: call.fencingToken, resource: call.lockResource } as Journal["entries"][number];
      journal.entries.push(entry);
      try {
        const out = await body(call);
        entry.outcome = "ok";
        return out;
      } catch (error) {
        entry.outcome = "error";
        throw error;
      } finally {
        entry.end = performance.now();
      }
    },
  });
  return [
    wrap("test.noop", async ({ config, dependencyOutputs }) => ({ ok: true, config, deps: dependencyOutputs })),
    wrap("test.sleep", async ({ config, signal }) => {
      await sleep(Number(config.ms ?? 10), signal);
      return { slept: Number(config.ms ?? 10) };
    }),
    wrap("test.flaky", async ({ config, attempt }) => {
      if (attempt <= Number(config.fail_times ?? 1)) throw new TaskFailure(String(config.kind ?? "test.flaky"), `attempt ${attempt} fails on purpose`);
      return { attempt };
    }),
  ];
}

export interface TestOrchestrator {
  harness: ServiceHarness;
  client: Client<typeof OrchestratorService>;
  instance: OrchestratorInstance;
  journal: Journal;
  policy: FakePolicyGate;
  locks: FakeLockProvider;
  cache: FakeResultCache;
  stop(): Promise<void>;
}

export const FAST_ENV = {
  ORCA_ORCHESTRATOR_POLL_INTERVAL_MS: "50",
  ORCA_ORCHESTRATOR_MAINTENANCE_INTERVAL_MS: "100",
  ORCA_ORCHESTRATOR_ABORT_GRACE_MS: "1000",
};

/** The Orchestrator over real gRPC, with test plugins and fakes for Policy/Lock/Cache (unless given). */
export async function startTestOrchestrator(
  database: Database,
  opts: { env?: Record<string, string>; overrides?: OrchestratorOverrides; journal?: Journal; policy?: FakePolicyGate; locks?: FakeLockProvider; cache?: FakeResultCache; peers?: Record<string, string> } = {},
): Promise<TestOrchestrator> {
  const journal = opts.journal ?? new Journal();
  const policy = opts.policy ?? new FakePolicyGate();
  const locks = opts.locks ?? new FakeLockProvider();
  const cache = opts.cache ?? new FakeResultCache();
  const env = { ...FAST_ENV, ...opts.env };
  const module = createOrchestratorModule({
    extraPlugins: testPlugins(journal),
    policy: () => policy,
    locks: () => locks,
    cache: () => cache,
    env,
    ...opts.overrides,
  });
  const harness = await startServiceHarness(module, { database, env, peers: opts.peers });
  return {
    harness,
    client: harness.client(OrchestratorService),
    instance: harness.instance as OrchestratorInstance,
    journal,
    policy,
    locks,
    cache,
    stop: () => harness.stop(),
  };
}

export const FINAL = new Set([RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.TIMED_OUT]);

/** Polls GetRun until the run is final (bounded wait). */
export async function waitForRun(client: Client<typeof OrchestratorService>, runId: string, timeoutMs = 20_000, statuses = FINAL): Promise<Run> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const { run } = await client.getRun({ runId });
    if (run && statuses.has(run.status)) return run;
    if (Date.now() > deadline) throw new Error(`run ${runId} still ${RunStatus[run!.status]} after ${timeoutMs} ms: ${JSON.stringify(run!.tasks.map((t) => [t.taskId, t.status]))}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export function task(id: string, plugin: string, extra: Record<string, unknown> = {}) {
  return { id, plugin, ...extra };
}
