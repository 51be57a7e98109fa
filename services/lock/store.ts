import { randomUUID } from "node:crypto";
import { Code } from "@connectrpc/connect";
import { sql, type Kysely, type RawBuilder, type Transaction } from "kysely";
import type { Database } from "../kit/db/database.js";
import { DomainError, FailedPreconditionError, NotFoundError, ResourceExhaustedError } from "../kit/errors.js";
import type { Redis } from "../kit/redis.js";
import type { Logger } from "../kit/telemetry/logger.js";
import type { LockConfig } from "./config.js";
import type { LockMetrics } from "./metrics.js";
import type { LeasesTable, LockTables } from "./schema.js";
import { WatchHub, type LockEventRecord } from "./watch.js";

/**
 * The Lock service's domain: fenced leases, the shared wait queue, the reaper and cross-replica
 * wake-ups. No transport here (the handlers map requests and errors).
 *
 * Invariants (all under the resource row's lock, `lockResource`, so they hold across replicas):
 * - live leases (ended_at null, expires_at > now()) <= capacity;
 * - after every transaction that touches a resource, either it has no free slot or it has no
 *   grantable waiter (grantWaiters runs whenever capacity may have freed);
 * - a token is nextval() of one global sequence, taken while the resource row is locked, so it is
 *   strictly greater than every token granted before on that resource (see migrations.ts).
 */

const CHANNEL = "orca_lock";
/** Notify payloads must stay under Postgres' 8000-byte limit. */
const MAX_NOTIFY_BYTES = 7000;
/**
 * A waiter whose wait deadline passed is removed by its own replica within milliseconds; other
 * replicas (reaper) only remove it after this grace, so they do not race a healthy replica.
 */
const STALE_WAITER_GRACE_MS = 5_000;

export type LeaseEndReason = "released" | "expired" | "rolled_back";
export type LeaseFailureReason = "EXPIRED" | "RELEASED" | "NOT_HOLDER";

export interface LeaseRecord {
  id: string;
  tenant: string;
  resource: string;
  owner: string;
  token: bigint;
  capacity: number;
  ttlMs: number;
  grantedAt: Date;
  expiresAt: Date;
}

export interface LockState {
  tenant: string;
  resource: string;
  capacity: number;
  holders: LeaseRecord[];
  queueDepth: number;
  lastToken: bigint;
}

/** FAILED_PRECONDITION for a caller that is not the current holder; handlers attach LeaseFailure. */
export class LeaseFailureError extends FailedPreconditionError {
  constructor(
    readonly reason: LeaseFailureReason,
    readonly leaseId: string,
    readonly endedAt: Date | undefined,
    message: string,
  ) {
    super(message);
  }
}

export class DeadlineExceededError extends DomainError {
  constructor(message: string) {
    super(Code.DeadlineExceeded, message);
  }
}

export class CanceledError extends DomainError {
  constructor(message: string) {
    super(Code.Canceled, message);
  }
}

export interface AcquireInput {
  tenant: string;
  resource: string;
  owner: string;
  ttlMs: number;
  /** 0 = try-lock. Already capped by the handler to min(wait_timeout, deadline, max wait). */
  waitMs: number;
  priority: number;
  /** 0 = the capacity in effect. */
  capacity: number;
}

/** A row of orca_lock.leases as queries return it. */
type LeaseRow = LeasesTable;

function toLease(row: LeaseRow): LeaseRecord {
  return {
    id: row.id,
    tenant: row.tenant,
    resource: row.resource,
    owner: row.owner,
    token: BigInt(row.token),
    capacity: Number(row.capacity),
    ttlMs: Number(row.ttl_ms),
    grantedAt: row.granted_at,
    expiresAt: row.expires_at,
  };
}

type Db = Kysely<LockTables>;
type Tx = Transaction<LockTables>;

async function rows<T>(db: Db | Tx, query: RawBuilder<T>): Promise<T[]> {
  return (await query.execute(db)).rows;
}

interface EventRow {
  kind: string;
  subject: string;
  tenant: string;
  payload: Record<string, unknown>;
}

/**
 * One transaction's side effects, flushed just before COMMIT: event rows (same transaction) and
 * one NOTIFY (delivered by Postgres only if the transaction commits, in commit order).
 */
class TxEffects {
  readonly events: EventRow[] = [];
  readonly lockEvents: Array<Omit<LockEventRecord, "queueDepth">> = [];
  readonly grantedWaiters: Array<[string, string]> = [];
  readonly touched = new Map<string, { tenant: string; resource: string }>();
  /** Queue depths already known to the transaction (saves a query at flush). */
  readonly depthHint = new Map<string, number>();
  expiries = 0;
  grants: Array<{ waitedMs: number; queued: boolean }> = [];
  /** Expiry times of leases granted or extended here, for the local exact reaper timer. */
  expiresAt: Date[] = [];

  event(kind: string, tenant: string, resource: string, payload: Record<string, unknown>): void {
    this.events.push({ kind, subject: resource, tenant, payload });
  }

  lockEvent(type: LockEventRecord["type"], lease: LeaseRecord, occurredAt: Date): void {
    this.lockEvents.push({ type, lease, occurredAt });
    this.touched.set(`${lease.tenant}\u0000${lease.resource}`, { tenant: lease.tenant, resource: lease.resource });
  }
}

interface LocalWaiter {
  woken: boolean;
  wake: () => void;
}

export class LockStore {
  readonly replicaId = randomUUID();
  readonly hub = new WatchHub();
  private readonly db: Db;
  private readonly localWaiters = new Map<string, LocalWaiter>();
  private stopListening?: () => Promise<void>;
  private redisSub?: Redis;
  private sweepTimer?: NodeJS.Timeout;
  private exactTimer?: NodeJS.Timeout;
  private exactTimerDue = Number.POSITIVE_INFINITY;
  private sweeping?: Promise<void>;
  private sweepAgain = false;
  private lastPrune = 0;
  private closed = false;
  private readonly redisChannel = "orca:lock:wake";

  constructor(
    private readonly database: Database,
    private readonly config: LockConfig,
    private readonly logger: Logger,
    private readonly metrics: LockMetrics,
    private readonly redis?: Redis,
  ) {
    this.db = database.db.withSchema("orca_lock") as unknown as Db;
  }

  async start(): Promise<void> {
    await this.heartbeat();
    this.stopListening = await this.database.listen(CHANNEL, (payload) => this.onNotify(payload));
    if (this.redis) {
      // Optional second wake-up path: a duplicate connection in subscriber mode. Wakes are
      // idempotent (a woken waiter just tries to claim), so hearing one twice is harmless.
      try {
        const sub = this.redis.duplicate();
        sub.on("error", () => undefined);
        sub.on("message", (_channel: string, message: string) => this.onWake(message));
        await sub.subscribe(this.redisChannel);
        this.redisSub = sub;
      } catch (error) {
        this.logger.warn({ err: error }, "lock: redis wake-up channel unavailable; using LISTEN/NOTIFY only");
      }
    }
    this.sweepTimer = setInterval(() => this.kickSweep(), this.config.reaperIntervalMs);
    this.sweepTimer.unref();
    this.kickSweep();
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.sweepTimer);
    clearTimeout(this.exactTimer);
    this.hub.closeAll();
    for (const waiter of this.localWaiters.values()) waiter.wake();
    await this.sweeping?.catch(() => undefined);
    await this.stopListening?.().catch(() => undefined);
    await this.redisSub?.quit().catch(() => undefined);
    // Our waiters' calls are gone with the server; remove them (and roll back any lease handed to
    // them) now instead of waiting for another replica to notice our missing heartbeat.
    await this.dropReplicaWaiters(this.replicaId).catch((error: unknown) => this.logger.warn({ err: error }, "lock: cleanup on close failed"));
    await sql`delete from orca_lock.replicas where id = ${this.replicaId}`.execute(this.db).catch(() => undefined);
  }

  // ---------------------------------------------------------------- transactions

  private async transact<T>(fn: (tx: Tx, fx: TxEffects) => Promise<T>): Promise<T> {
    const fx = new TxEffects();
    const result = await this.db.transaction().execute(async (tx) => {
      const value = await fn(tx, fx);
      await this.flush(tx, fx);
      return value;
    });
    this.afterCommit(fx);
    return result;
  }

  private async flush(tx: Tx, fx: TxEffects): Promise<void> {
    if (fx.events.length === 0 && fx.lockEvents.length === 0 && fx.grantedWaiters.length === 0) return;
    const depths = new Map<string, number>();
    for (const [key, { tenant, resource }] of fx.touched) depths.set(key, fx.depthHint.get(key) ?? (await this.queueDepth(tx, tenant, resource)));
    const notice = {
      g: fx.grantedWaiters,
      e: fx.lockEvents.map((e) => ({
        t: e.type,
        at: e.occurredAt.toISOString(),
        d: depths.get(`${e.lease.tenant}\u0000${e.lease.resource}`) ?? 0,
        l: { ...e.lease, id: "", token: e.lease.token.toString(), grantedAt: e.lease.grantedAt.toISOString(), expiresAt: e.lease.expiresAt.toISOString() },
      })),
    };
    // Event rows and the first NOTIFY in one round trip.
    const payloads = notice.g.length > 0 || notice.e.length > 0 ? splitNotice(notice) : [];
    const eventsJson = JSON.stringify(fx.events);
    await sql`with ev as (
        insert into orca_lock.events (kind, subject, tenant, payload)
        select kind, subject, tenant, payload from jsonb_to_recordset(${eventsJson}::jsonb) as x(kind text, subject text, tenant text, payload jsonb)
      ) select case when ${payloads[0] ?? null}::text is null then null else pg_notify(${CHANNEL}, ${payloads[0] ?? ""}) end`.execute(tx);
    for (const extra of payloads.slice(1)) await sql`select pg_notify(${CHANNEL}, ${extra})`.execute(tx);
  }

  private afterCommit(fx: TxEffects): void {
    for (const grant of fx.grants) {
      this.metrics.grants.inc({ mode: grant.queued ? "queued" : "immediate" });
    }
    if (fx.expiries > 0) this.metrics.expiries.inc(fx.expiries);
    for (const at of fx.expiresAt) this.armExactTimer(at);
    if (this.redis && fx.grantedWaiters.length > 0) {
      const others = fx.grantedWaiters.filter(([, replica]) => replica !== this.replicaId);
      if (others.length > 0) void this.redis.publish(this.redisChannel, JSON.stringify(others)).catch(() => undefined);
    }
  }

  // ---------------------------------------------------------------- building blocks (in a tx)

  /** Locks (creating if needed) the resource row: the cross-replica mutex for this resource. */
  private async lockResource(tx: Tx, tenant: string, resource: string): Promise<{ capacity: number; lastToken: bigint }> {
    const [row] = await rows(
      tx,
      sql<{ capacity: number; last_token: bigint }>`insert into orca_lock.resources (tenant, name) values (${tenant}, ${resource})
        on conflict (tenant, name) do update set updated_at = orca_lock.resources.updated_at
        returning capacity, last_token`,
    );
    return { capacity: Number(row!.capacity), lastToken: BigInt(row!.last_token) };
  }

  /** Ends the resource's leases whose TTL passed (EXPIRED) and drops waiters abandoned long ago. */
  private async reap(tx: Tx, fx: TxEffects, tenant: string, resource: string): Promise<void> {
    const expired = await rows(
      tx,
      sql<LeaseRow>`update orca_lock.leases set ended_at = expires_at, end_reason = 'expired'
        where tenant = ${tenant} and resource = ${resource} and ended_at is null and expires_at <= now()
        returning *`,
    );
    for (const row of expired) {
      const lease = toLease(row);
      fx.event("lock.expired", tenant, resource, { token: lease.token.toString(), owner: lease.owner, expires_at: lease.expiresAt });
      fx.lockEvent("EXPIRED", lease, row.expires_at);
      fx.expiries++;
    }
    const stale = await rows(
      tx,
      sql<{ id: string; lease_id: string | null }>`delete from orca_lock.waiters
        where tenant = ${tenant} and resource = ${resource}
          and wait_deadline < now() - ${STALE_WAITER_GRACE_MS}::int * interval '1 millisecond'
        returning id, lease_id`,
    );
    for (const waiter of stale) {
      fx.event("lock.waiter_left", tenant, resource, { waiter: waiter.id, why: "abandoned" });
      if (waiter.lease_id) await this.rollBackLease(tx, fx, waiter.lease_id);
    }
  }

  private async counts(tx: Tx, tenant: string, resource: string): Promise<{ live: number; waiting: number; reapable: number }> {
    const [row] = await rows(
      tx,
      sql<{ live: number; waiting: number; reapable: number }>`select
          (select count(*)::int from orca_lock.leases where tenant = ${tenant} and resource = ${resource} and ended_at is null and expires_at > now()) as live,
          (select count(*)::int from orca_lock.waiters where tenant = ${tenant} and resource = ${resource} and lease_id is null and wait_deadline > now()) as waiting,
          (select count(*)::int from orca_lock.leases where tenant = ${tenant} and resource = ${resource} and ended_at is null and expires_at <= now())
          + (select count(*)::int from orca_lock.waiters where tenant = ${tenant} and resource = ${resource}
               and wait_deadline < now() - ${STALE_WAITER_GRACE_MS}::int * interval '1 millisecond') as reapable`,
    );
    return { live: Number(row!.live), waiting: Number(row!.waiting), reapable: Number(row!.reapable) };
  }

  private async queueDepth(db: Db | Tx, tenant: string, resource: string): Promise<number> {
    const [row] = await rows(
      db,
      sql<{ n: number }>`select count(*)::int as n from orca_lock.waiters
        where tenant = ${tenant} and resource = ${resource} and lease_id is null and wait_deadline > now()`,
    );
    return Number(row!.n);
  }

  private async grant(tx: Tx, fx: TxEffects, tenant: string, resource: string, owner: string, ttlMs: number, capacity: number, waitedMs: number, queued: boolean): Promise<LeaseRecord> {
    const [row] = await rows(
      tx,
      sql<LeaseRow>`with l as (
          insert into orca_lock.leases (id, tenant, resource, owner, token, capacity, ttl_ms, granted_at, expires_at)
          values (${randomUUID()}, ${tenant}, ${resource}, ${owner}, nextval('orca_lock.fencing_tokens'), ${capacity}, ${ttlMs},
                  now(), now() + ${ttlMs}::int * interval '1 millisecond')
          returning *
        ), r as (
          update orca_lock.resources set last_token = greatest(last_token, (select token from l)), updated_at = now()
          where tenant = ${tenant} and name = ${resource}
        ) select * from l`,
    );
    const lease = toLease(row!);
    fx.event("lock.acquired", tenant, resource, { token: lease.token.toString(), owner, ttl_ms: ttlMs, expires_at: lease.expiresAt, queued });
    fx.lockEvent("ACQUIRED", lease, lease.grantedAt);
    fx.grants.push({ waitedMs, queued });
    fx.expiresAt.push(lease.expiresAt);
    return lease;
  }

  /**
   * Hands free slots to the head of the queue: earliest `sort_key` (enqueued_at minus priority x
   * aging interval), then arrival order. SKIP LOCKED only skips waiter rows that their own replica
   * is deleting right now (cancel/timeout), which is exactly what we want to pass over.
   */
  private async grantWaiters(tx: Tx, fx: TxEffects, tenant: string, resource: string, capacity: number): Promise<number> {
    // Heads and the live count in one statement (no waiters, the usual case: one round trip).
    const candidates = await rows(
      tx,
      sql<{ id: string; owner: string; ttl_ms: number; replica: string; waited_ms: number; live: number }>`select id, owner, ttl_ms, replica,
          greatest(0, extract(epoch from (now() - enqueued_at)) * 1000)::float8 as waited_ms,
          (select count(*)::int from orca_lock.leases l where l.tenant = ${tenant} and l.resource = ${resource} and l.ended_at is null and l.expires_at > now()) as live
        from orca_lock.waiters
        where tenant = ${tenant} and resource = ${resource} and lease_id is null and wait_deadline > now()
        order by sort_key, seq limit ${capacity} for update skip locked`,
    );
    if (candidates.length === 0) return 0;
    const heads = candidates.slice(0, Math.max(0, capacity - Number(candidates[0]!.live)));
    for (const head of heads) {
      const lease = await this.grant(tx, fx, tenant, resource, head.owner, Number(head.ttl_ms), capacity, Number(head.waited_ms), true);
      await sql`update orca_lock.waiters set lease_id = ${lease.id} where id = ${head.id}`.execute(tx);
      fx.event("lock.waiter_granted", tenant, resource, { waiter: head.id, token: lease.token.toString() });
      fx.grantedWaiters.push([head.id, head.replica]);
    }
    return heads.length;
  }

  /** Ends a lease that was handed to a waiter who left before claiming it (never seen by a client). */
  private async rollBackLease(tx: Tx, fx: TxEffects, leaseId: string): Promise<void> {
    const [row] = await rows(
      tx,
      sql<LeaseRow>`update orca_lock.leases set ended_at = now(), end_reason = 'rolled_back'
        where id = ${leaseId} and ended_at is null returning *`,
    );
    if (!row) return;
    const lease = toLease(row);
    fx.event("lock.rolled_back", lease.tenant, lease.resource, { token: lease.token.toString() });
    fx.lockEvent("RELEASED", lease, row.ended_at!);
  }

  // ---------------------------------------------------------------- RPC operations

  async acquire(input: AcquireInput, signal: AbortSignal): Promise<{ lease: LeaseRecord; waitedMs: number }> {
    const { tenant, resource } = input;
    const started = performance.now();
    const waiterId = randomUUID();
    const local: LocalWaiter = { woken: false, wake: () => void (local.woken = true) };
    // Registered before the enqueue commits, so a NOTIFY that races our return is not lost.
    this.localWaiters.set(waiterId, local);
    try {
      const outcome = await this.transact(async (tx, fx) => {
        const res = await this.lockResource(tx, tenant, resource);
        // One round trip for the common case (nothing to reap). A separate statement from the
        // row lock on purpose: in READ COMMITTED each statement takes a fresh snapshot, so these
        // counts see everything committed by the previous holder of the lock.
        let { live, waiting, reapable } = await this.counts(tx, tenant, resource);
        if (reapable > 0) {
          await this.reap(tx, fx, tenant, resource);
          ({ live, waiting } = await this.counts(tx, tenant, resource));
        }
        let capacity = res.capacity;
        if (live === 0 && waiting === 0) {
          const wanted = input.capacity || 1;
          if (wanted !== capacity) {
            await sql`update orca_lock.resources set capacity = ${wanted}, updated_at = now() where tenant = ${tenant} and name = ${resource}`.execute(tx);
            fx.event("lock.capacity_set", tenant, resource, { capacity: wanted, previous: capacity });
            capacity = wanted;
          }
        } else if (input.capacity !== 0 && input.capacity !== capacity) {
          return { kind: "capacity" as const, capacity };
        }
        if (waiting > 0 && live < capacity) {
          // Repair the invariant first (e.g. a wake-up was lost): existing waiters go before us.
          live += await this.grantWaiters(tx, fx, tenant, resource, capacity);
          waiting = await this.queueDepth(tx, tenant, resource);
        }
        if (live < capacity && waiting === 0) {
          fx.depthHint.set(`${tenant}\u0000${resource}`, 0);
          return { kind: "granted" as const, lease: await this.grant(tx, fx, tenant, resource, input.owner, input.ttlMs, capacity, 0, false) };
        }
        if (input.waitMs <= 0) return { kind: "busy" as const, capacity, live };
        if (waiting >= this.config.maxQueue) return { kind: "full" as const, waiting };
        await sql`insert into orca_lock.waiters (id, tenant, resource, owner, priority, ttl_ms, replica, enqueued_at, sort_key, wait_deadline)
          values (${waiterId}, ${tenant}, ${resource}, ${input.owner}, ${input.priority}, ${input.ttlMs}, ${this.replicaId},
            clock_timestamp(),
            clock_timestamp() - ${input.priority * this.config.agingIntervalMs}::bigint * interval '1 millisecond',
            clock_timestamp() + ${input.waitMs}::bigint * interval '1 millisecond')`.execute(tx);
        fx.event("lock.waiter_enqueued", tenant, resource, { waiter: waiterId, owner: input.owner, priority: input.priority, wait_ms: input.waitMs });
        return { kind: "queued" as const };
      });
      switch (outcome.kind) {
        case "granted":
          this.metrics.waitSeconds.observe(0);
          return { lease: outcome.lease, waitedMs: 0 };
        case "capacity":
          throw new FailedPreconditionError(
            `capacity: resource "${resource}" has holders or waiters with capacity ${outcome.capacity}; ask with capacity 0 or ${outcome.capacity}`,
          );
        case "busy":
          throw new DeadlineExceededError(`resource "${resource}" is held (${outcome.live} of ${outcome.capacity} slots) and wait_timeout is zero`);
        case "full":
          throw new ResourceExhaustedError(`the wait queue of resource "${resource}" is full (${outcome.waiting} waiters, limit ${this.config.maxQueue})`);
        case "queued":
          break;
      }
      return await this.waitForGrant(waiterId, local, input, started, signal);
    } finally {
      this.localWaiters.delete(waiterId);
    }
  }

  private async waitForGrant(waiterId: string, local: LocalWaiter, input: AcquireInput, started: number, signal: AbortSignal) {
    const deadline = started + input.waitMs;
    this.metrics.localWaiters.inc();
    try {
      for (;;) {
        if (signal.aborted || this.closed) {
          await this.leaveQueue(waiterId, input, "canceled");
          const reason: unknown = signal.reason;
          if (reason instanceof Error) throw reason;
          throw new CanceledError(`Acquire on "${input.resource}" was canceled while waiting`);
        }
        const remaining = deadline - performance.now();
        if (remaining <= 0) {
          await this.leaveQueue(waiterId, input, "timeout");
          throw new DeadlineExceededError(`resource "${input.resource}" was not granted within the wait timeout (${input.waitMs} ms); left the queue`);
        }
        if (!local.woken) await sleepUntilWoken(local, Math.min(remaining, this.config.waiterPollMs), signal);
        if (signal.aborted || performance.now() >= deadline) continue;
        local.woken = false;
        const claimed = await this.claim(waiterId, input);
        if (claimed) {
          this.metrics.waitSeconds.observe(claimed.waitedMs / 1000);
          return claimed;
        }
      }
    } finally {
      this.metrics.localWaiters.dec();
    }
  }

  /** Takes the lease handed to our waiter row, if any (atomically deleting the row). */
  private async claim(waiterId: string, input: AcquireInput): Promise<{ lease: LeaseRecord; waitedMs: number } | undefined> {
    const [row] = await rows(
      this.db,
      sql<LeaseRow & { waited_ms: number }>`with w as (
          delete from orca_lock.waiters where id = ${waiterId} and lease_id is not null returning lease_id, enqueued_at
        ), e as (
          insert into orca_lock.events (kind, subject, tenant, payload)
          select 'lock.waiter_left', ${input.resource}, ${input.tenant}, jsonb_build_object('waiter', ${waiterId}::text, 'why', 'claimed') from w
        )
        select l.*, greatest(0, extract(epoch from (l.granted_at - w.enqueued_at)) * 1000)::float8 as waited_ms
        from w join orca_lock.leases l on l.id = w.lease_id`,
    );
    if (!row) return undefined;
    return { lease: toLease(row), waitedMs: Number(row.waited_ms) };
  }

  /** Removes our waiter (cancel/timeout); a lease handed to it in the meantime is rolled back. */
  private async leaveQueue(waiterId: string, input: AcquireInput, why: string): Promise<void> {
    await this.transact(async (tx, fx) => {
      const res = await this.lockResource(tx, input.tenant, input.resource);
      const [row] = await rows(tx, sql<{ lease_id: string | null }>`delete from orca_lock.waiters where id = ${waiterId} returning lease_id`);
      if (!row) return;
      fx.event("lock.waiter_left", input.tenant, input.resource, { waiter: waiterId, why });
      fx.touched.set(`${input.tenant}\u0000${input.resource}`, { tenant: input.tenant, resource: input.resource });
      if (row.lease_id) {
        await this.rollBackLease(tx, fx, row.lease_id);
        await this.grantWaiters(tx, fx, input.tenant, input.resource, res.capacity);
      }
    });
  }

  async release(tenant: string, leaseId: string, token: bigint): Promise<{ alreadyReleased: boolean; releasedAt: Date }> {
    const outcome = await this.transact(async (tx, fx) => {
      const found = await this.findLease(tx, tenant, leaseId, token);
      const res = await this.lockResource(tx, found.tenant, found.resource);
      // Common case in one statement: end it if it is still live.
      const [ended] = await rows(
        tx,
        sql<LeaseRow>`update orca_lock.leases set ended_at = now(), end_reason = 'released'
          where id = ${leaseId} and ended_at is null and expires_at > now() returning *`,
      );
      if (!ended) {
        const [row] = await rows(tx, sql<LeaseRow>`select * from orca_lock.leases where id = ${leaseId}`);
        if (row!.ended_at && row!.end_reason !== "expired") return { kind: "released" as const, at: row!.ended_at, already: true };
        if (!row!.ended_at) {
          // Expired but not reaped yet: reap it now (EXPIRED event) and hand the slot on.
          await this.reap(tx, fx, found.tenant, found.resource);
          await this.grantWaiters(tx, fx, found.tenant, found.resource, res.capacity);
        }
        return { kind: "expired" as const, at: row!.ended_at ?? row!.expires_at };
      }
      const lease = toLease(ended!);
      fx.event("lock.released", lease.tenant, lease.resource, { token: lease.token.toString(), owner: lease.owner });
      fx.lockEvent("RELEASED", lease, ended!.ended_at!);
      await this.grantWaiters(tx, fx, lease.tenant, lease.resource, res.capacity);
      return { kind: "released" as const, at: ended!.ended_at!, already: false };
    });
    if (outcome.kind === "expired") {
      throw new LeaseFailureError("EXPIRED", leaseId, outcome.at, `lease ${leaseId} expired at ${outcome.at.toISOString()} before this call; the resource may already belong to another owner with a higher token`);
    }
    return { alreadyReleased: outcome.already, releasedAt: outcome.at };
  }

  /** The lease named by (tenant, id), checked against the token; NotFound / NOT_HOLDER otherwise. */
  private async findLease(db: Db | Tx, tenant: string, leaseId: string, token: bigint): Promise<LeaseRow & { now: Date }> {
    const [row] = await rows(db, sql<LeaseRow & { now: Date }>`select *, now() as now from orca_lock.leases where id = ${leaseId} and tenant = ${tenant}`);
    if (!row) throw new NotFoundError(`lease_id: no lease ${leaseId} in tenant "${tenant}" (unknown, or ended more than the retention period ago)`);
    if (BigInt(row.token) !== token) {
      throw new LeaseFailureError("NOT_HOLDER", leaseId, undefined, `lease ${leaseId} does not have fencing token ${token}: the lease belongs to someone else`);
    }
    return row;
  }

  async extend(tenant: string, leaseId: string, token: bigint, ttlMs: number | undefined): Promise<LeaseRecord> {
    const [row] = await rows(
      this.db,
      sql<LeaseRow>`with u as (
          update orca_lock.leases
          set expires_at = now() + coalesce(${ttlMs ?? null}::int, ttl_ms) * interval '1 millisecond',
              ttl_ms = coalesce(${ttlMs ?? null}::int, ttl_ms)
          where id = ${leaseId} and tenant = ${tenant} and token = ${token.toString()}::bigint and ended_at is null and expires_at > now()
          returning *
        ), e as (
          insert into orca_lock.events (kind, subject, tenant, payload)
          select 'lock.extended', resource, tenant, jsonb_build_object('token', token::text, 'expires_at', expires_at, 'ttl_ms', ttl_ms) from u
        ) select * from u`,
    );
    if (row) {
      this.armExactTimer(row.expires_at);
      return toLease(row);
    }
    // Not extended: say why (each answer reflects the lease's state at this moment).
    const found = await this.findLease(this.db, tenant, leaseId, token);
    if (found.ended_at && found.end_reason !== "expired") {
      throw new LeaseFailureError("RELEASED", leaseId, found.ended_at, `lease ${leaseId} was released at ${found.ended_at.toISOString()}; acquire a new lease`);
    }
    const at = found.ended_at ?? found.expires_at;
    throw new LeaseFailureError("EXPIRED", leaseId, at, `lease ${leaseId} expired at ${at.toISOString()}; the resource may already belong to another owner with a higher token`);
  }

  async getLock(tenant: string, resource: string): Promise<LockState> {
    const [res] = await rows(this.db, sql<{ capacity: number; last_token: bigint }>`select capacity, last_token from orca_lock.resources where tenant = ${tenant} and name = ${resource}`);
    const holders = await this.holders(tenant, [resource]);
    const depth = await this.queueDepth(this.db, tenant, resource);
    const list = holders.get(resource) ?? [];
    const busy = list.length > 0 || depth > 0;
    return {
      tenant,
      resource,
      capacity: busy && res ? Number(res.capacity) : 1,
      holders: list,
      queueDepth: depth,
      lastToken: res ? BigInt(res.last_token) : 0n,
    };
  }

  private async holders(tenant: string, resources: string[]): Promise<Map<string, LeaseRecord[]>> {
    const out = new Map<string, LeaseRecord[]>();
    if (resources.length === 0) return out;
    const list = await rows(
      this.db,
      sql<LeaseRow>`select * from orca_lock.leases where tenant = ${tenant} and resource in (${sql.join(resources)})
        and ended_at is null and expires_at > now() order by resource, token`,
    );
    for (const row of list) {
      const lease = toLease(row);
      out.set(lease.resource, [...(out.get(lease.resource) ?? []), lease]);
    }
    return out;
  }

  /** Resources with a holder or a waiter, by name (bytewise), after `after`. */
  async listLocks(tenant: string, prefix: string, after: string | undefined, limit: number): Promise<{ locks: LockState[]; more: boolean }> {
    const found = await rows(
      this.db,
      sql<{ name: string; capacity: number; last_token: bigint; depth: number }>`select r.name, r.capacity, r.last_token,
          (select count(*)::int from orca_lock.waiters w where w.tenant = r.tenant and w.resource = r.name and w.lease_id is null and w.wait_deadline > now()) as depth
        from orca_lock.resources r
        where r.tenant = ${tenant} and starts_with(r.name, ${prefix}) and (${after ?? null}::text is null or r.name > ${after ?? ""})
          and (exists (select 1 from orca_lock.leases l where l.tenant = r.tenant and l.resource = r.name and l.ended_at is null and l.expires_at > now())
               or exists (select 1 from orca_lock.waiters w where w.tenant = r.tenant and w.resource = r.name and w.lease_id is null and w.wait_deadline > now()))
        order by r.name limit ${limit + 1}`,
    );
    const page = found.slice(0, limit);
    const holders = await this.holders(tenant, page.map((r) => r.name));
    return {
      locks: page.map((r) => ({
        tenant,
        resource: r.name,
        capacity: Number(r.capacity),
        holders: holders.get(r.name) ?? [],
        queueDepth: Number(r.depth),
        lastToken: BigInt(r.last_token),
      })),
      more: found.length > limit,
    };
  }

  /** Leases held now under a prefix (for WatchLocks' include_current snapshot). */
  async currentLeases(tenant: string, prefix: string): Promise<Array<{ lease: LeaseRecord; depth: number; now: Date }>> {
    const list = await rows(
      this.db,
      sql<LeaseRow & { depth: number; now: Date }>`select l.*, now() as now,
          (select count(*)::int from orca_lock.waiters w where w.tenant = l.tenant and w.resource = l.resource and w.lease_id is null and w.wait_deadline > now()) as depth
        from orca_lock.leases l where l.tenant = ${tenant} and starts_with(l.resource, ${prefix}) and l.ended_at is null and l.expires_at > now()
        order by l.resource, l.token`,
    );
    return list.map((row) => ({ lease: toLease(row), depth: Number(row.depth), now: row.now }));
  }

  /** Total waiters across replicas, for the queue-depth gauge. */
  async totalQueueDepth(): Promise<number> {
    const [row] = await rows(this.db, sql<{ n: number }>`select count(*)::int as n from orca_lock.waiters where lease_id is null and wait_deadline > now()`);
    return Number(row!.n);
  }

  // ---------------------------------------------------------------- notifications

  private onNotify(payload: string): void {
    let notice: { g?: Array<[string, string]>; e?: WireEvent[] };
    try {
      notice = JSON.parse(payload);
    } catch {
      return;
    }
    for (const [waiter, replica] of notice.g ?? []) if (replica === this.replicaId) this.localWaiters.get(waiter)?.wake();
    for (const e of notice.e ?? []) this.hub.publish(fromWire(e));
  }

  private onWake(message: string): void {
    try {
      for (const [waiter, replica] of JSON.parse(message) as Array<[string, string]>) {
        if (replica === this.replicaId) this.localWaiters.get(waiter)?.wake();
      }
    } catch {
      /* ignore malformed */
    }
  }

  // ---------------------------------------------------------------- reaper

  /** Schedules a sweep just after `expiresAt` (server time ~ local time within the skew margin). */
  private armExactTimer(expiresAt: Date): void {
    if (this.closed) return;
    const due = expiresAt.getTime() + 5;
    if (due >= this.exactTimerDue) return;
    clearTimeout(this.exactTimer);
    this.exactTimerDue = due;
    this.exactTimer = setTimeout(() => {
      this.exactTimerDue = Number.POSITIVE_INFINITY;
      this.kickSweep();
    }, Math.max(0, due - Date.now()));
    this.exactTimer.unref();
  }

  private kickSweep(): void {
    if (this.closed) return;
    if (this.sweeping) {
      this.sweepAgain = true;
      return;
    }
    this.sweeping = this.sweep()
      .catch((error: unknown) => this.logger.warn({ err: error }, "lock: reaper sweep failed"))
      .finally(() => {
        this.sweeping = undefined;
        if (this.sweepAgain && !this.closed) {
          this.sweepAgain = false;
          this.kickSweep();
        }
      });
  }

  /** For tests and the exact timer: one reaper pass now. */
  async sweep(): Promise<void> {
    await this.heartbeat();
    // Replicas that stopped heart-beating (crashed) lose their waiters.
    const deadReplicas = await rows(
      this.db,
      sql<{ replica: string }>`select distinct w.replica from orca_lock.waiters w
        where not exists (select 1 from orca_lock.replicas r where r.id = w.replica and r.heartbeat_at > now() - ${this.replicaTimeoutMs()}::int * interval '1 millisecond')`,
    );
    for (const { replica } of deadReplicas) await this.dropReplicaWaiters(replica);
    await sql`delete from orca_lock.replicas where heartbeat_at < now() - ${this.replicaTimeoutMs() * 10}::int * interval '1 millisecond'`.execute(this.db);

    // Resources with an expired lease, an abandoned waiter, or a free slot and a waiter.
    const due = await rows(
      this.db,
      sql<{ tenant: string; resource: string }>`select tenant, resource from orca_lock.leases where ended_at is null and expires_at <= now()
        union select tenant, resource from orca_lock.waiters where wait_deadline < now() - ${STALE_WAITER_GRACE_MS}::int * interval '1 millisecond'
        union select r.tenant, r.name from orca_lock.resources r
          where exists (select 1 from orca_lock.waiters w where w.tenant = r.tenant and w.resource = r.name and w.lease_id is null and w.wait_deadline > now())
            and r.capacity > (select count(*) from orca_lock.leases l where l.tenant = r.tenant and l.resource = r.name and l.ended_at is null and l.expires_at > now())
        limit 500`,
    );
    for (const { tenant, resource } of due) {
      if (this.closed) return;
      await this.transact(async (tx, fx) => {
        const res = await this.lockResource(tx, tenant, resource);
        await this.reap(tx, fx, tenant, resource);
        await this.grantWaiters(tx, fx, tenant, resource, res.capacity);
      });
    }
    // Next expiry we know of (also other replicas' leases, in case they died).
    const [next] = await rows(this.db, sql<{ at: Date | null }>`select min(expires_at) as at from orca_lock.leases where ended_at is null`);
    if (next?.at) this.armExactTimer(next.at);
    if (Date.now() - this.lastPrune > 60_000) {
      this.lastPrune = Date.now();
      await sql`delete from orca_lock.leases where ended_at is not null and ended_at < now() - ${this.config.leaseRetentionMs}::bigint * interval '1 millisecond'`.execute(this.db);
    }
  }

  private replicaTimeoutMs(): number {
    return Math.max(10 * this.config.reaperIntervalMs, 10_000);
  }

  private async heartbeat(): Promise<void> {
    await sql`insert into orca_lock.replicas (id, heartbeat_at) values (${this.replicaId}, now())
      on conflict (id) do update set heartbeat_at = now()`.execute(this.db);
  }

  private async dropReplicaWaiters(replica: string): Promise<void> {
    const targets = await rows(this.db, sql<{ tenant: string; resource: string }>`select distinct tenant, resource from orca_lock.waiters where replica = ${replica}`);
    for (const { tenant, resource } of targets) {
      await this.transact(async (tx, fx) => {
        const res = await this.lockResource(tx, tenant, resource);
        const dropped = await rows(
          tx,
          sql<{ id: string; lease_id: string | null }>`delete from orca_lock.waiters where tenant = ${tenant} and resource = ${resource} and replica = ${replica} returning id, lease_id`,
        );
        for (const w of dropped) {
          fx.event("lock.waiter_left", tenant, resource, { waiter: w.id, why: "replica gone" });
          if (w.lease_id) await this.rollBackLease(tx, fx, w.lease_id);
        }
        fx.touched.set(`${tenant}\u0000${resource}`, { tenant, resource });
        await this.grantWaiters(tx, fx, tenant, resource, res.capacity);
      });
    }
  }
}

interface WireEvent {
  t: LockEventRecord["type"];
  at: string;
  d: number;
  l: Omit<LeaseRecord, "token" | "grantedAt" | "expiresAt"> & { token: string; grantedAt: string; expiresAt: string };
}

function fromWire(e: WireEvent): LockEventRecord {
  return {
    type: e.t,
    occurredAt: new Date(e.at),
    queueDepth: e.d,
    lease: { ...e.l, token: BigInt(e.l.token), grantedAt: new Date(e.l.grantedAt), expiresAt: new Date(e.l.expiresAt) },
  };
}

/** Splits a notice into NOTIFY-sized JSON payloads (events stay in order). */
function splitNotice(notice: { g: Array<[string, string]>; e: unknown[] }): string[] {
  const whole = JSON.stringify(notice);
  if (Buffer.byteLength(whole) <= MAX_NOTIFY_BYTES) return [whole];
  const out: string[] = [JSON.stringify({ g: notice.g, e: [] })];
  let batch: unknown[] = [];
  for (const event of notice.e) {
    const next = [...batch, event];
    if (batch.length > 0 && Buffer.byteLength(JSON.stringify({ e: next })) > MAX_NOTIFY_BYTES) {
      out.push(JSON.stringify({ e: batch }));
      batch = [event];
    } else batch = next;
  }
  if (batch.length > 0) out.push(JSON.stringify({ e: batch }));
  return out;
}

function sleepUntilWoken(local: LocalWaiter, ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      local.wake = () => {
        local.woken = true;
      };
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
    local.wake = () => {
      local.woken = true;
      done();
    };
  });
}
