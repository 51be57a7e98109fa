import { ConfigError, envInteger, envString, type Env } from "../kit/config.js";

/**
 * Cache settings, read from the environment once in create() (same style as the kit's config:
 * a bad value stops the process with a ConfigError naming the variable).
 *
 *   ORCA_CACHE_L1_MAX_BYTES          L1 bound in bytes (keys + values + ~200 B overhead per entry); default 64 MiB
 *   ORCA_CACHE_MAX_VALUE_BYTES       largest value a Set accepts; default 1 MiB
 *   ORCA_CACHE_MAX_TTL_MS            largest TTL a Set accepts; default 30 days
 *   ORCA_CACHE_DEFAULT_TTL_MS        TTL when a Set gives none and its namespace has no policy; default 1 h
 *   ORCA_CACHE_STALE_WHILE_REVALIDATE_MS  default stale-while-revalidate window; default 0 (off)
 *   ORCA_CACHE_STALE_IF_ERROR_MS     default stale-if-error window; default 5 min
 *   ORCA_CACHE_NAMESPACE_POLICIES    JSON: {"<namespace>": {"defaultTtlMs": n, "staleWhileRevalidateMs": n,
 *                                    "staleIfErrorMs": n}}; a namespace ending in '*' is a prefix
 *                                    ("orchestrator:*"); the longest matching entry wins, missing fields take the defaults
 *   ORCA_CACHE_L2_TIMEOUT_MS         budget for one Redis call before it counts as a miss; default 50
 *   ORCA_CACHE_L3_TIMEOUT_MS         budget for one Postgres read before stale-if-error applies; default 1000
 *   ORCA_CACHE_PURGE_INTERVAL_MS     how often expired L3 rows are purged; default 60000
 *   ORCA_CACHE_REDIS_PREFIX          prefix of every Redis key and channel; default "orca:cache:"
 *   ORCA_CACHE_MAX_WATCH_STREAMS     open WatchInvalidations streams per replica; default 1000
 */
export interface NamespacePolicy {
  defaultTtlMs: number;
  staleWhileRevalidateMs: number;
  staleIfErrorMs: number;
}

export interface CacheConfig {
  l1MaxBytes: number;
  maxValueBytes: number;
  maxTtlMs: number;
  defaults: NamespacePolicy;
  /** Exact namespaces and prefixes ("name*"), as configured. */
  policies: Record<string, Partial<NamespacePolicy>>;
  l2TimeoutMs: number;
  l3TimeoutMs: number;
  purgeIntervalMs: number;
  redisPrefix: string;
  maxWatchStreams: number;
}

const DAY = 24 * 3600_000;


const POLICY_FIELDS = ["defaultTtlMs", "staleWhileRevalidateMs", "staleIfErrorMs"] as const;
const NAMESPACE = /^[A-Za-z0-9._:-]{1,128}\*?$/;

function policies(env: Env, maxTtlMs: number): Record<string, Partial<NamespacePolicy>> {
  const name = "ORCA_CACHE_NAMESPACE_POLICIES";
  const raw = envString(env, name);
  if (!raw) return {};
  const expected = 'a JSON object {"<namespace or prefix*>": {"defaultTtlMs": n, "staleWhileRevalidateMs": n, "staleIfErrorMs": n}}';
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    throw new ConfigError(name, expected, raw);
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw new ConfigError(name, expected, raw);
  const out: Record<string, Partial<NamespacePolicy>> = {};
  for (const [namespace, value] of Object.entries(parsed)) {
    if (!NAMESPACE.test(namespace)) throw new ConfigError(name, `${expected}; "${namespace}" is not a valid namespace`, raw);
    if (typeof value !== "object" || value === null) throw new ConfigError(name, expected, raw);
    const policy: Partial<NamespacePolicy> = {};
    for (const [field, n] of Object.entries(value)) {
      if (!(POLICY_FIELDS as readonly string[]).includes(field)) {
        throw new ConfigError(name, `${expected}; unknown field "${field}" for "${namespace}"`, raw);
      }
      if (typeof n !== "number" || !Number.isInteger(n) || n < 0 || n > maxTtlMs) {
        throw new ConfigError(name, `${expected}; "${namespace}".${field} must be an integer from 0 to ${maxTtlMs}`, raw);
      }
      policy[field as keyof NamespacePolicy] = n;
    }
    if (policy.defaultTtlMs === 0) throw new ConfigError(name, `${expected}; "${namespace}".defaultTtlMs must be at least 1`, raw);
    out[namespace] = policy;
  }
  return out;
}

export function readCacheConfig(env: Env = process.env): CacheConfig {
  const maxTtlMs = envInteger(env, "ORCA_CACHE_MAX_TTL_MS", 30 * DAY, 1000, 3650 * DAY);
  return {
    l1MaxBytes: envInteger(env, "ORCA_CACHE_L1_MAX_BYTES", 64 * 1024 * 1024, 64 * 1024, 64 * 1024 * 1024 * 1024),
    maxValueBytes: envInteger(env, "ORCA_CACHE_MAX_VALUE_BYTES", 1024 * 1024, 1, 512 * 1024 * 1024),
    maxTtlMs,
    defaults: {
      defaultTtlMs: envInteger(env, "ORCA_CACHE_DEFAULT_TTL_MS", 3600_000, 1, maxTtlMs),
      staleWhileRevalidateMs: envInteger(env, "ORCA_CACHE_STALE_WHILE_REVALIDATE_MS", 0, 0, maxTtlMs),
      staleIfErrorMs: envInteger(env, "ORCA_CACHE_STALE_IF_ERROR_MS", 5 * 60_000, 0, maxTtlMs),
    },
    policies: policies(env, maxTtlMs),
    l2TimeoutMs: envInteger(env, "ORCA_CACHE_L2_TIMEOUT_MS", 50, 1, 60_000),
    l3TimeoutMs: envInteger(env, "ORCA_CACHE_L3_TIMEOUT_MS", 1000, 1, 600_000),
    purgeIntervalMs: envInteger(env, "ORCA_CACHE_PURGE_INTERVAL_MS", 60_000, 100, DAY),
    redisPrefix: envString(env, "ORCA_CACHE_REDIS_PREFIX") ?? "orca:cache:",
    maxWatchStreams: envInteger(env, "ORCA_CACHE_MAX_WATCH_STREAMS", 1000, 1, 1_000_000),
  };
}

/** The policy of a namespace: exact entry, else the longest matching prefix entry, else the defaults. */
export function policyFor(config: CacheConfig, namespace: string): NamespacePolicy {
  let best: Partial<NamespacePolicy> | undefined = config.policies[namespace];
  if (!best) {
    let bestLength = -1;
    for (const [name, policy] of Object.entries(config.policies)) {
      if (name.endsWith("*") && namespace.startsWith(name.slice(0, -1)) && name.length > bestLength) {
        best = policy;
        bestLength = name.length;
      }
    }
  }
  return { ...config.defaults, ...best };
}
