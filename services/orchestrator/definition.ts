import { createHash } from "node:crypto";
import type { JsonObject, JsonValue } from "@bufbuild/protobuf";
import type { Duration } from "@bufbuild/protobuf/wkt";
import { compileConfig, compileExpression, type Compiled, type CompiledConfig, MAX_EXPRESSION_BYTES } from "./cel.js";
import { buildDag, validateDag, type Dag } from "./dag.js";
import type { FieldViolation } from "./bad-request.js";
import { WORKER_PLUGIN, type Plugin } from "./plugins/types.js";
import { DEFAULT_RETRY, type EffectiveRetry } from "./retry.js";
import type { RegisterWorkflowRequest, RetryPolicy, TaskDefinition, TaskTimeouts, CachePolicy } from "../../gen/orca/orchestrator/v1/orchestrator_pb.js";

/**
 * Workflow definitions: validation of RegisterWorkflow requests, the stored (canonical) form,
 * and the compiled form the engine uses. The stored form keeps what the user gave (unset
 * policies stay unset, so GetWorkflow returns the definition as registered) with durations in
 * milliseconds; defaults are applied only when compiling.
 */
export interface StoredRetry {
  maxAttempts: number;
  initialBackoffMs?: number;
  multiplier: number;
  maxBackoffMs?: number;
  jitter?: number;
  nonRetryable: string[];
}
export interface StoredTimeouts {
  scheduleToStartMs?: number;
  startToCloseMs?: number;
  heartbeatMs?: number;
}
export interface StoredCache {
  enabled: boolean;
  ttlMs?: number;
}
export interface StoredTask {
  id: string;
  plugin: string;
  config: JsonObject;
  dependsOn: string[];
  condition: string;
  retry?: StoredRetry;
  timeouts?: StoredTimeouts;
  cache?: StoredCache;
  lockKey: string;
  priority: number;
  queue: string;
}
export interface StoredDefinition {
  description: string;
  tasks: StoredTask[];
  defaults?: { retry?: StoredRetry; timeouts?: StoredTimeouts; cache?: StoredCache };
  runTimeoutMs?: number;
  maxParallelism: number;
}

export interface CompiledTask {
  def: StoredTask;
  index: number;
  retry: EffectiveRetry;
  scheduleToStartMs: number | null;
  startToCloseMs: number;
  heartbeatMs: number;
  cache: { enabled: boolean; ttlMs: number };
  condition?: Compiled;
  lockKey?: Compiled;
  config: CompiledConfig;
  /** Transitive dependencies (the `tasks` map of CEL). */
  ancestors: Set<string>;
  dependents: string[];
}
export interface CompiledWorkflow {
  tenant: string;
  name: string;
  version: number;
  digest: string;
  def: StoredDefinition;
  tasks: Map<string, CompiledTask>;
  order: string[];
  sinks: string[];
  runTimeoutMs: number;
  maxParallelism: number;
}

export const NAME_RE = /^[A-Za-z][A-Za-z0-9_.-]{0,127}$/;
export const TASK_ID_RE = /^[a-z][a-z0-9_]{0,63}$/;
export const QUEUE_RE = /^[a-z][a-z0-9_.-]{0,127}$/;
export const KIND_RE = /^[a-z][a-z0-9_.-]{0,99}$/;
const KIND_PATTERN_RE = /^[a-z][a-z0-9_.-]{0,97}(\.\*)?$|^[a-z][a-z0-9_.-]{0,99}$/;

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
export const DEFAULT_RUN_TIMEOUT_MS = DAY;
export const DEFAULT_START_TO_CLOSE_MS = 10 * 60_000;
export const DEFAULT_HEARTBEAT_MS = 30_000;
export const DEFAULT_CACHE_TTL_MS = DAY;

export function durationMs(d: Duration | undefined): number | undefined {
  if (!d) return undefined;
  return Number(d.seconds) * 1000 + Math.round(d.nanos / 1e6);
}

export function msDuration(ms: number): { seconds: bigint; nanos: number } {
  return { seconds: BigInt(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1e6 };
}

function checkDuration(v: FieldViolation[], field: string, ms: number | undefined, min: number, max: number, what: string): void {
  if (ms === undefined) return;
  if (ms < min || ms > max) v.push({ field, description: `must be ${what}` });
}

function storeRetry(v: FieldViolation[], field: string, r: RetryPolicy | undefined): StoredRetry | undefined {
  if (!r) return undefined;
  const out: StoredRetry = {
    maxAttempts: r.maxAttempts,
    initialBackoffMs: durationMs(r.initialBackoff),
    multiplier: r.multiplier,
    maxBackoffMs: durationMs(r.maxBackoff),
    jitter: r.jitter,
    nonRetryable: [...r.nonRetryableErrorKinds],
  };
  if (r.maxAttempts < 0 || r.maxAttempts > 100) v.push({ field: `${field}.max_attempts`, description: "must be between 0 and 100" });
  checkDuration(v, `${field}.initial_backoff`, out.initialBackoffMs, 0, HOUR, "between 0 and 1 hour");
  if (r.multiplier !== 0 && !(r.multiplier >= 1 && r.multiplier <= 10)) v.push({ field: `${field}.multiplier`, description: "must be 0 (default 2) or between 1.0 and 10.0" });
  checkDuration(v, `${field}.max_backoff`, out.maxBackoffMs, 0, DAY, "between 0 and 24 hours");
  const initial = out.initialBackoffMs ?? DEFAULT_RETRY.initialBackoffMs;
  if (out.maxBackoffMs !== undefined && out.maxBackoffMs < initial) v.push({ field: `${field}.max_backoff`, description: "must be at least initial_backoff" });
  if (r.jitter !== undefined && !(r.jitter >= 0 && r.jitter <= 1)) v.push({ field: `${field}.jitter`, description: "must be between 0 and 1" });
  if (r.nonRetryableErrorKinds.length > 50) v.push({ field: `${field}.non_retryable_error_kinds`, description: "at most 50 entries" });
  r.nonRetryableErrorKinds.forEach((k, i) => {
    if (!KIND_PATTERN_RE.test(k)) v.push({ field: `${field}.non_retryable_error_kinds[${i}]`, description: `malformed error kind "${k}"` });
  });
  return out;
}

function storeTimeouts(v: FieldViolation[], field: string, t: TaskTimeouts | undefined): StoredTimeouts | undefined {
  if (!t) return undefined;
  const out: StoredTimeouts = {
    scheduleToStartMs: durationMs(t.scheduleToStart),
    startToCloseMs: durationMs(t.startToClose),
    heartbeatMs: durationMs(t.heartbeat),
  };
  checkDuration(v, `${field}.schedule_to_start`, out.scheduleToStartMs, 1, 7 * DAY, "positive and at most 7 days");
  checkDuration(v, `${field}.start_to_close`, out.startToCloseMs, 1000, 7 * DAY, "between 1 second and 7 days");
  checkDuration(v, `${field}.heartbeat`, out.heartbeatMs, 1000, 10 * 60_000, "between 1 second and 10 minutes");
  return out;
}

function storeCache(v: FieldViolation[], field: string, c: CachePolicy | undefined): StoredCache | undefined {
  if (!c) return undefined;
  const out: StoredCache = { enabled: c.enabled, ttlMs: durationMs(c.ttl) };
  checkDuration(v, `${field}.ttl`, out.ttlMs, 1000, 30 * DAY, "between 1 second and 30 days");
  return out;
}

function jsonBytes(value: unknown): number {
  return Buffer.byteLength(JSON.stringify(value ?? {}));
}

/**
 * Validates a RegisterWorkflow request and returns its stored form, or the violations (each
 * naming the task and the field, e.g. `tasks[fetch].depends_on[0]`).
 */
export function validateDefinition(
  req: RegisterWorkflowRequest,
  plugins: ReadonlyMap<string, Plugin>,
  limits: { maxTasks: number },
): { def?: StoredDefinition; violations: FieldViolation[] } {
  const { maxTasks } = limits;
  const v: FieldViolation[] = [];
  if (!NAME_RE.test(req.name)) v.push({ field: "name", description: "must be 1 to 128 bytes of letters, digits, '_', '-' and '.', starting with a letter" });
  if (Buffer.byteLength(req.description) > 2000) v.push({ field: "description", description: "at most 2,000 bytes" });
  if (req.tasks.length === 0) v.push({ field: "tasks", description: "at least one task is required" });
  if (req.tasks.length > maxTasks) v.push({ field: "tasks", description: `at most ${maxTasks.toLocaleString("en-US")} tasks (ORCA_ORCHESTRATOR_MAX_TASKS)` });
  if (req.maxParallelism < 0 || req.maxParallelism > 1000) v.push({ field: "max_parallelism", description: "must be between 0 (default 10) and 1,000" });
  const runTimeoutMs = durationMs(req.runTimeout);
  checkDuration(v, "run_timeout", runTimeoutMs, 1000, 30 * DAY, "between 1 second and 30 days");
  const defaults = req.defaults
    ? {
        retry: storeRetry(v, "defaults.retry", req.defaults.retry),
        timeouts: storeTimeouts(v, "defaults.timeouts", req.defaults.timeouts),
        cache: storeCache(v, "defaults.cache", req.defaults.cache),
      }
    : undefined;
  if (v.length > 0 || req.tasks.length === 0 || req.tasks.length > maxTasks) return { violations: v };

  const tasks: StoredTask[] = [];
  req.tasks.forEach((t: TaskDefinition, i: number) => {
    const label = TASK_ID_RE.test(t.id) ? t.id : String(i);
    const f = `tasks[${label}]`;
    if (!TASK_ID_RE.test(t.id)) v.push({ field: `tasks[${i}].id`, description: `must be 1 to 64 bytes of lowercase letters, digits and '_', starting with a letter (got "${t.id}")` });
    if (t.dependsOn.length > 100) v.push({ field: `${f}.depends_on`, description: "at most 100 entries" });
    if (t.priority < -1000 || t.priority > 1000) v.push({ field: `${f}.priority`, description: "must be between -1000 and 1000" });
    const plugin = plugins.get(t.plugin);
    if (t.plugin !== WORKER_PLUGIN && !plugin) {
      v.push({ field: `${f}.plugin`, description: `unknown plugin "${t.plugin}" (known: ${[WORKER_PLUGIN, ...plugins.keys()].sort().join(", ")})` });
    }
    if (t.plugin === WORKER_PLUGIN && !QUEUE_RE.test(t.queue)) {
      v.push({ field: `${f}.queue`, description: "required for worker tasks: 1 to 128 bytes of lowercase letters, digits, '_', '-' and '.', starting with a letter" });
    }
    if (t.plugin !== WORKER_PLUGIN && t.queue !== "") v.push({ field: `${f}.queue`, description: "must be empty unless plugin is \"worker\"" });
    if (jsonBytes(t.config) > 64 * 1024) v.push({ field: `${f}.config`, description: "larger than 64 KiB as JSON" });
    for (const [name, src] of [["condition", t.condition], ["lock_key", t.lockKey]] as const) {
      if (Buffer.byteLength(src) > MAX_EXPRESSION_BYTES) v.push({ field: `${f}.${name}`, description: `longer than ${MAX_EXPRESSION_BYTES} bytes` });
    }
    tasks.push({
      id: t.id,
      plugin: t.plugin,
      config: (t.config ?? {}) as JsonObject,
      dependsOn: [...t.dependsOn],
      condition: t.condition,
      retry: storeRetry(v, `${f}.retry`, t.retry),
      timeouts: storeTimeouts(v, `${f}.timeouts`, t.timeouts),
      cache: storeCache(v, `${f}.cache`, t.cache),
      lockKey: t.lockKey,
      priority: t.priority,
      queue: t.queue,
    });
  });
  const dagViolations = validateDag(tasks);
  v.push(...dagViolations);
  const def: StoredDefinition = { description: req.description, tasks, defaults, runTimeoutMs, maxParallelism: req.maxParallelism };
  // Compiling checks CEL (syntax, variables, task references) and plugin configs; it needs a
  // DAG, and reports its findings together with the other violations.
  if (dagViolations.length === 0) compile(def, { tenant: "", name: req.name, version: 0, digest: "" }, plugins, v);
  return v.length > 0 ? { violations: v } : { def, violations: [] };
}

/** The SHA-256 of the canonical form: keys sorted, tasks by id (their order does not matter). */
export function definitionDigest(def: StoredDefinition): string {
  const canonical = { ...def, tasks: [...def.tasks].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)) };
  return createHash("sha256").update(canonicalJson(canonical)).digest("hex");
}

export function canonicalJson(value: unknown): string {
  if (value === undefined) return "null";
  if (value === null || typeof value !== "object") return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  const entries = Object.entries(value as Record<string, unknown>)
    .filter(([, v]) => v !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(",")}}`;
}

function effectiveRetry(r: StoredRetry | undefined): EffectiveRetry {
  if (!r) return DEFAULT_RETRY;
  return {
    maxAttempts: r.maxAttempts || DEFAULT_RETRY.maxAttempts,
    initialBackoffMs: r.initialBackoffMs ?? DEFAULT_RETRY.initialBackoffMs,
    multiplier: r.multiplier || DEFAULT_RETRY.multiplier,
    maxBackoffMs: r.maxBackoffMs ?? DEFAULT_RETRY.maxBackoffMs,
    jitter: r.jitter ?? DEFAULT_RETRY.jitter,
    nonRetryable: r.nonRetryable,
  };
}

/**
 * The engine's form of a stored definition: defaults applied (each policy taken whole from the
 * task or the defaults), CEL planned, the DAG indexed. `violations`, when given, collects
 * compile errors (registration); without it, errors throw (a stored definition always compiles).
 */
export function compile(
  def: StoredDefinition,
  meta: { tenant: string; name: string; version: number; digest: string },
  plugins: ReadonlyMap<string, Plugin>,
  violations?: FieldViolation[],
): CompiledWorkflow {
  const v: FieldViolation[] = violations ?? [];
  const dag: Dag = buildDag(def.tasks);
  const tasks = new Map<string, CompiledTask>();
  const indexOf = new Map(dag.order.map((id, i) => [id, i]));
  for (const t of def.tasks) {
    const f = `tasks[${t.id}]`;
    const ancestors = dag.ancestors.get(t.id)!;
    const checkRefs = (field: string, refs: Iterable<string>) => {
      for (const ref of refs) {
        if (!ancestors.has(ref)) {
          const known = def.tasks.some((x) => x.id === ref);
          v.push({ field, description: known ? `tasks.${ref} is not a dependency of "${t.id}" (CEL sees only transitive dependencies)` : `tasks.${ref}: unknown task "${ref}"` });
        }
      }
    };
    const expr = (field: string, src: string): Compiled | undefined => {
      if (!src.trim()) return undefined;
      try {
        const c = compileExpression(src);
        checkRefs(`${f}.${field}`, c.taskRefs);
        return c;
      } catch (error) {
        v.push({ field: `${f}.${field}`, description: (error as Error).message });
        return undefined;
      }
    };
    const condition = expr("condition", t.condition);
    const lockKey = expr("lock_key", t.lockKey);
    const configErrors: { path: string; message: string }[] = [];
    const refs = new Set<string>();
    const config = compileConfig(t.config, "", configErrors, refs);
    for (const e of configErrors) v.push({ field: `${f}.config.${e.path}`, description: e.message });
    checkRefs(`${f}.config`, refs);
    const plugin = plugins.get(t.plugin);
    if (plugin && configErrors.length === 0) {
      const dynamic = new Set(config.kind === "object" ? config.entries.filter(([, c]) => c.kind !== "value").map(([k]) => k) : []);
      for (const message of plugin.validate(t.config, (k) => dynamic.has(k))) {
        const colon = message.indexOf(": ");
        v.push(colon > 0 ? { field: `${f}.config.${message.slice(0, colon)}`, description: message.slice(colon + 2) } : { field: `${f}.config`, description: message });
      }
    }
    const timeouts = t.timeouts ?? def.defaults?.timeouts;
    const cache = t.cache ?? def.defaults?.cache;
    tasks.set(t.id, {
      def: t,
      index: indexOf.get(t.id)!,
      retry: effectiveRetry(t.retry ?? def.defaults?.retry),
      scheduleToStartMs: timeouts?.scheduleToStartMs ?? null,
      startToCloseMs: timeouts?.startToCloseMs ?? DEFAULT_START_TO_CLOSE_MS,
      heartbeatMs: timeouts?.heartbeatMs ?? DEFAULT_HEARTBEAT_MS,
      cache: { enabled: cache?.enabled ?? false, ttlMs: cache?.ttlMs ?? DEFAULT_CACHE_TTL_MS },
      condition,
      lockKey,
      config,
      ancestors,
      dependents: dag.dependents.get(t.id)!,
    });
  }
  if (!violations && v.length > 0) throw new Error(`stored definition does not compile: ${v.map((x) => `${x.field}: ${x.description}`).join("; ")}`);
  return {
    ...meta,
    def,
    tasks,
    order: dag.order,
    sinks: dag.sinks,
    runTimeoutMs: def.runTimeoutMs ?? DEFAULT_RUN_TIMEOUT_MS,
    maxParallelism: def.maxParallelism || 10,
  };
}

export function isJsonObject(v: JsonValue | undefined): v is JsonObject {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
