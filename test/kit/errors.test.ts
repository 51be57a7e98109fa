import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import {
  AbortedError,
  AlreadyExistsError,
  DomainError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  NotImplementedError,
  PermissionDeniedError,
  ResourceExhaustedError,
  UnauthenticatedError,
  UnavailableError,
  toConnectError,
} from "../../services/kit/errors.js";

const correlationId = "3f0c2a9e-1b7d-4c55-9a43-6f1f0b2d8e11";

describe("toConnectError", () => {
  const cases: { error: DomainError; code: Code; name: string }[] = [
    { error: new InvalidArgumentError("lease_ms", "must be positive"), code: Code.InvalidArgument, name: "InvalidArgumentError" },
    { error: new NotFoundError("lock \"a\" not found"), code: Code.NotFound, name: "NotFoundError" },
    { error: new AlreadyExistsError("workflow exists"), code: Code.AlreadyExists, name: "AlreadyExistsError" },
    { error: new FailedPreconditionError("run is finished"), code: Code.FailedPrecondition, name: "FailedPreconditionError" },
    { error: new AbortedError("fencing token is stale"), code: Code.Aborted, name: "AbortedError" },
    { error: new ResourceExhaustedError("rate limited"), code: Code.ResourceExhausted, name: "ResourceExhaustedError" },
    { error: new UnavailableError("policy is down"), code: Code.Unavailable, name: "UnavailableError" },
    { error: new PermissionDeniedError("viewer cannot cancel"), code: Code.PermissionDenied, name: "PermissionDeniedError" },
    { error: new UnauthenticatedError("missing token"), code: Code.Unauthenticated, name: "UnauthenticatedError" },
    { error: new NotImplementedError("Backfill arrives with issue 7"), code: Code.Unimplemented, name: "NotImplementedError" },
  ];

  for (const { error, code, name } of cases) {
    it(`maps ${name} to ${Code[code]} with its message`, () => {
      expect(error.name).toBe(name);
      const mapped = toConnectError(error, correlationId);
      expect(mapped.unexpected).toBe(false);
      expect(mapped.error).toBeInstanceOf(ConnectError);
      expect(mapped.error.code).toBe(code);
      expect(mapped.error.rawMessage).toBe(error.message);
    });
  }

  it("names the field of an InvalidArgumentError in the message", () => {
    const mapped = toConnectError(new InvalidArgumentError("lease_ms", "must be positive"), correlationId);
    expect(mapped.error.rawMessage).toBe("lease_ms: must be positive");
  });

  it("passes a ConnectError through unchanged", () => {
    const original = new ConnectError("no such key", Code.NotFound, { "x-detail": "1" });
    const mapped = toConnectError(original, correlationId);
    expect(mapped.unexpected).toBe(false);
    expect(mapped.error).toBe(original);
  });

  it("turns an unexpected Error into Internal with the correlation id and without its message or stack", () => {
    const original = new Error("password=hunter2 leaked in a secret stack");
    const mapped = toConnectError(original, correlationId);
    expect(mapped.unexpected).toBe(true);
    expect(mapped.error.code).toBe(Code.Internal);
    expect(mapped.error.message).toContain(correlationId);
    expect(mapped.error.rawMessage).toContain(correlationId);
    for (const text of [mapped.error.message, mapped.error.rawMessage]) {
      expect(text).not.toContain("hunter2");
      expect(text).not.toContain(original.message);
      expect(text).not.toContain(original.stack!.split("\n")[1].trim());
      expect(text).not.toMatch(/\n\s+at /);
    }
    // Nothing from the original is sent as metadata or details either.
    expect([...mapped.error.metadata.keys()]).toEqual([]);
    expect(mapped.error.details).toEqual([]);
  });

  it("turns non-Error throwables into Internal too", () => {
    for (const thrown of ["a string with a secret", { secret: "x" }, undefined, 42]) {
      const mapped = toConnectError(thrown, correlationId);
      expect(mapped.unexpected).toBe(true);
      expect(mapped.error.code).toBe(Code.Internal);
      expect(mapped.error.rawMessage).toContain(correlationId);
      expect(mapped.error.rawMessage).not.toContain("secret");
    }
  });

  it("treats an abort as a cancellation, not as an unexpected error", () => {
    const abort = new DOMException("The operation was aborted", "AbortError");
    const mapped = toConnectError(abort, correlationId);
    expect(mapped.unexpected).toBe(false);
    expect(mapped.error.code).toBe(Code.Canceled);
  });

  // node:timers/promises and other AbortSignal-aware APIs reject with an AbortError whose cause
  // is signal.reason; connect aborts a handler's signal with a ConnectError.
  function abortErrorFor(reason: unknown): Error {
    const controller = new AbortController();
    controller.abort(reason);
    return Object.assign(new Error("The operation was aborted", { cause: controller.signal.reason }), { name: "AbortError" });
  }

  it("keeps DeadlineExceeded when the call's deadline caused the abort", () => {
    const mapped = toConnectError(abortErrorFor(new ConnectError("the operation timed out", Code.DeadlineExceeded)), correlationId);
    expect(mapped.unexpected).toBe(false);
    expect(mapped.error.code).toBe(Code.DeadlineExceeded);
  });

  it("treats any other abort reason (client reset, shutdown) as Canceled, never as a server error", () => {
    // connect-node aborts with Internal when the client resets the stream with INTERNAL_ERROR,
    // which connect's own client does when its deadline passes.
    for (const reason of [new ConnectError("http/2 stream closed with error code INTERNAL_ERROR (0x2)", Code.Internal), undefined, "shutdown"]) {
      const mapped = toConnectError(abortErrorFor(reason), correlationId);
      expect(mapped.unexpected).toBe(false);
      expect(mapped.error.code).toBe(Code.Canceled);
    }
  });
});
