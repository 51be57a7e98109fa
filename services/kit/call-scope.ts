import { AsyncLocalStorage } from "node:async_hooks";
import { randomUUID } from "node:crypto";
import { createContextKey } from "@connectrpc/connect";

/**
 * What the kit knows about the call being served, available to handlers through
 * `context.values.get(callInfoKey)` and to outgoing client calls through AsyncLocalStorage,
 * which is how the correlation id reaches the next service without being passed by hand.
 */
export interface CallInfo {
  correlationId: string;
  /** The authenticated principal, set by the auth interceptor when it runs. */
  principal?: { subject: string; roles: string[]; tenant?: string };
}

export const callInfoKey = createContextKey<CallInfo | undefined>(undefined, { description: "orca call info" });

const storage = new AsyncLocalStorage<CallInfo>();
let scopeRead = false;

/**
 * The served call's CallInfo across its awaits, for outgoing calls to pass on.
 *
 * It is entered only once something in this process reads it, that is once an outgoing client
 * with propagation exists (`readCallScope()`). The first AsyncLocalStorage.run() turns on
 * async_hooks for the life of the process, and from then on every promise and every native
 * async resource (each socket write) pays a hook: a few microseconds per call. A service that
 * calls no other service (Lock, Cache, Policy under `orca serve`) has no reader and never pays.
 */
export const callScope = {
  run: runInScope,
  getStore(): CallInfo | undefined {
    return storage.getStore();
  },
};

// fn's arguments are passed through (no closure per call on the hot path).
function runInScope<R>(info: CallInfo, fn: () => R): R;
function runInScope<A, B, R>(info: CallInfo, fn: (a: A, b: B) => R, a: A, b: B): R;
function runInScope<A, B, R>(info: CallInfo, fn: (a?: A, b?: B) => R, a?: A, b?: B): R {
  return scopeRead ? storage.run(info, fn, a, b) : fn(a, b);
}

/** Declares that this process reads the call scope (outgoing propagation): calls enter it from now on. */
export function readCallScope(): void {
  scopeRead = true;
}

const REQUEST_ID = /^[A-Za-z0-9._:\-]{1,128}$/;
const TRACEPARENT = /^[\da-f]{2}-([\da-f]{32})-[\da-f]{16}-[\da-f]{2}$/;

/**
 * The correlation id of a call: the caller's x-request-id when it is well formed, else the trace
 * id of its traceparent, else a new UUID. Ill-formed ids are replaced, never echoed, so a
 * caller cannot inject text into our logs.
 */
export function correlationIdFrom(requestId: string | null | undefined, traceparent: string | null | undefined): string {
  if (requestId && REQUEST_ID.test(requestId)) return requestId;
  const trace = traceparent ? TRACEPARENT.exec(traceparent) : null;
  if (trace && trace[1] !== "00000000000000000000000000000000") return trace[1];
  return randomUUID();
}

/**
 * The tenant a handler must confine itself to for objects addressed by id alone: the end user's
 * tenant, or undefined when the caller may see every tenant (a mesh service acting for its own
 * caller, an admin of "*", or authentication off in development). Such an object of another
 * tenant is answered NotFound, as if it did not exist.
 */
export function callerTenant(values: { get<T>(key: import("@connectrpc/connect").ContextKey<T>): T }): string | undefined {
  const principal = values.get(callInfoKey)?.principal;
  if (!principal || principal.tenant === undefined || principal.tenant === "*") return undefined;
  return principal.tenant;
}
