import { Code, ConnectError } from "@connectrpc/connect";

/**
 * Domain errors: what domain modules throw. They carry no transport, and the kit's error
 * interceptor turns them into Connect codes. Anything else that escapes a handler becomes
 * Internal with the correlation id, never a stack trace.
 */
export class DomainError extends Error {
  constructor(
    readonly code: Code,
    message: string,
  ) {
    super(message);
    this.name = new.target.name;
  }
}

/** A request field is malformed; the message names the field. */
export class InvalidArgumentError extends DomainError {
  constructor(
    readonly field: string,
    reason: string,
  ) {
    super(Code.InvalidArgument, `${field}: ${reason}`);
  }
}

export class NotFoundError extends DomainError {
  constructor(message: string) {
    super(Code.NotFound, message);
  }
}

export class AlreadyExistsError extends DomainError {
  constructor(message: string) {
    super(Code.AlreadyExists, message);
  }
}

/** The object is in the wrong state for this call. */
export class FailedPreconditionError extends DomainError {
  constructor(message: string) {
    super(Code.FailedPrecondition, message);
  }
}

/** The caller lost a race (or a fencing check); retrying the whole operation may succeed. */
export class AbortedError extends DomainError {
  constructor(message: string) {
    super(Code.Aborted, message);
  }
}

export class ResourceExhaustedError extends DomainError {
  constructor(message: string) {
    super(Code.ResourceExhausted, message);
  }
}

export class UnavailableError extends DomainError {
  constructor(message: string) {
    super(Code.Unavailable, message);
  }
}

export class PermissionDeniedError extends DomainError {
  constructor(message: string) {
    super(Code.PermissionDenied, message);
  }
}

export class UnauthenticatedError extends DomainError {
  constructor(message: string) {
    super(Code.Unauthenticated, message);
  }
}

/** A feature that a later issue implements; answered as Unimplemented, never a fake success. */
export class NotImplementedError extends DomainError {
  constructor(message: string) {
    super(Code.Unimplemented, message);
  }
}

/**
 * Maps anything thrown by a handler to the ConnectError sent to the client. Unexpected errors
 * keep their detail in the server log only; the client sees the correlation id to quote.
 */
export function toConnectError(error: unknown, correlationId: string): { error: ConnectError; unexpected: boolean } {
  if (error instanceof ConnectError) return { error, unexpected: false };
  if (error instanceof DomainError) {
    return { error: new ConnectError(error.message, error.code, undefined, undefined, error), unexpected: false };
  }
  if (isAbortError(error)) {
    // The handler was aborted: by its deadline (connect aborts the handler's signal with a
    // DeadlineExceeded ConnectError, which AbortSignal-aware APIs such as timers/promises pass on
    // as the AbortError's cause), or because the client went away or the server is shutting down,
    // which is Canceled whatever HTTP/2 reset code the client used (connect-node turns a reset
    // with INTERNAL_ERROR into an Internal reason; that is not a server fault).
    const cause = (error as Error).cause;
    if (cause instanceof ConnectError && cause.code === Code.DeadlineExceeded) return { error: cause, unexpected: false };
    return { error: ConnectError.from(error), unexpected: false };
  }
  return {
    error: new ConnectError(`internal error (correlation id ${correlationId})`, Code.Internal, undefined, undefined, error),
    unexpected: true,
  };
}

function isAbortError(error: unknown): boolean {
  return error instanceof Error && (error.name === "AbortError" || error.name === "TimeoutError");
}
