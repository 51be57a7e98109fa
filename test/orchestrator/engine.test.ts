import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { AttemptStatus, RunEventType, RunStatus, TaskStatus } from "../../gen/orca/orchestrator/v1/orchestrator_pb.js";
import type { Database } from "../../services/kit/db/database.js";
import { postgresAvailable } from "../support/postgres.js";
import { freshPostgres } from "./pg.js";
import { startTestOrchestrator, waitForRun, type TestOrchestrator } from "./support.js";

const ms = (n: number) => ({ seconds: BigInt(Math.floor(n / 1000)), nanos: (n % 1000) * 1e6 });
const names = (tasks: { taskId: string; status: TaskStatus }[]) => Object.fromEntries(tasks.map((t) => [t.taskId, TaskStatus[t.status]]));

async function expectCode(p: Promise<unknown>, code: Code): Promise<ConnectError> {
  try {
    await p;
  } catch (error) {
    const e = ConnectError.from(error);
    expect(Code[e.code]).toBe(Code[code]);
    return e;
  }
  throw new Error(`expected ${Code[code]}`);
}

describe.skipIf(!postgresAvailable)("orchestrator engine on Postgres (fake Policy/Lock/Cache, test plugins)", () => {
  let pg: { db: Database; close: () => Promise<void> };
  let orch: TestOrchestrator;
  beforeAll(async () => {
    pg = await freshPostgres();
    orch = await startTestOrchestrator(pg.db);
  });
  afterAll(async () => {
    await orch?.stop();
    await pg?.close();
  });

  it("fan-out then fan-in: children start after the root ends, the join after every child", async () => {
    const children = Array.from({ length: 20 }, (_, i) => ({ id: `c${i}`, plugin: "test.sleep", config: { ms: 5 + (i % 4) * 5 }, dependsOn: ["root"] }));
    await orch.client.registerWorkflow({
      name: "fan",
      maxParallelism: 8,
      tasks: [{ id: "root", plugin: "test.noop" }, ...children, { id: "join", plugin: "test.noop", dependsOn: children.map((c) => c.id) }],
    });
    const { run } = await orch.client.startRun({ workflowName: "fan" });
    const done = await waitForRun(orch.client, run!.id);
    expect(RunStatus[done.status]).toBe("SUCCEEDED");
    const j = orch.journal.entries.filter((e) => e.runId === run!.id);
    const root = j.find((e) => e.taskId === "root")!;
    const kids = j.filter((e) => e.taskId.startsWith("c"));
    const join = j.find((e) => e.taskId === "join")!;
    expect(kids).toHaveLength(20);
    for (const k of kids) expect(k.start).toBeGreaterThanOrEqual(root.end!);
    for (const k of kids) expect(join.start).toBeGreaterThanOrEqual(k.end!);
    // Never more than max_parallelism at once.
    const points = kids.flatMap((k) => [[k.start, 1], [k.end!, -1]] as [number, number][]).sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    let cur = 0;
    let peak = 0;
    for (const [, d] of points) peak = Math.max(peak, (cur += d));
    expect(peak).toBeLessThanOrEqual(8);
    // Run output: the sink's output; GetRun lists tasks in topological order.
    expect(Object.keys(done.output ?? {})).toEqual(["join"]);
    expect(done.tasks[0].taskId).toBe("root");
    expect(done.tasks[done.tasks.length - 1].taskId).toBe("join");
  });

  it("retries with backoff delays inside the contract's bounds", async () => {
    await orch.client.registerWorkflow({
      name: "flaky",
      tasks: [
        {
          id: "f",
          plugin: "test.flaky",
          config: { fail_times: 2 },
          retry: { maxAttempts: 3, initialBackoff: ms(300), multiplier: 2, maxBackoff: ms(10_000), jitter: 0.5 },
        },
      ],
    });
    const { run } = await orch.client.startRun({ workflowName: "flaky" });
    const done = await waitForRun(orch.client, run!.id);
    expect(RunStatus[done.status]).toBe("SUCCEEDED");
    const attempts = done.tasks[0].attempts;
    expect(attempts.map((a) => AttemptStatus[a.status])).toEqual(["FAILED", "FAILED", "SUCCEEDED"]);
    expect(attempts[0].error?.kind).toBe("test.flaky");
    const gap = (i: number) => timestampDate(attempts[i + 1].startedAt!).getTime() - timestampDate(attempts[i].finishedAt!).getTime();
    // delay n = min(max, 300 * 2^(n-1)) * (1 - 0.5u): [150, 300] then [300, 600]; plus claim latency.
    expect(gap(0)).toBeGreaterThanOrEqual(150 - 2);
    expect(gap(0)).toBeLessThanOrEqual(300 + 1000);
    expect(gap(1)).toBeGreaterThanOrEqual(300 - 2);
    expect(gap(1)).toBeLessThanOrEqual(600 + 1000);
    // The scheduled backoff itself is exactly within the bounds.
    const events: { type: RunEventType; details?: Record<string, unknown> }[] = [];
    for await (const r of orch.client.watchRun({ runId: run!.id })) events.push(r.event!);
    const backoffs = events.filter((e) => e.type === RunEventType.TASK_RETRY_SCHEDULED).map((e) => Number(e.details!.backoff));
    expect(backoffs).toHaveLength(2);
    expect(backoffs[0]).toBeGreaterThanOrEqual(0.15);
    expect(backoffs[0]).toBeLessThanOrEqual(0.3);
    expect(backoffs[1]).toBeGreaterThanOrEqual(0.3);
    expect(backoffs[1]).toBeLessThanOrEqual(0.6);
  });

  it("non-retryable kinds fail at once and the failure rule cancels the rest", async () => {
    await orch.client.registerWorkflow({
      name: "fails",
      tasks: [
        { id: "bad", plugin: "test.flaky", config: { fail_times: 9, kind: "test.fatal" }, retry: { maxAttempts: 5, nonRetryableErrorKinds: ["test.*"] } },
        { id: "slow", plugin: "test.sleep", config: { ms: 30_000 } },
        { id: "after", plugin: "test.noop", dependsOn: ["bad"] },
      ],
    });
    const { run } = await orch.client.startRun({ workflowName: "fails" });
    const done = await waitForRun(orch.client, run!.id);
    expect(RunStatus[done.status]).toBe("FAILED");
    expect(names(done.tasks)).toEqual({ bad: "FAILED", slow: "CANCELLED", after: "CANCELLED" });
    expect(done.tasks.find((t) => t.taskId === "bad")!.attempts).toHaveLength(1);
    expect(done.error?.kind).toBe("test.fatal");
    expect(done.error?.message).toContain('task "bad"');
  });

  it("start-to-close timeout aborts the attempt", async () => {
    await orch.client.registerWorkflow({
      name: "s2c",
      tasks: [{ id: "t", plugin: "test.sleep", config: { ms: 20_000 }, timeouts: { startToClose: ms(1000) }, retry: { maxAttempts: 1 } }],
    });
    const { run } = await orch.client.startRun({ workflowName: "s2c" });
    const done = await waitForRun(orch.client, run!.id);
    expect(RunStatus[done.status]).toBe("FAILED");
    expect(done.tasks[0].attempts[0].error?.kind).toBe("timeout.start_to_close");
  });

  it("schedule-to-start timeout records a FAILED attempt that never started", async () => {
    await orch.client.registerWorkflow({
      name: "s2s",
      tasks: [{ id: "w", plugin: "worker", queue: "nobody-polls", timeouts: { scheduleToStart: ms(300) }, retry: { maxAttempts: 1 } }],
    });
    const { run } = await orch.client.startRun({ workflowName: "s2s" });
    const done = await waitForRun(orch.client, run!.id);
    expect(RunStatus[done.status]).toBe("FAILED");
    const a = done.tasks[0].attempts;
    expect(a).toHaveLength(1);
    expect(a[0].error?.kind).toBe("timeout.schedule_to_start");
    expect(a[0].startedAt).toBeUndefined();
  });

  it("heartbeat timeout: a silent worker's lease lapses and the task is retried", async () => {
    await orch.client.registerWorkflow({
      name: "hb",
      tasks: [{ id: "w", plugin: "worker", queue: "hbq", timeouts: { heartbeat: ms(1000) }, retry: { maxAttempts: 2, initialBackoff: ms(10) } }],
    });
    const { run } = await orch.client.startRun({ workflowName: "hb" });
    const first = await orch.client.pollTasks({ queue: "hbq", workerId: "silent", waitTimeout: ms(5000) });
    expect(first.tasks).toHaveLength(1);
    // Say nothing: the lease lapses after ~1 s; the retry is leased to the next poll.
    const second = await orch.client.pollTasks({ queue: "hbq", workerId: "good", waitTimeout: ms(10_000) });
    expect(second.tasks[0].attempt).toBe(2);
    await expectCode(orch.client.completeTask({ leaseId: first.tasks[0].leaseId, output: { late: true } }), Code.Aborted);
    await orch.client.completeTask({ leaseId: second.tasks[0].leaseId, output: { v: 1 } });
    const done = await waitForRun(orch.client, run!.id);
    expect(RunStatus[done.status]).toBe("SUCCEEDED");
    expect(done.tasks[0].attempts[0].error?.kind).toBe("timeout.heartbeat");
    expect(done.tasks[0].output).toEqual({ v: 1 });
  });

  it("run timeout aborts running attempts and ends TIMED_OUT", async () => {
    await orch.client.registerWorkflow({
      name: "rt",
      runTimeout: ms(1000),
      tasks: [{ id: "t", plugin: "test.sleep", config: { ms: 30_000 } }, { id: "u", plugin: "test.noop", dependsOn: ["t"] }],
    });
    const { run } = await orch.client.startRun({ workflowName: "rt" });
    const done = await waitForRun(orch.client, run!.id);
    expect(RunStatus[done.status]).toBe("TIMED_OUT");
    expect(done.error?.kind).toBe("timeout.run");
    expect(names(done.tasks)).toEqual({ t: "CANCELLED", u: "CANCELLED" });
  });

  it("conditions and the skip rule", async () => {
    await orch.client.registerWorkflow({
      name: "skips",
      tasks: [
        { id: "gate", plugin: "test.noop", condition: "input.go == true" },
        { id: "below", plugin: "test.noop", dependsOn: ["gate"] },
        { id: "other", plugin: "test.noop" },
        { id: "mixed", plugin: "test.noop", dependsOn: ["gate", "other"], condition: 'tasks.gate.status == "SKIPPED" && tasks.other.status == "SUCCEEDED"' },
        { id: "never", plugin: "test.noop", dependsOn: ["other"], condition: "false" },
      ],
    });
    const { run } = await orch.client.startRun({ workflowName: "skips", input: { go: false } });
    const done = await waitForRun(orch.client, run!.id);
    expect(RunStatus[done.status]).toBe("SUCCEEDED");
    const t = names(done.tasks);
    expect(t).toEqual({ gate: "SKIPPED", below: "SKIPPED", other: "SUCCEEDED", mixed: "SUCCEEDED", never: "SKIPPED" });
    const reasons = Object.fromEntries(done.tasks.map((x) => [x.taskId, x.skipReason]));
    expect(reasons.gate).toBe("condition false");
    expect(reasons.below).toBe("all dependencies skipped");
    const { run: run2 } = await orch.client.startRun({ workflowName: "skips", input: { go: true } });
    expect(names((await waitForRun(orch.client, run2!.id)).tasks).below).toBe("SUCCEEDED");
  });

  it("a condition that fails at run time fails the task with cel.error", async () => {
    await orch.client.registerWorkflow({ name: "celerr", tasks: [{ id: "a", plugin: "test.noop", condition: "input.missing > 1.0" }] });
    const { run } = await orch.client.startRun({ workflowName: "celerr" });
    const done = await waitForRun(orch.client, run!.id);
    expect(RunStatus[done.status]).toBe("FAILED");
    expect(done.tasks[0].error?.kind).toBe("cel.error");
  });

  it("cache hits are recorded CACHED inside a DAG and feed dependents", async () => {
    await orch.client.registerWorkflow({
      name: "cached",
      defaults: { cache: { enabled: true } },
      tasks: [
        { id: "a", plugin: "test.noop", config: { v: "${input.v}" } },
        { id: "b", plugin: "test.noop", dependsOn: ["a"], config: { from_a: "${tasks.a.output.config.v}" } },
      ],
    });
    const r1 = await waitForRun(orch.client, (await orch.client.startRun({ workflowName: "cached", input: { v: "x" } })).run!.id);
    expect(names(r1.tasks)).toEqual({ a: "SUCCEEDED", b: "SUCCEEDED" });
    await new Promise((r) => setTimeout(r, 100)); // cache writes happen after commit
    const r2 = await waitForRun(orch.client, (await orch.client.startRun({ workflowName: "cached", input: { v: "x" } })).run!.id);
    expect(names(r2.tasks)).toEqual({ a: "CACHED", b: "CACHED" });
    expect(r2.tasks[1].output).toEqual(r1.tasks[1].output);
    expect(r2.tasks[0].attempts).toHaveLength(0);
    expect(r2.tasks[0].cacheKey).toMatch(/^[0-9a-f]{64}$/);
    const r3 = await waitForRun(orch.client, (await orch.client.startRun({ workflowName: "cached", input: { v: "y" } })).run!.id);
    expect(names(r3.tasks)).toEqual({ a: "SUCCEEDED", b: "SUCCEEDED" });
  });

  it("cancellation aborts running attempts, cancels the rest, and refuses a finished run", async () => {
    await orch.client.registerWorkflow({
      name: "cancel",
      tasks: [{ id: "long", plugin: "test.sleep", config: { ms: 60_000 } }, { id: "next", plugin: "test.noop", dependsOn: ["long"] }],
    });
    const { run } = await orch.client.startRun({ workflowName: "cancel" });
    await waitForRun(orch.client, run!.id, 10_000, new Set([RunStatus.RUNNING]));
    for (let i = 0; i < 100 && !orch.journal.entries.some((e) => e.runId === run!.id); i++) await new Promise((r) => setTimeout(r, 20));
    const res = await orch.client.cancelRun({ runId: run!.id, reason: "operator said so", gracePeriod: ms(2000) });
    expect([RunStatus.CANCELLING, RunStatus.CANCELLED]).toContain(res.run!.status);
    const done = await waitForRun(orch.client, run!.id);
    expect(RunStatus[done.status]).toBe("CANCELLED");
    expect(done.error).toMatchObject({ kind: "cancelled", message: "operator said so" });
    expect(names(done.tasks)).toEqual({ long: "CANCELLED", next: "CANCELLED" });
    expect(AttemptStatus[done.tasks[0].attempts[0].status]).toBe("CANCELLED");
    const e = await expectCode(orch.client.cancelRun({ runId: run!.id }), Code.FailedPrecondition);
    expect(e.message).toContain("CANCELLED");
    await expectCode(orch.client.cancelRun({ runId: "00000000-0000-4000-8000-000000000000" }), Code.NotFound);
  });

  it("a worker sees cancel_requested; after the grace period its lease is revoked", async () => {
    await orch.client.registerWorkflow({ name: "wcancel", tasks: [{ id: "w", plugin: "worker", queue: "wc" }] });
    const { run } = await orch.client.startRun({ workflowName: "wcancel" });
    const { tasks } = await orch.client.pollTasks({ queue: "wc", workerId: "w1", waitTimeout: ms(5000) });
    await orch.client.cancelRun({ runId: run!.id, gracePeriod: ms(300) });
    const hb = await orch.client.heartbeatTask({ leaseId: tasks[0].leaseId });
    expect(hb.cancelRequested).toBe(true);
    const done = await waitForRun(orch.client, run!.id);
    expect(RunStatus[done.status]).toBe("CANCELLED");
    await expectCode(orch.client.completeTask({ leaseId: tasks[0].leaseId }), Code.Aborted);
  });

  it("StartRun with the same idempotency key returns the same run, also under concurrency", async () => {
    await orch.client.registerWorkflow({ name: "idem", tasks: [{ id: "a", plugin: "test.noop" }] });
    const calls = orch.policy.calls.length;
    const results = await Promise.all(Array.from({ length: 8 }, () => orch.client.startRun({ workflowName: "idem", idempotencyKey: "k-1", input: { a: 1 } })));
    const ids = new Set(results.map((r) => r.run!.id));
    expect(ids.size).toBe(1);
    expect(results.filter((r) => !r.existing).length).toBe(1);
    const again = await orch.client.startRun({ workflowName: "idem", idempotencyKey: "k-1", input: { a: 1 } });
    expect(again.existing).toBe(true);
    expect(again.policy?.decisionId).toBe(results.find((r) => !r.existing)!.policy!.decisionId);
    expect(orch.policy.calls.length - calls).toBeLessThanOrEqual(8);
    await expectCode(orch.client.startRun({ workflowName: "idem", idempotencyKey: "k-1", input: { a: 2 } }), Code.AlreadyExists);
    const list = await orch.client.listRuns({ workflowName: "idem" });
    expect(list.runs).toHaveLength(1);
  });

  it("policy DENY answers PERMISSION_DENIED with the reasons and stores nothing; TARPIT delays", async () => {
    await orch.client.registerWorkflow({ name: "guarded", tasks: [{ id: "a", plugin: "test.noop" }] });
    orch.policy.next = { effect: "DENY", reasons: ["tenant over budget", "outside change window"] };
    try {
      const e = await expectCode(orch.client.startRun({ workflowName: "guarded", idempotencyKey: "deny-1" }), Code.PermissionDenied);
      expect(e.message).toContain("tenant over budget; outside change window");
      expect((await orch.client.listRuns({ workflowName: "guarded" })).runs).toHaveLength(0);
      orch.policy.next = { effect: "TARPIT", delayMs: 400, reasons: ["slow down"] };
      const t0 = Date.now();
      const res = await orch.client.startRun({ workflowName: "guarded" });
      expect(Date.now() - t0).toBeGreaterThanOrEqual(390);
      expect(res.policy?.tarpitDelay?.nanos).toBe(400e6);
      orch.policy.next = { effect: "TARPIT", delayMs: 5_000 };
      await expectCode(orch.client.startRun({ workflowName: "guarded" }, { timeoutMs: 300 }), Code.DeadlineExceeded);
      expect((await orch.client.listRuns({ workflowName: "guarded" })).runs).toHaveLength(1);
    } finally {
      orch.policy.next = { effect: "ALLOW" };
    }
  });

  it("lock-keyed tasks never overlap and get increasing fencing tokens (fake Lock)", async () => {
    const tasks = Array.from({ length: 8 }, (_, i) => ({ id: `l${i}`, plugin: "test.sleep", config: { ms: 30 }, lockKey: '"shared/" + input.k' }));
    await orch.client.registerWorkflow({ name: "locked", maxParallelism: 8, tasks });
    const { run } = await orch.client.startRun({ workflowName: "locked", input: { k: "db" } });
    const done = await waitForRun(orch.client, run!.id);
    expect(RunStatus[done.status]).toBe("SUCCEEDED");
    const j = orch.journal.entries.filter((e) => e.runId === run!.id).sort((a, b) => a.start - b.start);
    for (let i = 1; i < j.length; i++) {
      expect(j[i].start).toBeGreaterThanOrEqual(j[i - 1].end!);
      expect(j[i].token).toBeGreaterThan(j[i - 1].token);
    }
    expect(done.tasks.every((t) => t.lockResource === "default/shared/db" && t.attempts[0].fencingToken > 0n)).toBe(true);
  });

  it("external worker flow: poll, heartbeat, complete (idempotent), fail with retry", async () => {
    await orch.client.registerWorkflow({
      name: "ext",
      tasks: [
        { id: "w1", plugin: "worker", queue: "ext", config: { n: "${input.n}" } },
        { id: "w2", plugin: "worker", queue: "ext", dependsOn: ["w1"], retry: { maxAttempts: 2, initialBackoff: ms(50) } },
      ],
    });
    const { run } = await orch.client.startRun({ workflowName: "ext", input: { n: 7 } });
    const p1 = await orch.client.pollTasks({ queue: "ext", workerId: "py-1", waitTimeout: ms(5000) });
    expect(p1.tasks[0]).toMatchObject({ taskId: "w1", attempt: 1, queue: "ext", config: { n: 7 }, input: { n: 7 } });
    const hb = await orch.client.heartbeatTask({ leaseId: p1.tasks[0].leaseId, details: { pct: 50 } });
    expect(hb.cancelRequested).toBe(false);
    expect((await orch.client.completeTask({ leaseId: p1.tasks[0].leaseId, output: { r: 1 } })).alreadyRecorded).toBe(false);
    expect((await orch.client.completeTask({ leaseId: p1.tasks[0].leaseId, output: { r: 2 } })).alreadyRecorded).toBe(true);
    await expectCode(orch.client.failTask({ leaseId: p1.tasks[0].leaseId, error: { kind: "x" } }), Code.FailedPrecondition);
    await expectCode(orch.client.heartbeatTask({ leaseId: p1.tasks[0].leaseId }), Code.FailedPrecondition);
    const p2 = await orch.client.pollTasks({ queue: "ext", workerId: "py-1", waitTimeout: ms(5000) });
    expect(p2.tasks[0].dependencyOutputs).toEqual({ w1: { r: 1 } });
    const f = await orch.client.failTask({ leaseId: p2.tasks[0].leaseId, error: { kind: "py.oops", message: "boom" } });
    expect(f.willRetry).toBe(true);
    expect((await orch.client.failTask({ leaseId: p2.tasks[0].leaseId, error: { kind: "py.other" } })).alreadyRecorded).toBe(true);
    await expectCode(orch.client.completeTask({ leaseId: p2.tasks[0].leaseId }), Code.FailedPrecondition);
    const p3 = await orch.client.pollTasks({ queue: "ext", workerId: "py-2", waitTimeout: ms(5000) });
    expect(p3.tasks[0].attempt).toBe(2);
    await orch.client.completeTask({ leaseId: p3.tasks[0].leaseId, output: { r: 3 } });
    const done = await waitForRun(orch.client, run!.id);
    expect(RunStatus[done.status]).toBe("SUCCEEDED");
    expect(done.tasks[0].output).toEqual({ r: 1 });
    expect(done.tasks[0].attempts[0].heartbeatDetails).toEqual({ pct: 50 });
    expect(done.tasks[1].attempts.map((a) => a.workerId)).toEqual(["py-1", "py-2"]);
    await expectCode(orch.client.completeTask({ leaseId: "00000000-0000-4000-8000-000000000000" }), Code.NotFound);
    await expectCode(orch.client.failTask({ leaseId: p3.tasks[0].leaseId, error: { kind: "" } }), Code.InvalidArgument);
    const empty = await orch.client.pollTasks({ queue: "ext", workerId: "py-1", waitTimeout: ms(0) });
    expect(empty.tasks).toHaveLength(0);
  });

  it("WatchRun streams every event once, resumable from a sequence number", async () => {
    await orch.client.registerWorkflow({ name: "watched", tasks: [{ id: "a", plugin: "test.sleep", config: { ms: 200 } }, { id: "b", plugin: "test.noop", dependsOn: ["a"] }] });
    const { run } = await orch.client.startRun({ workflowName: "watched" });
    const seen: bigint[] = [];
    const types: string[] = [];
    for await (const r of orch.client.watchRun({ runId: run!.id })) {
      seen.push(r.event!.sequence);
      types.push(RunEventType[r.event!.type]);
      if (seen.length === 3) break; // disconnect
    }
    for await (const r of orch.client.watchRun({ runId: run!.id, fromSequence: seen[seen.length - 1] + 1n })) {
      seen.push(r.event!.sequence);
      types.push(RunEventType[r.event!.type]);
    }
    expect(seen).toEqual(seen.map((_, i) => BigInt(i + 1)));
    expect(types[0]).toBe("RUN_CREATED");
    expect(types[types.length - 1]).toBe("RUN_SUCCEEDED");
    const final = await orch.client.getRun({ runId: run!.id });
    expect(final.run!.lastEventSequence).toBe(BigInt(seen.length));
    const after: bigint[] = [];
    for await (const r of orch.client.watchRun({ runId: run!.id, fromSequence: 999n })) after.push(r.event!.sequence);
    expect(after).toEqual([]);
  });

  it("ListRuns filters and paginates newest first", async () => {
    await orch.client.registerWorkflow({ name: "listed", tenant: "acme", tasks: [{ id: "a", plugin: "test.noop" }] });
    await orch.client.registerWorkflow({ name: "listed", tasks: [{ id: "a", plugin: "test.noop" }] });
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push((await orch.client.startRun({ workflowName: "listed", tenant: "acme" })).run!.id);
    const other = (await orch.client.startRun({ workflowName: "listed" })).run!.id;
    const got: string[] = [];
    let token = "";
    let pages = 0;
    do {
      const page = await orch.client.listRuns({ tenant: "acme", workflowName: "listed", pageSize: 2, pageToken: token });
      got.push(...page.runs.map((r) => r.id));
      expect(page.runs.every((r) => r.tasks.length === 0)).toBe(true);
      token = page.nextPageToken;
      pages++;
    } while (token);
    expect(got).toEqual([...ids].reverse());
    expect(pages).toBe(3);
    const all = await orch.client.listRuns({ tenant: "*", workflowName: "listed", pageSize: 100 });
    expect(all.runs.map((r) => r.id)).toContain(other);
    expect(all.runs).toHaveLength(6);
    await waitForRun(orch.client, other);
    const succeeded = await orch.client.listRuns({ workflowName: "listed", status: RunStatus.SUCCEEDED });
    expect(succeeded.runs.map((r) => r.id)).toEqual([other]);
    await expectCode(orch.client.listRuns({ pageSize: 2, pageToken: "garbage" }), Code.InvalidArgument);
    const first = await orch.client.listRuns({ tenant: "acme", pageSize: 2 });
    await expectCode(orch.client.listRuns({ tenant: "acme", pageSize: 2, workflowName: "other", pageToken: first.nextPageToken }), Code.InvalidArgument);
    await expectCode(orch.client.listRuns({ pageSize: 1001 }), Code.InvalidArgument);
  });
});
