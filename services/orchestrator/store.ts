import { createHash, randomUUID } from "node:crypto";
import type { JsonObject, JsonValue } from "@bufbuild/protobuf";
import { sql, type Kysely, type RawBuilder, type Transaction } from "kysely";
import { LRUCache } from "lru-cache";
import { AbortedError, AlreadyExistsError, FailedPreconditionError, NotFoundError } from "../kit/errors.js";
import { CelEvalError, type CelVars } from "./cel.js";
import { canonicalJson, compile, definitionDigest, type CompiledTask, type CompiledWorkflow, type StoredDefinition } from "./definition.js";
import type { Plugin } from "./plugins/types.js";
import { decideRetry } from "./retry.js";

/**
 * All durable state of the Orchestrator, as transactions. Invariants:
 * - Every transaction that changes a run or its tasks locks the run row first (RunTx), then task
 *   rows: one lock order, so no deadlocks between those transactions; claims take the task rows
 *   with SKIP LOCKED and the run rows with SKIP LOCKED, so they never wait.
 * - Every change writes its run_events rows in the same transaction, with gap-free sequence
 *   numbers taken from the locked run row.
 * - Time is the database's: each transaction reads now() once (constant within a transaction)
 *   and every lease, deadline and backoff is computed from it, never from a replica's clock.
 * - A success is recorded by inserting into `completions` (primary key run_id, task_id) in the
 *   same transaction; a second success for the same task fails the insert and is refused.
 * Work that talks to other services (Cache writes, Lock releases) is returned as after-commit
 * effects, never done while a transaction is open.
 */
const S = "orca_orchestrator";
const t = {
  workflows: sql.raw(`${S}.workflows`),
  runs: sql.raw(`${S}.runs`),
  tasks: sql.raw(`${S}.task_runs`),
  attempts: sql.raw(`${S}.attempts`),
  completions: sql.raw(`${S}.completions`),
  events: sql.raw(`${S}.run_events`),
  kitEvents: sql.raw(`${S}.events`),
};

export const CHANNEL_READY = "orca_orchestrator_ready";
export const CHANNEL_EVENTS = "orca_orchestrator_events";
export const CHANNEL_ABORT = "orca_orchestrator_abort";

export const FINAL_TASK = new Set(["SUCCEEDED", "FAILED", "SKIPPED", "CACHED", "CANCELLED"]);
export const FINAL_RUN = new Set(["SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"]);

export interface ErrorJson {
  kind: string;
  message: string;
}

export interface WorkflowRow {
  tenant: string;
  name: string;
  version: number;
  digest: string;
  definition: StoredDefinition;
  created_at: Date;
}

export interface RunRow {
  id: string;
  tenant: string;
  workflow_name: string;
  workflow_version: number;
  status: string;
  input: JsonObject;
  input_digest: string;
  output: JsonObject | null;
  idempotency_key: string | null;
  priority: number;
  policy: JsonObject;
  error: ErrorJson | null;
  max_parallelism: number;
  created_at: Date;
  started_at: Date | null;
  finished_at: Date | null;
  deadline_at: Date | null;
  ending: string | null;
  abort_deadline: Date | null;
  last_seq: bigint;
  remaining: number;
  active: number;
}

export interface TaskRow {
  run_id: string;
  task_id: string;
  idx: number;
  tenant: string;
  plugin: string;
  queue: string;
  status: string;
  priority: number;
  pending_deps: number;
  deps_ok: number;
  needs_prep: boolean;
  ready_at: Date | null;
  available_at: Date | null;
  s2s_deadline: Date | null;
  attempt_count: number;
  lease_id: string | null;
  lease_owner: string | null;
  lease_expires_at: Date | null;
  attempt_deadline: Date | null;
  cancel_requested: boolean;
  output: JsonObject | null;
  error: ErrorJson | null;
  finished_at: Date | null;
  cache_key: string | null;
  lock_resource: string | null;
  lock_lease_id: string | null;
  lock_token: bigint | null;
  skip_reason: string | null;
}

export interface AttemptRow {
  run_id: string;
  task_id: string;
  number: number;
  status: string;
  worker_id: string;
  lease_id: string | null;
  started_at: Date | null;
  finished_at: Date | null;
  ended_by: string | null;
  error: ErrorJson | null;
  output: JsonObject | null;
  fencing_token: bigint;
  last_heartbeat_at: Date | null;
  heartbeat_details: JsonObject | null;
}

export interface EventRow {
  run_id: string;
  seq: bigint;
  time: Date;
  type: string;
  task_id: string;
  attempt: number;
  message: string;
  details: JsonObject;
}

export interface LockHold {
  tenant: string;
  leaseId: string;
  token: bigint;
}

export interface CacheWrite {
  tenant: string;
  key: string;
  output: JsonObject;
  ttlMs: number;
}

/** Effects to perform after commit (calls to other services), plus what metrics want to know. */
export interface AfterCommit {
  releases: LockHold[];
  cacheWrites: CacheWrite[];
  runsStarted: number;
  runsFinished: string[];
  tasksFinished: { plugin: string; status: string; seconds?: number }[];
  leaseExpiries: number;
  cacheHits: number;
}

function emptyAfter(): AfterCommit {
  return { releases: [], cacheWrites: [], runsStarted: 0, runsFinished: [], tasksFinished: [], leaseExpiries: 0, cacheHits: 0 };
}

/** A task handed to an executor (built-in plugin) or to an external worker (PollTasks). */
export interface ClaimedTask {
  runId: string;
  taskId: string;
  tenant: string;
  plugin: string;
  queue: string;
  /** "attempt": an attempt started (leaseId is the attempt's lease). "prep": claimed for cache probe / Lock wait first. */
  phase: "attempt" | "prep";
  attempt: number;
  leaseId: string;
  leaseExpiresAt: Date;
  deadline: Date | null;
  priority: number;
  run: { workflowName: string; workflowVersion: number; input: JsonObject; priority: number };
  wf: CompiledWorkflow;
  task: CompiledTask;
  /** CEL `tasks` map: the task's transitive dependencies. */
  upstream: Record<string, { status: string; output: JsonObject }>;
  fencingToken: bigint;
  lockResource: string;
  /** The Lock lease held for the attempt ("" without a lock key). */
  lockLeaseId: string;
  cacheKey: string | null;
}

export interface Clock {
  now: Date;
}

type Db = Kysely<any>; // eslint-disable-line @typescript-eslint/no-explicit-any
type Trx = Transaction<any>; // eslint-disable-line @typescript-eslint/no-explicit-any

function addMs(date: Date, ms: number): Date {
  return new Date(date.getTime() + ms);
}

function json(value: unknown): string {
  return JSON.stringify(value ?? null);
}

function truncate(message: string, bytes = 8192): string {
  if (Buffer.byteLength(message) <= bytes) return message;
  return Buffer.from(message).subarray(0, bytes).toString("utf8").replace(/\uFFFD$/, "");
}

export function inputDigest(workflow: string, input: JsonObject): string {
  return createHash("sha256").update(canonicalJson({ workflow, input })).digest("hex");
}

/** SHA-256 of (tenant, workflow name and version, task id, resolved config, input), hex. */
export function cacheKey(parts: { tenant: string; workflow: string; version: number; taskId: string; config: JsonValue; input: JsonObject }): string {
  return createHash("sha256").update(canonicalJson(parts)).digest("hex");
}

function isRetryable(error: unknown): boolean {
  const code = (error as { code?: string }).code;
  return code === "40P01" || code === "40001";
}

/** One run's transaction: the run row is locked; changes and events are buffered and flushed. */
class RunTx {
  private readonly events: { type: string; taskId: string; attempt: number; message: string; details: JsonObject }[] = [];
  private readonly upstreamCache = new Map<string, { status: string; output: JsonObject }>();
  private remainingDelta = 0;
  private activeDelta = 0;
  private dirty = false;
  readonly notifications = new Set<string>();

  constructor(
    readonly trx: Trx,
    readonly run: RunRow,
    readonly wf: CompiledWorkflow,
    readonly now: Date,
    readonly after: AfterCommit,
    private readonly abortGraceMs: number,
  ) {}

  event(type: string, opts: { taskId?: string; attempt?: number; message?: string; details?: JsonObject } = {}): void {
    this.events.push({ type, taskId: opts.taskId ?? "", attempt: opts.attempt ?? 0, message: truncate(opts.message ?? "", 8192), details: opts.details ?? {} });
  }

  markDirty(): void {
    this.dirty = true;
  }

  adjustActive(delta: number): void {
    this.activeDelta += delta;
  }

  get activeNow(): number {
    return this.run.active + this.activeDelta;
  }

  vars(task: CompiledTask, upstream: Record<string, { status: string; output: JsonObject }>): CelVars {
    return {
      input: this.run.input,
      tasks: upstream,
      run: { id: this.run.id, tenant: this.run.tenant, workflow: this.run.workflow_name, version: this.run.workflow_version, priority: this.run.priority },
    };
  }

  /** Status and output of the given tasks (the CEL `tasks` map), read once per transaction. */
  async upstream(ids: Iterable<string>): Promise<Record<string, { status: string; output: JsonObject }>> {
    const want = [...ids];
    const missing = want.filter((id) => !this.upstreamCache.has(id));
    if (missing.length > 0) {
      const rows = await sql<{ task_id: string; status: string; output: JsonObject | null }>`
        select task_id, status, output from ${t.tasks} where run_id = ${this.run.id} and task_id = any(${missing}::text[])`.execute(this.trx);
      for (const r of rows.rows) this.upstreamCache.set(r.task_id, { status: r.status, output: r.status === "SUCCEEDED" || r.status === "CACHED" ? (r.output ?? {}) : {} });
    }
    const out: Record<string, { status: string; output: JsonObject }> = {};
    for (const id of want) {
      const v = this.upstreamCache.get(id);
      if (v) out[id] = v;
    }
    return out;
  }

  /**
   * Tasks that just reached a final state: count them, and consider their dependents (skip
   * rule, conditions), cascading through skipped and cancelled tasks.
   */
  async finished(items: { taskId: string; ok: boolean }[]): Promise<void> {
    let queue = items;
    while (queue.length > 0) {
      this.remainingDelta -= queue.length;
      this.dirty = true;
      for (const it of queue) this.upstreamCache.delete(it.taskId);
      const dec = new Map<string, { n: number; ok: number }>();
      for (const it of queue) {
        for (const dep of this.wf.tasks.get(it.taskId)!.dependents) {
          const d = dec.get(dep) ?? { n: 0, ok: 0 };
          d.n += 1;
          d.ok += it.ok ? 1 : 0;
          dec.set(dep, d);
        }
      }
      if (dec.size === 0) break;
      const ids = [...dec.keys()];
      const rows = await sql<{ task_id: string; pending_deps: number; deps_ok: number; status: string }>`
        update ${t.tasks} tr set pending_deps = tr.pending_deps - u.n, deps_ok = tr.deps_ok + u.ok
        from unnest(${ids}::text[], ${ids.map((id) => dec.get(id)!.n)}::int[], ${ids.map((id) => dec.get(id)!.ok)}::int[]) as u(id, n, ok)
        where tr.run_id = ${this.run.id} and tr.task_id = u.id
        returning tr.task_id, tr.pending_deps, tr.deps_ok, tr.status`.execute(this.trx);
      const candidates = rows.rows.filter((r) => r.pending_deps === 0 && r.status === "PENDING");
      queue = await this.consider(candidates);
    }
  }

  /** Applies the skip rule and conditions to tasks whose dependencies are all final. Returns the tasks that became final. */
  async consider(candidates: { task_id: string; deps_ok: number }[]): Promise<{ taskId: string; ok: boolean }[]> {
    const ready: CompiledTask[] = [];
    const skipped: { task: CompiledTask; reason: string }[] = [];
    const cancelled: CompiledTask[] = [];
    const failed: { task: CompiledTask; error: ErrorJson }[] = [];
    const sorted = candidates.map((c) => ({ c, task: this.wf.tasks.get(c.task_id)! })).sort((a, b) => a.task.index - b.task.index);
    for (const { c, task } of sorted) {
      if (this.run.ending) cancelled.push(task);
      else if (task.def.dependsOn.length > 0 && c.deps_ok === 0) skipped.push({ task, reason: "all dependencies skipped" });
      else if (task.condition) {
        try {
          const up = await this.upstream(task.ancestors);
          const result = task.condition.program(this.vars(task, up));
          if (typeof result !== "boolean") failed.push({ task, error: { kind: "cel.error", message: `condition returned ${typeof result}, not a bool` } });
          else if (result) ready.push(task);
          else skipped.push({ task, reason: "condition false" });
        } catch (error) {
          if (!(error instanceof CelEvalError)) throw error;
          failed.push({ task, error: { kind: "cel.error", message: `condition: ${error.message}` } });
        }
      } else ready.push(task);
    }
    if (ready.length > 0) await this.makeReady(ready, 0);
    const done: { taskId: string; ok: boolean }[] = [];
    if (skipped.length > 0) {
      const ids = skipped.map((s) => s.task.def.id);
      await sql`update ${t.tasks} tr set status = 'SKIPPED', skip_reason = u.reason, finished_at = ${this.now}
        from unnest(${ids}::text[], ${skipped.map((s) => s.reason)}::text[]) as u(id, reason)
        where tr.run_id = ${this.run.id} and tr.task_id = u.id`.execute(this.trx);
      for (const s of skipped) {
        this.event("TASK_SKIPPED", { taskId: s.task.def.id, message: s.reason });
        this.after.tasksFinished.push({ plugin: s.task.def.plugin, status: "SKIPPED" });
        done.push({ taskId: s.task.def.id, ok: false });
      }
    }
    if (cancelled.length > 0) {
      const ids = cancelled.map((c) => c.def.id);
      await sql`update ${t.tasks} set status = 'CANCELLED', finished_at = ${this.now} where run_id = ${this.run.id} and task_id = any(${ids}::text[])`.execute(this.trx);
      for (const c of cancelled) {
        this.event("TASK_CANCELLED", { taskId: c.def.id, message: `run ${this.run.ending === "CANCELLED" ? "cancelled" : this.run.ending === "TIMED_OUT" ? "timed out" : "failed"}` });
        this.after.tasksFinished.push({ plugin: c.def.plugin, status: "CANCELLED" });
        done.push({ taskId: c.def.id, ok: false });
      }
    }
    for (const f of failed) {
      await sql`update ${t.tasks} set status = 'FAILED', error = ${json(f.error)}::jsonb, finished_at = ${this.now} where run_id = ${this.run.id} and task_id = ${f.task.def.id}`.execute(this.trx);
      this.event("TASK_FAILED", { taskId: f.task.def.id, message: f.error.message, details: { kind: f.error.kind } });
      this.after.tasksFinished.push({ plugin: f.task.def.plugin, status: "FAILED" });
      done.push({ taskId: f.task.def.id, ok: false });
    }
    // The failure rule first (cancel what is pending), then the caller counts `done` as finished.
    if (failed.length > 0) await this.failRun(failed[0].task.def.id, failed[0].error);
    return done;
  }

  /** READY (first time, or again after `delayMs` of retry backoff). */
  async makeReady(tasks: CompiledTask[], delayMs: number): Promise<void> {
    const available = addMs(this.now, delayMs);
    const ids = tasks.map((x) => x.def.id);
    const s2s = tasks.map((x) => (x.scheduleToStartMs === null ? null : addMs(available, x.scheduleToStartMs).toISOString()));
    const prep = tasks.map((x) => x.cache.enabled || Boolean(x.lockKey));
    await sql`update ${t.tasks} tr set status = 'READY', ready_at = coalesce(tr.ready_at, ${this.now}), available_at = ${available},
        s2s_deadline = u.s2s::timestamptz, needs_prep = u.prep, lease_id = null, lease_owner = null, lease_expires_at = null,
        attempt_deadline = null
      from unnest(${ids}::text[], ${s2s}::text[], ${prep}::bool[]) as u(id, s2s, prep)
      where tr.run_id = ${this.run.id} and tr.task_id = u.id`.execute(this.trx);
    for (const x of tasks) {
      this.event("TASK_READY", { taskId: x.def.id, message: delayMs > 0 ? "ready again after retry backoff" : "" });
      this.notifications.add(x.def.plugin === "worker" ? `${CHANNEL_READY}|w:${this.run.tenant}:${x.def.queue}` : `${CHANNEL_READY}|b`);
    }
  }

  /**
   * The failure rule: stop starting tasks, cancel PENDING/READY ones, abort RUNNING attempts
   * (grace period), and end the run FAILED once nothing runs. Also used for cancellation and
   * run timeout (`ending` says which final status the run takes).
   */
  async failRun(taskId: string, error: ErrorJson): Promise<void> {
    if (this.run.ending) return;
    this.run.ending = "FAILED";
    this.run.error = { kind: error.kind, message: truncate(`task "${taskId}" failed: ${error.message}`) };
    await this.abortAll(this.abortGraceMs);
  }

  async abortAll(graceMs: number): Promise<void> {
    this.dirty = true;
    this.run.abort_deadline = addMs(this.now, graceMs);
    const rows = await sql<{ task_id: string; old_status: string; lock_lease_id: string | null; lock_token: bigint | null; plugin: string }>`
      with old as (
        select task_id, status, lock_lease_id, lock_token from ${t.tasks}
        where run_id = ${this.run.id} and status in ('PENDING', 'READY', 'STARTING') for update
      )
      update ${t.tasks} tr set status = 'CANCELLED', finished_at = ${this.now}, lease_id = null, lease_owner = null,
        lease_expires_at = null, lock_lease_id = null, lock_token = null
      from old where tr.run_id = ${this.run.id} and tr.task_id = old.task_id
      returning tr.task_id, old.status as old_status, old.lock_lease_id, old.lock_token, tr.plugin`.execute(this.trx);
    const reason = this.run.ending === "CANCELLED" ? "run cancelled" : this.run.ending === "TIMED_OUT" ? "run timed out" : "run failed";
    for (const r of rows.rows.sort((a, b) => this.wf.tasks.get(a.task_id)!.index - this.wf.tasks.get(b.task_id)!.index)) {
      if (r.old_status === "STARTING") this.activeDelta -= 1;
      if (r.lock_lease_id && r.lock_token !== null) this.after.releases.push({ tenant: this.run.tenant, leaseId: r.lock_lease_id, token: BigInt(r.lock_token) });
      this.event("TASK_CANCELLED", { taskId: r.task_id, message: reason });
      this.after.tasksFinished.push({ plugin: r.plugin, status: "CANCELLED" });
    }
    this.remainingDelta -= rows.rows.length;
    const running = await sql`update ${t.tasks} set cancel_requested = true where run_id = ${this.run.id} and status = 'RUNNING'`.execute(this.trx);
    if (Number(running.numAffectedRows ?? 0n) > 0) this.notifications.add(`${CHANNEL_ABORT}|${this.run.id}`);
  }

  /** Ends the run when no task is left; computes its output for SUCCEEDED. */
  async maybeFinish(): Promise<void> {
    const remaining = this.run.remaining + this.remainingDelta;
    if (remaining > 0 || FINAL_RUN.has(this.run.status) || this.run.status === "PENDING") return;
    const status = this.run.ending ?? "SUCCEEDED";
    this.run.status = status;
    this.run.finished_at = this.now;
    this.dirty = true;
    if (status === "SUCCEEDED") {
      const rows = await sql<{ task_id: string; output: JsonObject | null }>`
        select task_id, output from ${t.tasks} where run_id = ${this.run.id} and task_id = any(${this.wf.sinks}::text[]) and status in ('SUCCEEDED', 'CACHED')`.execute(this.trx);
      this.run.output = Object.fromEntries(rows.rows.sort((a, b) => (a.task_id < b.task_id ? -1 : 1)).map((r) => [r.task_id, r.output ?? {}]));
      this.run.error = null;
    }
    const type = `RUN_${status}`;
    this.event(type, { message: this.run.error?.message ?? "", taskId: "", details: this.run.error ? { kind: this.run.error.kind } : {} });
    this.after.runsFinished.push(status);
  }

  async flush(): Promise<void> {
    await this.maybeFinish();
    if (this.events.length === 0 && !this.dirty && this.activeDelta === 0) return;
    const first = this.run.last_seq + 1n;
    if (this.events.length > 0) {
      const n = this.events.length;
      const seqs = Array.from({ length: n }, (_, i) => String(first + BigInt(i)));
      await sql`insert into ${t.events} (run_id, seq, time, type, task_id, attempt, message, details)
        select ${this.run.id}::uuid, u.seq, ${this.now}, u.type, u.task_id, u.attempt, u.message, u.details::jsonb
        from unnest(${seqs}::bigint[], ${this.events.map((e) => e.type)}::text[], ${this.events.map((e) => e.taskId)}::text[],
          ${this.events.map((e) => e.attempt)}::int[], ${this.events.map((e) => e.message)}::text[], ${this.events.map((e) => json(e.details))}::text[])
          as u(seq, type, task_id, attempt, message, details)`.execute(this.trx);
      this.run.last_seq += BigInt(n);
      this.notifications.add(`${CHANNEL_EVENTS}|${this.run.id}`);
    }
    this.run.remaining += this.remainingDelta;
    this.run.active += this.activeDelta;
    this.remainingDelta = 0;
    this.activeDelta = 0;
    this.events.length = 0;
    const r = this.run;
    await sql`update ${t.runs} set status = ${r.status}, output = ${r.output === null ? null : json(r.output)}::jsonb,
        error = ${r.error === null ? null : json(r.error)}::jsonb, started_at = ${r.started_at}, finished_at = ${r.finished_at},
        deadline_at = ${r.deadline_at}, ending = ${r.ending}, abort_deadline = ${r.abort_deadline}, last_seq = ${String(r.last_seq)}::bigint,
        remaining = ${r.remaining}, active = ${r.active}
      where id = ${r.id}`.execute(this.trx);
    for (const n of this.notifications) {
      const [channel, payload] = n.split("|", 2) as [string, string];
      await sql`select pg_notify(${channel}, ${payload})`.execute(this.trx);
    }
    this.notifications.clear();
  }
}

export interface StoreOptions {
  plugins: ReadonlyMap<string, Plugin>;
  abortGraceMs: number;
  replica: string;
}

export class OrchestratorStore {
  private readonly compiled = new LRUCache<string, CompiledWorkflow>({ max: 500 });

  constructor(
    readonly db: Db,
    private readonly options: StoreOptions,
  ) {}

  /** Runs `fn` in a transaction, retrying deadlocks and serialization failures. */
  async tx<T>(fn: (trx: Trx) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.db.transaction().execute(fn);
      } catch (error) {
        if (attempt < 5 && isRetryable(error)) {
          await new Promise((r) => setTimeout(r, 5 * attempt + Math.random() * 20));
          continue;
        }
        throw error;
      }
    }
  }

  /**
   * Locks the run (waiting, or skipping it when `skipLocked`), runs `fn` with a RunTx and flushes.
   * Returns undefined when the run does not exist or was skipped.
   */
  async withRun<T>(runId: string, fn: (rt: RunTx) => Promise<T>, opts: { skipLocked?: boolean } = {}): Promise<{ value: T; after: AfterCommit } | undefined> {
    return this.tx(async (trx) => {
      const lock = opts.skipLocked ? sql`for update skip locked` : sql`for update`;
      const res = await sql<RunRow & { db_now: Date }>`select r.*, now() as db_now from ${t.runs} r where r.id = ${runId} ${lock}`.execute(trx);
      const row = res.rows[0];
      if (!row) return undefined;
      const { db_now, ...run } = row;
      run.last_seq = BigInt(run.last_seq);
      const wf = await this.compiledWorkflow(run.tenant, run.workflow_name, run.workflow_version, trx);
      const after = emptyAfter();
      const rt = new RunTx(trx, run, wf, db_now, after, this.options.abortGraceMs);
      const value = await fn(rt);
      await rt.flush();
      return { value, after };
    });
  }

  // ------------------------------------------------------------------------------------------
  // Workflows

  async registerWorkflow(tenant: string, name: string, def: StoredDefinition): Promise<{ row: WorkflowRow; created: boolean }> {
    const digest = definitionDigest(def);
    return this.tx(async (trx) => {
      // Serialize registrations of one name: versions are consecutive and the digest check is exact.
      await sql`select pg_advisory_xact_lock(hashtext(${`orca_orchestrator:wf:${tenant}:${name}`}))`.execute(trx);
      const latest = await sql<WorkflowRow>`select * from ${t.workflows} where tenant = ${tenant} and name = ${name} order by version desc limit 1`.execute(trx);
      const last = latest.rows[0];
      if (last && last.digest === digest) return { row: last, created: false };
      const version = (last?.version ?? 0) + 1;
      const inserted = await sql<WorkflowRow>`insert into ${t.workflows} (tenant, name, version, digest, definition)
        values (${tenant}, ${name}, ${version}, ${digest}, ${json(def)}::jsonb) returning *`.execute(trx);
      await sql`insert into ${t.kitEvents} (kind, subject, tenant, payload) values ('workflow.registered', ${`${name}@${version}`}, ${tenant},
        ${json({ name, version, digest, tasks: def.tasks.length })}::jsonb)`.execute(trx);
      return { row: inserted.rows[0], created: true };
    });
  }

  async getWorkflow(tenant: string, name: string, version: number, trx: Db | Trx = this.db): Promise<WorkflowRow | undefined> {
    const res =
      version > 0
        ? await sql<WorkflowRow>`select * from ${t.workflows} where tenant = ${tenant} and name = ${name} and version = ${version}`.execute(trx)
        : await sql<WorkflowRow>`select * from ${t.workflows} where tenant = ${tenant} and name = ${name} order by version desc limit 1`.execute(trx);
    return res.rows[0];
  }

  /** Latest version of each workflow by name (after `afterName`), or every version of `name` (below `beforeVersion`). */
  async listWorkflows(tenant: string, opts: { name?: string; after?: string; beforeVersion?: number; limit: number }): Promise<WorkflowRow[]> {
    if (opts.name) {
      const res = await sql<WorkflowRow>`select * from ${t.workflows} where tenant = ${tenant} and name = ${opts.name}
        and version < ${opts.beforeVersion ?? 2_147_483_647} order by version desc limit ${opts.limit}`.execute(this.db);
      return res.rows;
    }
    const res = await sql<WorkflowRow>`select distinct on (name) * from ${t.workflows} where tenant = ${tenant} and name > ${opts.after ?? ""}
      order by name, version desc limit ${opts.limit}`.execute(this.db);
    return res.rows;
  }

  async compiledWorkflow(tenant: string, name: string, version: number, trx: Db | Trx = this.db): Promise<CompiledWorkflow> {
    const key = `${tenant}\u0000${name}\u0000${version}`;
    const hit = this.compiled.get(key);
    if (hit) return hit;
    const row = await this.getWorkflow(tenant, name, version, trx);
    if (!row) throw new NotFoundError(`workflow "${name}" version ${version} not found`);
    const wf = compile(row.definition, { tenant, name, version: row.version, digest: row.digest }, this.options.plugins);
    this.compiled.set(key, wf);
    return wf;
  }

  // ------------------------------------------------------------------------------------------
  // Runs

  async findRunByKey(tenant: string, key: string): Promise<RunRow | undefined> {
    const res = await sql<RunRow>`select * from ${t.runs} where tenant = ${tenant} and idempotency_key = ${key}`.execute(this.db);
    return res.rows[0];
  }

  /**
   * Stores a PENDING run and its RUN_CREATED event. With an idempotency key, the unique index
   * decides between concurrent callers: the loser gets the winner's run (`existing`).
   */
  async createRun(args: {
    tenant: string;
    wf: CompiledWorkflow;
    input: JsonObject;
    idempotencyKey: string;
    priority: number;
    policy: JsonObject;
  }): Promise<{ run: RunRow; existing: boolean }> {
    const id = randomUUID();
    const digest = inputDigest(args.wf.name, args.input);
    const created = await this.tx(async (trx) => {
      const res = await sql<RunRow>`insert into ${t.runs} (id, tenant, workflow_name, workflow_version, status, input, input_digest,
          idempotency_key, priority, policy, max_parallelism, remaining, last_seq)
        values (${id}, ${args.tenant}, ${args.wf.name}, ${args.wf.version}, 'PENDING', ${json(args.input)}::jsonb, ${digest},
          ${args.idempotencyKey || null}, ${args.priority}, ${json(args.policy)}::jsonb, ${args.wf.maxParallelism}, ${args.wf.tasks.size}, 1)
        on conflict (tenant, idempotency_key) where idempotency_key is not null do nothing
        returning *`.execute(trx);
      const run = res.rows[0];
      if (!run) return undefined;
      await sql`insert into ${t.events} (run_id, seq, time, type, details) values (${id}, 1, ${run.created_at}, 'RUN_CREATED', ${json(args.policy)}::jsonb)`.execute(trx);
      await sql`select pg_notify(${CHANNEL_READY}, 'r')`.execute(trx);
      return run;
    });
    if (created) return { run: created, existing: false };
    const existing = await this.findRunByKey(args.tenant, args.idempotencyKey);
    if (!existing) throw new AbortedError("idempotency key race; retry");
    this.checkSameRun(existing, args.wf.name, digest);
    return { run: existing, existing: true };
  }

  /** The idempotency key's run must be of the same workflow name and input (ALREADY_EXISTS otherwise). */
  checkSameRun(existing: RunRow, workflowName: string, digest: string): void {
    if (existing.workflow_name !== workflowName) {
      throw new AlreadyExistsError(`idempotency_key is already used by run ${existing.id} of workflow "${existing.workflow_name}"`);
    }
    if (existing.input_digest !== digest) throw new AlreadyExistsError(`idempotency_key is already used by run ${existing.id} with a different input`);
  }

  async getRun(id: string): Promise<RunRow | undefined> {
    const res = await sql<RunRow>`select * from ${t.runs} where id = ${id}`.execute(this.db);
    return res.rows[0];
  }

  async getRunDetail(id: string): Promise<{ run: RunRow; tasks: TaskRow[]; attempts: AttemptRow[] } | undefined> {
    const run = await this.getRun(id);
    if (!run) return undefined;
    const [tasks, attempts] = await Promise.all([
      sql<TaskRow>`select * from ${t.tasks} where run_id = ${id} order by idx`.execute(this.db),
      sql<AttemptRow>`select * from ${t.attempts} where run_id = ${id} order by task_id, number`.execute(this.db),
    ]);
    return { run, tasks: tasks.rows, attempts: attempts.rows };
  }

  async listRuns(f: {
    tenant?: string;
    workflowName?: string;
    status?: string;
    createdAfter?: Date;
    createdBefore?: Date;
    /** Keyset cursor: created_at as Postgres text (microseconds kept) and id. */
    cursor?: { createdAt: string; id: string };
    limit: number;
  }): Promise<(RunRow & { cursor_ts: string })[]> {
    const where: RawBuilder<unknown>[] = [sql`true`];
    if (f.tenant !== undefined) where.push(sql`tenant = ${f.tenant}`);
    if (f.workflowName) where.push(sql`workflow_name = ${f.workflowName}`);
    if (f.status) where.push(sql`status = ${f.status}`);
    if (f.createdAfter) where.push(sql`created_at >= ${f.createdAfter}`);
    if (f.createdBefore) where.push(sql`created_at < ${f.createdBefore}`);
    if (f.cursor) where.push(sql`(created_at, id) < (${f.cursor.createdAt}::timestamptz, ${f.cursor.id}::uuid)`);
    const res = await sql<RunRow & { cursor_ts: string }>`select *, created_at::text as cursor_ts from ${t.runs} where ${sql.join(where, sql` and `)} order by created_at desc, id desc limit ${f.limit}`.execute(this.db);
    return res.rows;
  }

  async listEvents(runId: string, fromSeq: bigint, limit: number): Promise<EventRow[]> {
    const res = await sql<EventRow>`select * from ${t.events} where run_id = ${runId} and seq >= ${String(fromSeq)}::bigint order by seq limit ${limit}`.execute(this.db);
    return res.rows;
  }

  async cancelRun(runId: string, reason: string, graceMs: number): Promise<{ run: RunRow; after: AfterCommit } | undefined> {
    const res = await this.withRun(runId, async (rt) => {
      const run = rt.run;
      if (FINAL_RUN.has(run.status)) throw new FailedPreconditionError(`run ${run.id} has already finished (status ${run.status})`);
      if (run.status === "CANCELLING") return;
      run.status = "CANCELLING";
      run.ending = "CANCELLED";
      run.error = { kind: "cancelled", message: truncate(reason || "cancelled", 1000) };
      rt.markDirty();
      rt.event("RUN_CANCEL_REQUESTED", { message: reason });
      if (!run.started_at) {
        // Never started: no task rows exist yet; the run ends at once.
        run.started_at = null;
        run.remaining = 0;
      } else await rt.abortAll(graceMs);
    });
    if (!res) return undefined;
    const run = (await this.getRun(runId))!;
    return { run, after: res.after };
  }

  // ------------------------------------------------------------------------------------------
  // Execution

  /** Starts PENDING runs: creates their task rows and considers the roots (RUN_STARTED). */
  async startPendingRuns(limit: number): Promise<AfterCommit[]> {
    const ids = await sql<{ id: string }>`select id from ${t.runs} where status = 'PENDING' order by created_at limit ${limit}`.execute(this.db);
    const out: AfterCommit[] = [];
    for (const { id } of ids.rows) {
      const res = await this.withRun(
        id,
        async (rt) => {
          const run = rt.run;
          if (run.status !== "PENDING") return;
          const wf = rt.wf;
          const order = wf.order;
          const clamp = (p: number) => Math.max(-1000, Math.min(1000, p));
          await sql`insert into ${t.tasks} (run_id, task_id, idx, tenant, plugin, queue, status, priority, pending_deps)
            select ${run.id}::uuid, u.id, u.idx, ${run.tenant}, u.plugin, u.queue, 'PENDING', u.prio, u.deps
            from unnest(${order}::text[], ${order.map((_, i) => i)}::int[], ${order.map((id) => wf.tasks.get(id)!.def.plugin)}::text[],
              ${order.map((id) => wf.tasks.get(id)!.def.queue)}::text[], ${order.map((id) => clamp(run.priority + wf.tasks.get(id)!.def.priority))}::int[],
              ${order.map((id) => wf.tasks.get(id)!.def.dependsOn.length)}::int[]) as u(id, idx, plugin, queue, prio, deps)`.execute(rt.trx);
          run.status = "RUNNING";
          run.started_at = rt.now;
          run.deadline_at = addMs(rt.now, wf.runTimeoutMs);
          run.remaining = wf.tasks.size;
          rt.markDirty();
          rt.event("RUN_STARTED");
          const roots = order.filter((id) => wf.tasks.get(id)!.def.dependsOn.length === 0).map((id) => ({ task_id: id, deps_ok: 0 }));
          const done = await rt.consider(roots);
          await rt.finished(done);
          rt.after.runsStarted++;
        },
        { skipLocked: true },
      );
      if (res) out.push(res.after);
    }
    return out;
  }

  /**
   * Claims ready tasks: built-in ones (`plugins`) or one worker queue. Tasks are taken by
   * effective priority, then ready time, with FOR UPDATE SKIP LOCKED; their runs are locked
   * with SKIP LOCKED too and never pushed beyond max_parallelism. `perPlugin` caps how many of
   * each plugin are taken (the caller's free bulkhead slots).
   */
  async claim(opts: {
    kind: "builtin" | "worker" | "prep";
    plugins?: string[];
    tenant?: string;
    queue?: string;
    limit: number;
    perPlugin?: Record<string, number>;
    owner: string;
    workerId: string;
    queueLimit?: number;
    signal?: AbortSignal;
  }): Promise<{ claimed: ClaimedTask[]; after: AfterCommit }> {
    const after = emptyAfter();
    if (opts.limit <= 0) return { claimed: [], after };
    const claimed = await this.tx(async (trx) => {
      const nowRes = await sql<{ now: Date }>`select now() as now`.execute(trx);
      const now = nowRes.rows[0].now;
      let limit = opts.limit;
      let filter: RawBuilder<unknown>;
      if (opts.kind === "worker") {
        // The queue's bulkhead counts RUNNING tasks of all replicas; the advisory lock makes the
        // count-then-claim atomic among concurrent polls of one queue.
        await sql`select pg_advisory_xact_lock(hashtext(${`orca_orchestrator:q:${opts.tenant}:${opts.queue}`}))`.execute(trx);
        const running = await sql<{ n: number }>`select count(*)::int as n from ${t.tasks}
          where tenant = ${opts.tenant} and queue = ${opts.queue} and status = 'RUNNING' and plugin = 'worker'`.execute(trx);
        limit = Math.min(limit, (opts.queueLimit ?? Infinity) - running.rows[0].n);
        if (limit <= 0) return [];
        filter = sql`tr.plugin = 'worker' and tr.tenant = ${opts.tenant} and tr.queue = ${opts.queue} and not tr.needs_prep`;
      } else if (opts.kind === "prep") {
        filter = sql`tr.plugin = 'worker' and tr.needs_prep`;
      } else {
        filter = sql`tr.plugin <> 'worker' and tr.plugin = any(${opts.plugins ?? []}::text[])`;
      }
      const candidates = await sql<TaskRow>`select tr.* from ${t.tasks} tr
        where tr.status = 'READY' and ${filter} and tr.available_at <= ${now}
          and exists (select 1 from ${t.runs} r where r.id = tr.run_id and r.active < r.max_parallelism and r.ending is null)
        order by tr.priority desc, tr.available_at, tr.idx
        limit ${limit * 2}
        for update of tr skip locked`.execute(trx);
      if (candidates.rows.length === 0) return [];
      const runIds = [...new Set(candidates.rows.map((c) => c.run_id))];
      const runs = await sql<RunRow>`select * from ${t.runs} where id = any(${runIds}::uuid[]) and ending is null for update skip locked`.execute(trx);
      const runById = new Map(runs.rows.map((r) => [r.id, { ...r, last_seq: BigInt(r.last_seq) }]));
      const perPlugin = { ...(opts.perPlugin ?? {}) };
      const picked = new Map<string, TaskRow[]>();
      let total = 0;
      for (const c of candidates.rows) {
        if (total >= limit) break;
        const run = runById.get(c.run_id);
        if (!run) continue;
        const taken = picked.get(c.run_id) ?? [];
        if (run.active + taken.length >= run.max_parallelism) continue;
        if (opts.perPlugin) {
          if ((perPlugin[c.plugin] ?? 0) <= 0) continue;
          perPlugin[c.plugin]--;
        }
        taken.push(c);
        picked.set(c.run_id, taken);
        total++;
      }
      if (opts.signal?.aborted) return [];
      const out: ClaimedTask[] = [];
      for (const [runId, tasks] of picked) {
        const run = runById.get(runId)!;
        const wf = await this.compiledWorkflow(run.tenant, run.workflow_name, run.workflow_version, trx);
        const rt = new RunTx(trx, run, wf, now, after, this.options.abortGraceMs);
        const needed = new Set<string>();
        for (const tr of tasks) for (const a of wf.tasks.get(tr.task_id)!.ancestors) needed.add(a);
        const upstreamAll = await rt.upstream(needed);
        const attemptRows: { id: string; n: number; lease: string; worker: string; token: bigint }[] = [];
        const updates: { id: string; status: string; lease: string; expires: Date; deadline: Date | null; count: number }[] = [];
        for (const tr of tasks) {
          const task = wf.tasks.get(tr.task_id)!;
          const lease = randomUUID();
          const prep = opts.kind === "prep" || (opts.kind === "builtin" && tr.needs_prep);
          const number = tr.attempt_count + (prep ? 0 : 1);
          const expires = addMs(now, task.heartbeatMs);
          const deadline = prep ? null : addMs(now, task.startToCloseMs);
          const token = tr.lock_token === null ? 0n : BigInt(tr.lock_token);
          updates.push({ id: tr.task_id, status: prep ? "STARTING" : "RUNNING", lease, expires, deadline, count: number });
          if (!prep) {
            attemptRows.push({ id: tr.task_id, n: number, lease, worker: opts.workerId, token });
            rt.event("TASK_ATTEMPT_STARTED", { taskId: tr.task_id, attempt: number, details: { worker_id: opts.workerId } });
          }
          const upstream: ClaimedTask["upstream"] = {};
          for (const a of task.ancestors) if (upstreamAll[a]) upstream[a] = upstreamAll[a];
          out.push({
            runId,
            taskId: tr.task_id,
            tenant: run.tenant,
            plugin: tr.plugin,
            queue: tr.queue,
            phase: prep ? "prep" : "attempt",
            attempt: number,
            leaseId: lease,
            leaseExpiresAt: expires,
            deadline,
            priority: tr.priority,
            run: { workflowName: run.workflow_name, workflowVersion: run.workflow_version, input: run.input, priority: run.priority },
            wf,
            task,
            upstream,
            fencingToken: token,
            lockResource: tr.lock_resource ?? "",
            lockLeaseId: tr.lock_lease_id ?? "",
            cacheKey: tr.cache_key,
          });
        }
        await sql`update ${t.tasks} tr set status = u.status, lease_id = u.lease::uuid, lease_owner = ${opts.owner},
            lease_expires_at = u.expires::timestamptz, attempt_deadline = u.deadline::timestamptz, attempt_count = u.n, cancel_requested = false
          from unnest(${updates.map((u) => u.id)}::text[], ${updates.map((u) => u.status)}::text[], ${updates.map((u) => u.lease)}::text[],
            ${updates.map((u) => u.expires.toISOString())}::text[], ${updates.map((u) => u.deadline?.toISOString() ?? null)}::text[], ${updates.map((u) => u.count)}::int[])
            as u(id, status, lease, expires, deadline, n)
          where tr.run_id = ${runId} and tr.task_id = u.id`.execute(trx);
        if (attemptRows.length > 0) {
          await sql`insert into ${t.attempts} (run_id, task_id, number, status, worker_id, lease_id, started_at, fencing_token)
            select ${runId}::uuid, u.id, u.n, 'RUNNING', u.worker, u.lease::uuid, ${now}, u.token
            from unnest(${attemptRows.map((a) => a.id)}::text[], ${attemptRows.map((a) => a.n)}::int[], ${attemptRows.map((a) => a.worker)}::text[],
              ${attemptRows.map((a) => a.lease)}::text[], ${attemptRows.map((a) => String(a.token))}::bigint[]) as u(id, n, worker, lease, token)`.execute(trx);
        }
        rt.adjustActive(tasks.length);
        rt.markDirty();
        await rt.flush();
      }
      return out;
    });
    return { claimed, after };
  }

  /**
   * A task claimed for preparation (cache probe, Lock wait) moves on: `cached` records CACHED;
   * otherwise a built-in task starts its attempt (with the Lock lease, if any), and a worker
   * task goes back to its queue READY and prepared. Returns undefined when the claim was lost.
   */
  async afterPrep(
    claim: ClaimedTask,
    result: { cached?: { key: string; output: JsonObject }; cacheKey?: string | null; lock?: { resource: string; leaseId: string; token: bigint; ttlMs: number } },
    workerId: string,
  ): Promise<{ claim?: ClaimedTask; after: AfterCommit } | undefined> {
    const res = await this.withRun(claim.runId, async (rt) => {
      const row = (await sql<TaskRow>`select * from ${t.tasks} where run_id = ${claim.runId} and task_id = ${claim.taskId} for update`.execute(rt.trx)).rows[0];
      if (!row || row.status !== "STARTING" || row.lease_id !== claim.leaseId) {
        if (result.lock) rt.after.releases.push({ tenant: claim.tenant, leaseId: result.lock.leaseId, token: result.lock.token });
        return undefined;
      }
      rt.adjustActive(-1);
      if (result.cached) {
        if (result.lock) rt.after.releases.push({ tenant: claim.tenant, leaseId: result.lock.leaseId, token: result.lock.token });
        await sql`update ${t.tasks} set status = 'CACHED', output = ${json(result.cached.output)}::jsonb, cache_key = ${result.cached.key},
            finished_at = ${rt.now}, lease_id = null, lease_owner = null, lease_expires_at = null
          where run_id = ${claim.runId} and task_id = ${claim.taskId}`.execute(rt.trx);
        rt.event("TASK_CACHED", { taskId: claim.taskId, details: { cache_key: result.cached.key } });
        rt.after.cacheHits++;
        rt.after.tasksFinished.push({ plugin: claim.plugin, status: "CACHED" });
        await rt.finished([{ taskId: claim.taskId, ok: true }]);
        return undefined;
      }
      const lock = result.lock;
      if (lock) rt.event("TASK_LOCK_ACQUIRED", { taskId: claim.taskId, details: { resource: lock.resource, fencing_token: String(lock.token) } });
      if (claim.plugin === "worker") {
        await sql`update ${t.tasks} set status = 'READY', needs_prep = false, cache_key = ${result.cacheKey ?? null},
            lock_resource = ${lock?.resource ?? null}, lock_lease_id = ${lock?.leaseId ?? null}, lock_token = ${lock ? String(lock.token) : null}::bigint,
            lock_renew_at = ${lock ? addMs(rt.now, lock.ttlMs / 3) : null}, lease_id = null, lease_owner = null, lease_expires_at = null
          where run_id = ${claim.runId} and task_id = ${claim.taskId}`.execute(rt.trx);
        rt.notifications.add(`${CHANNEL_READY}|w:${claim.tenant}:${claim.queue}`);
        return undefined;
      }
      const number = row.attempt_count + 1;
      const lease = randomUUID();
      const task = claim.task;
      const expires = addMs(rt.now, task.heartbeatMs);
      const deadline = addMs(rt.now, task.startToCloseMs);
      await sql`update ${t.tasks} set status = 'RUNNING', attempt_count = ${number}, lease_id = ${lease}, lease_expires_at = ${expires},
          attempt_deadline = ${deadline}, cache_key = ${result.cacheKey ?? null}, lock_resource = ${lock?.resource ?? null},
          lock_lease_id = ${lock?.leaseId ?? null}, lock_token = ${lock ? String(lock.token) : null}::bigint, lock_renew_at = null
        where run_id = ${claim.runId} and task_id = ${claim.taskId}`.execute(rt.trx);
      await sql`insert into ${t.attempts} (run_id, task_id, number, status, worker_id, lease_id, started_at, fencing_token)
        values (${claim.runId}, ${claim.taskId}, ${number}, 'RUNNING', ${workerId}, ${lease}, ${rt.now}, ${lock ? String(lock.token) : "0"}::bigint)`.execute(rt.trx);
      rt.event("TASK_ATTEMPT_STARTED", { taskId: claim.taskId, attempt: number, details: { worker_id: workerId } });
      rt.adjustActive(1);
      return {
        ...claim,
        phase: "attempt" as const,
        attempt: number,
        leaseId: lease,
        leaseExpiresAt: expires,
        deadline,
        fencingToken: lock?.token ?? 0n,
        lockResource: lock?.resource ?? "",
        lockLeaseId: lock?.leaseId ?? "",
        cacheKey: result.cacheKey ?? null,
      };
    });
    if (!res) return undefined;
    return { claim: res.value, after: res.after };
  }

  /** Finds the attempt of a lease and locks its run; NotFound when no such lease. */
  private async withLease<T>(leaseId: string, fn: (rt: RunTx, attempt: AttemptRow, task: TaskRow) => Promise<T>, tenant?: string): Promise<{ value: T; after: AfterCommit }> {
    const found = await sql<{ run_id: string; tenant: string }>`select a.run_id, tr.tenant from ${t.attempts} a
      join ${t.tasks} tr on tr.run_id = a.run_id and tr.task_id = a.task_id where a.lease_id = ${leaseId}`.execute(this.db);
    const hit = found.rows[0];
    if (!hit || (tenant !== undefined && hit.tenant !== tenant)) throw new NotFoundError(`no lease "${leaseId}"`);
    const res = await this.withRun(hit.run_id, async (rt) => {
      const attempt = (await sql<AttemptRow>`select * from ${t.attempts} where lease_id = ${leaseId} for update`.execute(rt.trx)).rows[0];
      const task = (await sql<TaskRow>`select * from ${t.tasks} where run_id = ${attempt.run_id} and task_id = ${attempt.task_id} for update`.execute(rt.trx)).rows[0];
      return fn(rt, attempt, task);
    });
    if (!res) throw new NotFoundError(`no lease "${leaseId}"`);
    return res;
  }

  private leaseLost(attempt: AttemptRow, task: TaskRow, now: Date): string | undefined {
    if (attempt.status !== "RUNNING") return `the lease was lost (attempt ${attempt.number} ended: ${attempt.error?.kind ?? attempt.status.toLowerCase()})`;
    if (task.lease_id !== attempt.lease_id || task.status !== "RUNNING") return "the lease was lost (revoked)";
    if (task.lease_expires_at && task.lease_expires_at.getTime() <= now.getTime()) return "the lease was lost (expired)";
    return undefined;
  }

  /** Records a successful attempt, exactly once per task (the completions primary key). */
  async complete(leaseId: string, output: JsonObject, tenant?: string): Promise<{ alreadyRecorded: boolean; after: AfterCommit }> {
    const res = await this.withLease(leaseId, (rt, attempt, task) => this.completeIn(rt, attempt, task, leaseId, output), tenant);
    return { alreadyRecorded: res.value, after: res.after };
  }

  /**
   * Group commit for the executor: several successes (of one or many runs) in ONE transaction.
   * The runs are locked in id order (every other transaction locks a single run, so no
   * deadlock), and each item is checked exactly as in complete(); an item whose lease is lost
   * gets its error back without affecting the others.
   */
  async completeMany(items: { leaseId: string; runId: string; output: JsonObject }[]): Promise<{ results: (true | Error)[]; after: AfterCommit }> {
    const after = emptyAfter();
    const results = await this.tx(async (trx) => {
      const runIds = [...new Set(items.map((i) => i.runId))].sort();
      const runs = await sql<RunRow & { db_now: Date }>`select r.*, now() as db_now from ${t.runs} r where r.id = any(${runIds}::uuid[]) order by r.id for update`.execute(trx);
      const rts = new Map<string, RunTx>();
      for (const row of runs.rows) {
        const { db_now, ...run } = row;
        run.last_seq = BigInt(run.last_seq);
        const wf = await this.compiledWorkflow(run.tenant, run.workflow_name, run.workflow_version, trx);
        rts.set(run.id, new RunTx(trx, run, wf, db_now, after, this.options.abortGraceMs));
      }
      const leases = items.map((i) => i.leaseId);
      const attempts = new Map((await sql<AttemptRow>`select * from ${t.attempts} where lease_id = any(${leases}::uuid[]) for update`.execute(trx)).rows.map((a) => [a.lease_id!, a]));
      const out: (true | Error)[] = [];
      for (const item of items) {
        const rt = rts.get(item.runId);
        const attempt = attempts.get(item.leaseId);
        if (!rt || !attempt || attempt.run_id !== item.runId) {
          out.push(new NotFoundError(`no lease "${item.leaseId}"`));
          continue;
        }
        const task = (await sql<TaskRow>`select * from ${t.tasks} where run_id = ${attempt.run_id} and task_id = ${attempt.task_id} for update`.execute(trx)).rows[0];
        try {
          await this.completeIn(rt, attempt, task, item.leaseId, item.output);
          out.push(true);
        } catch (error) {
          if (!(error instanceof Error) || !("code" in error) || typeof (error as { code: unknown }).code !== "number") throw error;
          out.push(error);
        }
      }
      for (const rt of rts.values()) await rt.flush();
      return out;
    });
    return { results, after };
  }

  private async completeIn(rt: RunTx, attempt: AttemptRow, task: TaskRow, leaseId: string, output: JsonObject): Promise<boolean> {
    if (attempt.status === "SUCCEEDED") return true;
    if (attempt.ended_by === "fail") throw new FailedPreconditionError(`the attempt was already failed through lease "${leaseId}"`);
    const lost = this.leaseLost(attempt, task, rt.now);
    if (lost) throw new AbortedError(`${lost}; the result is discarded`);
    const inserted = await sql`insert into ${t.completions} (run_id, task_id, attempt, lease_id, recorded_at)
      values (${attempt.run_id}, ${attempt.task_id}, ${attempt.number}, ${leaseId}, ${rt.now}) on conflict do nothing`.execute(rt.trx);
    if (Number(inserted.numAffectedRows ?? 0n) !== 1) throw new AbortedError("the task's success was already recorded by another attempt; the result is discarded");
    await sql`update ${t.attempts} set status = 'SUCCEEDED', output = ${json(output)}::jsonb, finished_at = ${rt.now}, ended_by = 'complete'
      where lease_id = ${leaseId}`.execute(rt.trx);
    await sql`update ${t.tasks} set status = 'SUCCEEDED', output = ${json(output)}::jsonb, error = null, finished_at = ${rt.now},
        lease_id = null, lease_owner = null, lease_expires_at = null, attempt_deadline = null, lock_lease_id = null, lock_token = null
      where run_id = ${attempt.run_id} and task_id = ${attempt.task_id}`.execute(rt.trx);
    rt.event("TASK_SUCCEEDED", { taskId: attempt.task_id, attempt: attempt.number });
    rt.adjustActive(-1);
    this.releaseLock(rt, task);
    const ct = rt.wf.tasks.get(attempt.task_id)!;
    if (ct.cache.enabled && task.cache_key) rt.after.cacheWrites.push({ tenant: task.tenant, key: task.cache_key, output, ttlMs: ct.cache.ttlMs });
    rt.after.tasksFinished.push({ plugin: task.plugin, status: "SUCCEEDED", seconds: attempt.started_at ? (rt.now.getTime() - attempt.started_at.getTime()) / 1000 : undefined });
    await rt.finished([{ taskId: attempt.task_id, ok: true }]);
    return false;
  }

  private releaseLock(rt: RunTx, task: TaskRow): void {
    if (task.lock_lease_id && task.lock_token !== null) rt.after.releases.push({ tenant: task.tenant, leaseId: task.lock_lease_id, token: BigInt(task.lock_token) });
  }

  /** Records a failed attempt (FailTask or a built-in plugin's error); retries under the task's policy. */
  async fail(leaseId: string, error: ErrorJson, nonRetryable: boolean, tenant?: string): Promise<{ alreadyRecorded: boolean; willRetry: boolean; nextAttemptAt?: Date; after: AfterCommit }> {
    const res = await this.withLease(
      leaseId,
      async (rt, attempt, task) => {
        if (attempt.ended_by === "fail") return { already: true, willRetry: false as boolean, next: undefined as Date | undefined };
        if (attempt.status === "SUCCEEDED") throw new FailedPreconditionError(`the attempt was already completed through lease "${leaseId}"`);
        const lost = this.leaseLost(attempt, task, rt.now);
        if (lost) throw new AbortedError(lost);
        const r = await this.failAttemptIn(rt, task, attempt.number, { kind: error.kind, message: truncate(error.message) }, { nonRetryable, endedBy: "fail" });
        return { already: false, willRetry: r.willRetry, next: r.next };
      },
      tenant,
    );
    return { alreadyRecorded: res.value.already, willRetry: res.value.willRetry, nextAttemptAt: res.value.next, after: res.after };
  }

  /**
   * Ends the current attempt of a RUNNING (or STARTING/READY, for schedule-to-start) task as
   * failed and applies the retry policy, or, when the run is ending, cancels the task.
   */
  private async failAttemptIn(
    rt: RunTx,
    task: TaskRow,
    number: number,
    error: ErrorJson,
    opts: { nonRetryable?: boolean; endedBy: string; neverStarted?: boolean },
  ): Promise<{ willRetry: boolean; next?: Date }> {
    const ct = rt.wf.tasks.get(task.task_id)!;
    const wasActive = task.status === "RUNNING" || task.status === "STARTING";
    if (wasActive) rt.adjustActive(-1);
    this.releaseLock(rt, task);
    const ending = rt.run.ending;
    const cancelled = Boolean(ending);
    const attemptStatus = cancelled && (error.kind === "cancelled" || opts.endedBy === "revoke") ? "CANCELLED" : "FAILED";
    if (opts.neverStarted) {
      await sql`insert into ${t.attempts} (run_id, task_id, number, status, finished_at, ended_by, error)
        values (${task.run_id}, ${task.task_id}, ${number}, 'FAILED', ${rt.now}, ${opts.endedBy}, ${json(error)}::jsonb)`.execute(rt.trx);
    } else {
      await sql`update ${t.attempts} set status = ${attemptStatus}, error = ${json(error)}::jsonb, finished_at = ${rt.now}, ended_by = ${opts.endedBy}
        where run_id = ${task.run_id} and task_id = ${task.task_id} and number = ${number}`.execute(rt.trx);
    }
    rt.event("TASK_ATTEMPT_FAILED", { taskId: task.task_id, attempt: number, message: error.message, details: { kind: error.kind } });
    const clear = sql`lease_id = null, lease_owner = null, lease_expires_at = null, attempt_deadline = null, lock_lease_id = null, lock_token = null, lock_resource = null`;
    if (cancelled) {
      await sql`update ${t.tasks} set status = 'CANCELLED', error = ${json(error)}::jsonb, finished_at = ${rt.now}, ${clear}
        where run_id = ${task.run_id} and task_id = ${task.task_id}`.execute(rt.trx);
      rt.event("TASK_CANCELLED", { taskId: task.task_id, attempt: number, message: `run ${ending === "CANCELLED" ? "cancelled" : ending === "TIMED_OUT" ? "timed out" : "failed"}` });
      rt.after.tasksFinished.push({ plugin: task.plugin, status: "CANCELLED" });
      await rt.finished([{ taskId: task.task_id, ok: false }]);
      return { willRetry: false };
    }
    const decision = decideRetry(ct.retry, number, error.kind, opts.nonRetryable);
    if (decision.retry) {
      await sql`update ${t.tasks} set error = ${json(error)}::jsonb, ${clear} where run_id = ${task.run_id} and task_id = ${task.task_id}`.execute(rt.trx);
      const next = addMs(rt.now, decision.delayMs);
      rt.event("TASK_RETRY_SCHEDULED", { taskId: task.task_id, attempt: number, details: { next_attempt_at: next.toISOString(), backoff: decision.delayMs / 1000 } });
      await rt.makeReady([ct], decision.delayMs);
      return { willRetry: true, next };
    }
    await sql`update ${t.tasks} set status = 'FAILED', error = ${json(error)}::jsonb, finished_at = ${rt.now}, ${clear}
      where run_id = ${task.run_id} and task_id = ${task.task_id}`.execute(rt.trx);
    rt.event("TASK_FAILED", { taskId: task.task_id, attempt: number, message: error.message, details: { kind: error.kind, reason: decision.reason } });
    rt.after.tasksFinished.push({ plugin: task.plugin, status: "FAILED" });
    // Failure rule before the dependents are considered, so none of them becomes READY.
    await rt.failRun(task.task_id, error);
    await rt.finished([{ taskId: task.task_id, ok: false }]);
    return { willRetry: false };
  }

  /** HeartbeatTask: extends the lease by the task's heartbeat timeout (DB clock). */
  async heartbeat(leaseId: string, details: JsonObject | undefined, tenant?: string): Promise<{ expiresAt: Date; cancelRequested: boolean }> {
    const res = await this.withLease(
      leaseId,
      async (rt, attempt, task) => {
        if (attempt.ended_by === "complete" || attempt.ended_by === "fail") {
          throw new FailedPreconditionError(`the attempt was already ${attempt.ended_by === "complete" ? "completed" : "failed"} through lease "${leaseId}"`);
        }
        const lost = this.leaseLost(attempt, task, rt.now);
        if (lost) throw new AbortedError(`${lost}: stop and discard the work`);
        if (task.attempt_deadline && task.attempt_deadline.getTime() <= rt.now.getTime()) throw new AbortedError("the lease was lost (start-to-close timeout passed): stop and discard the work");
        const ct = rt.wf.tasks.get(task.task_id)!;
        let expires = addMs(rt.now, ct.heartbeatMs);
        if (task.attempt_deadline && expires > task.attempt_deadline) expires = task.attempt_deadline;
        await sql`update ${t.tasks} set lease_expires_at = ${expires} where run_id = ${task.run_id} and task_id = ${task.task_id}`.execute(rt.trx);
        if (details) {
          await sql`update ${t.attempts} set last_heartbeat_at = ${rt.now}, heartbeat_details = ${json(details)}::jsonb where lease_id = ${leaseId}`.execute(rt.trx);
        } else await sql`update ${t.attempts} set last_heartbeat_at = ${rt.now} where lease_id = ${leaseId}`.execute(rt.trx);
        return { expiresAt: expires, cancelRequested: task.cancel_requested || Boolean(rt.run.ending) };
      },
      tenant,
    );
    return res.value;
  }

  /**
   * Renews the leases of this replica's running built-in attempts (no run lock: only lease
   * columns change, and only while the lease is still ours). Returns the leases still held and
   * which of them have a cancellation pending.
   */
  async renewLeases(leases: { leaseId: string; heartbeatMs: number }[]): Promise<{ held: Set<string>; cancel: Set<string> }> {
    if (leases.length === 0) return { held: new Set(), cancel: new Set() };
    const res = await sql<{ lease_id: string; cancel_requested: boolean }>`
      update ${t.tasks} tr set lease_expires_at = least(now() + u.hb * interval '1 millisecond', coalesce(tr.attempt_deadline, 'infinity'))
      from unnest(${leases.map((l) => l.leaseId)}::uuid[], ${leases.map((l) => l.heartbeatMs)}::float8[]) as u(lease, hb)
      where tr.lease_id = u.lease and tr.status in ('RUNNING', 'STARTING') and tr.lease_expires_at > now()
      returning tr.lease_id, tr.cancel_requested`.execute(this.db);
    return { held: new Set(res.rows.map((r) => r.lease_id)), cancel: new Set(res.rows.filter((r) => r.cancel_requested).map((r) => r.lease_id)) };
  }

  /** Leases of a run's RUNNING attempts that have a cancellation pending (for AbortSignals). */
  async cancelRequested(runId: string): Promise<string[]> {
    const res = await sql<{ lease_id: string }>`select lease_id from ${t.tasks} where run_id = ${runId} and status = 'RUNNING' and cancel_requested`.execute(this.db);
    return res.rows.map((r) => r.lease_id);
  }

  /**
   * The reaper: lapsed leases, start-to-close and schedule-to-start timeouts, run timeouts, and
   * the end of abort grace periods. Each item is re-checked under its run's lock, so replicas
   * reaping at the same time do each thing once.
   */
  async reap(limit = 200): Promise<AfterCommit[]> {
    const out: AfterCommit[] = [];
    const push = (r: { after: AfterCommit } | undefined) => r && out.push(r.after);

    const runsTimedOut = await sql<{ id: string }>`select id from ${t.runs} where status in ('RUNNING', 'CANCELLING') and deadline_at < now() and ending is null limit ${limit}`.execute(this.db);
    for (const { id } of runsTimedOut.rows) {
      push(
        await this.withRun(
          id,
          async (rt) => {
            const run = rt.run;
            // Already failing or cancelling: that ending wins.
            if (!run.deadline_at || run.deadline_at > rt.now || FINAL_RUN.has(run.status) || run.ending) return;
            run.ending = "TIMED_OUT";
            run.error = { kind: "timeout.run", message: "the run exceeded its run_timeout" };
            await rt.abortAll(this.options.abortGraceMs);
          },
          { skipLocked: true },
        ),
      );
    }

    const due = await sql<{ run_id: string; task_id: string; why: string }>`
      select run_id, task_id, 'lease' as why from ${t.tasks} where status in ('RUNNING', 'STARTING') and lease_expires_at < now()
      union all
      select run_id, task_id, 's2c' from ${t.tasks} where status = 'RUNNING' and attempt_deadline < now()
      union all
      select run_id, task_id, 's2s' from ${t.tasks} where status in ('READY', 'STARTING') and s2s_deadline < now()
      union all
      select tr.run_id, tr.task_id, 'revoke' from ${t.tasks} tr join ${t.runs} r on r.id = tr.run_id
        where r.ending is not null and r.abort_deadline < now() and tr.status in ('RUNNING', 'STARTING')
      limit ${limit}`.execute(this.db);
    for (const d of due.rows) {
      push(
        await this.withRun(
          d.run_id,
          async (rt) => {
            const task = (await sql<TaskRow>`select * from ${t.tasks} where run_id = ${d.run_id} and task_id = ${d.task_id} for update`.execute(rt.trx)).rows[0];
            if (!task) return;
            const now = rt.now.getTime();
            if (rt.run.ending && rt.run.abort_deadline && rt.run.abort_deadline.getTime() < now && (task.status === "RUNNING" || task.status === "STARTING")) {
              // Grace period over: revoke the lease and record the attempt CANCELLED.
              if (task.status === "STARTING") {
                rt.adjustActive(-1);
                this.releaseLock(rt, task);
                await sql`update ${t.tasks} set status = 'CANCELLED', finished_at = ${rt.now}, lease_id = null, lease_expires_at = null where run_id = ${d.run_id} and task_id = ${d.task_id}`.execute(rt.trx);
                rt.event("TASK_CANCELLED", { taskId: d.task_id, message: "lease revoked at the end of the grace period" });
                await rt.finished([{ taskId: d.task_id, ok: false }]);
                return;
              }
              const kind = rt.run.ending === "TIMED_OUT" ? "timeout.run" : "cancelled";
              await this.failAttemptIn(rt, task, task.attempt_count, { kind, message: "lease revoked at the end of the grace period" }, { endedBy: "revoke" });
              return;
            }
            if (task.status === "STARTING" && task.lease_expires_at && task.lease_expires_at.getTime() < now) {
              // An executor died while probing the cache or waiting for the Lock: back to the queue.
              rt.adjustActive(-1);
              this.releaseLock(rt, task);
              await sql`update ${t.tasks} set status = 'READY', lease_id = null, lease_owner = null, lease_expires_at = null, lock_lease_id = null, lock_token = null
                where run_id = ${d.run_id} and task_id = ${d.task_id}`.execute(rt.trx);
              rt.after.leaseExpiries++;
              rt.notifications.add(task.plugin === "worker" ? `${CHANNEL_READY}|w:${task.tenant}:${task.queue}` : `${CHANNEL_READY}|b`);
              return;
            }
            if (task.status === "RUNNING" && task.attempt_deadline && task.attempt_deadline.getTime() < now) {
              await this.failAttemptIn(rt, task, task.attempt_count, { kind: "timeout.start_to_close", message: "the attempt exceeded its start_to_close timeout" }, { endedBy: "timeout" });
              return;
            }
            if (task.status === "RUNNING" && task.lease_expires_at && task.lease_expires_at.getTime() < now) {
              rt.after.leaseExpiries++;
              await this.failAttemptIn(rt, task, task.attempt_count, { kind: "timeout.heartbeat", message: "the attempt's lease lapsed (no heartbeat in time: its executor or worker died or stalled)" }, { endedBy: "timeout" });
              return;
            }
            if ((task.status === "READY" || task.status === "STARTING") && task.s2s_deadline && task.s2s_deadline.getTime() < now) {
              const number = task.attempt_count + 1;
              await sql`update ${t.tasks} set attempt_count = ${number} where run_id = ${d.run_id} and task_id = ${d.task_id}`.execute(rt.trx);
              await this.failAttemptIn(rt, task, number, { kind: "timeout.schedule_to_start", message: "the task was not started within its schedule_to_start timeout" }, { endedBy: "timeout", neverStarted: true });
            }
          },
          { skipLocked: true },
        ),
      );
    }

    // Runs cancelled before they started, or whose last active task just ended: maybeFinish in flush.
    return out;
  }

  /** Worker tasks holding a Lock lease whose renewal is due (any replica extends them). */
  async locksToRenew(limit: number): Promise<{ runId: string; taskId: string; tenant: string; leaseId: string; token: bigint; status: string }[]> {
    return this.tx(async (trx) => {
      const res = await sql<{ run_id: string; task_id: string; tenant: string; lock_lease_id: string; lock_token: bigint; status: string }>`
        update ${t.tasks} set lock_renew_at = now() + interval '5 seconds'
        where (run_id, task_id) in (select run_id, task_id from ${t.tasks} where lock_lease_id is not null and plugin = 'worker'
          and lock_renew_at < now() limit ${limit} for update skip locked)
        returning run_id, task_id, tenant, lock_lease_id, lock_token, status`.execute(trx);
      return res.rows.map((r) => ({ runId: r.run_id, taskId: r.task_id, tenant: r.tenant, leaseId: r.lock_lease_id, token: BigInt(r.lock_token), status: r.status }));
    });
  }

  /** The Lock lease of a task was lost: a running attempt fails with `lock.lost`; a queued task is prepared again. */
  async lockLost(runId: string, taskId: string, lockLeaseId: string): Promise<AfterCommit | undefined> {
    const res = await this.withRun(runId, async (rt) => {
      const task = (await sql<TaskRow>`select * from ${t.tasks} where run_id = ${runId} and task_id = ${taskId} for update`.execute(rt.trx)).rows[0];
      if (!task || task.lock_lease_id !== lockLeaseId) return;
      if (task.status === "RUNNING") {
        await this.failAttemptIn(rt, { ...task, lock_lease_id: null }, task.attempt_count, { kind: "lock.lost", message: "the task's Lock lease was lost" }, { endedBy: "lock" });
      } else {
        await sql`update ${t.tasks} set needs_prep = true, lock_lease_id = null, lock_token = null, lock_resource = null where run_id = ${runId} and task_id = ${taskId}`.execute(rt.trx);
      }
    });
    return res?.after;
  }

  /** Milliseconds until the next READY task becomes available (retry backoff), if any within `max`. */
  async nextAvailableInMs(max: number): Promise<number | undefined> {
    const res = await sql<{ ms: number | null }>`select extract(epoch from (min(available_at) - now())) * 1000 as ms from ${t.tasks}
      where status = 'READY' and available_at > now() and available_at < now() + ${max} * interval '1 millisecond'`.execute(this.db);
    const ms = res.rows[0]?.ms;
    return ms === null || ms === undefined ? undefined : Math.max(0, Number(ms));
  }

  /** Tasks waiting in worker queues (READY), for the queue depth gauge. */
  async queueDepths(): Promise<{ tenant: string; queue: string; depth: number }[]> {
    const res = await sql<{ tenant: string; queue: string; depth: number }>`select tenant, queue, count(*)::int as depth from ${t.tasks}
      where status = 'READY' and plugin = 'worker' group by tenant, queue`.execute(this.db);
    return res.rows;
  }

  async readyBuiltinCount(): Promise<number> {
    const res = await sql<{ n: number }>`select count(*)::int as n from ${t.tasks} where status = 'READY' and plugin <> 'worker'`.execute(this.db);
    return res.rows[0].n;
  }
}

export type { RunTx };
