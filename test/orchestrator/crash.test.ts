import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { OrchestratorService } from "../../gen/orca/orchestrator/v1/orchestrator_pb.js";
import { createFreshDatabase, postgresAvailable } from "../support/postgres.js";

/**
 * The crash test: the Orchestrator runs in a child process and is SIGKILLed at random points
 * while 200 small runs execute; it is restarted each time. Afterwards every run must be final
 * (SUCCEEDED: every task eventually succeeds) and every task's success must be recorded exactly
 * once: one completions row, one SUCCEEDED attempt, one TASK_SUCCEEDED event, and a gap-free
 * event log per run. Runs are started with idempotency keys, so a StartRun cut by a kill is
 * simply repeated.
 */
const RUNS = 200;
const ms = (n: number) => ({ seconds: BigInt(Math.floor(n / 1000)), nanos: (n % 1000) * 1e6 });

interface Proc {
  child: ChildProcess;
  client: Client<typeof OrchestratorService>;
}

async function startProcess(databaseUrl: string): Promise<Proc> {
  const child = spawn(process.execPath, ["--import", "tsx", "test/orchestrator/fixtures/orchestrator-process.ts"], {
    env: {
      ...process.env,
      DATABASE_URL: databaseUrl,
      LOG_LEVEL: "error",
      ORCA_ORCHESTRATOR_POLL_INTERVAL_MS: "50",
      ORCA_ORCHESTRATOR_MAINTENANCE_INTERVAL_MS: "100",
      ORCA_ORCHESTRATOR_MAX_CONCURRENCY: "32",
    },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const line = await new Promise<string>((resolve, reject) => {
    const rl = createInterface({ input: child.stdout! });
    rl.once("line", resolve);
    child.once("exit", (code) => reject(new Error(`orchestrator process exited early (${code})`)));
  });
  const { url } = JSON.parse(line) as { url: string };
  return { child, client: createClient(OrchestratorService, createGrpcTransport({ baseUrl: url })) };
}

function kill(p: Proc): Promise<void> {
  return new Promise((resolve) => {
    if (p.child.exitCode !== null || p.child.signalCode !== null) return resolve();
    p.child.once("exit", () => resolve());
    p.child.kill("SIGKILL");
  });
}

describe.skipIf(!postgresAvailable)("crash test: SIGKILL the Orchestrator during 200 runs", () => {
  let fresh: { url: string; drop: () => Promise<void> };
  let proc: Proc | undefined;
  beforeAll(async () => {
    fresh = await createFreshDatabase();
  });
  afterAll(async () => {
    if (proc) await kill(proc);
    await fresh?.drop();
  });

  it("every run reaches a final state and each success is recorded exactly once", { timeout: 150_000 }, async () => {
    proc = await startProcess(fresh.url);
    const retry = { maxAttempts: 20, initialBackoff: ms(50), maxBackoff: ms(500) };
    const timeouts = { heartbeat: ms(1000) };
    await proc.client.registerWorkflow({
      name: "crashy",
      maxParallelism: 4,
      defaults: { retry, timeouts },
      tasks: [
        { id: "a", plugin: "test.sleep", config: { ms: "${input.ms}" } },
        { id: "b", plugin: "test.sleep", config: { ms: 20 }, dependsOn: ["a"] },
        { id: "c", plugin: "test.noop", dependsOn: ["a"] },
        { id: "d", plugin: "test.sleep", config: { ms: 10 }, dependsOn: ["b", "c"] },
      ],
    });
    let submitted = 0;
    let kills = 0;
    const deadline = Date.now() + 120_000;
    const db = new pg.Client({ connectionString: fresh.url });
    await db.connect();
    try {
      for (;;) {
        const killAt = Date.now() + 200 + Math.random() * 1000;
        // Submit while the clock runs; a call cut by the kill is repeated (idempotency key).
        while (Date.now() < killAt && submitted < RUNS) {
          try {
            await proc.client.startRun({ workflowName: "crashy", idempotencyKey: `run-${submitted}`, input: { ms: 5 + (submitted % 7) * 5 } });
            submitted++;
          } catch {
            break;
          }
        }
        if (Date.now() < killAt) await new Promise((r) => setTimeout(r, killAt - Date.now()));
        const open = await db.query(`select count(*)::int as n from orca_orchestrator.runs where status not in ('SUCCEEDED','FAILED','CANCELLED','TIMED_OUT')`);
        if (submitted >= RUNS && open.rows[0].n === 0) break;
        if (Date.now() > deadline) throw new Error(`not finished in time: ${submitted} submitted, ${open.rows[0].n} open`);
        if (kills < 10) {
          await kill(proc);
          kills++;
          proc = await startProcess(fresh.url);
        }
      }
      const runs = await db.query(`select status, count(*)::int as n from orca_orchestrator.runs group by status`);
      expect(Object.fromEntries(runs.rows.map((r) => [r.status, r.n]))).toEqual({ SUCCEEDED: RUNS });
      const tasks = await db.query(`select status, count(*)::int as n from orca_orchestrator.task_runs group by status`);
      expect(Object.fromEntries(tasks.rows.map((r) => [r.status, r.n]))).toEqual({ SUCCEEDED: RUNS * 4 });
      const completions = await db.query(`select count(*)::int as n, count(distinct (run_id, task_id))::int as d from orca_orchestrator.completions`);
      expect(completions.rows[0]).toEqual({ n: RUNS * 4, d: RUNS * 4 });
      const dupAttempts = await db.query(`select run_id, task_id, count(*) from orca_orchestrator.attempts where status = 'SUCCEEDED' group by 1, 2 having count(*) <> 1`);
      expect(dupAttempts.rows).toEqual([]);
      const successEvents = await db.query(`select count(*)::int as n, count(distinct (run_id, task_id))::int as d from orca_orchestrator.run_events where type = 'TASK_SUCCEEDED'`);
      expect(successEvents.rows[0]).toEqual({ n: RUNS * 4, d: RUNS * 4 });
      const completionMatchesAttempt = await db.query(`select count(*)::int as n from orca_orchestrator.completions c
        join orca_orchestrator.attempts a on a.run_id = c.run_id and a.task_id = c.task_id and a.number = c.attempt and a.status = 'SUCCEEDED'`);
      expect(completionMatchesAttempt.rows[0].n).toBe(RUNS * 4);
      const gaps = await db.query(`select r.id from orca_orchestrator.runs r
        where r.last_seq <> (select count(*) from orca_orchestrator.run_events e where e.run_id = r.id)
           or r.last_seq <> (select max(seq) from orca_orchestrator.run_events e where e.run_id = r.id)`);
      expect(gaps.rows).toEqual([]);
      const finals = await db.query(`select run_id from orca_orchestrator.run_events where type like 'RUN_SUCCEEDED' group by run_id having count(*) <> 1`);
      expect(finals.rows).toEqual([]);
      const created = await db.query(`select count(*)::int as n from orca_orchestrator.run_events where type = 'RUN_CREATED'`);
      expect(created.rows[0].n).toBe(RUNS);
      // The kills did hit running work: some leases lapsed and were retried.
      const lapsed = await db.query(`select count(*)::int as n from orca_orchestrator.attempts where error->>'kind' = 'timeout.heartbeat'`);
      expect(kills).toBeGreaterThanOrEqual(3);
      expect(lapsed.rows[0].n).toBeGreaterThan(0);
      process.stdout.write(`crash test: ${kills} kills, ${lapsed.rows[0].n} lapsed leases retried\n`);
    } finally {
      await db.end();
    }
  });
});
