import { randomBytes } from "node:crypto";
import { rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { CacheService } from "../../gen/orca/cache/v1/cache_pb.js";
import { createCacheModule, type TieredCache } from "../../services/cache/index.js";
import { MeshClients } from "../../services/kit/clients/mesh-clients.js";
import { readConfig } from "../../services/kit/config.js";
import { openDatabase, openMemoryDatabase, type Database } from "../../services/kit/db/database.js";
import { migrate } from "../../services/kit/db/migrations.js";
import { openRedis } from "../../services/kit/redis.js";
import { OrcaServer } from "../../services/kit/server/server.js";
import { createLogger } from "../../services/kit/telemetry/logger.js";
import { createServiceMetrics } from "../../services/kit/telemetry/metrics.js";

/**
 * The Cache under load, in its own process (run.ts forks it with tsx): a real OrcaServer with the
 * kit's interceptors and one pino line per call into a temp file, as in production, on a fresh
 * Postgres database (DATABASE_URL; PGlite in memory without it) and Redis under a unique prefix
 * (REDIS_URL). It seeds one key in each of three namespaces and pins where it can be found:
 *   bench-l1: normal (every Get is an L1 hit),
 *   bench-l2: never promoted into L1 (every Get is an L2 hit),
 *   bench-l3: never promoted into L1 or L2 (every Get is an L3 hit).
 * The pinning wraps two promotion calls of this process's TieredCache; the read path is untouched.
 */
const payloadBytes = Number(process.env.BENCH_PAYLOAD_BYTES ?? "64");
const silent = createLogger({ level: "silent" });

let database: Database;
let dropDatabase: (() => Promise<void>) | undefined;
const adminUrl = process.env.DATABASE_URL;
if (adminUrl) {
  const name = `orca_bench_${randomBytes(5).toString("hex")}`;
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  await admin.query(`create database ${name}`);
  await admin.end();
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  database = await openDatabase({ databaseUrl: url.toString(), dataDir: "/nonexistent", logger: silent, poolSize: 16 });
  dropDatabase = async () => {
    const client = new pg.Client({ connectionString: adminUrl });
    await client.connect();
    await client.query(`drop database if exists ${name} with (force)`);
    await client.end();
  };
} else {
  database = await openMemoryDatabase();
}
const prefix = `orca-bench:${randomBytes(5).toString("hex")}:`;
const redis = process.env.REDIS_URL ? openRedis(process.env.REDIS_URL, silent) : undefined;
if (redis) await new Promise<void>((resolve) => (redis.status === "ready" ? resolve() : redis.once("ready", () => resolve())));

const module = createCacheModule({ env: { ORCA_CACHE_REDIS_PREFIX: prefix, ORCA_CACHE_L2_TIMEOUT_MS: "1000", ORCA_CACHE_L3_TIMEOUT_MS: "5000" }, replicaId: "bench" });
await migrate(database.db, module);
const metrics = createServiceMetrics("cache", { processMetrics: false });
const logFile = join(tmpdir(), `orca-bench-cache-${process.pid}.log`);
const logger = createLogger({ level: "info", service: "cache", destination: logFile });
const config = readConfig({});
const instance = await module.create({ config, logger, database, redis, clients: new MeshClients({} as never), metricsRegistry: metrics.registry });
const cache = (instance as unknown as { cache: TieredCache }).cache;

const value = new Uint8Array(payloadBytes).fill(97);
for (const ns of ["bench-l1", "bench-l2", "bench-l3"]) await cache.set({ tenant: "", namespace: ns, key: "k", value, contentType: "", tags: [] });
const l1Put = cache.l1.put.bind(cache.l1);
cache.l1.put = (entry, now) => (entry.namespace === "bench-l1" ? l1Put(entry, now) : undefined);
if (cache.l2) {
  const promote = cache.l2.promote.bind(cache.l2);
  cache.l2.promote = async (entry, now) => (entry.namespace === "bench-l3" ? undefined : promote(entry, now));
  await redis!.unlink(cache.l2.dataKey("", "bench-l3", "k"));
}
cache.l1.delete("", "bench-l2", "k");
cache.l1.delete("", "bench-l3", "k");

const server = new OrcaServer({
  name: "cache",
  host: "127.0.0.1",
  port: 0,
  adminPort: 0,
  services: [{ service: CacheService, impl: instance.impl }],
  logger,
  metrics,
  shutdownGraceMs: 1000,
  maxMessageBytes: config.maxMessageBytes,
  fastPath: config.grpcFastPath,
});
const { port } = await server.start();

process.once("SIGTERM", () => {
  const timer = setTimeout(() => process.exit(0), 5000);
  timer.unref();
  void (async () => {
    await server.shutdown();
    await instance.close?.();
    if (redis) {
      let cursor = "0";
      do {
        const [next, keys] = await redis.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 1000);
        cursor = next;
        if (keys.length > 0) await redis.unlink(...keys);
      } while (cursor !== "0");
      redis.disconnect();
    }
    await database.close();
    await dropDatabase?.();
    rmSync(logFile, { force: true });
    process.exit(0);
  })();
});
process.on("message", (message: { type: string }) => {
  if (message.type === "cpu") process.send?.({ type: "cpu", usage: process.cpuUsage() });
});
process.send?.({ type: "ready", port, l2: Boolean(redis), backend: database.kind });
