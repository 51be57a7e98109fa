import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { LockService } from "../../gen/orca/lock/v1/lock_pb.js";
import { OrchestratorService, RunStatus } from "../../gen/orca/orchestrator/v1/orchestrator_pb.js";
import { FiringOutcome, OverlapPolicy, SchedulerService, TriggerDispatchState } from "../../gen/orca/scheduler/v1/scheduler_pb.js";
import { openDatabase, type Database } from "../../services/kit/db/database.js";
import { createLogger } from "../../services/kit/telemetry/logger.js";
import { lockService } from "../../services/lock/index.js";
import { orchestratorService } from "../../services/orchestrator/index.js";
import { FIRER_RESOURCE, LockLeaderElector } from "../../services/scheduler/adapters.js";
import type { ServiceModule } from "../../services/kit/service-module.js";
import { createSchedulerModule } from "../../services/scheduler/index.js";
import { createFreshDatabase, postgresAvailable } from "../support/postgres.js";
import { startServiceHarness, type ServiceHarness } from "../support/service-harness.js";
import { FakeAlwaysLeader, FakeRunStarter, fakeOrchestratorModule, startScheduler, waitFor, withEnv } from "./support.js";

// Two (three, over time) Scheduler replicas on one Postgres, elected through the REAL Lock
// service; StartRun goes over gRPC to a FAKE Orchestrator (in-memory, honours idempotency keys),
// since the real one is being built. The leader is killed twice (lease NOT released, as in a
// crash): the next replica takes over within the lease TTL and catches up.

const TTL_MS = 1500;
const env = { ORCA_SCHEDULER_LEADER_TTL_MS: String(TTL_MS) };

describe.skipIf(!postgresAvailable)("replicas with the real Lock service (Postgres)", () => {
  let fresh: Awaited<ReturnType<typeof createFreshDatabase>>;
  let database: Database;
  let lock: ServiceHarness;
  let orchestrator: ServiceHarness;
  const fake = new FakeRunStarter();
  const replicas: ServiceHarness[] = [];

  beforeAll(async () => {
    fresh = await createFreshDatabase();
    database = await openDatabase({ databaseUrl: fresh.url, dataDir: mkdtempSync(join(tmpdir(), "orca-sched-")), logger: createLogger({ level: "silent" }) });
    lock = await withEnv({ ORCA_LOCK_REAPER_INTERVAL_MS: "100" }, () => startServiceHarness(lockService, { database }));
    orchestrator = await startServiceHarness(fakeOrchestratorModule(fake), { database });
  });
  afterAll(async () => {
    for (const r of replicas) await r.stop().catch(() => undefined);
    await orchestrator?.stop();
    await lock?.stop();
    await database?.close();
    await fresh?.drop();
  });

  /** A replica whose elector does not release its lease on stop: stopping it is a crash for the election. */
  const crashable = () =>
    createSchedulerModule({
      elector: (ctx) => new LockLeaderElector(ctx.clients.client("lock", LockService), { ttlMs: TTL_MS, owner: `replica-${replicas.length}`, logger: ctx.logger, releaseOnStop: false }),
    });
  const start = async () => {
    const r = await startScheduler(crashable(), database, { lock: lock.url, orchestrator: orchestrator.url }, env);
    replicas.push(r);
    return r;
  };
  const holder = async () => (await lock.client(LockService).getLock({ resource: FIRER_RESOURCE })).lock?.holders[0]?.owner;

  it("kills the leader twice: zero double fires and zero missed fires", async () => {
    const a = await start();
    await waitFor("replica-0 to lead", async () => (await holder()) === "replica-0");
    const b = await start();
    const client = a.client(SchedulerService);
    const ids: string[] = [];
    for (let i = 0; i < 8; i++) {
      const { schedule } = await client.createSchedule({ schedule: { name: `s${i}`, cron: "* * * * * *", workflowName: "wf", overlapPolicy: OverlapPolicy.ALLOW_ALL } });
      ids.push(schedule!.id);
    }
    await new Promise((r) => setTimeout(r, 2500));
    await a.stop(); // crash of the leader: its lease lapses after the TTL
    await waitFor("replica-1 to take over", async () => (await holder()) === "replica-1", TTL_MS * 4);
    const c = await start();
    await new Promise((r) => setTimeout(r, 2500));
    await b.stop();
    await waitFor("replica-2 to take over", async () => (await holder()) === "replica-2", TTL_MS * 4);
    await new Promise((r) => setTimeout(r, 2500));
    const cc = c.client(SchedulerService);
    for (const id of ids) await cc.pauseSchedule({ id, note: "end of test" });
    // Let the firer finish what it materialized.
    await waitFor("no pending firings", async () => {
      const { firings } = await cc.listFirings({ outcomes: [FiringOutcome.PENDING], pageSize: 1 });
      return firings.length === 0;
    });

    let total = 0;
    for (const id of ids) {
      const { firings } = await cc.listFirings({ scheduleId: id, pageSize: 1000 });
      const times = firings.map((f) => Number(f.scheduledTime!.seconds)).sort((x, y) => x - y);
      // Every second from the first to the last fire time is there exactly once (no gap, no double).
      expect(new Set(times).size).toBe(times.length);
      expect(times[times.length - 1] - times[0] + 1).toBe(times.length);
      expect(firings.every((f) => f.outcome === FiringOutcome.STARTED && f.runId !== "")).toBe(true);
      expect(new Set(firings.map((f) => f.runId)).size).toBe(firings.length);
      total += firings.length;
    }
    expect(total).toBeGreaterThanOrEqual(8 * 6);
    // One run per fire time at the Orchestrator (keys are unique per (schedule, time)).
    const keys = [...fake.byKey.keys()].filter((k) => k.startsWith("orca-schedule/"));
    expect(keys.length).toBe(total);
    // Firings materialized during the outage were caught up (kind CATCHUP) rather than missed.
    const { firings: missed } = await cc.listFirings({ outcomes: [FiringOutcome.MISSED] });
    expect(missed).toHaveLength(0);
    process.stdout.write(`replicas: ${total} fire times over 3 replicas and 2 leader crashes; StartRun calls per key max ${Math.max(...fake.calls.values())}\n`);
  }, 60_000);
});

describe.skipIf(!postgresAvailable)("against the real Orchestrator (skips while it answers Unimplemented)", () => {
  it("a schedule and an event trigger start real one-task runs", async (ctx) => {
    const fresh = await createFreshDatabase();
    const database = await openDatabase({ databaseUrl: fresh.url, dataDir: mkdtempSync(join(tmpdir(), "orca-sched-")), logger: createLogger({ level: "silent" }) });
    const harnesses: ServiceHarness[] = [];
    try {
      // The colleague's module may not offer overrides yet: load it at run time and fall back to the stub.
      const orchestratorModule = (await import("../../services/orchestrator/index.js")) as Record<string, unknown>;
      const createOrchestratorModule = orchestratorModule.createOrchestratorModule as ((o: unknown) => ServiceModule) | undefined;
      // FAKE policy gate (allow) and a no-op plugin, so no Policy service is needed for this test.
      const fakeAllowPolicy = { decide: async () => ({ effect: "ALLOW", reasons: [], delayMs: 0, bundleName: "fake", bundleVersion: "0", decisionId: "fake", cached: false, divertTarget: "" }) };
      const noopPlugin = { name: "noop", validate: () => [], execute: async () => ({ ok: true }) };
      const module = createOrchestratorModule ? createOrchestratorModule({ extraPlugins: [noopPlugin], policy: () => fakeAllowPolicy }) : orchestratorService;
      const orch = await startServiceHarness(module, { database });
      harnesses.push(orch);
      const orchClient = orch.client(OrchestratorService);
      try {
        await orchClient.listWorkflows({});
      } catch (error) {
        if (ConnectError.from(error).code === Code.Unimplemented) {
          process.stdout.write(`scheduler: skipping the real-Orchestrator test: ${ConnectError.from(error).rawMessage}\n`);
          ctx.skip();
          return;
        }
        throw error;
      }
      await orchClient.registerWorkflow({ name: "sched-e2e", tasks: [{ id: "t", plugin: "noop" }] });
      const sched = await startScheduler(createSchedulerModule({ elector: () => new FakeAlwaysLeader() }), database, { orchestrator: orch.url }, env);
      harnesses.push(sched);
      const client = sched.client(SchedulerService);
      const { schedule } = await client.createSchedule({ schedule: { name: "e2e", cron: "* * * * * *", workflowName: "sched-e2e", overlapPolicy: OverlapPolicy.ALLOW_ALL } });
      const firings = await waitFor("two started firings", async () => {
        const { firings } = await client.listFirings({ scheduleId: schedule!.id, outcomes: [FiringOutcome.STARTED] });
        return firings.length >= 2 && firings;
      });
      await client.pauseSchedule({ id: schedule!.id });
      const { run } = await orchClient.getRun({ runId: firings[0].runId });
      expect(run?.idempotencyKey).toBe(`orca-schedule/${schedule!.id}/${Number(firings[0].scheduledTime!.seconds) * 1000}`);
      await waitFor("the run to succeed", async () => (await orchClient.getRun({ runId: firings[0].runId })).run?.status === RunStatus.SUCCEEDED);

      await client.createTrigger({ trigger: { eventType: "ping", filter: "event.payload.n > 1.0", workflowName: "sched-e2e", enabled: true } });
      const published = await client.publishEvent({ type: "ping", idempotencyKey: "p1", payload: { n: 2 } });
      expect(published.dispatches[0]).toMatchObject({ state: TriggerDispatchState.STARTED });
      expect((await orchClient.getRun({ runId: published.dispatches[0].runId })).run?.idempotencyKey).toBe(`orca-event/${published.event!.id}/${published.dispatches[0].triggerId}`);
    } finally {
      for (const h of harnesses.reverse()) await h.stop().catch(() => undefined);
      await database.close();
      await fresh.drop();
    }
  }, 60_000);
});
