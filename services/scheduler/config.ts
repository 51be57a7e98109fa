import { envInteger, type Env } from "../kit/config.js";

/**
 * Scheduler settings, read from the environment once in `create()` (same style as the kit's
 * readConfig: a bad value stops the service with a ConfigError naming the variable). Every
 * replica on one database should run with the same values.
 */
export interface SchedulerConfig {
  /** Schedules firing more often than this are INVALID_ARGUMENT (ORCA_SCHEDULER_MIN_INTERVAL_MS, default 1000). */
  minIntervalMs: number;
  /** TTL of the firer's Lock lease; a dead firer is replaced within it (ORCA_SCHEDULER_LEADER_TTL_MS, default 10000). */
  leaderTtlMs: number;
  /** A firing materialized later than this after its due time counts as CATCHUP, not SCHEDULED (ORCA_SCHEDULER_LATE_THRESHOLD_MS, default 5000). */
  lateThresholdMs: number;
  /** Longest idle sleep of the firing loop; it also wakes on NOTIFY and at the next fire time (ORCA_SCHEDULER_POLL_MS, default 1000). */
  pollMs: number;
  /** BUFFER_ALL buffer size per schedule (ORCA_SCHEDULER_MAX_BUFFERED, default 100). */
  maxBuffered: number;
  /** PublishEvent dedup window (ORCA_SCHEDULER_EVENT_DEDUP_MS, default 24 h). */
  eventDedupMs: number;
  /** Largest event payload / schedule input, serialized JSON bytes (ORCA_SCHEDULER_MAX_PAYLOAD_BYTES, default 256 KiB). */
  maxPayloadBytes: number;
  /** Schedules per tenant (ORCA_SCHEDULER_MAX_SCHEDULES_PER_TENANT, default 100000). */
  maxSchedulesPerTenant: number;
  /** Triggers per tenant (ORCA_SCHEDULER_MAX_TRIGGERS_PER_TENANT, default 10000). */
  maxTriggersPerTenant: number;
  /** Concurrent StartRun calls of the firer (ORCA_SCHEDULER_DISPATCH_CONCURRENCY, default 64). */
  dispatchConcurrency: number;
  /** MISSED rows written per schedule after a long downtime before skipping ahead (ORCA_SCHEDULER_MAX_MISSED_RECORDS, default 1000). */
  maxMissedRecords: number;
  /** Delay before a PENDING firing/dispatch whose StartRun failed with a retryable error is tried again (ORCA_SCHEDULER_RETRY_MS, default 2000). */
  retryMs: number;
  /** Firings older than this are deleted (ORCA_SCHEDULER_FIRING_RETENTION_MS, default 30 days). */
  firingRetentionMs: number;
}


const HOUR = 3_600_000;

export function readSchedulerConfig(env: Env = process.env): SchedulerConfig {
  return {
    minIntervalMs: envInteger(env, "ORCA_SCHEDULER_MIN_INTERVAL_MS", 1000, 1000, 24 * HOUR),
    leaderTtlMs: envInteger(env, "ORCA_SCHEDULER_LEADER_TTL_MS", 10_000, 500, HOUR),
    lateThresholdMs: envInteger(env, "ORCA_SCHEDULER_LATE_THRESHOLD_MS", 5000, 0, HOUR),
    pollMs: envInteger(env, "ORCA_SCHEDULER_POLL_MS", 1000, 10, 60_000),
    maxBuffered: envInteger(env, "ORCA_SCHEDULER_MAX_BUFFERED", 100, 1, 100_000),
    eventDedupMs: envInteger(env, "ORCA_SCHEDULER_EVENT_DEDUP_MS", 24 * HOUR, 1000, 30 * 24 * HOUR),
    maxPayloadBytes: envInteger(env, "ORCA_SCHEDULER_MAX_PAYLOAD_BYTES", 256 * 1024, 1024, 16 * 1024 * 1024),
    maxSchedulesPerTenant: envInteger(env, "ORCA_SCHEDULER_MAX_SCHEDULES_PER_TENANT", 100_000, 1, 10_000_000),
    maxTriggersPerTenant: envInteger(env, "ORCA_SCHEDULER_MAX_TRIGGERS_PER_TENANT", 10_000, 1, 1_000_000),
    dispatchConcurrency: envInteger(env, "ORCA_SCHEDULER_DISPATCH_CONCURRENCY", 64, 1, 10_000),
    maxMissedRecords: envInteger(env, "ORCA_SCHEDULER_MAX_MISSED_RECORDS", 1000, 1, 1_000_000),
    retryMs: envInteger(env, "ORCA_SCHEDULER_RETRY_MS", 2000, 10, HOUR),
    firingRetentionMs: envInteger(env, "ORCA_SCHEDULER_FIRING_RETENTION_MS", 30 * 24 * HOUR, HOUR, 3650 * 24 * HOUR),
  };
}
