import type { JsonObject, JsonValue } from "@bufbuild/protobuf";
import { bulkhead, type BulkheadPolicy } from "cockatiel";
import type { Database } from "../kit/db/database.js";
import { DomainError } from "../kit/errors.js";
import type { Logger } from "../kit/telemetry/logger.js";
import { CelEvalError, resolveConfig, type CelVars } from "./cel.js";
import type { OrchestratorConfig } from "./config.js";
import { isJsonObject } from "./definition.js";
import { lockPriority, type LockProvider, type ResultCache } from "./deps.js";
import type { OrchestratorMetrics } from "./metrics.js";
import { TaskFailure, type Plugin } from "./plugins/types.js";
import { CHANNEL_ABORT, CHANNEL_READY, cacheKey, type AfterCommit, type ClaimedTask, type OrchestratorStore } from "./store.js";

/**
 * The executor: each replica runs one Engine. Nothing here is authoritative: the database is.
 * The engine only (1) claims work with leases, (2) runs it while renewing the leases, (3)
 * reports results through transactions that re-check the lease. If the process dies at any
 * point, its leases lapse and the reaper (on any replica) fails those attempts with
 * `timeout.heartbeat` and retries them; results it reported are already committed, results it
 * did not report are redone. A zombie's late report is refused (lease check plus the
 * completions primary key), so a success is recorded exactly once.
 *
 * Loops: claim (woken by NOTIFY on new ready tasks, and by a timer for backoffs and as a
 * fallback), renew (leases of running attempts, every third of their heartbeat timeout), and
 * maintenance (the reaper, worker-task Lock renewals, gauges).
 */
export interface EngineDeps {
  store: OrchestratorStore;
  database: Database;
  config: OrchestratorConfig;
  plugins: ReadonlyMap<string, Plugin>;
  locks: LockProvider;
  cache: ResultCache;
  logger: Logger;
  metrics: OrchestratorMetrics;
}

interface Running {
  claim: ClaimedTask;
  abort: AbortController;
  /** Why the attempt is being aborted: the error kind it reports. */
  reason?: { kind: string; message: string; report: boolean };
  nextRenewAt: number;
}

/** TTL of task Lock leases: at least 5 s, and the heartbeat timeout when longer (kept alive every third). */
export function lockTtlMs(heartbeatMs: number): number {
  return Math.max(5_000, heartbeatMs);
}

class Wakeup {
  private resolve?: () => void;
  private pending = false;
  wake(): void {
    this.pending = true;
    this.resolve?.();
  }
  async wait(ms: number): Promise<void> {
    if (this.pending) {
      this.pending = false;
      return;
    }
    await new Promise<void>((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.resolve = done;
    });
    this.resolve = undefined;
    this.pending = false;
  }
}

export class Engine {
  private readonly running = new Map<string, Running>();
  private readonly bulkheads = new Map<string, BulkheadPolicy>();
  private readonly inFlight = new Map<string, number>();
  private readonly claimWake = new Wakeup();
  private readonly startWake = new Wakeup();
  private readonly queueWaiters = new Map<string, Set<() => void>>();
  private readonly stopController = new AbortController();
  private readonly loops: Promise<void>[] = [];
  private readonly tasks = new Set<Promise<void>>();
  private unlisten: (() => Promise<void>)[] = [];
  readonly workerId: string;

  constructor(private readonly deps: EngineDeps) {
    this.workerId = `orchestrator/${deps.config.replica}`;
    for (const name of deps.plugins.keys()) {
      const limit = deps.config.pluginConcurrency[name] ?? deps.config.maxConcurrency;
      // Queue as large as the limit: the claim loop never takes more than the free slots, so
      // the queue only absorbs the instant between claim and start.
      this.bulkheads.set(name, bulkhead(limit, limit));
      this.inFlight.set(name, 0);
    }
  }

  get stopped(): boolean {
    return this.stopController.signal.aborted;
  }

  async start(): Promise<void> {
    const { database } = this.deps;
    this.unlisten.push(
      await database.listen(CHANNEL_READY, (payload) => {
        if (payload === "r") this.startWake.wake();
        else if (payload === "b") this.claimWake.wake();
        else if (payload.startsWith("w:")) {
          this.wakeQueue(payload.slice(2));
          this.claimWake.wake(); // worker tasks may need preparation (cache / lock)
        }
      }),
    );
    this.unlisten.push(await database.listen(CHANNEL_ABORT, (runId) => void this.abortRun(runId)));
    this.loops.push(this.startLoop(), this.claimLoop(), this.renewLoop(), this.maintenanceLoop());
  }

  /**
   * Stops claiming and aborts this replica's attempts without reporting them: their leases
   * lapse and another replica retries them (the same path as a crash, so it is the tested one).
   */
  async stop(): Promise<void> {
    this.stopController.abort();
    this.claimWake.wake();
    this.startWake.wake();
    for (const r of this.running.values()) {
      r.reason = { kind: "shutdown", message: "executor shutting down", report: false };
      r.abort.abort(new Error("shutdown"));
    }
    for (const waiters of this.queueWaiters.values()) for (const w of waiters) w();
    await Promise.allSettled(this.loops);
    await Promise.allSettled([...this.tasks]);
    await Promise.all(this.unlisten.map((u) => u().catch(() => undefined)));
  }

  private wakeQueue(key: string): void {
    const waiters = this.queueWaiters.get(key);
    if (waiters) for (const w of [...waiters]) w();
  }

  /** Waits until a task may be ready in (tenant, queue), `ms` pass, or `signal` aborts. */
  async waitForQueue(tenant: string, queue: string, ms: number, signal: AbortSignal): Promise<void> {
    const key = `${tenant}:${queue}`;
    await new Promise<void>((resolve) => {
      let set = this.queueWaiters.get(key);
      if (!set) this.queueWaiters.set(key, (set = new Set()));
      const done = () => {
        clearTimeout(timer);
        signal.removeEventListener("abort", done);
        set!.delete(done);
        if (set!.size === 0) this.queueWaiters.delete(key);
        resolve();
      };
      const timer = setTimeout(done, ms);
      signal.addEventListener("abort", done, { once: true });
      set.add(done);
    });
  }

  /** Metrics and calls to other services once a transaction committed. */
  afterCommit(after: AfterCommit | undefined): void {
    if (!after) return;
    this.deps.metrics.record(after);
    for (const r of after.releases) void this.deps.locks.release(r);
    for (const w of after.cacheWrites) void this.deps.cache.set(w.tenant, w.key, w.output, w.ttlMs);
  }

  private track(p: Promise<void>): void {
    this.tasks.add(p);
    void p.finally(() => this.tasks.delete(p));
  }

  private async sleep(ms: number): Promise<void> {
    if (this.stopped) return;
    const signal = this.stopController.signal;
    await new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        signal.removeEventListener("abort", done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      signal.addEventListener("abort", done, { once: true });
    });
  }

  // ------------------------------------------------------------------------------------------

  private async claimLoop(): Promise<void> {
    const { store, config, logger } = this.deps;
    while (!this.stopped) {
      let busy = false;
      try {
        const free = config.maxConcurrency - this.running.size;
        if (free > 0) {
          const perPlugin: Record<string, number> = {};
          for (const [name] of this.bulkheads) perPlugin[name] = Math.max(0, (config.pluginConcurrency[name] ?? config.maxConcurrency) - (this.inFlight.get(name) ?? 0));
          const plugins = Object.keys(perPlugin).filter((p) => perPlugin[p] > 0);
          const limit = Math.min(free, 500);
          if (plugins.length > 0) {
            const { claimed, after } = await store.claim({ kind: "builtin", plugins, limit, perPlugin, owner: config.replica, workerId: this.workerId });
            this.afterCommit(after);
            for (const c of claimed) this.launch(c);
            busy = claimed.length >= limit;
          }
          const prepFree = config.maxConcurrency - this.running.size;
          if (prepFree > 0) {
            const { claimed, after } = await store.claim({ kind: "prep", limit: Math.min(prepFree, 50), owner: config.replica, workerId: this.workerId });
            this.afterCommit(after);
            for (const c of claimed) this.launch(c);
          }
        }
      } catch (error) {
        if (this.stopped) break;
        logger.warn({ err: error }, "claim loop error; retrying");
        await this.sleep(500);
        continue;
      }
      if (busy) continue;
      let waitMs = config.pollIntervalMs;
      try {
        const next = await store.nextAvailableInMs(waitMs);
        if (next !== undefined) waitMs = Math.max(1, Math.ceil(next));
      } catch {
        // fall back to the poll interval
      }
      if (!this.stopped) await this.claimWake.wait(waitMs);
    }
  }

  /**
   * Starts PENDING runs (task rows, roots considered), separately from claiming so that a burst
   * of new runs does not delay the tasks that are already ready.
   */
  private async startLoop(): Promise<void> {
    const { store, config, logger } = this.deps;
    while (!this.stopped) {
      let started = 0;
      try {
        const batch = await store.startPendingRuns(20);
        for (const after of batch) this.afterCommit(after);
        started = batch.length;
      } catch (error) {
        if (this.stopped) break;
        logger.warn({ err: error }, "starting runs failed; retrying");
        await this.sleep(500);
        continue;
      }
      if (started > 0) this.claimWake.wake();
      if (started === 0 && !this.stopped) await this.startWake.wait(config.pollIntervalMs);
    }
  }

  private launch(claim: ClaimedTask): void {
    const running: Running = { claim, abort: new AbortController(), nextRenewAt: Date.now() + claim.task.heartbeatMs / 3 };
    this.running.set(claim.leaseId, running);
    this.inFlight.set(claim.plugin, (this.inFlight.get(claim.plugin) ?? 0) + 1);
    this.deps.metrics.runningAttempts.inc({ plugin: claim.plugin });
    const p = this.runClaim(running)
      .catch((error) => this.deps.logger.error({ err: error, run: claim.runId, task: claim.taskId }, "task execution crashed"))
      .finally(() => {
        this.running.delete(running.claim.leaseId);
        this.running.delete(claim.leaseId);
        this.inFlight.set(claim.plugin, (this.inFlight.get(claim.plugin) ?? 1) - 1);
        this.deps.metrics.runningAttempts.dec({ plugin: claim.plugin });
        this.claimWake.wake();
      });
    this.track(p);
  }

  private vars(claim: ClaimedTask): CelVars {
    return {
      input: claim.run.input,
      tasks: claim.upstream,
      run: { id: claim.runId, tenant: claim.tenant, workflow: claim.run.workflowName, version: claim.run.workflowVersion, priority: claim.run.priority },
    };
  }

  private resolve(claim: ClaimedTask): { config?: JsonObject; error?: { kind: string; message: string } } {
    try {
      const value = resolveConfig(claim.task.config, this.vars(claim));
      if (!isJsonObject(value)) return { error: { kind: "config.invalid", message: "config did not resolve to an object" } };
      return { config: value };
    } catch (error) {
      if (error instanceof CelEvalError) return { error: { kind: "cel.error", message: `config: ${error.message}` } };
      throw error;
    }
  }

  private async runClaim(running: Running): Promise<void> {
    let claim = running.claim;
    let prepError: { kind: string; message: string } | undefined;
    let resolved: JsonObject | undefined;
    if (claim.phase === "prep") {
      const r = this.resolve(claim);
      resolved = r.config;
      prepError = r.error;
      const prep = await this.prepare(running, resolved, prepError);
      if (!prep) return;
      if (claim.plugin === "worker") return;
      claim = prep;
      running.claim = claim;
      this.running.set(claim.leaseId, running);
      running.nextRenewAt = Date.now() + claim.task.heartbeatMs / 3;
    }
    await this.attempt(running, resolved, prepError);
  }

  /** Cache probe and Lock wait while STARTING. Returns the started attempt (built-in) or undefined. */
  private async prepare(running: Running, resolved: JsonObject | undefined, prepError: { kind: string; message: string } | undefined): Promise<ClaimedTask | undefined> {
    const { cache, locks, store, metrics, config } = this.deps;
    const claim = running.claim;
    const task = claim.task;
    let key: string | null = null;
    if (task.cache.enabled && resolved) {
      key = cacheKey({ tenant: claim.tenant, workflow: claim.run.workflowName, version: claim.run.workflowVersion, taskId: claim.taskId, config: resolved, input: claim.run.input });
      metrics.cacheLookups.inc();
      const hit = await cache.get(claim.tenant, key);
      if (hit) {
        const res = await store.afterPrep(claim, { cached: { key, output: hit } }, this.workerId);
        this.afterCommit(res?.after);
        return undefined;
      }
    }
    let lock: { resource: string; leaseId: string; token: bigint; ttlMs: number } | undefined;
    if (task.lockKey && !prepError) {
      let resource: string;
      try {
        const v = task.lockKey.program(this.vars(claim));
        if (typeof v !== "string" || v === "") throw new CelEvalError(`lock_key returned ${JSON.stringify(v)}, not a non-empty string`);
        resource = `${claim.tenant || "default"}/${v}`;
      } catch (error) {
        if (!(error instanceof CelEvalError)) throw error;
        prepError = { kind: "cel.error", message: `lock_key: ${error.message}` };
        resource = "";
      }
      // Wait for the lease in slices; the claim lease is renewed meanwhile, and a cancellation
      // or schedule-to-start timeout revokes the claim, which aborts this wait.
      const ttlMs = lockTtlMs(task.heartbeatMs);
      while (resource && !running.abort.signal.aborted) {
        try {
          const grant = await locks.acquire({
            tenant: claim.tenant,
            resource,
            owner: `${this.workerId}/${claim.runId}/${claim.taskId}`,
            ttlMs,
            waitMs: 10_000,
            priority: lockPriority(claim.priority),
            signal: running.abort.signal,
          });
          lock = { resource, leaseId: grant.leaseId, token: grant.token, ttlMs };
          break;
        } catch (error) {
          if (running.abort.signal.aborted) break;
          this.deps.logger.debug({ err: error, resource }, "lock not granted yet");
          await this.sleep(config.pollIntervalMs);
          if (this.stopped) break;
        }
      }
      if (running.abort.signal.aborted) {
        if (lock) void locks.release({ tenant: claim.tenant, leaseId: lock.leaseId, token: lock.token });
        return undefined;
      }
    }
    const res = await store.afterPrep(claim, { cacheKey: key, lock }, this.workerId);
    this.afterCommit(res?.after);
    return res?.claim;
  }

  private async attempt(running: Running, resolvedEarly: JsonObject | undefined, prepError: { kind: string; message: string } | undefined): Promise<void> {
    const claim = running.claim;
    const { plugins, locks } = this.deps;
    const plugin = plugins.get(claim.plugin)!;
    let failure: { kind: string; message: string; nonRetryable?: boolean } | undefined = prepError;
    let resolved = resolvedEarly;
    if (!failure && !resolved) {
      const r = this.resolve(claim);
      resolved = r.config;
      failure = r.error;
    }
    if (!failure && resolved) {
      const errors = plugin.validate(resolved, () => false);
      if (errors.length > 0) failure = { kind: "config.invalid", message: errors.join("; ") };
    }
    let output: JsonObject | undefined;
    if (!failure && resolved) {
      const signal = running.abort.signal;
      const s2c = setTimeout(() => this.abortRunning(running, "timeout.start_to_close", "the attempt exceeded its start_to_close timeout", true), claim.task.startToCloseMs);
      const stopLock = new AbortController();
      if (claim.lockLeaseId && claim.plugin !== "worker") {
        locks.keepAlive({
          tenant: claim.tenant,
          grant: { leaseId: claim.lockLeaseId, token: claim.fencingToken, ttlMs: lockTtlMs(claim.task.heartbeatMs) },
          signal: stopLock.signal,
          onLost: (why) => this.abortRunning(running, "lock.lost", `the task's Lock lease was lost: ${why}`, true),
        });
      }
      try {
        const upstreamOutputs: JsonObject = {};
        for (const dep of claim.task.def.dependsOn) {
          const u = claim.upstream[dep];
          if (u && (u.status === "SUCCEEDED" || u.status === "CACHED")) upstreamOutputs[dep] = u.output;
        }
        const bh = this.bulkheads.get(claim.plugin)!;
        const result = await bh.execute(
          () =>
            plugin.execute({
              signal,
              config: resolved!,
              input: claim.run.input,
              dependencyOutputs: upstreamOutputs,
              runId: claim.runId,
              taskId: claim.taskId,
              attempt: claim.attempt,
              tenant: claim.tenant,
              fencingToken: claim.fencingToken,
              lockResource: claim.lockResource,
            }),
          signal,
        );
        if (running.reason) failure = running.reason;
        else output = isJsonObject(result as JsonValue) ? result : { value: result as JsonValue };
      } catch (error) {
        if (running.reason) failure = running.reason;
        else if (error instanceof TaskFailure) failure = { kind: error.kind, message: error.message, nonRetryable: error.nonRetryable };
        else failure = { kind: `${claim.plugin.replace(/[^a-z0-9_.-]/g, "_")}.error`, message: (error as Error)?.message ?? String(error) };
      } finally {
        clearTimeout(s2c);
        stopLock.abort();
      }
    }
    if (running.reason && !running.reason.report) return;
    if (output && !this.stopped) await this.completeBatched(claim, output);
    else await this.report(claim, output, failure);
  }

  /**
   * Successes go through a group commit: while one batch transaction is in flight, the next
   * results queue up and are recorded together (one commit, one fsync, for many tasks).
   */
  private readonly completions: { claim: ClaimedTask; output: JsonObject; done: () => void }[] = [];
  private completing = false;

  private completeBatched(claim: ClaimedTask, output: JsonObject): Promise<void> {
    return new Promise((done) => {
      this.completions.push({ claim, output, done });
      if (!this.completing) void this.drainCompletions();
    });
  }

  private async drainCompletions(): Promise<void> {
    this.completing = true;
    try {
      while (this.completions.length > 0) {
        const batch = this.completions.splice(0, 200);
        try {
          const { results, after } = await this.deps.store.completeMany(batch.map((b) => ({ leaseId: b.claim.leaseId, runId: b.claim.runId, output: b.output })));
          this.afterCommit(after);
          results.forEach((r, i) => {
            if (r !== true) this.deps.logger.info({ run: batch[i].claim.runId, task: batch[i].claim.taskId, reason: r.message }, "result not recorded");
          });
          for (const b of batch) b.done();
        } catch (error) {
          // The batch failed as a whole (database error): record each one on its own, with retries.
          this.deps.logger.warn({ err: error }, "batched completion failed; recording one by one");
          await Promise.all(batch.map((b) => this.report(b.claim, b.output, undefined).finally(b.done)));
        }
      }
    } finally {
      this.completing = false;
    }
  }

  /** Reports the result; retried on database errors, dropped when the lease is gone. */
  private async report(claim: ClaimedTask, output: JsonObject | undefined, failure: { kind: string; message: string; nonRetryable?: boolean } | undefined): Promise<void> {
    const { store, logger } = this.deps;
    for (let attempt = 1; attempt <= 8; attempt++) {
      try {
        if (output) this.afterCommit((await store.complete(claim.leaseId, output)).after);
        else this.afterCommit((await store.fail(claim.leaseId, failure ?? { kind: "unknown", message: "" }, failure?.nonRetryable ?? false)).after);
        return;
      } catch (error) {
        if (error instanceof DomainError) {
          logger.info({ run: claim.runId, task: claim.taskId, attempt: claim.attempt, reason: error.message }, "result not recorded");
          return;
        }
        if (this.stopped) return;
        logger.warn({ err: error, run: claim.runId, task: claim.taskId }, "recording the result failed; retrying");
        await new Promise((r) => setTimeout(r, Math.min(2000, 50 * 2 ** attempt)));
      }
    }
  }

  private abortRunning(running: Running, kind: string, message: string, report: boolean): void {
    if (running.reason) return;
    running.reason = { kind, message, report };
    running.abort.abort(new TaskFailure(kind, message));
  }

  /** CancelRun / failure / timeout of a run: abort this replica's attempts of it. */
  private async abortRun(runId: string): Promise<void> {
    const mine = [...new Set(this.running.values())].filter((r) => r.claim.runId === runId);
    if (mine.length === 0) return;
    try {
      const leases = new Set(await this.deps.store.cancelRequested(runId));
      for (const r of mine) if (leases.has(r.claim.leaseId) || r.claim.phase === "prep") this.abortRunning(r, "cancelled", "the run is being cancelled, has failed or timed out", true);
    } catch (error) {
      this.deps.logger.warn({ err: error, run: runId }, "could not read cancellations");
    }
  }

  private async renewLoop(): Promise<void> {
    const { store, logger } = this.deps;
    while (!this.stopped) {
      await this.sleep(100);
      const now = Date.now();
      const due = [...new Set(this.running.values())].filter((r) => r.nextRenewAt <= now && !r.reason);
      if (due.length === 0) continue;
      try {
        const { held, cancel } = await store.renewLeases(due.map((r) => ({ leaseId: r.claim.leaseId, heartbeatMs: r.claim.task.heartbeatMs })));
        for (const r of due) {
          r.nextRenewAt = Date.now() + r.claim.task.heartbeatMs / 3;
          if (!held.has(r.claim.leaseId)) {
            // Lost (expired, revoked, claim taken back): stop; whatever we would report is refused anyway.
            this.abortRunning(r, "lease.lost", "the task's lease was lost", false);
          } else if (cancel.has(r.claim.leaseId)) this.abortRunning(r, "cancelled", "the run is being cancelled, has failed or timed out", true);
        }
      } catch (error) {
        if (!this.stopped) logger.warn({ err: error }, "lease renewal failed; retrying");
      }
    }
  }

  private async maintenanceLoop(): Promise<void> {
    const { store, logger, config, metrics, locks } = this.deps;
    while (!this.stopped) {
      try {
        for (const after of await store.reap()) this.afterCommit(after);
        for (const l of await store.locksToRenew(100)) {
          try {
            const ok = await locks.extend({ tenant: l.tenant, leaseId: l.leaseId, token: l.token, ttlMs: 15_000 });
            if (!ok) this.afterCommit(await store.lockLost(l.runId, l.taskId, l.leaseId));
          } catch (error) {
            logger.warn({ err: error, run: l.runId, task: l.taskId }, "lock extension failed");
          }
        }
        metrics.queueDepth.reset();
        for (const q of await store.queueDepths()) metrics.queueDepth.set({ tenant: q.tenant, queue: q.queue }, q.depth);
        metrics.readyTasks.set(await store.readyBuiltinCount());
      } catch (error) {
        if (!this.stopped) logger.warn({ err: error }, "maintenance failed; retrying");
      }
      await this.sleep(config.maintenanceIntervalMs);
    }
  }
}
