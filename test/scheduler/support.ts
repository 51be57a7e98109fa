import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { Registry } from "prom-client";
import { OrchestratorService, RunSchema, RunStatus, WorkflowDefinitionSchema } from "../../gen/orca/orchestrator/v1/orchestrator_pb.js";
import type { Database } from "../../services/kit/db/database.js";
import { migrate } from "../../services/kit/db/migrations.js";
import type { ServiceInstance, ServiceModule } from "../../services/kit/service-module.js";
import { createLogger } from "../../services/kit/telemetry/logger.js";
import { readSchedulerConfig, type SchedulerConfig } from "../../services/scheduler/config.js";
import { createSchedulerMetrics } from "../../services/scheduler/metrics.js";
import { RunStartError, type LeaderElector, type Leadership, type RunStarter, type StartRunInput } from "../../services/scheduler/ports.js";
import { Scheduler } from "../../services/scheduler/scheduler.js";
import { schedulerService } from "../../services/scheduler/index.js";
import { startServiceHarness, type ServiceHarness } from "../support/service-harness.js";

/**
 * FAKES for Scheduler tests. FakeRunStarter is an in-memory Orchestrator behind the RunStarter
 * port (idempotency keys honoured like the real one); FakeOrchestratorModule serves the same fake
 * over real gRPC so the Scheduler's real client adapter is exercised; FakeElector is an
 * in-process leader election (not the Lock service).
 */
export class FakeRunStarter implements RunStarter {
  readonly runs = new Map<string, { id: string; key: string; final: boolean; cancelled: boolean; input: unknown; workflow: string; tenant: string }>();
  readonly byKey = new Map<string, string>();
  /** StartRun calls per idempotency key (a retry after failover may call twice; it must not create twice). */
  readonly calls = new Map<string, number>();
  workflows = new Set(["wf"]);
  failNext: "retryable" | "permanent" | undefined;
  unavailable = false;
  private seq = 0;

  async startRun(request: StartRunInput) {
    this.calls.set(request.idempotencyKey, (this.calls.get(request.idempotencyKey) ?? 0) + 1);
    if (this.unavailable) throw new RunStartError("StartRun: Unavailable: fake orchestrator down", true);
    if (this.failNext) {
      const kind = this.failNext;
      this.failNext = undefined;
      throw new RunStartError(`StartRun: fake ${kind} failure`, kind === "retryable");
    }
    const existing = this.byKey.get(request.idempotencyKey);
    if (existing) return { runId: existing, existing: true };
    const id = `00000000-0000-4000-8000-${String(++this.seq).padStart(12, "0")}`;
    this.runs.set(id, { id, key: request.idempotencyKey, final: false, cancelled: false, input: request.input, workflow: request.workflowName, tenant: request.tenant });
    this.byKey.set(request.idempotencyKey, id);
    return { runId: id, existing: false };
  }
  async isRunFinal(_tenant: string, runId: string) {
    if (this.unavailable) throw new RunStartError("GetRun: unavailable", true);
    return this.runs.get(runId)?.final ?? true;
  }
  async cancelRun(_tenant: string, runId: string) {
    const run = this.runs.get(runId);
    if (run) {
      run.final = true;
      run.cancelled = true;
    }
  }
  async checkWorkflow(_tenant: string, name: string) {
    if (this.unavailable) throw new RunStartError("GetWorkflow: unavailable", true);
    if (!this.workflows.has(name)) throw new RunStartError(`GetWorkflow: NotFound: ${name}`, false, true);
  }
  finishAll() {
    for (const run of this.runs.values()) run.final = true;
  }
}

/** A FAKE Orchestrator gRPC service (StartRun/GetRun/CancelRun/GetWorkflow) over the FakeRunStarter. */
export function fakeOrchestratorModule(fake: FakeRunStarter): ServiceModule {
  return {
    name: "orchestrator",
    descriptor: OrchestratorService,
    schema: "orca_fake_orchestrator",
    migrations: {},
    async create() {
      const run = (id: string) => {
        const r = fake.runs.get(id)!;
        return create(RunSchema, { id, workflowName: r.workflow, tenant: r.tenant, idempotencyKey: r.key, status: r.cancelled ? RunStatus.CANCELLED : r.final ? RunStatus.SUCCEEDED : RunStatus.RUNNING, createdAt: timestampNow() });
      };
      const impl: Partial<ServiceImpl<typeof OrchestratorService>> = {
          async getWorkflow(req) {
            if (!fake.workflows.has(req.name)) throw new ConnectError(`no workflow ${req.name}`, Code.NotFound);
            return { workflow: create(WorkflowDefinitionSchema, { name: req.name, version: 1 }) };
          },
          async startRun(req) {
            if (!fake.workflows.has(req.workflowName)) throw new ConnectError(`no workflow ${req.workflowName}`, Code.NotFound);
            const { runId, existing } = await fake.startRun({ tenant: req.tenant, workflowName: req.workflowName, workflowVersion: req.workflowVersion, input: (req.input ?? {}) as never, idempotencyKey: req.idempotencyKey });
            return { run: run(runId), existing };
          },
          async getRun(req) {
            if (!fake.runs.has(req.runId)) throw new ConnectError("no run", Code.NotFound);
            return { run: run(req.runId) };
          },
          async cancelRun(req) {
            if (!fake.runs.has(req.runId)) throw new ConnectError("no run", Code.NotFound);
            await fake.cancelRun("", req.runId);
            return { run: run(req.runId) };
          },
      };
      return { impl: impl as ServiceInstance["impl"] };
    },
  };
}

/** FAKE elector: this replica is leader (token 1) until stopped; no Lock service involved. */
export class FakeAlwaysLeader implements LeaderElector {
  constructor(private readonly token = 1n) {}
  async run(onLeader: (l: Leadership) => Promise<void>, stop: AbortSignal) {
    await onLeader({ fencingToken: this.token, signal: stop });
  }
}

/** FAKE elector that never leads (a replica that only serves RPCs). */
export class FakeNeverLeader implements LeaderElector {
  async run(_onLeader: (l: Leadership) => Promise<void>, stop: AbortSignal) {
    await new Promise<void>((resolve) => stop.addEventListener("abort", () => resolve(), { once: true }));
  }
}

export async function withEnv<T>(env: Record<string, string>, fn: () => Promise<T>): Promise<T> {
  const saved = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
  Object.assign(process.env, env);
  try {
    return await fn();
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

/** A Scheduler domain object on `database` (migrated), with a controllable clock; no loop started. */
export async function domainScheduler(database: Database, runs: RunStarter, clock: { now: number }, env: Record<string, string> = {}): Promise<{ scheduler: Scheduler; config: SchedulerConfig }> {
  await migrate(database.db, schedulerService);
  const config = readSchedulerConfig({ ORCA_SCHEDULER_RETRY_MS: "100", ...env });
  const scheduler = new Scheduler(database, config, runs, createLogger({ level: "silent" }), createSchedulerMetrics(new Registry()), () => clock.now);
  return { scheduler, config };
}

export async function startScheduler(module: ServiceModule, database: Database, peers: Record<string, string>, env: Record<string, string> = {}): Promise<ServiceHarness> {
  return withEnv(env, () => startServiceHarness(module, { database, peers }));
}

export async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 15_000, everyMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await fn();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
