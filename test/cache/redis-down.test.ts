import { spawn, type ChildProcess } from "node:child_process";
import { createServer } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Tier } from "../../gen/orca/cache/v1/cache_pb.js";
import type { Database } from "../../services/kit/db/database.js";
import { createFreshDatabase, postgresAvailable } from "../support/postgres.js";
import { openPostgres, startReplica, str, text, waitFor, type Replica } from "./helpers.js";

/**
 * Redis (L2) going away in the middle of traffic, on a throwaway redis-server of our own (never
 * the machine's shared Redis): zero failed RPCs while it is down, invalidations still reach the
 * other replica (Postgres NOTIFY), and L2 is used again once it is back.
 */
const hasRedisServer = await new Promise<boolean>((resolve) => {
  const child = spawn("redis-server", ["--version"], { stdio: "ignore" });
  child.once("error", () => resolve(false));
  child.once("exit", (code) => resolve(code === 0));
});

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const port = (server.address() as { port: number }).port;
      server.close(() => resolve(port));
    });
  });
}

async function startRedis(port: number): Promise<ChildProcess> {
  const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: "ignore" });
  await waitFor(
    () =>
      new Promise<boolean>((resolve) => {
        const probe = spawn("redis-cli", ["-p", String(port), "ping"], { stdio: ["ignore", "pipe", "ignore"] });
        let out = "";
        probe.stdout.on("data", (d: Buffer) => (out += d.toString()));
        probe.once("exit", () => resolve(out.includes("PONG")));
        probe.once("error", () => resolve(false));
      }),
    10_000,
    `redis-server on ${port}`,
  );
  return child;
}

async function stopRedis(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const exited = new Promise((resolve) => child.once("exit", resolve));
  child.kill("SIGKILL");
  await exited;
}

describe.skipIf(!postgresAvailable || !hasRedisServer)("cache with Redis stopped mid-test (own redis-server)", () => {
  let drop: () => Promise<void>;
  let database: Database;
  let port: number;
  let redis: ChildProcess;
  let a: Replica;
  let b: Replica;

  beforeAll(async () => {
    const fresh = await createFreshDatabase();
    drop = fresh.drop;
    database = await openPostgres(fresh.url);
    port = await freePort();
    redis = await startRedis(port);
    const redisUrl = `redis://127.0.0.1:${port}`;
    a = await startReplica({ database, redisUrl, name: "a" });
    b = await startReplica({ database, redisUrl, name: "b" });
  });

  afterAll(async () => {
    await a?.stop();
    await b?.stop();
    if (redis) {
      if (redis.exitCode === null) redis.kill("SIGCONT");
      await stopRedis(redis);
    }
    await database?.close();
    await drop?.();
  });

  it("keeps answering with zero failed RPCs while Redis is down, and uses L2 again when it returns", async () => {
    const keys = Array.from({ length: 20 }, (_, i) => `k${i}`);
    // One writer per key, so the last written value of each key is known.
    const last = new Map<string, string>();
    for (const key of keys) {
      await a.client.set({ namespace: "rd", key, value: text(`${key}-0`), tags: [`tag-${key}`] });
      last.set(key, `${key}-0`);
    }
    let failures = 0;
    let calls = 0;
    const errors: string[] = [];
    let running = true;
    const call = async (fn: () => Promise<unknown>) => {
      calls++;
      try {
        await fn();
      } catch (error) {
        failures++;
        if (errors.length < 5) errors.push(String(error));
      }
    };
    const worker = async (w: number) => {
      let n = 0;
      while (running) {
        n++;
        const replica = n % 2 === 0 ? a : b;
        const key = keys[(w * 7 + n) % keys.length];
        if (w === 0 && n % 3 === 0) {
          // The only writer.
          const value = `${key}-${n}`;
          await call(async () => {
            await replica.client.set({ namespace: "rd", key, value: text(value), tags: [`tag-${key}`] });
            last.set(key, value);
          });
        } else if (n % 5 === 0) {
          await call(() => replica.client.batchGet({ namespace: "rd", keys: keys.slice(0, 5) }));
        } else if (n % 11 === 0) {
          await call(() => replica.client.getStats({ namespace: "rd" }));
        } else {
          await call(() => replica.client.get({ namespace: "rd", key }));
        }
      }
    };
    const workers = Array.from({ length: 4 }, (_, w) => worker(w));
    await sleep(300);
    const callsBeforeOutage = calls;
    await stopRedis(redis);
    await sleep(1500);
    const callsDuringOutage = calls - callsBeforeOutage;

    // While Redis is down: Set writes L1 + L3 only, and the other replica still hears of it (NOTIFY).
    const set = await a.client.set({ namespace: "rd-outage", key: "x", value: text("during") });
    expect(set.tiers).toEqual([Tier.L1_MEMORY, Tier.L3_POSTGRES]);
    const got = await b.client.get({ namespace: "rd-outage", key: "x" });
    expect(got.result).toMatchObject({ found: true, tier: Tier.L3_POSTGRES });
    await b.client.get({ namespace: "rd-outage", key: "x" }); // now in B's L1
    await a.client.set({ namespace: "rd-outage", key: "x", value: text("during-2") });
    await waitFor(async () => str((await b.client.get({ namespace: "rd-outage", key: "x" })).result?.entry?.value) === "during-2", 2000, "B sees the Set without Redis");
    const stats = await a.client.getStats({ namespace: "rd" });
    expect(stats.namespaces[0].tiers[1]).toMatchObject({ tier: Tier.L2_REDIS, available: false });

    redis = await startRedis(port);
    // Both replicas reconnect by themselves and use L2 again.
    await waitFor(() => a.cache.l2!.available && b.cache.l2!.available, 15_000, "L2 available again on both replicas");
    await sleep(300);
    running = false;
    await Promise.all(workers);

    expect(errors).toEqual([]);
    expect(failures).toBe(0);
    expect(callsDuringOutage).toBeGreaterThan(20);
    const after = await a.client.set({ namespace: "rd-outage", key: "y", value: text("after") });
    expect(after.tiers).toEqual([Tier.L1_MEMORY, Tier.L2_REDIS, Tier.L3_POSTGRES]);
    expect((await b.client.get({ namespace: "rd-outage", key: "y" })).result?.tier).toBe(Tier.L2_REDIS);
    // Every key holds its last written value on both replicas: nothing stale came back from L2.
    for (const replica of [a, b]) {
      await waitFor(async () => {
        const res = await replica.client.batchGet({ namespace: "rd", keys });
        return res.results.every((r) => str(r.entry?.value) === last.get(r.key));
      }, 2000, "last values everywhere");
    }
  });

  it("a write lost while Redis hangs (SIGSTOP) never lets L2 serve the old value afterwards", async () => {
    await a.client.set({ namespace: "hang", key: "k", value: text("old") });
    expect((await b.client.get({ namespace: "hang", key: "k" })).result?.tier).toBe(Tier.L2_REDIS);
    const genBefore = BigInt(a.cache.l2!.generation);
    redis.kill("SIGSTOP");
    try {
      // L2 calls time out (the connection stays open): the Set still succeeds through L1 and L3.
      const set = await a.client.set({ namespace: "hang", key: "k", value: text("new") });
      expect(set.tiers).not.toContain(Tier.L2_REDIS);
      await waitFor(async () => str((await b.client.get({ namespace: "hang", key: "k" })).result?.entry?.value) === "new", 3000, "B sees new while Redis hangs");
    } finally {
      redis.kill("SIGCONT");
    }
    await waitFor(() => a.cache.l2!.available, 10_000, "L2 back on A");
    expect(BigInt(a.cache.l2!.generation)).toBeGreaterThan(genBefore);
    await waitFor(() => b.cache.l2!.generation === a.cache.l2!.generation, 5_000, "B adopts the new generation");
    b.cache.l1.delete("", "hang", "k");
    const res = await b.client.get({ namespace: "hang", key: "k" });
    expect(str(res.result?.entry?.value)).toBe("new");
  });
});
