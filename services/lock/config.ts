import { ConfigError, envInteger, type Env } from "../kit/config.js";

/**
 * Lock service settings, read from the environment once in `create()` (same style as the kit's
 * readConfig: a bad value stops the service with a ConfigError naming the variable).
 *
 * Every replica on one database should run with the same values: in particular the aging
 * interval is folded into each waiter's stored sort key when it enqueues, so replicas with
 * different intervals would order their waiters by different rules.
 */
export interface LockConfig {
  /** Largest TTL a lease may be granted or extended with (ORCA_LOCK_MAX_TTL_MS, default 1 h). */
  maxTtlMs: number;
  /**
   * TTL the `withLock` helper and KeepAlive-less tools use when none is given
   * (ORCA_LOCK_DEFAULT_TTL_MS, default 30 s). The contract makes `ttl` REQUIRED on Acquire, so
   * the server never substitutes it for a missing TTL (that would hide client bugs); it is exposed
   * for in-process callers and must not exceed maxTtlMs.
   */
  defaultTtlMs: number;
  /** Longest `wait_timeout` accepted (ORCA_LOCK_MAX_WAIT_MS, default 10 min). */
  maxWaitMs: number;
  /** Waiters per resource before Acquire answers RESOURCE_EXHAUSTED (ORCA_LOCK_MAX_QUEUE, default 1000). */
  maxQueue: number;
  /** Aging interval: a waiter's effective priority grows by 1 per interval (ORCA_LOCK_AGING_INTERVAL_MS, default 100). */
  agingIntervalMs: number;
  /** Longest resource name in UTF-8 bytes, at most 256 as the contract says (ORCA_LOCK_MAX_RESOURCE_BYTES, default 256). */
  maxResourceBytes: number;
  /** Period of the reaper's sweep (ORCA_LOCK_REAPER_INTERVAL_MS, default 1000); exact timers handle local expiries sooner. */
  reaperIntervalMs: number;
  /** Open WatchLocks streams per replica before RESOURCE_EXHAUSTED (ORCA_LOCK_MAX_WATCHERS, default 1000). */
  maxWatchers: number;
  /**
   * Safety-net poll of a waiting Acquire, in case a wake-up NOTIFY was lost with a LISTEN
   * connection (ORCA_LOCK_WAITER_POLL_MS, default 1000). Wake-ups normally arrive within ms.
   */
  waiterPollMs: number;
  /** How long released/expired lease rows are kept for NOT_FOUND vs EXPIRED answers (ORCA_LOCK_LEASE_RETENTION_MS, default 24 h, minimum 24 h). */
  leaseRetentionMs: number;
}

const HOUR = 3_600_000;

export function readLockConfig(env: Env = process.env): LockConfig {
  const maxTtlMs = envInteger(env, "ORCA_LOCK_MAX_TTL_MS", HOUR, 1, 7 * 24 * HOUR);
  const defaultTtlMs = envInteger(env, "ORCA_LOCK_DEFAULT_TTL_MS", Math.min(30_000, maxTtlMs), 1, 7 * 24 * HOUR);
  if (defaultTtlMs > maxTtlMs) {
    throw new ConfigError("ORCA_LOCK_DEFAULT_TTL_MS", `an integer from 1 to ORCA_LOCK_MAX_TTL_MS (${maxTtlMs})`, String(defaultTtlMs));
  }
  return {
    maxTtlMs,
    defaultTtlMs,
    maxWaitMs: envInteger(env, "ORCA_LOCK_MAX_WAIT_MS", 10 * 60_000, 0, 24 * HOUR),
    maxQueue: envInteger(env, "ORCA_LOCK_MAX_QUEUE", 1000, 1, 1_000_000),
    agingIntervalMs: envInteger(env, "ORCA_LOCK_AGING_INTERVAL_MS", 100, 1, HOUR),
    maxResourceBytes: envInteger(env, "ORCA_LOCK_MAX_RESOURCE_BYTES", 256, 1, 256),
    reaperIntervalMs: envInteger(env, "ORCA_LOCK_REAPER_INTERVAL_MS", 1000, 10, 60_000),
    maxWatchers: envInteger(env, "ORCA_LOCK_MAX_WATCHERS", 1000, 1, 100_000),
    waiterPollMs: envInteger(env, "ORCA_LOCK_WAITER_POLL_MS", 1000, 10, 600_000),
    leaseRetentionMs: envInteger(env, "ORCA_LOCK_LEASE_RETENTION_MS", 24 * HOUR, 24 * HOUR, 365 * 24 * HOUR),
  };
}
