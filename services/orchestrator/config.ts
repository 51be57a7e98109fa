import { hostname } from "node:os";
import { ConfigError, envInteger, envString, type Env } from "../kit/config.js";

/**
 * Orchestrator settings, read from the environment once in create(), validated like the kit's
 * config: a bad value stops the process with a ConfigError naming the variable.
 */
export interface OrchestratorConfig {
  /** ORCA_ORCHESTRATOR_REPLICA: this replica's identity in attempts ("orchestrator/<id>"); default hostname:pid. */
  replica: string;
  /** ORCA_ORCHESTRATOR_MAX_CONCURRENCY: built-in task attempts this replica runs at once (per-worker bound). */
  maxConcurrency: number;
  /** ORCA_ORCHESTRATOR_PLUGIN_CONCURRENCY: bulkhead per built-in plugin, e.g. "http=32,shell=4,sql=8,grpc=32". */
  pluginConcurrency: Record<string, number>;
  /** ORCA_ORCHESTRATOR_QUEUE_CONCURRENCY: default bulkhead per worker queue (RUNNING tasks per tenant+queue, all replicas). */
  queueConcurrency: number;
  /** ORCA_ORCHESTRATOR_POLL_INTERVAL_MS: fallback polling for ready tasks when no NOTIFY arrives. */
  pollIntervalMs: number;
  /** ORCA_ORCHESTRATOR_MAINTENANCE_INTERVAL_MS: how often the reaper looks for lapsed leases and timeouts. */
  maintenanceIntervalMs: number;
  /** ORCA_ORCHESTRATOR_ABORT_GRACE_MS: grace given to running attempts when a run fails or times out. */
  abortGraceMs: number;
  /** ORCA_ORCHESTRATOR_HTTP_ALLOWED_HOSTS: comma-separated host globs the http plugin may call (empty = none). */
  httpAllowedHosts: string[];
  /** ORCA_ORCHESTRATOR_GRPC_ALLOWED_TARGETS: comma-separated "host:port" globs the grpc plugin may call outside the mesh (empty = none). */
  grpcAllowedTargets: string[];
  /** ORCA_ORCHESTRATOR_SHELL_ALLOWED_COMMANDS: comma-separated commands (absolute paths or names) the shell plugin may run. */
  shellAllowedCommands: string[];
  /** ORCA_ORCHESTRATOR_SHELL_MAX_OUTPUT_BYTES: cap on captured stdout and stderr, each. */
  shellMaxOutputBytes: number;
  /** ORCA_ORCHESTRATOR_SQL_DATABASES: "name=postgres://...,other=postgres://..." databases the sql plugin may query. */
  sqlDatabases: Record<string, string>;
  /** ORCA_ORCHESTRATOR_SQL_STATEMENT_TIMEOUT_MS: statement_timeout of sql plugin transactions. */
  sqlStatementTimeoutMs: number;
  /** ORCA_ORCHESTRATOR_POLICY_BUNDLE: the Policy bundle asked before StartRun (default "default"). */
  policyBundle: string;
  /** ORCA_ORCHESTRATOR_CACHE_NAMESPACE: Cache service namespace of memoized task results. */
  cacheNamespace: string;
  /** ORCA_ORCHESTRATOR_MAX_TASKS: most tasks one workflow version may hold (the DAG size limit). */
  maxTasks: number;
  /** ORCA_ORCHESTRATOR_WATCH_MAX_MS: maximum WatchRun stream duration before UNAVAILABLE (client resumes). */
  watchMaxMs: number;
}



function list(env: Env, name: string): string[] {
  return (envString(env, name) ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
}

function pairs(env: Env, name: string, expected: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const item of list(env, name)) {
    const eq = item.indexOf("=");
    if (eq <= 0 || eq === item.length - 1) throw new ConfigError(name, expected, envString(env, name) ?? "");
    out[item.slice(0, eq).trim()] = item.slice(eq + 1).trim();
  }
  return out;
}

export const DEFAULT_PLUGIN_CONCURRENCY: Record<string, number> = { http: 32, grpc: 32, shell: 4, sql: 8 };

export function readOrchestratorConfig(env: Env = process.env): OrchestratorConfig {
  const pluginRaw = pairs(env, "ORCA_ORCHESTRATOR_PLUGIN_CONCURRENCY", "plugin=limit pairs, e.g. http=32,shell=4");
  const pluginConcurrency = { ...DEFAULT_PLUGIN_CONCURRENCY };
  for (const [plugin, limit] of Object.entries(pluginRaw)) {
    if (!/^\d+$/.test(limit) || Number(limit) < 1 || Number(limit) > 10_000) {
      throw new ConfigError("ORCA_ORCHESTRATOR_PLUGIN_CONCURRENCY", "plugin=limit pairs with limits from 1 to 10000", `${plugin}=${limit}`);
    }
    pluginConcurrency[plugin] = Number(limit);
  }
  const sqlDatabases = pairs(env, "ORCA_ORCHESTRATOR_SQL_DATABASES", "name=postgres://... pairs");
  for (const [name, url] of Object.entries(sqlDatabases)) {
    if (!/^postgres(ql)?:\/\//.test(url)) throw new ConfigError("ORCA_ORCHESTRATOR_SQL_DATABASES", "name=postgres://... pairs", `${name}=<url>`);
  }
  return {
    replica: envString(env, "ORCA_ORCHESTRATOR_REPLICA") ?? `${hostname()}:${process.pid}`,
    maxConcurrency: envInteger(env, "ORCA_ORCHESTRATOR_MAX_CONCURRENCY", 64, 1, 10_000),
    pluginConcurrency,
    queueConcurrency: envInteger(env, "ORCA_ORCHESTRATOR_QUEUE_CONCURRENCY", 100, 1, 100_000),
    pollIntervalMs: envInteger(env, "ORCA_ORCHESTRATOR_POLL_INTERVAL_MS", 500, 10, 60_000),
    maintenanceIntervalMs: envInteger(env, "ORCA_ORCHESTRATOR_MAINTENANCE_INTERVAL_MS", 500, 10, 60_000),
    abortGraceMs: envInteger(env, "ORCA_ORCHESTRATOR_ABORT_GRACE_MS", 10_000, 0, 600_000),
    httpAllowedHosts: list(env, "ORCA_ORCHESTRATOR_HTTP_ALLOWED_HOSTS"),
    grpcAllowedTargets: list(env, "ORCA_ORCHESTRATOR_GRPC_ALLOWED_TARGETS"),
    shellAllowedCommands: list(env, "ORCA_ORCHESTRATOR_SHELL_ALLOWED_COMMANDS"),
    shellMaxOutputBytes: envInteger(env, "ORCA_ORCHESTRATOR_SHELL_MAX_OUTPUT_BYTES", 64 * 1024, 1, 16 * 1024 * 1024),
    sqlDatabases,
    sqlStatementTimeoutMs: envInteger(env, "ORCA_ORCHESTRATOR_SQL_STATEMENT_TIMEOUT_MS", 10_000, 1, 3_600_000),
    policyBundle: envString(env, "ORCA_ORCHESTRATOR_POLICY_BUNDLE") ?? "default",
    cacheNamespace: envString(env, "ORCA_ORCHESTRATOR_CACHE_NAMESPACE") ?? "orchestrator.results",
    maxTasks: envInteger(env, "ORCA_ORCHESTRATOR_MAX_TASKS", 1_000, 1, 20_000),
    watchMaxMs: envInteger(env, "ORCA_ORCHESTRATOR_WATCH_MAX_MS", 3_600_000, 1_000, 86_400_000),
  };
}
