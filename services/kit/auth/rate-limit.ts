import { LRUCache } from "lru-cache";
import type { Redis } from "../redis.js";
import type { Logger } from "../telemetry/logger.js";

/**
 * Token buckets: `ratePerSecond` tokens refill continuously up to `burst`; a call takes one.
 * With Redis, one atomic Lua script per call shares each bucket between replicas and uses the
 * Redis clock (replicas' clocks do not matter); without Redis, or while it is down, buckets are
 * in-process (per replica), so a limit then holds per replica rather than for the service.
 */
export interface RateLimitDecision {
  allowed: boolean;
  retryAfterMs: number;
}

export interface RateLimiter {
  take(key: string): Promise<RateLimitDecision>;
}

export interface BucketConfig {
  ratePerSecond: number;
  burst: number;
}

export class MemoryRateLimiter implements RateLimiter {
  private readonly buckets = new LRUCache<string, { tokens: number; at: number }>({ max: 100_000 });

  constructor(private readonly config: BucketConfig) {}

  async take(key: string): Promise<RateLimitDecision> {
    return this.takeSync(key, performance.now());
  }

  takeSync(key: string, nowMs: number): RateLimitDecision {
    const { ratePerSecond, burst } = this.config;
    const bucket = this.buckets.get(key) ?? { tokens: burst, at: nowMs };
    bucket.tokens = Math.min(burst, bucket.tokens + ((nowMs - bucket.at) * ratePerSecond) / 1000);
    bucket.at = nowMs;
    this.buckets.set(key, bucket);
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1;
      return { allowed: true, retryAfterMs: 0 };
    }
    return { allowed: false, retryAfterMs: Math.ceil(((1 - bucket.tokens) * 1000) / ratePerSecond) };
  }
}

// KEYS[1] = bucket; ARGV = rate per second, burst. Returns {allowed (0/1), retry after ms}.
const TOKEN_BUCKET_LUA = `
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local data = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(data[1])
local at = tonumber(data[2])
if tokens == nil then tokens = burst; at = now end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
local allowed = 0
local retry = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  retry = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, retry}
`;

type RedisWithBucket = Redis & { orcaTokenBucket(key: string, rate: number, burst: number): Promise<[number, number]> };

export class RedisRateLimiter implements RateLimiter {
  private readonly fallback: MemoryRateLimiter;
  private readonly redis: RedisWithBucket;
  private warned = false;

  constructor(
    redis: Redis,
    private readonly config: BucketConfig,
    private readonly logger: Logger,
    private readonly prefix = "orca:ratelimit:",
  ) {
    if (!("orcaTokenBucket" in redis)) redis.defineCommand("orcaTokenBucket", { numberOfKeys: 1, lua: TOKEN_BUCKET_LUA });
    this.redis = redis as RedisWithBucket;
    this.fallback = new MemoryRateLimiter(config);
  }

  async take(key: string): Promise<RateLimitDecision> {
    try {
      const [allowed, retryAfterMs] = await this.redis.orcaTokenBucket(this.prefix + key, this.config.ratePerSecond, this.config.burst);
      this.warned = false;
      return { allowed: allowed === 1, retryAfterMs };
    } catch (error) {
      if (!this.warned) this.logger.warn({ err: error }, "rate limits: Redis unavailable, using per-replica buckets");
      this.warned = true;
      return this.fallback.take(key);
    }
  }
}
