import { sql } from "kysely";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { DstRepeatedPolicy, DstSkippedPolicy, FiringKind, FiringOutcome, OverlapPolicy } from "../../gen/orca/scheduler/v1/scheduler_pb.js";
import { openMemoryDatabase, type Database } from "../../services/kit/db/database.js";
import type { ScheduleFields, Scheduler } from "../../services/scheduler/scheduler.js";
import { domainScheduler, FakeRunStarter } from "./support.js";

// Domain tests of the firer on PGlite with a FAKE RunStarter (in-memory Orchestrator) and a
// controllable clock: tick() is called by hand, so no timing is involved.

const T0 = Date.parse("2026-05-01T12:00:00Z");

function fields(over: Partial<ScheduleFields> = {}): ScheduleFields {
  return {
    name: "every-10s",
    cron: "*/10 * * * * *",
    timezone: "UTC",
    dstSkipped: DstSkippedPolicy.RUN_AT_NEXT_VALID_TIME,
    dstRepeated: DstRepeatedPolicy.RUN_ONCE_FIRST,
    jitterMs: 0,
    overlap: OverlapPolicy.ALLOW_ALL,
    catchupMs: 60_000,
    workflowName: "wf",
    workflowVersion: 0,
    input: { hello: "world" },
    ...over,
  };
}

let database: Database;
let runs: FakeRunStarter;
let clock: { now: number };
let scheduler: Scheduler;

// One PGlite for the file (migrated once), emptied before each test: fast and isolated.
beforeAll(async () => {
  database = await openMemoryDatabase();
});
afterAll(async () => {
  await database.close();
});
beforeEach(async () => {
  await sql`truncate orca_scheduler.schedules, orca_scheduler.firings, orca_scheduler.triggers, orca_scheduler.published_events, orca_scheduler.trigger_dispatches`.execute(database.db).catch(() => undefined);
  await sql`update orca_scheduler.fence set token = 0`.execute(database.db).catch(() => undefined);
  runs = new FakeRunStarter();
  clock = { now: T0 };
  ({ scheduler } = await domainScheduler(database, runs, clock));
});

async function firings(id: string) {
  const page = await scheduler.listFirings({ scheduleId: id, tenant: "", outcomes: [] }, undefined, 1000);
  return page.items.slice().reverse();
}

describe("firing (fake RunStarter, fake clock)", () => {
  it("fires each cron time once with the contract's idempotency key, also when ticked twice", async () => {
    const s = await scheduler.createSchedule("", fields());
    for (const d of [10_000, 20_000, 30_000]) {
      clock.now = T0 + d;
      await scheduler.tick(1n);
      await scheduler.tick(1n);
    }
    const got = await firings(s.id);
    expect(got.map((f) => f.scheduled_time.getTime())).toEqual([T0 + 10_000, T0 + 20_000, T0 + 30_000]);
    expect(got.every((f) => f.outcome === FiringOutcome.STARTED && f.kind === FiringKind.SCHEDULED)).toBe(true);
    expect([...runs.calls.keys()].sort()).toEqual([10_000, 20_000, 30_000].map((d) => `orca-schedule/${s.id}/${T0 + d}`));
    expect([...runs.calls.values()].every((n) => n === 1)).toBe(true);
  });

  it("a stale firer (lower fencing token) cannot write after a newer one", async () => {
    await scheduler.createSchedule("", fields());
    clock.now = T0 + 10_000;
    await scheduler.tick(5n);
    clock.now = T0 + 20_000;
    await expect(scheduler.tick(4n)).rejects.toThrow(/fencing token/);
  });

  it("catch-up after downtime: within the window CATCHUP, older MISSED, then on time again", async () => {
    const s = await scheduler.createSchedule("", fields({ catchupMs: 25_000 }));
    // The Scheduler was down for 60 s: six fire times passed.
    clock.now = T0 + 60_000;
    await scheduler.tick(1n);
    const got = await firings(s.id);
    const by = (o: FiringOutcome) => got.filter((f) => f.outcome === o).map((f) => (f.scheduled_time.getTime() - T0) / 1000);
    expect(by(FiringOutcome.MISSED)).toEqual([10, 20, 30]);
    // 40 and 50 s are 20 and 10 s late: caught up (kind CATCHUP); 60 s is on time.
    expect(got.filter((f) => f.kind === FiringKind.CATCHUP && f.outcome === FiringOutcome.STARTED).map((f) => (f.scheduled_time.getTime() - T0) / 1000)).toEqual([40, 50]);
    expect(got.filter((f) => f.kind === FiringKind.SCHEDULED).map((f) => (f.scheduled_time.getTime() - T0) / 1000)).toEqual([60]);
    expect(runs.runs.size).toBe(3);
  });

  it("catch-up window zero: missed times are never fired", async () => {
    const s = await scheduler.createSchedule("", fields({ catchupMs: 0 }));
    clock.now = T0 + 30_000 + 6000; // > late threshold (5 s) past 30 s
    await scheduler.tick(1n);
    const got = await firings(s.id);
    expect(got.map((f) => f.outcome)).toEqual([FiringOutcome.MISSED, FiringOutcome.MISSED, FiringOutcome.MISSED]);
    expect(runs.runs.size).toBe(0);
  });

  it("pause: times passing while paused are neither fired nor recorded; resume fires from now", async () => {
    const s = await scheduler.createSchedule("", fields());
    await scheduler.pauseSchedule(s.id, undefined, "maintenance");
    clock.now = T0 + 40_000;
    await scheduler.tick(1n);
    expect(await firings(s.id)).toHaveLength(0);
    await scheduler.resumeSchedule(s.id);
    clock.now = T0 + 50_000;
    await scheduler.tick(1n);
    expect((await firings(s.id)).map((f) => f.scheduled_time.getTime() - T0)).toEqual([50_000]);
  });

  it("DST SKIP records SKIPPED_DST firings and starts nothing for them", async () => {
    clock.now = Date.parse("2026-03-08T06:00:00Z"); // 01:00 EST
    const s = await scheduler.createSchedule("", fields({ cron: "0 */30 1-3 * * *", timezone: "America/New_York", dstSkipped: DstSkippedPolicy.SKIP }));
    clock.now = Date.parse("2026-03-08T06:30:00Z");
    await scheduler.tick(1n);
    clock.now = Date.parse("2026-03-08T07:00:00Z");
    await scheduler.tick(1n);
    const got = await firings(s.id);
    expect(got.filter((f) => f.outcome === FiringOutcome.SKIPPED_DST).map((f) => f.fire_key).sort()).toEqual(["dst-skip/2026-03-08T02:00:00", "dst-skip/2026-03-08T02:30:00"]);
    expect(got.filter((f) => f.outcome === FiringOutcome.STARTED).map((f) => f.scheduled_time.toISOString())).toEqual(["2026-03-08T06:30:00.000Z", "2026-03-08T07:00:00.000Z"]);
  });

  it("a retryable StartRun failure stays PENDING and is retried with the same key", async () => {
    const s = await scheduler.createSchedule("", fields());
    runs.unavailable = true;
    clock.now = T0 + 10_000;
    await scheduler.tick(1n);
    expect((await firings(s.id))[0]).toMatchObject({ outcome: FiringOutcome.PENDING });
    runs.unavailable = false;
    clock.now = T0 + 10_500;
    await scheduler.tick(1n);
    const [f] = await firings(s.id);
    expect(f.outcome).toBe(FiringOutcome.STARTED);
    expect(runs.calls.get(`orca-schedule/${s.id}/${T0 + 10_000}`)).toBe(2);
    expect(runs.runs.size).toBe(1);
  });

  it("backfill enqueues each past time once; repeating it starts nothing new", async () => {
    const s = await scheduler.createSchedule("", fields());
    clock.now = T0 + 10_000;
    await scheduler.tick(1n); // fires T0+10s
    const first = await scheduler.backfill(s.id, undefined, T0 - 30_000, T0 + 10_001, OverlapPolicy.UNSPECIFIED);
    expect(first).toEqual({ enqueued: 4, already: 1 });
    await scheduler.tick(1n);
    const again = await scheduler.backfill(s.id, undefined, T0 - 30_000, T0 + 10_001, OverlapPolicy.UNSPECIFIED);
    expect(again).toEqual({ enqueued: 0, already: 5 });
    await scheduler.tick(1n);
    expect(runs.runs.size).toBe(5);
    expect((await firings(s.id)).filter((f) => f.kind === FiringKind.BACKFILL && f.outcome === FiringOutcome.STARTED)).toHaveLength(4);
  });
});

describe("overlap policies (fake RunStarter)", () => {
  async function fireAt(id: string, seconds: number) {
    clock.now = T0 + seconds * 1000;
    await scheduler.tick(1n);
    return firings(id);
  }

  it("SKIP: a firing while the previous run runs is SKIPPED_OVERLAP", async () => {
    const s = await scheduler.createSchedule("", fields({ overlap: OverlapPolicy.SKIP }));
    await fireAt(s.id, 10);
    const got = await fireAt(s.id, 20);
    expect(got.map((f) => f.outcome)).toEqual([FiringOutcome.STARTED, FiringOutcome.SKIPPED_OVERLAP]);
    runs.finishAll();
    expect((await fireAt(s.id, 30)).map((f) => f.outcome)).toEqual([FiringOutcome.STARTED, FiringOutcome.SKIPPED_OVERLAP, FiringOutcome.STARTED]);
  });

  it("BUFFER_ONE: one firing is buffered and started when the run ends; more are skipped", async () => {
    const s = await scheduler.createSchedule("", fields({ overlap: OverlapPolicy.BUFFER_ONE }));
    await fireAt(s.id, 10);
    await fireAt(s.id, 20);
    const got = await fireAt(s.id, 30);
    expect(got.map((f) => f.outcome)).toEqual([FiringOutcome.STARTED, FiringOutcome.BUFFERED, FiringOutcome.SKIPPED_OVERLAP]);
    runs.finishAll();
    clock.now += 100;
    await scheduler.tick(1n);
    const after = await firings(s.id);
    expect(after.map((f) => f.outcome)).toEqual([FiringOutcome.STARTED, FiringOutcome.STARTED, FiringOutcome.SKIPPED_OVERLAP]);
    expect(after[1].run_id).not.toBe(after[0].run_id);
  });

  it("BUFFER_ALL: all are buffered and started one at a time, oldest first; a full buffer skips", async () => {
    ({ scheduler } = await domainScheduler(database, runs, clock, { ORCA_SCHEDULER_MAX_BUFFERED: "2" }));
    const s = await scheduler.createSchedule("", fields({ overlap: OverlapPolicy.BUFFER_ALL }));
    await fireAt(s.id, 10);
    await fireAt(s.id, 20);
    await fireAt(s.id, 30);
    let got = await fireAt(s.id, 40);
    expect(got.map((f) => f.outcome)).toEqual([FiringOutcome.STARTED, FiringOutcome.BUFFERED, FiringOutcome.BUFFERED, FiringOutcome.SKIPPED_OVERLAP]);
    expect(got[3].error).toMatch(/buffer is full/);
    runs.finishAll();
    clock.now += 100;
    await scheduler.tick(1n);
    got = await firings(s.id);
    expect(got.map((f) => f.outcome)).toEqual([FiringOutcome.STARTED, FiringOutcome.STARTED, FiringOutcome.BUFFERED, FiringOutcome.SKIPPED_OVERLAP]);
    runs.finishAll();
    clock.now += 100;
    await scheduler.tick(1n);
    got = await firings(s.id);
    expect(got.map((f) => f.outcome)).toEqual([FiringOutcome.STARTED, FiringOutcome.STARTED, FiringOutcome.STARTED, FiringOutcome.SKIPPED_OVERLAP]);
  });

  it("CANCEL_OTHER: the running run is cancelled and the new one starts at once", async () => {
    const s = await scheduler.createSchedule("", fields({ overlap: OverlapPolicy.CANCEL_OTHER }));
    const [first] = await fireAt(s.id, 10);
    const got = await fireAt(s.id, 20);
    expect(got[1]).toMatchObject({ outcome: FiringOutcome.STARTED });
    expect(got[1].cancelled_run_ids).toEqual([first.run_id]);
    expect(runs.runs.get(first.run_id)?.cancelled).toBe(true);
  });

  it("ALLOW_ALL: runs overlap", async () => {
    const s = await scheduler.createSchedule("", fields({ overlap: OverlapPolicy.ALLOW_ALL }));
    await fireAt(s.id, 10);
    const got = await fireAt(s.id, 20);
    expect(got.map((f) => f.outcome)).toEqual([FiringOutcome.STARTED, FiringOutcome.STARTED]);
    expect([...runs.runs.values()].filter((r) => !r.final)).toHaveLength(2);
  });

  it("manual trigger goes through the policy (or its override) and records nothing when the Orchestrator is down", async () => {
    const s = await scheduler.createSchedule("", fields({ overlap: OverlapPolicy.SKIP }));
    const m1 = await scheduler.triggerSchedule(s.id, undefined, OverlapPolicy.UNSPECIFIED);
    expect(m1).toMatchObject({ outcome: FiringOutcome.STARTED, kind: FiringKind.MANUAL });
    const m2 = await scheduler.triggerSchedule(s.id, undefined, OverlapPolicy.UNSPECIFIED);
    expect(m2.outcome).toBe(FiringOutcome.SKIPPED_OVERLAP);
    const m3 = await scheduler.triggerSchedule(s.id, undefined, OverlapPolicy.ALLOW_ALL);
    expect(m3.outcome).toBe(FiringOutcome.STARTED);
    expect(runs.calls.has(`orca-schedule/${s.id}/manual/${m3.id}`)).toBe(true);
    runs.unavailable = true;
    await expect(scheduler.triggerSchedule(s.id, undefined, OverlapPolicy.ALLOW_ALL)).rejects.toThrow(/cannot be reached/);
    expect(await firings(s.id)).toHaveLength(3);
  });
});
