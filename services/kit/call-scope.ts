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

export const callScope = new AsyncLocalStorage<CallInfo>();

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
