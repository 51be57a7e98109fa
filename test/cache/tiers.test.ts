import { setTimeout as sleep } from "node:timers/promises";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Tier } from "../../gen/orca/cache/v1/cache_pb.js";
import type { Database } from "../../services/kit/db/database.js";
import { createFreshDatabase, postgresAvailable } from "../support/postgres.js";
import { cleanRedis, openPostgres, redisPrefix, redisUrl, startReplica, str, text, waitFor, type Replica } from "./helpers.js";

/**
 * Two replicas of the Cache on one real Postgres and one real Redis (unique key prefix per run):
 * tier promotion, TTL expiry per tier, invalidation seen by both replicas, single flight, restart.
 */
describe.skipIf(!postgresAvailable || !redisUrl)("cache tiers on Postgres + Redis (two replicas)", () => {
  let drop: () => Promise<void>;
  let url: string;
  let database: Database;
  const prefix = redisPrefix();
  let a: Replica;
  let b: Replica;
  const env = {
    ORCA_CACHE_REDIS_PREFIX: prefix,
    ORCA_CACHE_STALE_IF_ERROR_MS: "0",
    ORCA_CACHE_NAMESPACE_POLICIES: JSON.stringify({ "swr:*": { staleWhileRevalidateMs: 5000 } }),
  };

  beforeAll(async () => {
    ({ url, drop } = await createFreshDatabase());
    database = await openPostgres(url);
    a = await startReplica({ database, redisUrl, env, name: "a" });
    b = await startReplica({ database, redisUrl, env, name: "b" });
  });

  afterAll(async () => {
    await a?.stop();
    await b?.stop();
    await database?.close();
    await drop?.();
    await cleanRedis(redisUrl!, prefix);
  });

  it("Set writes through every tier; Get reads L1, then L2, then L3, and promotes upward", async () => {
    const set = await a.client.set({ namespace: "promo", key: "k1", value: text("v1"), contentType: "text/plain", tags: ["t"] });
    expect(set.tiers).toEqual([Tier.L1_MEMORY, Tier.L2_REDIS, Tier.L3_POSTGRES]);

    // A answers from its own L1.
    const fromA = await a.client.get({ namespace: "promo", key: "k1" });
    expect(fromA.result).toMatchObject({ found: true, tier: Tier.L1_MEMORY, stale: false });
    expect(str(fromA.result?.entry?.value)).toBe("v1");
    expect(fromA.result?.entry?.contentType).toBe("text/plain");
    expect(fromA.result?.entry?.tags).toEqual(["t"]);

    // B has nothing in L1: L2 answers, then the value is in B's L1.
    expect((await b.client.get({ namespace: "promo", key: "k1" })).result).toMatchObject({ found: true, tier: Tier.L2_REDIS });
    expect((await b.client.get({ namespace: "promo", key: "k1" })).result).toMatchObject({ found: true, tier: Tier.L1_MEMORY });

    // Only L3 holds k2 (written by A, then removed from L2 and from A's L1 by hand): L3 answers,
    // and promotes to L2 and L1.
    await a.client.set({ namespace: "promo", key: "k2", value: text("v2") });
    await a.redis!.unlink(a.cache.l2!.dataKey("", "promo", "k2"));
    a.cache.l1.delete("", "promo", "k2");
    const fromL3 = await a.client.get({ namespace: "promo", key: "k2" });
    expect(fromL3.result).toMatchObject({ found: true, tier: Tier.L3_POSTGRES, stale: false });
    expect(str(fromL3.result?.entry?.value)).toBe("v2");
    await waitFor(async () => (await a.redis!.exists(a.cache.l2!.dataKey("", "promo", "k2"))) === 1, 2000, "promotion to L2");
    expect((await a.client.get({ namespace: "promo", key: "k2" })).result?.tier).toBe(Tier.L1_MEMORY);
    expect((await b.client.get({ namespace: "promo", key: "k2" })).result?.tier).toBe(Tier.L2_REDIS);

    // A miss is not an error.
    expect((await a.client.get({ namespace: "promo", key: "nope" })).result).toMatchObject({ found: false, tier: Tier.UNSPECIFIED, stale: false });
  });

  it("BatchGet answers in request order, duplicates included, each with its tier", async () => {
    await a.client.set({ namespace: "batch", key: "x", value: text("X") });
    await a.client.set({ namespace: "batch", key: "y", value: text("Y") });
    const res = await b.client.batchGet({ namespace: "batch", keys: ["y", "missing", "x", "y"] });
    expect(res.results.map((r) => [r.key, r.found, str(r.entry?.value)])).toEqual([
      ["y", true, "Y"],
      ["missing", false, undefined],
      ["x", true, "X"],
      ["y", true, "Y"],
    ]);
    expect(res.results[0].tier).toBe(Tier.L2_REDIS);
    expect((await b.client.batchGet({ namespace: "batch", keys: ["x"] })).results[0].tier).toBe(Tier.L1_MEMORY);
  });

  it("TTL ends in every tier: L1, L2 (Redis PX) and L3 (rows ignored, then purged)", async () => {
    const ttl = { seconds: 0n, nanos: 400_000_000 };
    await a.client.set({ namespace: "ttl", key: "k", value: text("v"), ttl });
    const l2Key = a.cache.l2!.dataKey("", "ttl", "k");
    expect(a.cache.l1.get("", "ttl", "k")).toBeDefined();
    expect(await a.redis!.exists(l2Key)).toBe(1);
    const pttl = await a.redis!.pttl(l2Key);
    expect(pttl).toBeGreaterThan(0);
    expect(pttl).toBeLessThanOrEqual(400);
    expect((await a.cache.l3.read("", "ttl", ["k"])).length).toBe(1);

    await sleep(600);
    // Each tier on its own: L1 and L2 dropped the entry, L3 no longer returns the row.
    expect(a.cache.l1.get("", "ttl", "k")).toBeUndefined();
    expect(await a.redis!.exists(l2Key)).toBe(0);
    expect(await a.cache.l3.read("", "ttl", ["k"])).toEqual([]);
    for (const replica of [a, b]) expect((await replica.client.get({ namespace: "ttl", key: "k" })).result?.found).toBe(false);
    // The row is still in the table until the background purge removes it.
    const count = async () =>
      Number((await database.db.withSchema("orca_cache").selectFrom("entries").select((eb) => eb.fn.countAll().as("n")).where("namespace", "=", "ttl").executeTakeFirstOrThrow()).n);
    expect(await count()).toBe(1);
    expect(await a.cache.purgeOnce()).toBeGreaterThanOrEqual(1);
    expect(await count()).toBe(0);
  });

  it("stale-while-revalidate: an expired L1 value within the window is served marked stale", async () => {
    await a.client.set({ namespace: "swr:ns", key: "k", value: text("old"), ttl: { seconds: 0n, nanos: 200_000_000 } });
    await sleep(300);
    const res = await a.client.get({ namespace: "swr:ns", key: "k" });
    expect(res.result).toMatchObject({ found: true, stale: true, tier: Tier.L1_MEMORY });
    expect(str(res.result?.entry?.value)).toBe("old");
    // A fresh Set replaces it everywhere; no stale answer afterwards.
    await b.client.set({ namespace: "swr:ns", key: "k", value: text("new") });
    await waitFor(async () => str((await a.client.get({ namespace: "swr:ns", key: "k" })).result?.entry?.value) === "new", 2000, "new value on A");
    expect((await a.client.get({ namespace: "swr:ns", key: "k" })).result?.stale).toBe(false);
  });

  it("stale-if-error: with L3 slow and L2 empty, an expired L1 value within its grace is served stale; nothing usable -> Unavailable", async () => {
    // "sie:*" namespaces: stale-if-error 10 s (env below), TTL 200 ms.
    const replica = await startReplica({ database, env: { ...env, ORCA_CACHE_STALE_IF_ERROR_MS: "10000", ORCA_CACHE_L3_TIMEOUT_MS: "100" }, name: "sie" });
    try {
      await replica.client.set({ namespace: "sie", key: "k", value: text("last-good"), ttl: { seconds: 0n, nanos: 200_000_000 } });
      await sleep(300);
      const l3 = replica.cache.l3;
      const original = l3.read.bind(l3);
      l3.read = () => new Promise(() => undefined); // Postgres hangs: slower than ORCA_CACHE_L3_TIMEOUT_MS
      try {
        const res = await replica.client.get({ namespace: "sie", key: "k" });
        expect(res.result).toMatchObject({ found: true, stale: true, tier: Tier.L1_MEMORY });
        expect(str(res.result?.entry?.value)).toBe("last-good");
        const error = await replica.client.get({ namespace: "sie", key: "never-stored" }).then(() => undefined, (e: unknown) => ConnectError.from(e));
        expect(error?.code).toBe(Code.Unavailable);
        expect(error?.rawMessage).toMatch(/Postgres \(L3\) did not answer within 100 ms/);
      } finally {
        l3.read = original;
      }
      // Postgres answers again: the expired value is no longer served (no stale-while-revalidate here).
      expect((await replica.client.get({ namespace: "sie", key: "k" })).result?.found).toBe(false);
      const stats = await replica.client.getStats({ namespace: "sie" });
      expect(stats.namespaces[0].staleHits).toBe(1n);
    } finally {
      await replica.stop();
    }
  });

  it("Invalidate by tag and by pattern reaches both replicas' L1 and returns the count", async () => {
    for (const key of ["user:1", "user:2", "user:10", "order:1", "a*b", "a.b"]) {
      await a.client.set({ namespace: "inv", key, value: text(key), tags: key.startsWith("user") ? ["users"] : ["other"] });
    }
    // Both replicas hold every key in L1.
    for (const replica of [a, b]) {
      for (const key of ["user:1", "user:2", "user:10", "order:1"]) await replica.client.get({ namespace: "inv", key });
      expect((await replica.client.get({ namespace: "inv", key: "user:1" })).result?.tier).toBe(Tier.L1_MEMORY);
    }
    const byTag = await b.client.invalidate({ namespace: "inv", selector: { selector: { case: "tag", value: "users" } } });
    expect(byTag.count).toBe(3n);
    // The replica that invalidated is consistent at once; the other within the propagation bound.
    expect((await b.client.get({ namespace: "inv", key: "user:1" })).result?.found).toBe(false);
    const waited = await waitFor(() => a.cache.l1.get("", "inv", "user:2") === undefined, 2000, "tag invalidation on replica A");
    for (const key of ["user:1", "user:2", "user:10"]) expect((await a.client.get({ namespace: "inv", key })).result?.found).toBe(false);
    expect((await a.client.get({ namespace: "inv", key: "order:1" })).result?.found).toBe(true);
    expect(waited).toBeLessThan(2000);

    // Globs: '?' is one character, '*' any run, '\' escapes, [..] a set.
    for (const key of ["user:1", "user:10", "user:x"]) await a.client.set({ namespace: "inv", key, value: text(key) });
    for (const key of ["user:1", "user:10", "user:x"]) await b.client.get({ namespace: "inv", key });
    expect((await a.client.invalidate({ namespace: "inv", selector: { selector: { case: "pattern", value: "user:[0-9]" } } })).count).toBe(1n);
    await waitFor(() => b.cache.l1.get("", "inv", "user:1") === undefined, 2000, "pattern invalidation on replica B");
    expect((await b.client.get({ namespace: "inv", key: "user:10" })).result?.found).toBe(true);
    expect((await b.client.get({ namespace: "inv", key: "user:x" })).result?.found).toBe(true);
    expect((await a.client.invalidate({ namespace: "inv", selector: { selector: { case: "pattern", value: "a\\*b" } } })).count).toBe(1n);
    expect((await a.client.get({ namespace: "inv", key: "a.b" })).result?.found).toBe(true);
    expect((await a.client.invalidate({ namespace: "inv", selector: { selector: { case: "pattern", value: "user:*" } } })).count).toBe(2n);
    // Repeating is safe and counts 0.
    expect((await a.client.invalidate({ namespace: "inv", selector: { selector: { case: "pattern", value: "user:*" } } })).count).toBe(0n);
    expect((await a.client.invalidate({ namespace: "inv", selector: { selector: { case: "pattern", value: "*" } } })).count).toBe(2n);
    await waitFor(() => b.cache.l1.get("", "inv", "order:1") === undefined, 2000, "whole-namespace invalidation on B");
    // L2 no longer answers for an invalidated key (tombstone), on either replica.
    expect((await b.client.get({ namespace: "inv", key: "order:1" })).result?.found).toBe(false);
  });

  it("Set and Delete on one replica are seen by the other (L1 dropped, new value read)", async () => {
    await a.client.set({ namespace: "sd", key: "k", value: text("one") });
    expect(str((await b.client.get({ namespace: "sd", key: "k" })).result?.entry?.value)).toBe("one");
    await a.client.set({ namespace: "sd", key: "k", value: text("two") });
    await waitFor(async () => str((await b.client.get({ namespace: "sd", key: "k" })).result?.entry?.value) === "two", 2000, "B sees two");
    expect((await a.client.delete({ namespace: "sd", key: "k" })).deleted).toBe(true);
    expect((await a.client.delete({ namespace: "sd", key: "k" })).deleted).toBe(false);
    await waitFor(async () => (await b.client.get({ namespace: "sd", key: "k" })).result?.found === false, 2000, "B sees the delete");
  });

  it("single flight: N concurrent misses for one key cause one lookup of the lower tiers", async () => {
    await a.client.set({ namespace: "sf", key: "hot", value: text("v") });
    await b.redis!.unlink(b.cache.l2!.dataKey("", "sf", "hot"));
    b.cache.l1.delete("", "sf", "hot");
    const l3 = b.cache.l3;
    const original = l3.read.bind(l3);
    let loads = 0;
    l3.read = async (...args) => {
      loads++;
      await sleep(100); // keep the lookup open while the others arrive
      return original(...args);
    };
    try {
      const results = await Promise.all(Array.from({ length: 50 }, () => b.client.get({ namespace: "sf", key: "hot" })));
      expect(loads).toBe(1);
      expect(results.every((r) => r.result?.found && str(r.result.entry?.value) === "v")).toBe(true);
      // Other keys are not coalesced with it.
      await Promise.all([b.client.get({ namespace: "sf", key: "x1" }), b.client.get({ namespace: "sf", key: "x2" })]);
      expect(loads).toBe(3);
    } finally {
      l3.read = original;
    }
  });

  it("GetStats reports per tier and per namespace", async () => {
    await a.client.set({ namespace: "st", key: "k", value: text("12345") });
    await a.client.get({ namespace: "st", key: "k" });
    await a.client.get({ namespace: "st", key: "missing" });
    const stats = await a.client.getStats({ namespace: "st" });
    expect(stats.replica).toBe("a");
    expect(stats.namespaces).toHaveLength(1);
    const ns = stats.namespaces[0];
    expect(ns).toMatchObject({ namespace: "st", hits: 1n, misses: 1n, hitRatio: 0.5 });
    expect(ns.tiers.map((t) => t.tier)).toEqual([Tier.L1_MEMORY, Tier.L2_REDIS, Tier.L3_POSTGRES]);
    expect(ns.tiers[0]).toMatchObject({ available: true, hits: 1n, misses: 1n, entries: 1n });
    expect(ns.tiers[1]).toMatchObject({ available: true, misses: 1n, entries: 1n });
    expect(ns.tiers[2]).toMatchObject({ available: true, misses: 1n, entries: 1n, bytes: 6n });
    expect(ns.defaultTtl?.seconds).toBe(3600n);
    const all = await a.client.getStats({});
    expect(all.namespaces.map((n) => n.namespace)).toEqual([...all.namespaces.map((n) => n.namespace)].sort());
    expect(all.namespaces.map((n) => n.namespace)).toContain("promo");
    const metrics = await a.harness.server.metrics.registry.metrics();
    expect(metrics).toMatch(/orca_cache_lookups_total\{tier="l1",result="hit"/);
  });

  it("tenants are separate namespaces", async () => {
    await a.client.set({ tenant: "t1", namespace: "shared", key: "k", value: text("t1") });
    expect((await a.client.get({ tenant: "t2", namespace: "shared", key: "k" })).result?.found).toBe(false);
    expect((await b.client.get({ tenant: "t2", namespace: "shared", key: "k" })).result?.found).toBe(false);
    expect((await a.client.invalidate({ tenant: "t2", namespace: "shared", selector: { selector: { case: "pattern", value: "*" } } })).count).toBe(0n);
    expect(str((await b.client.get({ tenant: "t1", namespace: "shared", key: "k" })).result?.entry?.value)).toBe("t1");
  });

  it("a restarted replica (empty L1, no Redis) still reads L3 entries", async () => {
    await a.client.set({ namespace: "durable", key: "k", value: text("kept"), ttl: { seconds: 3600n, nanos: 0 } });
    await a.stop();
    a = await startReplica({ database, env, name: "a2" }); // no Redis this time: only L3 can answer
    const res = await a.client.get({ namespace: "durable", key: "k" });
    expect(res.result).toMatchObject({ found: true, tier: Tier.L3_POSTGRES, stale: false });
    expect(str(res.result?.entry?.value)).toBe("kept");
    expect((await a.client.set({ namespace: "durable", key: "k2", value: text("x") })).tiers).toEqual([Tier.L1_MEMORY, Tier.L3_POSTGRES]);
  });

  it("rejects bad input with InvalidArgument naming the field, or ResourceExhausted, and keeps stored state", async () => {
    await a.client.set({ namespace: "bad", key: "k", value: text("original"), tags: ["t"] });
    const expectError = async (call: Promise<unknown>, code: Code, match: RegExp) => {
      const error = await call.then(() => undefined, (e: unknown) => ConnectError.from(e));
      expect(error, `expected ${Code[code]}`).toBeInstanceOf(ConnectError);
      expect(Code[error!.code]).toBe(Code[code]);
      expect(error!.rawMessage).toMatch(match);
    };
    const big = new Uint8Array(1024 * 1024 + 1);
    await expectError(a.client.set({ namespace: "bad", key: "k", value: big }), Code.ResourceExhausted, /value is 1048577 bytes; the maximum value size is 1048576 bytes/);
    await expectError(a.client.set({ namespace: "", key: "k", value: text("x") }), Code.InvalidArgument, /^namespace: must not be empty/);
    await expectError(a.client.set({ namespace: "bad ns", key: "k", value: text("x") }), Code.InvalidArgument, /^namespace: may only contain/);
    await expectError(a.client.set({ namespace: "n".repeat(129), key: "k", value: text("x") }), Code.InvalidArgument, /^namespace: is 129 bytes/);
    await expectError(a.client.set({ namespace: "bad", key: "", value: text("x") }), Code.InvalidArgument, /^key: must not be empty/);
    await expectError(a.client.set({ namespace: "bad", key: "é".repeat(257), value: text("x") }), Code.InvalidArgument, /^key: is 514 bytes; at most 512/);
    await expectError(a.client.set({ namespace: "bad", key: "k", value: text("x"), ttl: { seconds: -1n, nanos: 0 } }), Code.InvalidArgument, /^ttl: must not be negative/);
    await expectError(a.client.set({ namespace: "bad", key: "k", value: text("x"), ttl: { seconds: 31n * 86400n, nanos: 0 } }), Code.InvalidArgument, /^ttl: .*maximum TTL/);
    await expectError(a.client.set({ namespace: "bad", key: "k", value: text("x"), tags: Array.from({ length: 33 }, (_, i) => `t${i}`) }), Code.InvalidArgument, /^tags: has 33 tags/);
    await expectError(a.client.set({ namespace: "bad", key: "k", value: text("x"), tags: ["ok", ""] }), Code.InvalidArgument, /^tags\[1\]: must not be empty/);
    await expectError(a.client.set({ namespace: "bad", key: "k", value: text("x"), contentType: "x".repeat(257) }), Code.InvalidArgument, /^content_type: is 257 bytes/);
    await expectError(a.client.get({ namespace: "bad", key: "k".repeat(513) }), Code.InvalidArgument, /^key: is 513 bytes/);
    await expectError(a.client.batchGet({ namespace: "bad", keys: [] }), Code.InvalidArgument, /^keys: must have at least one key/);
    await expectError(a.client.batchGet({ namespace: "bad", keys: ["a", ""] }), Code.InvalidArgument, /^keys\[1\]: must not be empty/);
    await expectError(a.client.batchGet({ namespace: "bad", keys: Array.from({ length: 1001 }, (_, i) => `k${i}`) }), Code.InvalidArgument, /^keys: has 1001 keys/);
    await expectError(a.client.invalidate({ namespace: "bad" }), Code.InvalidArgument, /^selector: must set one of key, pattern or tag/);
    await expectError(a.client.invalidate({ namespace: "bad", selector: { selector: { case: "pattern", value: "k[abc" } } }), Code.InvalidArgument, /^selector.pattern: is malformed: it has an unclosed '\['/);
    await expectError(a.client.invalidate({ namespace: "bad", selector: { selector: { case: "pattern", value: "k\\" } } }), Code.InvalidArgument, /^selector.pattern: is malformed/);
    await expectError(a.client.invalidate({ namespace: "bad", selector: { selector: { case: "tag", value: "" } } }), Code.InvalidArgument, /^selector.tag: must not be empty/);
    await expectError(a.client.delete({ namespace: "bad", key: "" }), Code.InvalidArgument, /^key: must not be empty/);
    await expectError(a.client.getStats({ namespace: "b a d" }), Code.InvalidArgument, /^namespace: may only contain/);
    // Nothing changed.
    const res = await b.client.get({ namespace: "bad", key: "k" });
    expect(str(res.result?.entry?.value)).toBe("original");
    expect(res.result?.entry?.tags).toEqual(["t"]);
    const rows = await database.db.withSchema("orca_cache").selectFrom("entries").select("key").where("namespace", "=", "bad").execute();
    expect(rows.map((r) => r.key)).toEqual(["k"]);
  });
});
