import { randomBytes } from "node:crypto";
import { Redis } from "ioredis";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { CacheService } from "../../gen/orca/cache/v1/cache_pb.js";
import { openDatabase, type Database } from "../../services/kit/db/database.js";
import { openRedis } from "../../services/kit/redis.js";
import { createLogger } from "../../services/kit/telemetry/logger.js";
import { createCacheModule, type TieredCache } from "../../services/cache/index.js";
import { startServiceHarness, type ServiceHarness } from "../support/service-harness.js";

export const redisUrl = process.env.REDIS_URL;
export const logger = createLogger({ level: "silent" });

export async function openPostgres(url: string): Promise<Database> {
  return openDatabase({ databaseUrl: url, dataDir: "/nonexistent", logger });
}

/** A unique Redis key prefix for this run, and a cleanup that deletes every key under it. */
export function redisPrefix(): string {
  return `orca-test:${randomBytes(5).toString("hex")}:`;
}

export async function cleanRedis(url: string, prefix: string): Promise<void> {
  const redis = new Redis(url, { lazyConnect: false, maxRetriesPerRequest: 1 });
  try {
    let cursor = "0";
    do {
      const [next, keys] = await redis.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 1000);
      cursor = next;
      if (keys.length > 0) await redis.unlink(...keys);
    } while (cursor !== "0");
  } finally {
    redis.disconnect();
  }
}

export interface Replica {
  harness: ServiceHarness;
  client: Client<typeof CacheService>;
  cache: TieredCache;
  redis?: Redis;
  stop(): Promise<void>;
}

/** One Cache replica on real gRPC; several on one database (and Redis prefix) are replicas of one service. */
export async function startReplica(options: {
  database: Database;
  redisUrl?: string;
  env?: Record<string, string>;
  name?: string;
}): Promise<Replica> {
  const redis = options.redisUrl ? openRedis(options.redisUrl, logger) : undefined;
  if (redis) await waitFor(() => redis.status === "ready", 5_000, "redis ready");
  const module = createCacheModule({ env: { ORCA_CACHE_PURGE_INTERVAL_MS: "3600000", ...options.env }, replicaId: options.name });
  const harness = await startServiceHarness(module, { database: options.database, redis, env: {} });
  const cache = (harness.instance as unknown as { cache: TieredCache }).cache;
  const transport = createGrpcTransport({ baseUrl: harness.url });
  return {
    harness,
    client: createClient(CacheService, transport),
    cache,
    redis,
    stop: async () => {
      await harness.stop();
      redis?.disconnect();
    },
  };
}

export async function waitFor(check: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<number> {
  const start = performance.now();
  for (;;) {
    if (await check()) return performance.now() - start;
    if (performance.now() - start > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

export const text = (s: string) => new TextEncoder().encode(s);
export const str = (b: Uint8Array | undefined) => (b ? new TextDecoder().decode(b) : undefined);
