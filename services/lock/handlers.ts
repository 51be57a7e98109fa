import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromDate, type Duration } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import {
  LeaseFailureReason,
  LeaseFailureSchema,
  LeaseSchema,
  LockEventSchema,
  LockEventType,
  LockSchema,
  type Lease,
  type LockService,
} from "../../gen/orca/lock/v1/lock_pb.js";
import { callInfoKey } from "../kit/call-scope.js";
import { InvalidArgumentError, PermissionDeniedError, ResourceExhaustedError } from "../kit/errors.js";
import type { LockConfig } from "./config.js";
import { LeaseFailureError, type LeaseRecord, type LockState, type LockStore } from "./store.js";
import type { LockEventRecord } from "./watch.js";

/**
 * Thin handlers: validate (naming the proto field), call the store, map records to messages.
 * LeaseFailureError becomes FAILED_PRECONDITION with a LeaseFailure detail here, since details
 * are a transport concern; every other domain error is mapped by the kit's error interceptor.
 */

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
// C0, DEL and C1 control characters.
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;
const MAX_TENANT_BYTES = 64;
const MAX_OWNER_BYTES = 256;
const MAX_PREFIX_BYTES = 256;
const MAX_CAPACITY = 10_000;
const WATCH_BUFFER = 10_000;

const bytes = (s: string) => Buffer.byteLength(s, "utf8");

function checkTenant(tenant: string, ctx: HandlerContext): string {
  if (bytes(tenant) > MAX_TENANT_BYTES) throw new InvalidArgumentError("tenant", `must be at most ${MAX_TENANT_BYTES} bytes (got ${bytes(tenant)})`);
  if (CONTROL.test(tenant)) throw new InvalidArgumentError("tenant", "must not contain control characters");
  // Until the security issue adds authentication there is no principal and every tenant is
  // allowed; a principal bound to a tenant may only act for it (admin/system roles for any).
  const principal = ctx.values.get(callInfoKey)?.principal;
  if (principal?.tenant !== undefined && principal.tenant !== tenant && !principal.roles.some((r) => r === "admin" || r === "system")) {
    throw new PermissionDeniedError(`tenant: ${principal.subject} may not act for tenant "${tenant}"`);
  }
  return tenant;
}

function checkResource(resource: string, config: LockConfig, field = "resource"): string {
  if (resource.length === 0) throw new InvalidArgumentError(field, "must not be empty");
  if (bytes(resource) > config.maxResourceBytes) {
    throw new InvalidArgumentError(field, `must be at most ${config.maxResourceBytes} bytes of UTF-8 (got ${bytes(resource)})`);
  }
  if (CONTROL.test(resource)) throw new InvalidArgumentError(field, "must not contain control characters");
  return resource;
}

function checkPrefix(prefix: string): string {
  if (bytes(prefix) > MAX_PREFIX_BYTES) throw new InvalidArgumentError("prefix", `must be at most ${MAX_PREFIX_BYTES} bytes (got ${bytes(prefix)})`);
  return prefix;
}

/** Duration to whole milliseconds (rounded up, so 0.5 ms is 1 ms, not a zero TTL); undefined if unset. */
function durationToMs(field: string, d: Duration | undefined): number | undefined {
  if (!d) return undefined;
  if (d.seconds < 0n || d.nanos < 0) throw new InvalidArgumentError(field, "must not be negative");
  if (d.nanos > 999_999_999) throw new InvalidArgumentError(field, "nanos must be below 1e9");
  if (d.seconds > 10_000_000_000n) throw new InvalidArgumentError(field, "is far too large");
  return Number(d.seconds) * 1000 + Math.ceil(d.nanos / 1_000_000);
}

function checkTtl(field: string, d: Duration | undefined, config: LockConfig, required: boolean): number | undefined {
  const ms = durationToMs(field, d);
  if (ms === undefined) {
    if (required) throw new InvalidArgumentError(field, `is required: a duration above zero and at most ${config.maxTtlMs} ms`);
    return undefined;
  }
  if (ms <= 0) throw new InvalidArgumentError(field, `must be greater than zero (at most ${config.maxTtlMs} ms)`);
  if (ms > config.maxTtlMs) throw new InvalidArgumentError(field, `must be at most the server's maximum TTL of ${config.maxTtlMs} ms (got ${ms} ms)`);
  return ms;
}

function checkLeaseRef(leaseId: string, token: bigint): void {
  if (leaseId === "") throw new InvalidArgumentError("lease_id", "must not be empty");
  if (!UUID.test(leaseId)) throw new InvalidArgumentError("lease_id", "must be a UUID as returned by Acquire");
  if (token <= 0n) throw new InvalidArgumentError("fencing_token", "must be positive (the token returned with the lease)");
}

export function leaseMessage(lease: LeaseRecord, withId: boolean): Lease {
  return create(LeaseSchema, {
    leaseId: withId ? lease.id : "",
    tenant: lease.tenant,
    resource: lease.resource,
    owner: lease.owner,
    fencingToken: lease.token,
    grantedAt: timestampFromDate(lease.grantedAt),
    expiresAt: timestampFromDate(lease.expiresAt),
    ttl: durationFromMs(lease.ttlMs),
    capacity: lease.capacity,
  });
}

function lockMessage(state: LockState) {
  return create(LockSchema, {
    tenant: state.tenant,
    resource: state.resource,
    capacity: state.capacity,
    holders: state.holders.map((h) => leaseMessage(h, false)),
    queueDepth: state.queueDepth,
    lastFencingToken: state.lastToken,
  });
}

const EVENT_TYPES: Record<LockEventRecord["type"], LockEventType> = {
  ACQUIRED: LockEventType.ACQUIRED,
  RELEASED: LockEventType.RELEASED,
  EXPIRED: LockEventType.EXPIRED,
};

const FAILURE_REASONS = {
  EXPIRED: LeaseFailureReason.EXPIRED,
  RELEASED: LeaseFailureReason.RELEASED,
  NOT_HOLDER: LeaseFailureReason.NOT_HOLDER,
} as const;

/** FAILED_PRECONDITION with a LeaseFailure detail (so clients need not parse the message). */
function withLeaseFailure<T>(fn: () => Promise<T>): Promise<T> {
  return fn().catch((error: unknown) => {
    if (error instanceof LeaseFailureError) {
      throw new ConnectError(error.message, Code.FailedPrecondition, undefined, [
        {
          desc: LeaseFailureSchema,
          value: {
            reason: FAILURE_REASONS[error.reason],
            leaseId: error.leaseId,
            endedAt: error.endedAt ? timestampFromDate(error.endedAt) : undefined,
          },
        },
      ]);
    }
    throw error;
  });
}

interface PageToken {
  t: string;
  p: string;
  a: string;
}

function encodePageToken(token: PageToken): string {
  return Buffer.from(JSON.stringify(token)).toString("base64url");
}

function decodePageToken(raw: string, tenant: string, prefix: string): string | undefined {
  if (raw === "") return undefined;
  let token: PageToken;
  try {
    token = JSON.parse(Buffer.from(raw, "base64url").toString("utf8")) as PageToken;
  } catch {
    throw new InvalidArgumentError("page_token", "is malformed; pass next_page_token from a previous response unchanged");
  }
  if (typeof token?.a !== "string" || typeof token.t !== "string" || typeof token.p !== "string") {
    throw new InvalidArgumentError("page_token", "is malformed; pass next_page_token from a previous response unchanged");
  }
  if (token.t !== tenant || token.p !== prefix) throw new InvalidArgumentError("page_token", "belongs to a query with another tenant or prefix");
  return token.a;
}

export function lockHandlers(store: LockStore, config: LockConfig): Partial<ServiceImpl<typeof LockService>> {
  return {
    async acquire(req, ctx) {
      const tenant = checkTenant(req.tenant, ctx);
      const resource = checkResource(req.resource, config);
      if (bytes(req.owner) > MAX_OWNER_BYTES) throw new InvalidArgumentError("owner", `must be at most ${MAX_OWNER_BYTES} bytes (got ${bytes(req.owner)})`);
      const ttlMs = checkTtl("ttl", req.ttl, config, true)!;
      const waitMs = durationToMs("wait_timeout", req.waitTimeout) ?? 0;
      if (waitMs > config.maxWaitMs) throw new InvalidArgumentError("wait_timeout", `must be at most the server's maximum wait of ${config.maxWaitMs} ms (got ${waitMs} ms)`);
      if (req.priority < 0 || req.priority > 100) throw new InvalidArgumentError("priority", `must be from 0 to 100 (got ${req.priority})`);
      if (req.capacity < 0 || req.capacity > MAX_CAPACITY) throw new InvalidArgumentError("capacity", `must be from 0 to ${MAX_CAPACITY} (got ${req.capacity})`);
      const owner = req.owner || ctx.values.get(callInfoKey)?.principal?.subject || "anonymous";
      // The effective wait is the smaller of wait_timeout and the call's deadline; the deadline
      // itself also aborts ctx.signal, which takes the waiter out of the queue.
      const deadlineMs = ctx.timeoutMs();
      const effectiveWait = deadlineMs === undefined ? waitMs : Math.min(waitMs, Math.max(0, deadlineMs));
      const { lease, waitedMs } = await store.acquire(
        { tenant, resource, owner, ttlMs, waitMs: effectiveWait, priority: req.priority, capacity: req.capacity },
        ctx.signal,
      );
      return { lease: leaseMessage(lease, true), waited: durationFromMs(Math.round(waitedMs)) };
    },

    async release(req, ctx) {
      const tenant = checkTenant(req.tenant, ctx);
      checkLeaseRef(req.leaseId, req.fencingToken);
      const result = await withLeaseFailure(() => store.release(tenant, req.leaseId.toLowerCase(), req.fencingToken));
      return { alreadyReleased: result.alreadyReleased, releasedAt: timestampFromDate(result.releasedAt) };
    },

    async extend(req, ctx) {
      const tenant = checkTenant(req.tenant, ctx);
      checkLeaseRef(req.leaseId, req.fencingToken);
      const ttlMs = checkTtl("ttl", req.ttl, config, false);
      const lease = await withLeaseFailure(() => store.extend(tenant, req.leaseId.toLowerCase(), req.fencingToken, ttlMs));
      return { lease: leaseMessage(lease, true) };
    },

    async *keepAlive(requests, ctx) {
      let first: { tenant: string; leaseId: string } | undefined;
      for await (const req of requests) {
        const tenant = checkTenant(req.tenant, ctx);
        checkLeaseRef(req.leaseId, req.fencingToken);
        const leaseId = req.leaseId.toLowerCase();
        first ??= { tenant, leaseId };
        if (first.leaseId !== leaseId) throw new InvalidArgumentError("lease_id", `every message of a KeepAlive stream must name lease ${first.leaseId}`);
        if (first.tenant !== tenant) throw new InvalidArgumentError("tenant", `every message of a KeepAlive stream must name tenant "${first.tenant}"`);
        const ttlMs = checkTtl("ttl", req.ttl, config, false);
        const lease = await withLeaseFailure(() => store.extend(tenant, leaseId, req.fencingToken, ttlMs));
        yield { lease: leaseMessage(lease, true) };
      }
    },

    async getLock(req, ctx) {
      const tenant = checkTenant(req.tenant, ctx);
      const resource = checkResource(req.resource, config);
      return { lock: lockMessage(await store.getLock(tenant, resource)) };
    },

    async listLocks(req, ctx) {
      const tenant = checkTenant(req.tenant, ctx);
      const prefix = checkPrefix(req.prefix);
      if (req.pageSize < 0 || req.pageSize > 1000) throw new InvalidArgumentError("page_size", `must be from 0 to 1000 (got ${req.pageSize})`);
      const after = decodePageToken(req.pageToken, tenant, prefix);
      const { locks, more } = await store.listLocks(tenant, prefix, after, req.pageSize || 50);
      const last = locks.at(-1);
      return {
        locks: locks.map(lockMessage),
        nextPageToken: more && last ? encodePageToken({ t: tenant, p: prefix, a: last.resource }) : "",
      };
    },

    async *watchLocks(req, ctx) {
      const tenant = checkTenant(req.tenant, ctx);
      const prefix = checkPrefix(req.prefix);
      if (store.hub.size >= config.maxWatchers) {
        throw new ResourceExhaustedError(`too many open WatchLocks streams on this replica (limit ${config.maxWatchers}); close some or retry later`);
      }
      // Subscribe before the snapshot so nothing between the two is lost.
      const sub = store.hub.subscribe(tenant, prefix, {
        maxBuffered: WATCH_BUFFER,
        overflowError: () => new ResourceExhaustedError(`WatchLocks consumer fell ${WATCH_BUFFER} events behind; reconnect with include_current to resync`),
        signal: ctx.signal,
      });
      try {
        const seen = new Set<string>();
        if (req.includeCurrent) {
          for (const { lease, depth, now } of await store.currentLeases(tenant, prefix)) {
            seen.add(`${lease.resource}\u0000${lease.token}`);
            yield { event: create(LockEventSchema, { type: LockEventType.ACQUIRED, lease: leaseMessage(lease, false), occurredAt: timestampFromDate(now), queueDepth: depth, initial: true }) };
          }
        }
        for await (const event of sub.events()) {
          // An ACQUIRED already reported in the snapshot is not reported twice.
          if (event.type === "ACQUIRED" && seen.delete(`${event.lease.resource}\u0000${event.lease.token}`)) continue;
          yield {
            event: create(LockEventSchema, {
              type: EVENT_TYPES[event.type],
              lease: leaseMessage(event.lease, false),
              occurredAt: timestampFromDate(event.occurredAt),
              queueDepth: event.queueDepth,
            }),
          };
        }
      } finally {
        sub.close();
      }
    },
  };
}
