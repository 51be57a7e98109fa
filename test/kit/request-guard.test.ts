import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createContextValues, type UnaryRequest } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { LockService } from "../../gen/orca/lock/v1/lock_pb.js";
import { SchedulerService } from "../../gen/orca/scheduler/v1/scheduler_pb.js";
import { requestGuardInterceptor } from "../../services/kit/request-guard.js";

/** The kit rejects values no handler can store (NUL in text, impossible times) before handlers run. */
async function guard(service: typeof LockService | typeof SchedulerService, methodName: string, init: Record<string, unknown>) {
  const method = service.methods.find((m) => m.name === methodName)!;
  let reached = false;
  const next = async (req: UnaryRequest) => {
    reached = true;
    return { stream: false, service, method, header: new Headers(), trailer: new Headers(), message: req.message } as never;
  };
  const req = {
    stream: false,
    service,
    method,
    requestMethod: "POST",
    url: "http://test",
    signal: new AbortController().signal,
    header: new Headers(),
    contextValues: createContextValues(),
    message: create(method.input, init as never),
  } as unknown as UnaryRequest;
  try {
    await requestGuardInterceptor()(next as never)(req);
    return { reached, error: undefined };
  } catch (error) {
    return { reached, error: ConnectError.from(error) };
  }
}

describe("request guard", () => {
  it("lets ordinary requests through", async () => {
    const result = await guard(LockService, "Acquire", { resource: "a/b", ttl: { seconds: 10n } });
    expect(result).toEqual({ reached: true, error: undefined });
  });

  it.each([
    ["a NUL in a top-level string", LockService, "Acquire", { resource: "a\u0000b" }, /^resource: must not contain NUL/],
    ["a NUL in a nested string", SchedulerService, "CreateSchedule", { schedule: { name: "x\u0000" } }, /^schedule\.name: must not contain NUL/],
    ["a NUL in a list item", SchedulerService, "ListFirings", { outcomes: [], scheduleId: "\u0000" }, /^schedule_id: must not contain NUL/],
    ["a Timestamp before year 1", SchedulerService, "ListFirings", { scheduledAfter: { seconds: -62135596801n } }, /^scheduled_after: must be a time between 0001-01-01 and 9999-12-31/],
    ["a Timestamp after year 9999", SchedulerService, "ListFirings", { scheduledBefore: { seconds: 253402300800n } }, /^scheduled_before: must be a time/],
    ["Timestamp nanos out of range", SchedulerService, "ListFirings", { scheduledAfter: { seconds: 0n, nanos: 1_000_000_000 } }, /nanos must be 0 to 999999999/],
    ["a Duration beyond 10000 years", LockService, "Acquire", { resource: "r", ttl: { seconds: 315576000001n } }, /^ttl: must be within/],
    ["Duration nanos of the wrong sign", LockService, "Acquire", { resource: "r", ttl: { seconds: 1n, nanos: -1 } }, /^ttl: nanos out of range or of the wrong sign/],
  ])("rejects %s with InvalidArgument naming the field", async (_name, service, method, init, message) => {
    const result = await guard(service, method, init);
    expect(result.reached).toBe(false);
    expect(result.error?.code).toBe(Code.InvalidArgument);
    expect(result.error?.rawMessage).toMatch(message);
  });
});
