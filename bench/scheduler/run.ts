/**
 * Scheduler benchmark: fire lateness (actual StartRun time minus scheduled time) with 10,000
 * active schedules spread so that 100 fire each second (2,000 every minute + 8,000 every two
 * minutes, seconds spread evenly), each starting a one-task run.
 *
 * Run target: the REAL Orchestrator (this tree's services/orchestrator, with a no-op plugin and a
 * FAKE allow-all policy gate so no Policy service is needed) when it works, else (or with
 * `--stub`) a STUB Orchestrator over gRPC that records StartRun in memory. The Scheduler is one
 * replica that is always the firer (a bench-local elector, no Lock service: election is not what
 * is measured). Real Postgres when DATABASE_URL is set (a fresh database), else PGlite.
 *
 *   DATABASE_URL=postgres://... npx tsx bench/scheduler/run.ts [--smoke] [--stub] [--seconds N]
 * Writes bench/results/scheduler-<iso>.json. CPU is shared: run it alone, once.
 */
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { OrchestratorService, RunSchema, RunStatus, WorkflowDefinitionSchema } from "../../gen/orca/orchestrator/v1/orchestrator_pb.js";
import { FiringKind, OverlapPolicy, SchedulerService } from "../../gen/orca/scheduler/v1/scheduler_pb.js";
import { openDatabase, openMemoryDatabase, type Database } from "../../services/kit/db/database.js";
import type { ServiceInstance, ServiceModule } from "../../services/kit/service-module.js";
import { createLogger } from "../../services/kit/telemetry/logger.js";
import type { LeaderElector, Leadership } from "../../services/scheduler/ports.js";
import { createSchedulerModule } from "../../services/scheduler/index.js";
import { createFreshDatabase } from "../../test/support/postgres.js";
import { startServiceHarness, type ServiceHarness } from "../../test/support/service-harness.js";

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const smoke = args.includes("--smoke");
const forceStub = args.includes("--stub");
const secondsArg = args.indexOf("--seconds");
const measureSeconds = secondsArg >= 0 ? Number(args[secondsArg + 1]) : smoke ? 5 : 120;
const SCHEDULES = smoke ? 200 : 10_000;

/** Bench-local elector: this single replica is always the firer. */
class SoleFirer implements LeaderElector {
  async run(onLeader: (l: Leadership) => Promise<void>, stop: AbortSignal) {
    await onLeader({ fencingToken: 1n, signal: stop });
  }
}

/** STUB Orchestrator over gRPC: StartRun honours idempotency keys, runs finish at once. */
function stubOrchestrator(): ServiceModule {
  const byKey = new Map<string, string>();
  let seq = 0;
  const run = (id: string, key: string) => create(RunSchema, { id, idempotencyKey: key, status: RunStatus.SUCCEEDED, createdAt: timestampNow() });
  const impl: Partial<ServiceImpl<typeof OrchestratorService>> = {
    async getWorkflow(req) {
      return { workflow: create(WorkflowDefinitionSchema, { name: req.name, version: 1 }) };
    },
    async startRun(req) {
      const existing = byKey.get(req.idempotencyKey);
      if (existing) return { run: run(existing, req.idempotencyKey), existing: true };
      const id = `00000000-0000-4000-8000-${String(++seq).padStart(12, "0")}`;
      byKey.set(req.idempotencyKey, id);
      return { run: run(id, req.idempotencyKey), existing: false };
    },
    async getRun(req) {
      return { run: run(req.runId, "") };
    },
  };
  return { name: "orchestrator", descriptor: OrchestratorService, schema: "orca_bench_stub", migrations: {}, create: async () => ({ impl: impl as ServiceInstance["impl"] }) };
}

async function realOrchestrator(): Promise<ServiceModule | undefined> {
  const mod = (await import("../../services/orchestrator/index.js")) as Record<string, unknown>;
  const factory = mod.createOrchestratorModule as ((o: unknown) => ServiceModule) | undefined;
  if (!factory) return undefined;
  const fakeAllowPolicy = { decide: async () => ({ effect: "ALLOW", reasons: [], delayMs: 0, bundleName: "bench", bundleVersion: "0", decisionId: "bench", cached: false, divertTarget: "" }) };
  const noop = { name: "noop", validate: () => [], execute: async () => ({}) };
  return factory({ extraPlugins: [noop], policy: () => fakeAllowPolicy });
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function main() {
  const log = (line: string) => process.stdout.write(`[scheduler-bench] ${line}\n`);
  let database: Database;
  let dropDb: (() => Promise<void>) | undefined;
  if (process.env.DATABASE_URL) {
    const fresh = await createFreshDatabase();
    dropDb = fresh.drop;
    database = await openDatabase({ databaseUrl: fresh.url, dataDir: mkdtempSync(join(tmpdir(), "orca-bench-")), logger: createLogger({ level: "silent" }), poolSize: 20 });
  } else {
    database = await openMemoryDatabase();
  }
  const harnesses: ServiceHarness[] = [];
  let target = "stub Orchestrator over gRPC";
  let orch: ServiceHarness | undefined;
  if (!forceStub) {
    const module = await realOrchestrator();
    if (module) {
      try {
        orch = await startServiceHarness(module, { database });
        await orch.client(OrchestratorService).registerWorkflow({ name: "bench", tasks: [{ id: "t", plugin: "noop" }] });
        target = "real Orchestrator (no-op task, fake allow-all policy)";
      } catch (error) {
        log(`real Orchestrator not usable (${ConnectError.from(error).code === Code.Unimplemented ? "Unimplemented" : (error as Error).message}); using the stub`);
        await orch?.stop();
        orch = undefined;
      }
    }
  }
  orch ??= await startServiceHarness(stubOrchestrator(), { database });
  harnesses.push(orch);
  log(`target: ${target}; database: ${database.kind}; schedules: ${SCHEDULES}`);

  const saved = process.env.ORCA_SCHEDULER_MIN_INTERVAL_MS;
  const scheduler = await startServiceHarness(createSchedulerModule({ elector: () => new SoleFirer() }), { database, peers: { orchestrator: orch.url } });
  if (saved === undefined) delete process.env.ORCA_SCHEDULER_MIN_INTERVAL_MS;
  harnesses.push(scheduler);
  const client = scheduler.client(SchedulerService);

  // Spread: full run 2,000 schedules every minute + 8,000 every two minutes = 100 fires/s;
  // smoke: 200 schedules every two seconds = 100 fires/s.
  const cronFor = (i: number) => {
    if (smoke) return `${i % 2}-59/2 * * * * *`;
    if (i < 2000) return `${i % 60} * * * * *`;
    const j = i - 2000;
    return `${j % 60} ${Math.floor(j / 60) % 2}-59/2 * * * *`;
  };
  const createStart = Date.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: 32 }, async () => {
      while (next < SCHEDULES) {
        const i = next++;
        await client.createSchedule({ schedule: { name: `bench-${i}`, cron: cronFor(i), workflowName: "bench", overlapPolicy: OverlapPolicy.ALLOW_ALL } });
        if ((i + 1) % 1000 === 0) log(`created ${i + 1} schedules`);
      }
    }),
  );
  log(`created ${SCHEDULES} schedules in ${((Date.now() - createStart) / 1000).toFixed(1)} s`);

  const from = Date.now() + 2000;
  const to = from + measureSeconds * 1000;
  while (Date.now() < to + 3000) {
    await new Promise((r) => setTimeout(r, Math.min(10_000, to + 3000 - Date.now())));
    const { count } = (await database.db.withSchema("orca_scheduler").selectFrom("firings").select((eb) => eb.fn.countAll<string>().as("count")).executeTakeFirstOrThrow()) as { count: string };
    log(`t+${Math.round((Date.now() - from) / 1000)} s: ${count} firings recorded`);
  }
  const rows = await database.db
    .withSchema("orca_scheduler")
    .selectFrom("firings")
    .select(["scheduled_time", "actual_time", "outcome", "kind"])
    .where("scheduled_time", ">=", new Date(from))
    .where("scheduled_time", "<", new Date(to))
    .execute();
  const started = rows.filter((r) => r.actual_time);
  const lateness = started.map((r) => (r.actual_time as Date).getTime() - (r.scheduled_time as Date).getTime()).sort((a, b) => a - b);
  const expectedPerSecond = 100;
  const result = {
    target,
    database: database.kind,
    schedules: SCHEDULES,
    measureSeconds,
    expectedFirings: expectedPerSecond * measureSeconds,
    firings: rows.length,
    started: started.length,
    catchup: rows.filter((r) => r.kind === FiringKind.CATCHUP).length,
    latenessMs: { p50: percentile(lateness, 50), p90: percentile(lateness, 90), p99: percentile(lateness, 99), max: lateness[lateness.length - 1] },
  };
  for (const h of harnesses.reverse()) await h.stop().catch(() => undefined);
  await database.close();
  await dropDb?.();

  console.table([{ target: result.target, db: result.database, schedules: result.schedules, seconds: measureSeconds, expected: result.expectedFirings, firings: result.firings, started: result.started, catchup: result.catchup, "p50 ms": result.latenessMs.p50, "p90 ms": result.latenessMs.p90, "p99 ms": result.latenessMs.p99, "max ms": result.latenessMs.max }]);
  mkdirSync(join(here, "..", "results"), { recursive: true });
  const file = join(here, "..", "results", `scheduler-${new Date().toISOString().replace(/:/g, "-")}.json`);
  writeFileSync(file, JSON.stringify(result, null, 2));
  log(`wrote ${file}`);
  process.exit(0);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
