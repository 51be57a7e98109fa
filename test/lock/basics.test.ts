import { Code } from "@connectrpc/connect";
import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { create } from "@bufbuild/protobuf";
import { KeepAliveRequestSchema, LeaseFailureReason, LeaseFailureSchema, LockEventType, LockService, type KeepAliveRequest, type LockEvent } from "../../gen/orca/lock/v1/lock_pb.js";
import { LeaseLostError, withLock } from "../../services/lock/client.js";
import { postgresAvailable } from "../support/postgres.js";
import type { ServiceHarness } from "../support/service-harness.js";
import { acquire, eventually, expectCode, ms, openBackend, release, sleep, snapshot, startLock, type Backend, type BackendKind, type LockClient } from "./support.js";

/**
 * The Lock service's behaviour over real gRPC, on PGlite (always) and on real Postgres (when
 * DATABASE_URL is set). Replica and fairness tests that need real concurrency are in
 * replicas.test.ts (Postgres only).
 */
const backends: BackendKind[] = ["pglite", ...(postgresAvailable ? (["postgres"] as const) : [])];

describe.each(backends)("lock service on %s", (kind) => {
  let backend: Backend;
  let harness: ServiceHarness;
  let client: LockClient;

  beforeAll(async () => {
    backend = await openBackend(kind);
    harness = await startLock(backend.database, { ORCA_LOCK_REAPER_INTERVAL_MS: "100" });
    client = harness.client(LockService);
  }, 60_000);
  afterAll(async () => {
    await harness?.stop();
    await backend?.cleanup();
  });

  it("keeps mutual exclusion with strictly increasing tokens for 20 concurrent clients on one resource", async () => {
    let inside = 0;
    let maxInside = 0;
    let lastToken = 0n;
    const tokens: bigint[] = [];
    await Promise.all(
      Array.from({ length: 20 }, async (_, i) => {
        for (let round = 0; round < 3; round++) {
          const lease = await acquire(client, "mutex/one", { owner: `client-${i}`, ttlMs: 30_000, waitMs: 60_000 });
          inside++;
          maxInside = Math.max(maxInside, inside);
          // Exclusive, so grants happen one after the other: each token beats the previous holder's.
          expect(lease.fencingToken).toBeGreaterThan(lastToken);
          lastToken = lease.fencingToken;
          tokens.push(lease.fencingToken);
          await sleep(2);
          inside--;
          const res = await release(client, lease);
          expect(res.alreadyReleased).toBe(false);
        }
      }),
    );
    expect(maxInside).toBe(1);
    expect(tokens).toHaveLength(60);
    expect(new Set(tokens).size).toBe(60);
    const { lock } = await client.getLock({ resource: "mutex/one" });
    expect(lock!.holders).toHaveLength(0);
    expect(lock!.queueDepth).toBe(0);
    expect(lock!.lastFencingToken).toBe(lastToken);
  }, 60_000);

  it("takes the lease from a holder that stops renewing after its TTL and gives the waiter a higher token", async () => {
    const stale = await acquire(client, "expiry/one", { ttlMs: 400, owner: "stale" });
    const before = Date.now();
    const next = await acquire(client, "expiry/one", { ttlMs: 10_000, waitMs: 10_000, owner: "next" });
    expect(Date.now() - before).toBeGreaterThanOrEqual(300);
    expect(next.fencingToken).toBeGreaterThan(stale.fencingToken);
    // The stale holder learns it lost the lease, and why, from the LeaseFailure detail.
    const extendError = await expectCode(client.extend({ leaseId: stale.leaseId, fencingToken: stale.fencingToken }), Code.FailedPrecondition, /expired/);
    expect(extendError.findDetails(LeaseFailureSchema)[0]?.reason).toBe(LeaseFailureReason.EXPIRED);
    const releaseError = await expectCode(release(client, stale), Code.FailedPrecondition, /expired/);
    expect(releaseError.findDetails(LeaseFailureSchema)[0]?.reason).toBe(LeaseFailureReason.EXPIRED);
    const { lock } = await client.getLock({ resource: "expiry/one" });
    expect(lock!.holders.map((h) => h.owner)).toEqual(["next"]);
    await release(client, next);
  });

  it("never exceeds a semaphore's capacity", async () => {
    let inside = 0;
    let maxInside = 0;
    await Promise.all(
      Array.from({ length: 10 }, async () => {
        for (let round = 0; round < 3; round++) {
          const lease = await acquire(client, "sem/three", { capacity: 3, ttlMs: 30_000, waitMs: 60_000 });
          expect(lease.capacity).toBe(3);
          inside++;
          maxInside = Math.max(maxInside, inside);
          const { lock } = await client.getLock({ resource: "sem/three" });
          expect(lock!.holders.length).toBeLessThanOrEqual(3);
          await sleep(10);
          inside--;
          await release(client, lease);
        }
      }),
    );
    expect(maxInside).toBeLessThanOrEqual(3);
    expect(maxInside).toBeGreaterThan(1);
    // While held, a different capacity is refused and the message names the one in effect.
    const held = await acquire(client, "sem/three", { capacity: 3 });
    await expectCode(acquire(client, "sem/three", { capacity: 2 }), Code.FailedPrecondition, /capacity 3/);
    await release(client, held);
  }, 60_000);

  it("rejects Release and Extend from a non-holder, saying expired vs someone else's; Release is idempotent", async () => {
    const mine = await acquire(client, "owner/one", { ttlMs: 30_000 });
    const wrongToken = mine.fencingToken + 1000n;
    let error = await expectCode(client.release({ leaseId: mine.leaseId, fencingToken: wrongToken }), Code.FailedPrecondition, /someone else/);
    expect(error.findDetails(LeaseFailureSchema)[0]?.reason).toBe(LeaseFailureReason.NOT_HOLDER);
    error = await expectCode(client.extend({ leaseId: mine.leaseId, fencingToken: wrongToken, ttl: ms(1000) }), Code.FailedPrecondition, /someone else/);
    expect(error.findDetails(LeaseFailureSchema)[0]?.reason).toBe(LeaseFailureReason.NOT_HOLDER);
    // Still held, unchanged.
    let { lock } = await client.getLock({ resource: "owner/one" });
    expect(lock!.holders.map((h) => h.fencingToken)).toEqual([mine.fencingToken]);

    const first = await release(client, mine);
    expect(first.alreadyReleased).toBe(false);
    const again = await release(client, mine);
    expect(again.alreadyReleased).toBe(true);
    expect(again.releasedAt).toEqual(first.releasedAt);
    error = await expectCode(client.extend({ leaseId: mine.leaseId, fencingToken: mine.fencingToken }), Code.FailedPrecondition, /released/);
    expect(error.findDetails(LeaseFailureSchema)[0]?.reason).toBe(LeaseFailureReason.RELEASED);

    // The next holder's lease cannot be released with the old holder's token.
    const theirs = await acquire(client, "owner/one", { ttlMs: 30_000 });
    await expectCode(client.release({ leaseId: theirs.leaseId, fencingToken: mine.fencingToken }), Code.FailedPrecondition, /someone else/);
    ({ lock } = await client.getLock({ resource: "owner/one" }));
    expect(lock!.holders.map((h) => h.fencingToken)).toEqual([theirs.fencingToken]);
    // Extend keeps the token and moves the expiry by the server's clock.
    const extended = (await client.extend({ leaseId: theirs.leaseId, fencingToken: theirs.fencingToken, ttl: ms(60_000) })).lease!;
    expect(extended.fencingToken).toBe(theirs.fencingToken);
    expect(extended.expiresAt!.seconds).toBeGreaterThan(theirs.expiresAt!.seconds);
    await release(client, theirs);
  });

  it("answers bad input with InvalidArgument or NotFound naming the problem, and changes nothing", async () => {
    const held = await acquire(client, "bad/held", { ttlMs: 600_000 });
    const before = await snapshot(backend.database);
    const unknown = "3b241101-e2bb-4255-8caf-4136c566a962";
    const base = { resource: "bad/x", ttl: ms(1000) };
    const cases: Array<[string, () => Promise<unknown>, Code, RegExp]> = [
      ["empty resource", () => client.acquire({ ...base, resource: "" }), Code.InvalidArgument, /^resource: must not be empty/],
      ["oversized resource", () => client.acquire({ ...base, resource: "r".repeat(257) }), Code.InvalidArgument, /^resource: must be at most 256 bytes/],
      ["multibyte resource over 256 bytes", () => client.acquire({ ...base, resource: "é".repeat(129) }), Code.InvalidArgument, /^resource: .*258/],
      ["control character", () => client.acquire({ ...base, resource: "a\nb" }), Code.InvalidArgument, /^resource: must not contain control/],
      ["missing ttl", () => client.acquire({ resource: "bad/x" }), Code.InvalidArgument, /^ttl: is required/],
      ["zero ttl", () => client.acquire({ ...base, ttl: ms(0) }), Code.InvalidArgument, /^ttl: must be greater than zero/],
      ["ttl above max", () => client.acquire({ ...base, ttl: ms(3_600_001) }), Code.InvalidArgument, /^ttl: must be at most the server's maximum TTL of 3600000 ms/],
      ["negative wait", () => client.acquire({ ...base, waitTimeout: { seconds: -1n, nanos: 0 } }), Code.InvalidArgument, /^wait_timeout: must not be negative/],
      ["wait above max", () => client.acquire({ ...base, waitTimeout: ms(600_001) }), Code.InvalidArgument, /^wait_timeout: must be at most/],
      ["priority", () => client.acquire({ ...base, priority: 101 }), Code.InvalidArgument, /^priority: must be from 0 to 100/],
      ["capacity", () => client.acquire({ ...base, capacity: -1 }), Code.InvalidArgument, /^capacity: must be from 0 to 10000/],
      ["owner", () => client.acquire({ ...base, owner: "o".repeat(300) }), Code.InvalidArgument, /^owner: must be at most 256 bytes/],
      ["tenant", () => client.acquire({ ...base, tenant: "t".repeat(65) }), Code.InvalidArgument, /^tenant: must be at most 64 bytes/],
      ["release empty lease id", () => client.release({ leaseId: "", fencingToken: 1n }), Code.InvalidArgument, /^lease_id: must not be empty/],
      ["release non-uuid", () => client.release({ leaseId: "lease-1", fencingToken: 1n }), Code.InvalidArgument, /^lease_id: must be a UUID/],
      ["release zero token", () => client.release({ leaseId: held.leaseId, fencingToken: 0n }), Code.InvalidArgument, /^fencing_token: must be positive/],
      ["release unknown lease", () => client.release({ leaseId: unknown, fencingToken: 1n }), Code.NotFound, /^lease_id: no lease 3b241101/],
      ["release in another tenant", () => client.release({ tenant: "other", leaseId: held.leaseId, fencingToken: held.fencingToken }), Code.NotFound, /^lease_id: no lease/],
      ["extend unknown lease", () => client.extend({ leaseId: unknown, fencingToken: 1n }), Code.NotFound, /^lease_id: no lease/],
      ["extend zero ttl", () => client.extend({ leaseId: held.leaseId, fencingToken: held.fencingToken, ttl: ms(0) }), Code.InvalidArgument, /^ttl: must be greater than zero/],
      ["extend ttl above max", () => client.extend({ leaseId: held.leaseId, fencingToken: held.fencingToken, ttl: ms(7_200_000) }), Code.InvalidArgument, /^ttl: must be at most/],
      ["get empty resource", () => client.getLock({ resource: "" }), Code.InvalidArgument, /^resource: must not be empty/],
      ["list page size", () => client.listLocks({ pageSize: 1001 }), Code.InvalidArgument, /^page_size: must be from 0 to 1000/],
      ["list bad page token", () => client.listLocks({ pageToken: "!!" }), Code.InvalidArgument, /^page_token: is malformed/],
      ["watch prefix", async () => {
        for await (const _ of client.watchLocks({ prefix: "p".repeat(257) })) break;
      }, Code.InvalidArgument, /^prefix: must be at most 256 bytes/],
    ];
    for (const [name, call, code, message] of cases) {
      const error = await expectCode(call(), code, message).catch((e: unknown) => {
        throw new Error(`case "${name}": ${String(e)}`);
      });
      expect(error.code, name).toBe(code);
    }
    expect(await snapshot(backend.database)).toEqual(before);
    const { lock } = await client.getLock({ resource: "bad/held" });
    expect(lock!.holders.map((h) => h.fencingToken)).toEqual([held.fencingToken]);
    await release(client, held);
  });

  it("answers try-lock on a held resource with DeadlineExceeded and a full queue with ResourceExhausted", async () => {
    const small = await startLock(backend.database, { ORCA_LOCK_MAX_QUEUE: "2" });
    try {
      const c = small.client(LockService);
      const held = await acquire(c, "queue/full", { ttlMs: 30_000 });
      await expectCode(acquire(c, "queue/full"), Code.DeadlineExceeded, /wait_timeout is zero/);
      const abort = new AbortController();
      const waiting = [acquire(c, "queue/full", { waitMs: 30_000, signal: abort.signal }), acquire(c, "queue/full", { waitMs: 30_000, signal: abort.signal })];
      for (const w of waiting) w.catch(() => undefined);
      await eventually("two waiters", async () => (await c.getLock({ resource: "queue/full" })).lock!.queueDepth === 2);
      await expectCode(acquire(c, "queue/full", { waitMs: 30_000 }), Code.ResourceExhausted, /queue of resource "queue\/full" is full \(2 waiters, limit 2\)/);
      abort.abort();
      await eventually("queue drained", async () => (await c.getLock({ resource: "queue/full" })).lock!.queueDepth === 0);
      await release(c, held);
    } finally {
      await small.stop();
    }
  });

  it("takes a waiter that cancels, disconnects or times out out of the queue at once, and never grants to it", async () => {
    const held = await acquire(client, "cancel/one", { ttlMs: 30_000 });
    const abort = new AbortController();
    const canceled = acquire(client, "cancel/one", { waitMs: 30_000, owner: "canceled", signal: abort.signal });
    canceled.catch(() => undefined);
    await eventually("waiter queued", async () => (await client.getLock({ resource: "cancel/one" })).lock!.queueDepth === 1);
    abort.abort();
    await expectCode(canceled, Code.Canceled);
    await eventually("canceled waiter left", async () => (await client.getLock({ resource: "cancel/one" })).lock!.queueDepth === 0, 2_000);

    // A call deadline shorter than wait_timeout ends the wait too.
    await expectCode(acquire(client, "cancel/one", { waitMs: 30_000, owner: "deadline", timeoutMs: 300 }), Code.DeadlineExceeded);
    // And wait_timeout itself.
    await expectCode(acquire(client, "cancel/one", { waitMs: 200, owner: "timeout" }), Code.DeadlineExceeded, /not granted within the wait timeout/);
    await eventually("queue empty", async () => (await client.getLock({ resource: "cancel/one" })).lock!.queueDepth === 0, 2_000);

    const next = acquire(client, "cancel/one", { waitMs: 30_000, owner: "next" });
    await eventually("next queued", async () => (await client.getLock({ resource: "cancel/one" })).lock!.queueDepth === 1);
    await release(client, held);
    const granted = await next;
    expect(granted.owner).toBe("next");
    const { rows } = await sql<{ n: number }>`select count(*)::int as n from orca_lock.leases where resource = 'cancel/one' and owner in ('canceled', 'deadline', 'timeout')`.execute(backend.database.db);
    expect(rows[0]!.n).toBe(0);
    await release(client, granted);
  });

  it("keeps tokens increasing across a service restart and after the resource's row is deleted", async () => {
    const first = await acquire(client, "restart/one");
    await release(client, first);
    await harness.stop();
    // A new replica (and on Postgres a new connection pool, as a new process would have).
    const database = backend.reopen ? await backend.reopen() : backend.database;
    harness = await startLock(database, { ORCA_LOCK_REAPER_INTERVAL_MS: "100" });
    client = harness.client(LockService);
    const second = await acquire(client, "restart/one");
    expect(second.fencingToken).toBeGreaterThan(first.fencingToken);
    await release(client, second);
    await sql`delete from orca_lock.resources where name = 'restart/one'`.execute(backend.database.db);
    const third = await acquire(client, "restart/one");
    expect(third.fencingToken).toBeGreaterThan(second.fencingToken);
    await release(client, third);
  });

  it("reports locks without lease ids, lists them by prefix in pages, and keeps tenants apart", async () => {
    const leases = [];
    for (const name of ["list/a", "list/b", "list/c", "other/a"]) leases.push(await acquire(client, name, { owner: `o-${name}` }));
    const waiter = acquire(client, "list/a", { waitMs: 30_000 });
    await eventually("waiter", async () => (await client.getLock({ resource: "list/a" })).lock!.queueDepth === 1);
    const page1 = await client.listLocks({ prefix: "list/", pageSize: 2 });
    expect(page1.locks.map((l) => l.resource)).toEqual(["list/a", "list/b"]);
    expect(page1.locks[0]!.queueDepth).toBe(1);
    expect(page1.locks[0]!.holders[0]!.owner).toBe("o-list/a");
    expect(page1.locks.flatMap((l) => l.holders.map((h) => h.leaseId))).toEqual(["", ""]);
    expect(page1.nextPageToken).not.toBe("");
    const page2 = await client.listLocks({ prefix: "list/", pageSize: 2, pageToken: page1.nextPageToken });
    expect(page2.locks.map((l) => l.resource)).toEqual(["list/c"]);
    expect(page2.nextPageToken).toBe("");
    await expectCode(client.listLocks({ prefix: "other/", pageToken: page1.nextPageToken }), Code.InvalidArgument, /^page_token: belongs to a query with another/);

    const { lock } = await client.getLock({ resource: "list/b" });
    expect(lock).toMatchObject({ resource: "list/b", capacity: 1, queueDepth: 0, lastFencingToken: leases[1]!.fencingToken });
    expect(lock!.holders[0]!.leaseId).toBe("");
    // A free resource is reported free, not NotFound.
    expect((await client.getLock({ resource: "never/used" })).lock).toMatchObject({ holders: [], queueDepth: 0, lastFencingToken: 0n, capacity: 1 });

    // Same name in another tenant: an independent lock, invisible from the default tenant.
    const t2 = await acquire(client, "list/a", { tenant: "t2" });
    expect(t2.tenant).toBe("t2");
    expect((await client.listLocks({ tenant: "t2" })).locks.map((l) => l.resource)).toEqual(["list/a"]);
    await expectCode(client.release({ leaseId: t2.leaseId, fencingToken: t2.fencingToken }), Code.NotFound);
    await release(client, t2);

    for (const lease of leases) await release(client, lease);
    await release(client, await waiter);
    expect((await client.listLocks({ prefix: "list/" })).locks).toHaveLength(0);
  });

  it("keeps a lease alive over a KeepAlive stream, and lets it lapse at its TTL when the stream breaks", async () => {
    const lease = await acquire(client, "ka/one", { ttlMs: 400 });
    const stop = new AbortController();
    const request: KeepAliveRequest = create(KeepAliveRequestSchema, { leaseId: lease.leaseId, fencingToken: lease.fencingToken });
    async function* beats() {
      for (let i = 0; i < 10; i++) {
        yield request;
        await sleep(120);
      }
      // Stop sending but keep the stream open until aborted (a stuck client).
      await new Promise((r) => stop.signal.addEventListener("abort", r));
    }
    let answers = 0;
    const stream = (async () => {
      try {
        for await (const res of client.keepAlive(beats(), { signal: stop.signal })) {
          expect(res.lease!.fencingToken).toBe(lease.fencingToken);
          answers++;
        }
      } catch {
        /* aborted */
      }
    })();
    await sleep(1_000); // 2.5 TTLs
    expect((await client.getLock({ resource: "ka/one" })).lock!.holders.map((h) => h.fencingToken)).toEqual([lease.fencingToken]);
    stop.abort();
    await stream;
    expect(answers).toBeGreaterThanOrEqual(8);
    const next = await acquire(client, "ka/one", { waitMs: 5_000 });
    expect(next.fencingToken).toBeGreaterThan(lease.fencingToken);

    // A stream naming a second lease is refused; a lost lease ends the stream with FailedPrecondition.
    async function* mixed() {
      yield create(KeepAliveRequestSchema, { leaseId: next.leaseId, fencingToken: next.fencingToken });
      yield create(KeepAliveRequestSchema, { leaseId: lease.leaseId, fencingToken: lease.fencingToken });
    }
    await expectCode((async () => { for await (const _ of client.keepAlive(mixed())) { /* drain */ } })(), Code.InvalidArgument, /^lease_id: every message/);
    async function* old() {
      yield request;
    }
    const lost = await expectCode((async () => { for await (const _ of client.keepAlive(old())) { /* drain */ } })(), Code.FailedPrecondition, /expired/);
    expect(lost.findDetails(LeaseFailureSchema)[0]?.reason).toBe(LeaseFailureReason.EXPIRED);
    await release(client, next);
  });

  it("streams ACQUIRED, RELEASED and EXPIRED events under a prefix, without lease ids", async () => {
    const seed = await acquire(client, "watch/seed", { ttlMs: 60_000 });
    const stop = new AbortController();
    const events: LockEvent[] = [];
    const watching = (async () => {
      try {
        for await (const res of client.watchLocks({ prefix: "watch/", includeCurrent: true }, { signal: stop.signal })) events.push(res.event!);
      } catch {
        /* aborted */
      }
    })();
    await eventually("initial snapshot", () => events.length === 1);
    expect(events[0]).toMatchObject({ type: LockEventType.ACQUIRED, initial: true });
    expect(events[0]!.lease!.fencingToken).toBe(seed.fencingToken);

    const a = await acquire(client, "watch/a");
    const ignored = await acquire(client, "elsewhere/a");
    await release(client, a);
    const short = await acquire(client, "watch/short", { ttlMs: 200 });
    await eventually("expiry event", () => events.some((e) => e.type === LockEventType.EXPIRED), 5_000);
    stop.abort();
    await watching;
    const seen = events.slice(1).map((e) => [LockEventType[e.type], e.lease!.resource, e.lease!.fencingToken]);
    expect(seen).toEqual([
      ["ACQUIRED", "watch/a", a.fencingToken],
      ["RELEASED", "watch/a", a.fencingToken],
      ["ACQUIRED", "watch/short", short.fencingToken],
      ["EXPIRED", "watch/short", short.fencingToken],
    ]);
    expect(events.every((e) => e.lease!.leaseId === "" && e.occurredAt !== undefined)).toBe(true);
    await release(client, ignored);
    await release(client, seed);
  });

  it("withLock passes the token, keeps the lease alive, releases at the end and on throw, and aborts fn when the lease is lost", async () => {
    const result = await withLock(
      client,
      "with/one",
      async ({ fencingToken, leaseId, signal }) => {
        expect(fencingToken).toBeGreaterThan(0n);
        expect(leaseId).toMatch(/^[0-9a-f-]{36}$/);
        await sleep(2_500); // 2.5 TTLs: only KeepAlive keeps it
        expect(signal.aborted).toBe(false);
        const { lock } = await client.getLock({ resource: "with/one" });
        expect(lock!.holders.map((h) => h.fencingToken)).toEqual([fencingToken]);
        return "done";
      },
      { ttlMs: 1_000 },
    );
    expect(result).toBe("done");
    expect((await client.getLock({ resource: "with/one" })).lock!.holders).toHaveLength(0);

    await expect(withLock(client, "with/one", async () => { throw new Error("boom"); })).rejects.toThrow("boom");
    expect((await client.getLock({ resource: "with/one" })).lock!.holders).toHaveLength(0);

    // Lease lost under fn (here someone releases it behind its back): fn's signal aborts promptly.
    let abortedAfter = -1;
    const lost = withLock(
      client,
      "with/one",
      async ({ leaseId, fencingToken, signal }) => {
        const start = Date.now();
        await client.release({ leaseId, fencingToken });
        await new Promise<void>((resolve) => signal.addEventListener("abort", () => resolve()));
        abortedAfter = Date.now() - start;
        expect(signal.reason).toBeInstanceOf(LeaseLostError);
      },
      { ttlMs: 600, keepAliveIntervalMs: 100 },
    );
    const error = await lost.catch((e: unknown) => e);
    expect(error).toBeInstanceOf(LeaseLostError);
    expect((error as LeaseLostError).reason).toBe("released");
    expect(abortedAfter).toBeGreaterThanOrEqual(0);
    expect(abortedAfter).toBeLessThan(2_000);
  });
});
