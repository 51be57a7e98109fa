import { Code } from "@connectrpc/connect";
import { Redis } from "ioredis";
import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { LockService } from "../../gen/orca/lock/v1/lock_pb.js";
import { lockService } from "../../services/lock/index.js";
import { postgresAvailable } from "../support/postgres.js";
import { startServiceHarness, type ServiceHarness } from "../support/service-harness.js";
import { acquire, eventually, expectCode, openBackend, release, sleep, startLock, type Backend } from "./support.js";

/**
 * Several replicas on one real Postgres database, and fairness under load. The waiters' safety
 * poll is set to a minute here, so a prompt wake-up can only come from LISTEN/NOTIFY (or Redis).
 */
const NO_POLL = { ORCA_LOCK_WAITER_POLL_MS: "60000", ORCA_LOCK_REAPER_INTERVAL_MS: "60000" };

describe.skipIf(!postgresAvailable)("lock replicas on one Postgres", () => {
  let backend: Backend;
  let a: ServiceHarness;
  let b: ServiceHarness;

  beforeAll(async () => {
    backend = await openBackend("postgres");
    a = await startLock(backend.database, NO_POLL);
    // Replica B has its own connection pool, as a separate process would.
    b = await startLock(await backend.reopen!(), NO_POLL);
  }, 60_000);
  afterAll(async () => {
    await a?.stop();
    await b?.stop();
    await backend?.cleanup();
  });

  it("share one queue: waiters on A and B are served in arrival order, and a release on B wakes a waiter on A promptly", async () => {
    const ca = a.client(LockService);
    const cb = b.client(LockService);
    const holder = await acquire(cb, "shared/one", { ttlMs: 60_000, owner: "holder" });
    const order: string[] = [];
    const waiters: Array<Promise<void>> = [];
    const plan: Array<[string, typeof ca]> = [["w1@A", ca], ["w2@B", cb], ["w3@A", ca], ["w4@B", cb]];
    for (const [owner, client] of plan) {
      const depth = order.length + waiters.length;
      waiters.push(
        acquire(client, "shared/one", { owner, waitMs: 30_000, ttlMs: 60_000 }).then(async (lease) => {
          order.push(owner);
          // Release on the OTHER replica than the next waiter's, so every hand-off crosses replicas.
          await release(client === ca ? cb : ca, lease);
        }),
      );
      // Both replicas see one shared queue.
      await eventually(`${owner} queued`, async () => (await ca.getLock({ resource: "shared/one" })).lock!.queueDepth === depth + 1);
      expect((await cb.getLock({ resource: "shared/one" })).lock!.queueDepth).toBe(depth + 1);
    }
    const releasedAt = Date.now();
    await release(cb, holder);
    await waiters[0];
    // Without NOTIFY the waiter would only notice at its (one-minute) poll.
    expect(Date.now() - releasedAt).toBeLessThan(5_000);
    await Promise.all(waiters);
    expect(order).toEqual(["w1@A", "w2@B", "w3@A", "w4@B"]);
    expect(Date.now() - releasedAt).toBeLessThan(10_000);
  });

  it("grants promptly when a lease held through the other replica expires (server-side timer, no new request)", async () => {
    const ca = a.client(LockService);
    const cb = b.client(LockService);
    const stale = await acquire(cb, "shared/expiry", { ttlMs: 300 });
    const started = Date.now();
    const next = await acquire(ca, "shared/expiry", { waitMs: 10_000 });
    // The exact timer fires at expiry; the one-minute sweep never runs during this test.
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(next.fencingToken).toBeGreaterThan(stale.fencingToken);
    await release(ca, next);
  });

  it("serves a low-priority waiter within its aging bound while high-priority waiters keep arriving", async () => {
    // Aging 5 ms: a priority-0 waiter can only be overtaken by priority-100 waiters that arrive
    // within (100 - 0) x 5 ms = 500 ms after it. Bound: it is served no later than right after
    // the high-priority waiters that arrived in that window. High-priority waiters arrive every
    // 20 ms and each holds 40 ms, so the queue never drains and without aging the low waiter
    // would be served last.
    const aged = await startLock(backend.database, { ORCA_LOCK_AGING_INTERVAL_MS: "5" });
    try {
      const c = aged.client(LockService);
      const holder = await acquire(c, "fair/one", { ttlMs: 60_000 });
      const grants: string[] = [];
      const sentAt = new Map<string, number>();
      const hold = async (name: string, priority: number) => {
        sentAt.set(name, Date.now());
        const lease = await acquire(c, "fair/one", { owner: name, priority, waitMs: 60_000, ttlMs: 60_000 });
        grants.push(name);
        await sleep(40);
        await release(c, lease);
      };
      const low = hold("low", 0);
      await eventually("low queued", async () => (await c.getLock({ resource: "fair/one" })).lock!.queueDepth === 1);
      const lowQueuedBy = Date.now();
      const highs: Array<Promise<void>> = [];
      for (let i = 0; i < 60; i++) {
        highs.push(hold(`high-${i}`, 100));
        if (i === 3) await release(c, holder);
        await sleep(20);
      }
      await Promise.all([low, ...highs]);
      const lowAt = grants.indexOf("low");
      const window = 500 + 50; // aging bound + clock margin between this process and the database
      const lateHighs = [...sentAt].filter(([name, at]) => name !== "low" && at > lowQueuedBy + window).map(([name]) => name);
      expect(lateHighs.length).toBeGreaterThan(10); // the test has teeth: many highs arrived after the bound
      // No high-priority waiter that arrived after the bound was served before the low one...
      for (const name of lateHighs) expect(grants.indexOf(name), `${name} overtook the aged waiter`).toBeGreaterThan(lowAt);
      // ...and the low one did not wait for the stream of highs to end.
      expect(lowAt).toBeLessThan(grants.length - 10);
    } finally {
      await aged.stop();
    }
  }, 60_000);

  it("drops the waiters of a replica that stops, and rolls back nothing it was never given", async () => {
    const gone = await startLock(backend.database, NO_POLL);
    const cg = gone.client(LockService);
    const ca = a.client(LockService);
    const holder = await acquire(ca, "shared/gone", { ttlMs: 60_000 });
    const waiting = acquire(cg, "shared/gone", { waitMs: 30_000, owner: "on-gone" });
    waiting.catch(() => undefined);
    await eventually("queued", async () => (await ca.getLock({ resource: "shared/gone" })).lock!.queueDepth === 1);
    await gone.stop();
    await expectCode(waiting, Code.Canceled).catch(() => undefined);
    expect((await ca.getLock({ resource: "shared/gone" })).lock!.queueDepth).toBe(0);
    await release(ca, holder);
    const { rows } = await sql<{ n: number }>`select count(*)::int as n from orca_lock.leases where owner = 'on-gone' and end_reason is distinct from 'rolled_back'`.execute(backend.database.db);
    expect(rows[0]!.n).toBe(0);
  });

  describe.skipIf(!process.env.REDIS_URL)("with Redis", () => {
    it("wakes a waiter on another replica through Redis pub/sub as well", async () => {
      const redisA = new Redis(process.env.REDIS_URL!);
      const redisB = new Redis(process.env.REDIS_URL!);
      const ra = await startServiceHarness(lockService, { database: backend.database, redis: redisA });
      const rb = await startServiceHarness(lockService, { database: await backend.reopen!(), redis: redisB });
      try {
        const ca = ra.client(LockService);
        const cb = rb.client(LockService);
        const holder = await acquire(cb, "redis/one", { ttlMs: 60_000 });
        const waiter = acquire(ca, "redis/one", { waitMs: 10_000 });
        await eventually("queued", async () => (await cb.getLock({ resource: "redis/one" })).lock!.queueDepth === 1);
        await release(cb, holder);
        const lease = await waiter;
        expect(lease.fencingToken).toBeGreaterThan(holder.fencingToken);
        await release(ca, lease);
      } finally {
        await ra.stop();
        await rb.stop();
        redisA.disconnect();
        redisB.disconnect();
      }
    });
  });
});
