import { hostname } from "node:os";
import { ConfigError, envBool, envInteger, envString, type Env } from "../kit/config.js";

/**
 * Policy service settings, read from the environment once in create(), validated like the kit's
 * config (a bad value stops the process with a ConfigError naming the variable).
 */
export interface PolicyConfig {
  /** ORCA_POLICY_DIR: a directory of bundles watched and reloaded on change; unset = no watching. */
  dir?: string;
  /** ORCA_POLICY_DIR_DEBOUNCE_MS: quiet time after the last change before the directory is reloaded. */
  dirDebounceMs: number;
  /** ORCA_POLICY_SENSITIVE_FIELDS: comma-separated dotted input paths masked in the decision log. */
  sensitiveFields: string[];
  /** ORCA_POLICY_CACHE_MAX_ENTRIES: decision cache bound (0 disables the cache). */
  cacheMaxEntries: number;
  /** ORCA_POLICY_CACHE_TTL_MS: decision cache entry lifetime. */
  cacheTtlMs: number;
  /** ORCA_POLICY_MAX_INPUT_BYTES: largest merged Decide input, as JSON. */
  maxInputBytes: number;
  /** ORCA_POLICY_MAX_BUNDLE_BYTES: largest bundle content. */
  maxBundleBytes: number;
  /** ORCA_POLICY_LOAD_DEFAULTS: store and activate the shipped default bundle at start when none is active. */
  loadDefaults: boolean;
  /** ORCA_POLICY_SHADOW_FLUSH_MS: how often a replica adds its shadow counts to the shared report. */
  shadowFlushMs: number;
  /** ORCA_POLICY_BENCHMARK_BUDGET_MS: wall-clock limit of one BenchmarkPolicy call. */
  benchmarkBudgetMs: number;
  /** ORCA_POLICY_REPLICA: this replica's identity in GetStats (default hostname:pid). */
  replica: string;
}

/** Masked unless configured otherwise: the usual credentials and client addresses (PII). */
export const DEFAULT_SENSITIVE_FIELDS = ["ip", "client_ip", "context.ip", "context.client_ip", "token", "password", "authorization"];

export function readPolicyConfig(env: Env = process.env): PolicyConfig {
  const sensitiveRaw = env.ORCA_POLICY_SENSITIVE_FIELDS;
  const sensitiveFields =
    sensitiveRaw === undefined
      ? DEFAULT_SENSITIVE_FIELDS
      : sensitiveRaw
          .split(",")
          .map((s) => s.trim())
          .filter(Boolean);
  for (const field of sensitiveFields) {
    if (!/^[^.\s]+(\.[^.\s]+)*$/.test(field)) throw new ConfigError("ORCA_POLICY_SENSITIVE_FIELDS", "comma-separated dotted paths like ip,context.user.email", sensitiveRaw ?? "");
  }
  return {
    dir: envString(env, "ORCA_POLICY_DIR"),
    dirDebounceMs: envInteger(env, "ORCA_POLICY_DIR_DEBOUNCE_MS", 200, 0, 60_000),
    sensitiveFields,
    cacheMaxEntries: envInteger(env, "ORCA_POLICY_CACHE_MAX_ENTRIES", 10_000, 0, 10_000_000),
    cacheTtlMs: envInteger(env, "ORCA_POLICY_CACHE_TTL_MS", 60_000, 1, 86_400_000),
    maxInputBytes: envInteger(env, "ORCA_POLICY_MAX_INPUT_BYTES", 64 * 1024, 1024, 64 * 1024 * 1024),
    maxBundleBytes: envInteger(env, "ORCA_POLICY_MAX_BUNDLE_BYTES", 4 * 1024 * 1024, 1024, 256 * 1024 * 1024),
    loadDefaults: envBool(env, "ORCA_POLICY_LOAD_DEFAULTS", true),
    shadowFlushMs: envInteger(env, "ORCA_POLICY_SHADOW_FLUSH_MS", 1000, 10, 600_000),
    benchmarkBudgetMs: envInteger(env, "ORCA_POLICY_BENCHMARK_BUDGET_MS", 10_000, 10, 600_000),
    replica: envString(env, "ORCA_POLICY_REPLICA") ?? `${hostname()}:${process.pid}`,
  };
}
