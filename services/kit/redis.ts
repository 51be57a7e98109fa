import { Redis } from "ioredis";
import type { Logger } from "./telemetry/logger.js";

export type { Redis };

/**
 * Redis, when REDIS_URL is set: L2 cache, cross-replica invalidation, distributed rate limits.
 * Redis is an accelerator, never the source of truth: commands fail fast while it is down
 * (no offline queue, one retry) so callers fall back to their in-process versions, and the client
 * keeps reconnecting in the background.
 */
export function openRedis(url: string, logger: Logger): Redis {
  const redis = new Redis(url, {
    lazyConnect: false,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    connectTimeout: 2_000,
    retryStrategy: (attempt) => Math.min(attempt * 200, 2_000),
  });
  let down = false;
  redis.on("error", (error) => {
    if (!down) logger.warn({ err: error }, "redis unavailable; in-process fallbacks in use until it returns");
    down = true;
  });
  redis.on("ready", () => {
    if (down) logger.info("redis reconnected");
    down = false;
  });
  return redis;
}
