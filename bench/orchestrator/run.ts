/**
 * Orchestrator benchmark: no-op tasks per second through the whole path (StartRun, run start,
 * claim with FOR UPDATE SKIP LOCKED, execute, complete with the exactly-once insert, dependents
 * made READY, next claim), for
 *   1. fan-out: one run of a root + 9,999 no-op children (--smoke: a root + 499); the DAG size
 *      limit is raised for it with ORCA_ORCHESTRATOR_MAX_TASKS=10000 (the default is 1,000),
 *   2. M small runs of three chained no-op tasks (M = 1,000; --smoke: 50),
 * with p50/p99 from READY to the attempt's start (database timestamps). The same Postgres then
 * runs graphile-worker with an equivalent no-op job (N jobs at once; M chains of 3 jobs, each
 * job adding the next), and the ratio is reported. graphile-worker is not a dependency: install
 * it for the bench only (`npm i --no-save graphile-worker@0.16`); without it that part is skipped.
 *
 * Policy is the in-memory allow-all fake (this measures the executor, not a Policy round trip);
 * Lock and Cache are not used by no-op tasks.
 *
 *   DATABASE_URL=postgres://... npx tsx bench/orchestrator/run.ts [--smoke]
 * Output: progress lines, a table, and JSON in bench/results/orchestrator-<iso>.json.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import pg from "pg";
import { OrchestratorService, RunStatus } from "../../gen/orca/orchestrator/v1/orchestrator_pb.js";
import { openDatabase } from "../../services/kit/db/database.js";
import { createLogger } from "../../services/kit/telemetry/logger.js";
import { createOrchestratorModule } from "../../services/orchestrator/index.js";
import type { Plugin } from "../../services/orchestrator/plugins/types.js";
import { startServiceHarness } from "../../test/support/service-harness.js";
import type { PolicyGate } from "../../services/orchestrator/deps.js";

const smoke = process.argv.includes("--smoke");
const FAN_RUNS = 1;
const FAN_WIDTH = smoke ? 499 : 9_999;
const FAN = FAN_RUNS * (FAN_WIDTH + 1);
const RUNS = smoke ? 50 : 1_000;
const log = (msg: string) => process.stdout.write(`[bench] ${msg}\n`);

const base = process.env.DATABASE_URL;
if (!base) {
  process.stderr.write("DATABASE_URL is required\n");
  process.exit(2);
}

async function freshDb(): Promise<{ url: string; drop: () => Promise<void> }> {
  const name = `orca_bench_${randomBytes(5).toString("hex")}`;
  const admin = new pg.Client({ connectionString: base });
  await admin.connect();
  await admin.query(`create database ${name}`);
  await admin.end();
  const url = new URL(base!);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    drop: async () => {
      const c = new pg.Client({ connectionString: base });
      await c.connect();
      await c.query(`drop database if exists ${name} with (force)`);
      await c.end();
    },
  };
}

const noop: Plugin = { name: "bench.noop", validate: () => [], execute: async () => ({}) };
const allowAll: PolicyGate = {
  decide: async () => ({ effect: "ALLOW", reasons: [], delayMs: 0, bundleName: "bench", bundleVersion: "0", decisionId: "", cached: false, divertTarget: "" }),
};

function pct(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

interface Row {
  system: string;
  scenario: string;
  tasks: number;
  seconds: number;
  tasksPerSecond: number;
  p50ReadyToStartMs: number;
  p99ReadyToStartMs: number;
}

async function orchestratorBench(url: string): Promise<Row[]> {
  const logger = createLogger({ level: "warn" });
  const database = await openDatabase({ databaseUrl: url, dataDir: "", logger, poolSize: 20 });
  const env = {
    ORCA_ORCHESTRATOR_MAX_CONCURRENCY: "500",
    ORCA_ORCHESTRATOR_POLL_INTERVAL_MS: "100",
    ORCA_ORCHESTRATOR_MAINTENANCE_INTERVAL_MS: "1000",
    ORCA_ORCHESTRATOR_MAX_TASKS: String(FAN_WIDTH + 1),
  };
  const module = createOrchestratorModule({ extraPlugins: [noop], policy: () => allowAll, env });
  const h = await startServiceHarness(module, { database, env, logger });
  const client = h.client(OrchestratorService);
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  const latency = async (where: string) => {
    const res = await db.query(`select extract(epoch from (a.started_at - t.ready_at)) * 1000 as ms
      from orca_orchestrator.attempts a join orca_orchestrator.task_runs t on t.run_id = a.run_id and t.task_id = a.task_id
      join orca_orchestrator.runs r on r.id = t.run_id where a.number = 1 and ${where}`);
    return res.rows.map((r) => Number(r.ms)).sort((a, b) => a - b);
  };
  const waitAll = async (where: string, total: number, label: string) => {
    for (;;) {
      const res = await db.query(`select count(*) filter (where status in ('SUCCEEDED','FAILED','CANCELLED','TIMED_OUT'))::int as done,
        (select count(*)::int from orca_orchestrator.task_runs t join orca_orchestrator.runs r on r.id = t.run_id where ${where} and t.status = 'SUCCEEDED') as tasks
        from orca_orchestrator.runs r where ${where}`);
      const { done, tasks } = res.rows[0];
      log(`${label}: ${tasks} tasks succeeded, ${done}/${total} runs final`);
      if (done >= total) return;
      await new Promise((r) => setTimeout(r, 1000));
    }
  };
  const rows: Row[] = [];
  try {
    // 1. Fan-out.
    await client.registerWorkflow({
      name: "fan",
      maxParallelism: 1000,
      tasks: [{ id: "root", plugin: "bench.noop" }, ...Array.from({ length: FAN_WIDTH }, (_, i) => ({ id: `c${i}`, plugin: "bench.noop", dependsOn: ["root"] }))],
    });
    let t0 = performance.now();
    const fanIds = await Promise.all(Array.from({ length: FAN_RUNS }, async () => (await client.startRun({ workflowName: "fan" })).run!.id));
    await waitAll(`r.workflow_name = 'fan'`, FAN_RUNS, `fan-out ${FAN}`);
    let secs = (performance.now() - t0) / 1000;
    for (const id of fanIds) {
      const fanRun = (await client.getRun({ runId: id })).run!;
      if (fanRun.status !== RunStatus.SUCCEEDED) throw new Error(`fan-out run ended ${RunStatus[fanRun.status]}`);
    }
    let lat = await latency(`r.workflow_name = 'fan'`);
    rows.push({ system: "orca", scenario: `fan-out ${FAN}`, tasks: FAN, seconds: secs, tasksPerSecond: FAN / secs, p50ReadyToStartMs: pct(lat, 50), p99ReadyToStartMs: pct(lat, 99) });

    // 2. Small runs.
    await client.registerWorkflow({
      name: "small",
      tasks: [
        { id: "a", plugin: "bench.noop" },
        { id: "b", plugin: "bench.noop", dependsOn: ["a"] },
        { id: "c", plugin: "bench.noop", dependsOn: ["b"] },
      ],
    });
    t0 = performance.now();
    for (let i = 0; i < RUNS; i += 50) {
      await Promise.all(Array.from({ length: Math.min(50, RUNS - i) }, () => client.startRun({ workflowName: "small" })));
    }
    await waitAll(`r.workflow_name = 'small'`, RUNS, `${RUNS} small runs`);
    secs = (performance.now() - t0) / 1000;
    lat = await latency(`r.workflow_name = 'small'`);
    rows.push({ system: "orca", scenario: `${RUNS} runs x 3 chained`, tasks: RUNS * 3, seconds: secs, tasksPerSecond: (RUNS * 3) / secs, p50ReadyToStartMs: pct(lat, 50), p99ReadyToStartMs: pct(lat, 99) });
  } finally {
    await db.end();
    await h.stop();
    await database.close();
  }
  return rows;
}

async function graphileBench(url: string): Promise<Row[] | string> {
  // Not a dependency (installed with --no-save for the bench), so typed loosely here.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  let gw: any;
  try {
    gw = await import("graphile-worker" as string);
  } catch {
    return "graphile-worker is not installed (npm i --no-save graphile-worker@0.16); skipped";
  }
  const rows: Row[] = [];
  const latencies: number[] = [];
  let processed = 0;
  let expected = 0;
  let resolveDone!: () => void;
  const taskList = {
    noop: async (payload: unknown, helpers: { job: { run_at: Date } }) => {
      latencies.push(Date.now() - new Date(helpers.job.run_at).getTime());
      if (++processed >= expected) resolveDone();
    },
    chain: async (payload: unknown, helpers: { job: { run_at: Date }; addJob: (t: string, p: unknown) => Promise<unknown> }) => {
      latencies.push(Date.now() - new Date(helpers.job.run_at).getTime());
      const step = (payload as { step: number }).step;
      if (step < 3) await helpers.addJob("chain", { step: step + 1 });
      if (++processed >= expected) resolveDone();
    },
  };
  const runner = await gw.run({ connectionString: url, concurrency: 100, noHandleSignals: true, pollInterval: 100, taskList: taskList as never, logger: new gw.Logger(() => () => undefined) });
  const utils = await gw.makeWorkerUtils({ connectionString: url });
  try {
    const scenario = async (label: string, total: number, enqueue: () => Promise<void>) => {
      processed = 0;
      expected = total;
      latencies.length = 0;
      const done = new Promise<void>((r) => (resolveDone = r));
      const t0 = performance.now();
      await enqueue();
      const timer = setInterval(() => log(`graphile ${label}: ${processed}/${total} jobs`), 1000);
      await done;
      clearInterval(timer);
      const secs = (performance.now() - t0) / 1000;
      const sorted = [...latencies].sort((a, b) => a - b);
      rows.push({ system: "graphile-worker", scenario: label, tasks: total, seconds: secs, tasksPerSecond: total / secs, p50ReadyToStartMs: pct(sorted, 50), p99ReadyToStartMs: pct(sorted, 99) });
    };
    await scenario(`fan-out ${FAN}`, FAN, async () => {
      for (let i = 0; i < FAN; i += 1000) {
        const n = Math.min(1000, FAN - i);
        await utils.withPgClient((c: pg.ClientBase) => c.query(`select graphile_worker.add_job('noop', '{}'::json) from generate_series(1, $1)`, [n]));
      }
    });
    await scenario(`${RUNS} runs x 3 chained`, RUNS * 3, async () => {
      for (let i = 0; i < RUNS; i++) await utils.addJob("chain", { step: 1 });
    });
  } finally {
    await utils.release();
    await runner.stop();
  }
  return rows;
}

const started = new Date();
log(`mode ${smoke ? "smoke" : "full"}: fan-out ${FAN}, ${RUNS} small runs; cpus shared with other work, numbers are indicative`);
const a = await freshDb();
let orca: Row[];
try {
  orca = await orchestratorBench(a.url);
} finally {
  await a.drop();
}
const b = await freshDb();
let graphile: Row[] | string;
try {
  graphile = await graphileBench(b.url);
} finally {
  await b.drop();
}
const rows = [...orca, ...(typeof graphile === "string" ? [] : graphile)];
const ratios = orca.map((o) => {
  const g = typeof graphile === "string" ? undefined : graphile.find((x) => x.scenario === o.scenario);
  return { scenario: o.scenario, orcaOverGraphile: g ? o.tasksPerSecond / g.tasksPerSecond : null };
});
const fmt = (n: number) => (Number.isFinite(n) ? n.toFixed(n < 10 ? 2 : 0) : "-");
process.stdout.write("\nsystem           scenario                    tasks   seconds  tasks/s  p50 ready->start ms  p99 ms\n");
for (const r of rows) {
  process.stdout.write(`${r.system.padEnd(16)} ${r.scenario.padEnd(26)} ${String(r.tasks).padStart(6)} ${fmt(r.seconds).padStart(9)} ${fmt(r.tasksPerSecond).padStart(8)} ${fmt(r.p50ReadyToStartMs).padStart(20)} ${fmt(r.p99ReadyToStartMs).padStart(7)}\n`);
}
for (const r of ratios) process.stdout.write(`ratio orca/graphile (tasks/s), ${r.scenario}: ${r.orcaOverGraphile === null ? "n/a" : r.orcaOverGraphile.toFixed(2)}\n`);
if (typeof graphile === "string") process.stdout.write(`${graphile}\n`);
mkdirSync("bench/results", { recursive: true });
const file = `bench/results/orchestrator-${started.toISOString().replace(/:/g, "-")}.json`;
writeFileSync(file, JSON.stringify({ started: started.toISOString(), smoke, rows, ratios, graphile: typeof graphile === "string" ? graphile : "ran" }, null, 2));
log(`wrote ${file}`);
