import { ConfigError, envBool, envInteger, envString, type Env } from "../kit/config.js";

/**
 * Monitor settings, read from the environment once in `create()` (same style as the kit's
 * readConfig: a bad value stops the service with a ConfigError naming the variable).
 * Every variable is listed in the issue report for README ("Configuration").
 */
export interface MonitorConfig {
  /** Interval of targets registered without one, and of the builtin targets (ORCA_MONITOR_PROBE_INTERVAL_MS, default 10 s). */
  defaultIntervalMs: number;
  /**
   * Smallest interval RegisterTarget accepts (ORCA_MONITOR_MIN_INTERVAL_MS, default 1000 as the
   * contract says). Tests lower it to probe every few tens of ms; production keeps 1 s.
   */
  minIntervalMs: number;
  /** Default per-probe timeout cap (ORCA_MONITOR_PROBE_TIMEOUT_MS, default 5 s; the contract's "smaller of 5 s and interval"). */
  defaultTimeoutMs: number;
  /** Register the mesh's six services as builtin targets at start (ORCA_MONITOR_BUILTIN_TARGETS, default on). */
  builtinTargets: boolean;
  /** EWMA weight of the fast ("current") average (ORCA_MONITOR_EWMA_FAST_ALPHA, default 0.3). */
  fastAlpha: number;
  /** EWMA weight of the slow baseline and its variance (ORCA_MONITOR_EWMA_SLOW_ALPHA, default 0.05). */
  slowAlpha: number;
  /** Samples before a baseline is warmed up and anomaly scores count (ORCA_MONITOR_WARMUP_SAMPLES, default 30). */
  warmupSamples: number;
  /** Floor of the latency standard deviation in the score's denominator (ORCA_MONITOR_LATENCY_STDDEV_FLOOR_MS, default 1). */
  latencyStddevFloorMs: number;
  /** Floor of the error-rate standard deviation (ORCA_MONITOR_ERROR_RATE_STDDEV_FLOOR, default 0.01). */
  errorRateStddevFloor: number;
  /** Webhook attempt timeout (ORCA_MONITOR_WEBHOOK_TIMEOUT_MS, default 10 s). */
  webhookTimeoutMs: number;
  /** First retry backoff, before full jitter (ORCA_MONITOR_WEBHOOK_BACKOFF_MS, default 1 s). */
  webhookBackoffMs: number;
  /** Backoff cap (ORCA_MONITOR_WEBHOOK_BACKOFF_MAX_MS, default 5 min). */
  webhookBackoffMaxMs: number;
  /** Attempts per delivery, the first included (ORCA_MONITOR_WEBHOOK_MAX_ATTEMPTS, default 8). */
  webhookMaxAttempts: number;
  /** Period of the housekeeping loop: due deliveries, silence expiry, repeats, recovery retries (ORCA_MONITOR_TICK_MS, default 1000). */
  tickMs: number;
  /** Probe samples older than this are deleted (ORCA_MONITOR_SAMPLE_RETENTION_MS, default 24 h). */
  sampleRetentionMs: number;
  /** Status history, resolved alerts, final deliveries and ended silences older than this are deleted (ORCA_MONITOR_HISTORY_RETENTION_MS, default 30 days). */
  historyRetentionMs: number;
  /** Targets per tenant (ORCA_MONITOR_MAX_TARGETS, default 1000). */
  maxTargetsPerTenant: number;
  /** Rules per tenant (ORCA_MONITOR_MAX_RULES, default 1000). */
  maxRulesPerTenant: number;
  /** Active silences per tenant (ORCA_MONITOR_MAX_SILENCES, default 1000). */
  maxSilencesPerTenant: number;
  /** WatchHealth ends with OK after this long; clients reconnect (ORCA_MONITOR_WATCH_MAX_MS, default 30 min). */
  watchMaxMs: number;
  /** Events buffered per WatchHealth stream before it ends with RESOURCE_EXHAUSTED (ORCA_MONITOR_WATCH_BUFFER, default 1000). */
  watchBuffer: number;
  /** First backoff of a failed recovery start; doubles up to 5 min (ORCA_MONITOR_RECOVERY_BACKOFF_MS, default 5 s). */
  recoveryBackoffMs: number;
}



function decimal(env: Env, name: string, fallback: number, min: number, max: number, exclusiveMin = false): number {
  const value = envString(env, name);
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!/^\d+(\.\d+)?$/.test(value) || !Number.isFinite(n) || n > max || n < min || (exclusiveMin && n === min)) {
    throw new ConfigError(name, `a number ${exclusiveMin ? "above" : "from"} ${min} ${exclusiveMin ? "and at most" : "to"} ${max}`, value);
  }
  return n;
}


const HOUR = 3_600_000;
const DAY = 24 * HOUR;

export function readMonitorConfig(env: Env = process.env): MonitorConfig {
  const minIntervalMs = envInteger(env, "ORCA_MONITOR_MIN_INTERVAL_MS", 1000, 10, HOUR);
  const defaultIntervalMs = envInteger(env, "ORCA_MONITOR_PROBE_INTERVAL_MS", 10_000, 10, HOUR);
  if (defaultIntervalMs < minIntervalMs) {
    throw new ConfigError("ORCA_MONITOR_PROBE_INTERVAL_MS", `an integer from ORCA_MONITOR_MIN_INTERVAL_MS (${minIntervalMs}) to ${HOUR}`, String(defaultIntervalMs));
  }
  const fastAlpha = decimal(env, "ORCA_MONITOR_EWMA_FAST_ALPHA", 0.3, 0, 1, true);
  const slowAlpha = decimal(env, "ORCA_MONITOR_EWMA_SLOW_ALPHA", 0.05, 0, 1, true);
  if (slowAlpha > fastAlpha) throw new ConfigError("ORCA_MONITOR_EWMA_SLOW_ALPHA", `a number not above ORCA_MONITOR_EWMA_FAST_ALPHA (${fastAlpha})`, String(slowAlpha));
  const webhookBackoffMs = envInteger(env, "ORCA_MONITOR_WEBHOOK_BACKOFF_MS", 1000, 1, HOUR);
  return {
    defaultIntervalMs,
    minIntervalMs,
    defaultTimeoutMs: envInteger(env, "ORCA_MONITOR_PROBE_TIMEOUT_MS", 5000, 1, HOUR),
    builtinTargets: envBool(env, "ORCA_MONITOR_BUILTIN_TARGETS", true),
    fastAlpha,
    slowAlpha,
    warmupSamples: envInteger(env, "ORCA_MONITOR_WARMUP_SAMPLES", 30, 1, 100_000),
    latencyStddevFloorMs: decimal(env, "ORCA_MONITOR_LATENCY_STDDEV_FLOOR_MS", 1, 0, 60_000, true),
    errorRateStddevFloor: decimal(env, "ORCA_MONITOR_ERROR_RATE_STDDEV_FLOOR", 0.01, 0, 1, true),
    webhookTimeoutMs: envInteger(env, "ORCA_MONITOR_WEBHOOK_TIMEOUT_MS", 10_000, 1, 10 * 60_000),
    webhookBackoffMs,
    webhookBackoffMaxMs: Math.max(webhookBackoffMs, envInteger(env, "ORCA_MONITOR_WEBHOOK_BACKOFF_MAX_MS", 5 * 60_000, 1, DAY)),
    webhookMaxAttempts: envInteger(env, "ORCA_MONITOR_WEBHOOK_MAX_ATTEMPTS", 8, 1, 100),
    tickMs: envInteger(env, "ORCA_MONITOR_TICK_MS", 1000, 10, 60_000),
    sampleRetentionMs: envInteger(env, "ORCA_MONITOR_SAMPLE_RETENTION_MS", DAY, 60_000, 365 * DAY),
    historyRetentionMs: envInteger(env, "ORCA_MONITOR_HISTORY_RETENTION_MS", 30 * DAY, 60_000, 3650 * DAY),
    maxTargetsPerTenant: envInteger(env, "ORCA_MONITOR_MAX_TARGETS", 1000, 1, 1_000_000),
    maxRulesPerTenant: envInteger(env, "ORCA_MONITOR_MAX_RULES", 1000, 1, 1_000_000),
    maxSilencesPerTenant: envInteger(env, "ORCA_MONITOR_MAX_SILENCES", 1000, 1, 1_000_000),
    watchMaxMs: envInteger(env, "ORCA_MONITOR_WATCH_MAX_MS", 30 * 60_000, 1000, DAY),
    watchBuffer: envInteger(env, "ORCA_MONITOR_WATCH_BUFFER", 1000, 1, 1_000_000),
    recoveryBackoffMs: envInteger(env, "ORCA_MONITOR_RECOVERY_BACKOFF_MS", 5000, 1, HOUR),
  };
}
