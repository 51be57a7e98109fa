import { setTimeout as sleep } from "node:timers/promises";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { InvalidationCause, type InvalidationEvent } from "../../gen/orca/cache/v1/cache_pb.js";
import { CacheHelper, NearCache } from "../../services/cache/client.js";
import { openMemoryDatabase, type Database } from "../../services/kit/db/database.js";
import { createFreshDatabase, postgresAvailable } from "../support/postgres.js";
import { cleanRedis, openPostgres, redisPrefix, redisUrl, startReplica, str, text, waitFor, type Replica } from "./helpers.js";

/**
 * WatchInvalidations, the opt-in near-cache and getOrSet, on both backends: real Postgres + Redis
 * (two replicas), and PGlite without Redis (two replicas in one process, NOTIFY only).
 */
const backends = [
  { name: "Postgres + Redis", enabled: postgresAvailable && Boolean(redisUrl), redis: true },
  { name: "PGlite without Redis", enabled: true, redis: false },
];

for (const backend of backends) {
  describe.skipIf(!backend.enabled)(`watch, near-cache and getOrSet (${backend.name})`, () => {
    let database: Database;
    let drop: (() => Promise<void>) | undefined;
    const prefix = redisPrefix();
    let a: Replica;
    let b: Replica;

    beforeAll(async () => {
      if (backend.redis) {
        const fresh = await createFreshDatabase();
        drop = fresh.drop;
        database = await openPostgres(fresh.url);
      } else {
        database = await openMemoryDatabase();
      }
      const env = { ORCA_CACHE_REDIS_PREFIX: prefix };
      a = await startReplica({ database, redisUrl: backend.redis ? redisUrl : undefined, env, name: "a" });
      b = await startReplica({ database, redisUrl: backend.redis ? redisUrl : undefined, env, name: "b" });
    });

    afterAll(async () => {
      await a?.stop();
      await b?.stop();
      await database?.close();
      await drop?.();
      if (backend.redis) await cleanRedis(redisUrl!, prefix);
    });

    it("WatchInvalidations starts with FLUSH, then streams every Set, Delete and Invalidate from any replica", async () => {
      const controller = new AbortController();
      const events: InvalidationEvent[] = [];
      const stream = (async () => {
        for await (const { event } of a.client.watchInvalidations({ namespaces: ["w1", "w2"] }, { signal: controller.signal })) events.push(event!);
      })().catch(() => undefined);
      await waitFor(() => events.length >= 2, 2000, "initial FLUSH events");
      expect(events.map((e) => [e.namespace, e.cause, e.selector])).toEqual([
        ["w1", InvalidationCause.FLUSH, undefined],
        ["w2", InvalidationCause.FLUSH, undefined],
      ]);
      await b.client.set({ namespace: "w1", key: "k", value: text("v"), tags: ["t"] });
      await b.client.set({ namespace: "other", key: "k", value: text("v") }); // not watched
      await a.client.delete({ namespace: "w2", key: "k" });
      await b.client.invalidate({ namespace: "w1", selector: { selector: { case: "tag", value: "t" } } });
      await b.client.invalidate({ namespace: "w2", selector: { selector: { case: "pattern", value: "x*" } } });
      await waitFor(() => events.length >= 6, 3000, "four events");
      await sleep(100);
      controller.abort();
      await stream;
      expect(events.slice(2).map((e) => [e.namespace, e.cause, e.selector?.selector.case, e.selector?.selector.value])).toEqual([
        ["w1", InvalidationCause.SET, "key", "k"],
        ["w2", InvalidationCause.DELETE, "key", "k"],
        ["w1", InvalidationCause.INVALIDATE, "tag", "t"],
        ["w2", InvalidationCause.INVALIDATE, "pattern", "x*"],
      ]);
      expect(events[2].occurredAt).toBeDefined();
    });

    it("WatchInvalidations rejects more than 100 namespaces and invalid names", async () => {
      const first = async (namespaces: string[]) => {
        try {
          for await (const _ of a.client.watchInvalidations({ namespaces })) return undefined;
        } catch (error) {
          return ConnectError.from(error);
        }
      };
      const tooMany = await first(Array.from({ length: 101 }, (_, i) => `n${i}`));
      expect(tooMany?.code).toBe(Code.InvalidArgument);
      expect(tooMany?.rawMessage).toMatch(/^namespaces: has 101 namespaces/);
      const bad = await first(["ok", "not ok"]);
      expect(bad?.code).toBe(Code.InvalidArgument);
      expect(bad?.rawMessage).toMatch(/^namespaces\[1\]: may only contain/);
    });

    it("the near-cache never serves a value after the invalidation event for it was delivered", async () => {
      const near = new NearCache(a.client, { namespaces: ["near"] });
      const delivered: InvalidationEvent[] = [];
      near.onEvent = (event) => delivered.push(event);
      try {
        await near.ready();
        await b.client.set({ namespace: "near", key: "k", value: text("v0"), tags: ["g"] });
        await waitFor(() => delivered.some((e) => e.cause === InvalidationCause.SET), 2000, "first SET event");
        // Cached after the first read, served locally afterwards.
        expect(str((await near.get("near", "k")).entry?.value)).toBe("v0");
        const again = await near.get("near", "k");
        expect(again.near).toBe(true);
        expect(str(again.entry?.value)).toBe("v0");

        // Many rounds of: another replica writes, the event is delivered, every read after that sees the new value.
        for (let round = 1; round <= 30; round++) {
          const before = delivered.length;
          const readers = Array.from({ length: 5 }, () => near.get("near", "k")); // in flight during the write
          await b.client.set({ namespace: "near", key: "k", value: text(`v${round}`), tags: ["g"] });
          await Promise.all(readers);
          await waitFor(() => delivered.slice(before).some((e) => e.cause === InvalidationCause.SET), 2000, `SET event ${round}`);
          for (let i = 0; i < 3; i++) expect(str((await near.get("near", "k")).entry?.value)).toBe(`v${round}`);
        }
        expect(near.counters.nearHits).toBeGreaterThan(30);

        // Tag and pattern invalidations drop the entry too; Delete makes it a miss.
        await near.get("near", "k");
        let before = delivered.length;
        await b.client.invalidate({ namespace: "near", selector: { selector: { case: "tag", value: "g" } } });
        await waitFor(() => delivered.length > before, 2000, "tag event");
        expect((await near.get("near", "k")).found).toBe(false);
        await b.client.set({ namespace: "near", key: "p:1", value: text("a") });
        await near.get("near", "p:1");
        before = delivered.length;
        await b.client.set({ namespace: "near", key: "p:1", value: text("b") }); // SET drops it ...
        await b.client.invalidate({ namespace: "near", selector: { selector: { case: "pattern", value: "p:?" } } }); // ... and this removes it
        await waitFor(() => delivered.length >= before + 2, 2000, "pattern event");
        expect((await near.get("near", "p:1")).found).toBe(false);
      } finally {
        await near.close();
      }
      // Closed: nothing is served locally.
      expect(near.isLive).toBe(false);
    });

    it("getOrSet loads once for concurrent callers and stores the value", async () => {
      const helper = new CacheHelper(b.client, { namespace: "memo" });
      let loads = 0;
      const loader = async () => {
        loads++;
        await sleep(50);
        return { value: text("computed"), contentType: "text/plain", tags: ["memo"] };
      };
      const values = await Promise.all(Array.from({ length: 20 }, () => helper.getOrSet("r1", loader, 60_000)));
      expect(loads).toBe(1);
      expect(values.every((v) => str(v) === "computed")).toBe(true);
      // Stored in the cache for everyone (other replica included).
      const res = await a.client.get({ namespace: "memo", key: "r1" });
      expect(str(res.result?.entry?.value)).toBe("computed");
      expect(res.result?.entry?.contentType).toBe("text/plain");
      expect(str(await helper.getOrSet("r1", loader))).toBe("computed");
      expect(loads).toBe(1);
    });
  });
}
