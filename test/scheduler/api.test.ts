import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DstAdjustment, DstSkippedPolicy, FiringOutcome, OverlapPolicy, SchedulerService, TriggerDispatchState } from "../../gen/orca/scheduler/v1/scheduler_pb.js";
import { openMemoryDatabase, type Database } from "../../services/kit/db/database.js";
import { createSchedulerModule } from "../../services/scheduler/index.js";
import { startServiceHarness, type ServiceHarness } from "../support/service-harness.js";
import { FakeAlwaysLeader, FakeRunStarter, fakeOrchestratorModule, startScheduler, waitFor } from "./support.js";

// The Scheduler over real gRPC (PGlite), calling a FAKE Orchestrator gRPC service through its real
// client adapter; the firer is elected by a FAKE elector (always leader) here. The real Lock
// service is exercised in replicas.test.ts.

let database: Database;
let fake: FakeRunStarter;
let orchestrator: ServiceHarness;
let scheduler: ServiceHarness;
let client: Client<typeof SchedulerService>;

beforeAll(async () => {
  database = await openMemoryDatabase();
  fake = new FakeRunStarter();
  orchestrator = await startServiceHarness(fakeOrchestratorModule(fake), { database });
  scheduler = await startScheduler(createSchedulerModule({ elector: () => new FakeAlwaysLeader() }), database, { orchestrator: orchestrator.url }, { ORCA_SCHEDULER_MIN_INTERVAL_MS: "1000" });
  client = scheduler.client(SchedulerService);
});
afterAll(async () => {
  await scheduler?.stop();
  await orchestrator?.stop();
  await database?.close();
});

async function code(p: Promise<unknown>): Promise<{ code: Code; message: string }> {
  try {
    await p;
  } catch (error) {
    const e = ConnectError.from(error);
    return { code: e.code, message: e.rawMessage };
  }
  throw new Error("expected an error");
}

const base = { name: "n", cron: "0 0 * * * *", timezone: "Europe/Berlin", workflowName: "wf" };

describe("schedules over gRPC", () => {
  it("creates with defaults, fires every second end to end, and lists firings", async () => {
    const { schedule } = await client.createSchedule({ schedule: { ...base, name: "every-second", cron: "* * * * * *", timezone: "", overlapPolicy: OverlapPolicy.ALLOW_ALL } });
    expect(schedule).toMatchObject({ timezone: "UTC", revision: 1n, dstSkippedPolicy: DstSkippedPolicy.RUN_AT_NEXT_VALID_TIME, overlapPolicy: OverlapPolicy.ALLOW_ALL });
    expect(schedule?.nextFireAt).toBeDefined();
    const firings = await waitFor("two started firings", async () => {
      const { firings } = await client.listFirings({ scheduleId: schedule!.id, outcomes: [FiringOutcome.STARTED] });
      return firings.length >= 2 && firings;
    });
    for (const f of firings) expect(fake.byKey.get(`orca-schedule/${schedule!.id}/${Number(f.scheduledTime!.seconds) * 1000}`)).toBe(f.runId);
    await client.pauseSchedule({ id: schedule!.id, note: "enough" });
  });

  it("bad input answers InvalidArgument naming the field and stores nothing", async () => {
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ cron: "0 0 * * *" }, "schedule.cron"],
      [{ cron: "0 99 * * * *" }, "schedule.cron"],
      [{ timezone: "Mars/Olympus_Mons" }, "schedule.timezone"],
      [{ name: "" }, "schedule.name"],
      [{ workflowName: "" }, "schedule.workflow_name"],
      [{ startAt: timestampFromMs(2000), endAt: timestampFromMs(1000) }, "schedule.end_at"],
      [{ catchupWindow: { seconds: 8n * 86400n, nanos: 0 } }, "schedule.catchup_window"],
    ];
    const before = await client.listSchedules({});
    for (const [patch, field] of cases) {
      const e = await code(client.createSchedule({ schedule: { ...base, name: "bad", ...patch } as never }));
      expect(e.code, field).toBe(Code.InvalidArgument);
      expect(e.message.startsWith(`${field}:`), e.message).toBe(true);
    }
    expect(await code(client.createSchedule({ schedule: { ...base, name: "nowf", workflowName: "missing" } }))).toMatchObject({ code: Code.NotFound });
    expect((await client.listSchedules({})).schedules).toEqual(before.schedules);
  });

  it("more frequent than ORCA_SCHEDULER_MIN_INTERVAL_MS is InvalidArgument", async () => {
    const other = await startScheduler(createSchedulerModule({ elector: () => new FakeAlwaysLeader(0n) }), database, { orchestrator: orchestrator.url }, { ORCA_SCHEDULER_MIN_INTERVAL_MS: "60000" });
    try {
      const e = await code(other.client(SchedulerService).createSchedule({ schedule: { ...base, name: "too-fast", cron: "*/10 * * * * *" } }));
      expect(e.code).toBe(Code.InvalidArgument);
      expect(e.message).toMatch(/^schedule\.cron: .*minimum interval/);
    } finally {
      await other.stop();
    }
  });

  it("update: revision check, mask validation, state unchanged after a bad update", async () => {
    const { schedule } = await client.createSchedule({ schedule: { ...base, name: "upd" } });
    const bad = await code(client.updateSchedule({ schedule: { id: schedule!.id, cron: "nope" }, updateMask: { paths: ["cron"] } }));
    expect(bad.code).toBe(Code.InvalidArgument);
    expect(bad.message).toMatch(/^schedule\.cron:/);
    expect(await code(client.updateSchedule({ schedule: { id: schedule!.id }, updateMask: { paths: [] } }))).toMatchObject({ code: Code.InvalidArgument });
    expect(await code(client.updateSchedule({ schedule: { id: schedule!.id, paused: true }, updateMask: { paths: ["paused"] } }))).toMatchObject({ code: Code.InvalidArgument });
    const ok = await client.updateSchedule({ schedule: { id: schedule!.id, cron: "0 30 * * * *" }, updateMask: { paths: ["cron"] }, expectedRevision: 1n });
    expect(ok.schedule).toMatchObject({ cron: "0 30 * * * *", revision: 2n, timezone: "Europe/Berlin" });
    expect(await code(client.updateSchedule({ schedule: { id: schedule!.id, cron: "0 0 * * * *" }, updateMask: { paths: ["cron"] }, expectedRevision: 1n }))).toMatchObject({ code: Code.Aborted });
    expect((await client.getSchedule({ id: schedule!.id })).schedule).toMatchObject({ cron: "0 30 * * * *", revision: 2n });
    expect(await code(client.getSchedule({ id: "nope" }))).toMatchObject({ code: Code.NotFound });
    expect(await code(client.createSchedule({ schedule: { ...base, name: "upd" } }))).toMatchObject({ code: Code.AlreadyExists });
  });

  it("previews DST adjustments in the zone and in UTC", async () => {
    const { fireTimes, timezone } = await client.previewSchedule({
      target: { case: "spec", value: { cron: "0 30 2 * * *", timezone: "America/New_York" } },
      count: 2,
      after: timestampFromMs(Date.parse("2026-03-07T12:00:00Z")),
    });
    expect(timezone).toBe("America/New_York");
    expect(fireTimes.map((f) => [f.utcTime, f.localTime, f.dstAdjustment])).toEqual([
      ["2026-03-08T07:00:00Z", "2026-03-08T03:00:00-04:00", DstAdjustment.MOVED_OUT_OF_GAP],
      ["2026-03-09T06:30:00Z", "2026-03-09T02:30:00-04:00", DstAdjustment.NONE],
    ]);
    const e = await code(client.previewSchedule({ target: { case: "spec", value: { cron: "x" } } }));
    expect(e.message).toMatch(/^spec\.cron:/);
  });
});

describe("event triggers over gRPC", () => {
  it("starts matching workflows once per event, with CEL filters and input mapping", async () => {
    fake.workflows.add("ship");
    const big = await client.createTrigger({
      trigger: { eventType: "order.created", filter: "event.payload.amount > 100.0 && event.payload.country == 'DE'", workflowName: "ship", enabled: true, inputMapping: { order: "event.payload.id", kind: "'big'", n: 3 } },
    });
    await client.createTrigger({ trigger: { eventType: "order.created", filter: "", workflowName: "wf", enabled: true } });
    await client.createTrigger({ trigger: { eventType: "order.created", filter: "event.payload.missing.x == 1.0", workflowName: "wf", enabled: true } });
    await client.createTrigger({ trigger: { eventType: "order.created", workflowName: "wf", enabled: false } });

    const small = await client.publishEvent({ type: "order.created", idempotencyKey: "k-small", payload: { id: "o-1", amount: 50, country: "DE" } });
    expect(small.dispatches.map((d) => d.state).sort()).toEqual([TriggerDispatchState.STARTED, TriggerDispatchState.FILTER_ERROR]);

    const r = await client.publishEvent({ type: "order.created", idempotencyKey: "k-big", payload: { id: "o-2", amount: 500, country: "DE" } });
    expect(r.duplicate).toBe(false);
    const shipped = r.dispatches.find((d) => d.triggerId === big.trigger!.id)!;
    expect(shipped.state).toBe(TriggerDispatchState.STARTED);
    expect(fake.runs.get(shipped.runId)?.input).toEqual({ order: "o-2", kind: "big", n: 3 });
    expect(fake.byKey.get(`orca-event/${r.event!.id}/${big.trigger!.id}`)).toBe(shipped.runId);

    // Idempotent publication: same key, same event -> duplicate, nothing new started.
    const runsBefore = fake.runs.size;
    const again = await client.publishEvent({ type: "order.created", idempotencyKey: "k-big", payload: { country: "DE", amount: 500, id: "o-2" } });
    expect(again.duplicate).toBe(true);
    expect(again.event!.id).toBe(r.event!.id);
    expect(again.dispatches.map((d) => d.runId).sort()).toEqual(r.dispatches.map((d) => d.runId).sort());
    expect(fake.runs.size).toBe(runsBefore);
    // Same key, different payload -> AlreadyExists.
    expect(await code(client.publishEvent({ type: "order.created", idempotencyKey: "k-big", payload: { id: "o-3" } }))).toMatchObject({ code: Code.AlreadyExists });
  });

  it("bad triggers and events answer InvalidArgument naming the field", async () => {
    const e1 = await code(client.createTrigger({ trigger: { eventType: "x", filter: "event.payload.a +", workflowName: "wf" } }));
    expect(e1).toMatchObject({ code: Code.InvalidArgument });
    expect(e1.message).toMatch(/^trigger\.filter:/);
    const e2 = await code(client.createTrigger({ trigger: { eventType: "x", filter: "1 + 2", workflowName: "wf" } }));
    expect(e2.message).toMatch(/^trigger\.filter: must be a boolean/);
    const e3 = await code(client.createTrigger({ trigger: { eventType: "x", workflowName: "wf", inputMapping: { a: { b: "event.payload.(" } } } }));
    expect(e3.message).toMatch(/^trigger\.input_mapping\.a\.b:/);
    expect((await code(client.createTrigger({ trigger: { eventType: "bad type!", workflowName: "wf" } }))).message).toMatch(/^trigger\.event_type:/);
    expect((await code(client.publishEvent({ type: "t", idempotencyKey: "" }))).message).toMatch(/^idempotency_key:/);
    expect((await code(client.publishEvent({ type: "", idempotencyKey: "k" }))).message).toMatch(/^type:/);
    expect((await client.listTriggers({ eventType: "x" })).triggers).toHaveLength(0);
  });
});
