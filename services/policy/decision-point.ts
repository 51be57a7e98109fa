import { randomUUID } from "node:crypto";
import { LRUCache } from "lru-cache";
import { Counter, Gauge, Histogram, type Registry } from "prom-client";
import type { Logger } from "../kit/telemetry/logger.js";
import { FailedPreconditionError, ResourceExhaustedError } from "../kit/errors.js";
import type { PolicyConfig } from "./config.js";
import { DECISION_KINDS, errorText, outcomesAgree, type DecisionKind, type DecisionOutcome, type Engine, type EngineKind, type JsonObject } from "./engine.js";
import { createMasker, decisionCacheKey, stableStringify } from "./input.js";
import { bundleLabel, type BundleStore, type ShadowDelta, type ShadowExampleRecord, type ShadowSetting, type StoredBundle } from "./store.js";
import { loadEngine } from "./validate.js";

/**
 * The decision point of one replica: the active version of each bundle loaded in memory, the
 * decision cache, the decision log, shadow evaluation and statistics. No transport here.
 *
 * Loading: a bundle is loaded on its first Decide (and every active bundle at start), then kept
 * in memory; Decide never touches Postgres for a loaded bundle, so decisions keep flowing while
 * the database is down. Changes reach every replica through NOTIFY (store.CHANGE_CHANNEL): the
 * replica reloads that bundle's active version and shadow from Postgres. The replica that made a
 * change applies it itself before answering (so the caller's next Decide on it sees it); the
 * NOTIFY that follows finds nothing new. Reloads of one bundle are serialized per key.
 *
 * Engines are cached by content digest (a shadow, a benchmark, a rollback to a recent version
 * reuse the loaded module instead of compiling it again).
 *
 * Cache: LRU bounded by entries with a TTL; key = SHA-256(bundle tenant, name, version,
 * normalized input JSON with sorted keys). Because the version is in the key, an old version's
 * entries could never answer for a new one; the cache is still cleared on every activation and
 * rollback, as the contract says, so memory goes to the live version.
 */

export interface DecisionRecord {
  outcome: DecisionOutcome;
  bundleName: string;
  bundleVersion: bigint;
  decisionId: string;
  cached: boolean;
}

interface LoadedShadow {
  setting: ShadowSetting;
  engine: Engine;
}

interface BundleState {
  tenant: string;
  name: string;
  version: bigint;
  digest: string;
  engineKind: EngineKind;
  engine: Engine;
  shadow?: LoadedShadow;
}

export interface DecideCall {
  bundleTenant: string;
  bundleName: string;
  input: JsonObject;
  bypassCache: boolean;
}

export interface BenchmarkResult {
  engine: EngineKind;
  version: bigint;
  iterations: number;
  p50Ns: bigint;
  p99Ns: bigint;
  meanNs: bigint;
  minNs: bigint;
  maxNs: bigint;
  evaluationsPerSecond: number;
  outcome: DecisionOutcome;
}

export interface DecisionStats {
  cache: { entries: number; maxEntries: number; ttlMs: number; hits: number; misses: number; hitRatio: number; evictions: number; clears: number };
  decisions: Record<DecisionKind, number>;
  evaluationErrors: number;
  replica: string;
  since: Date;
}

const key = (tenant: string, name: string): string => `${tenant}\u0000${name}`;

function percentile(sorted: bigint[], p: number): bigint {
  if (sorted.length === 0) return 0n;
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[index]!;
}

export class DecisionPoint {
  private readonly states = new Map<string, BundleState>();
  private readonly loading = new Map<string, Promise<BundleState | undefined>>();
  private readonly refreshChains = new Map<string, Promise<void>>();
  private readonly engines = new LRUCache<string, Promise<Engine>>({ max: 64 });
  private readonly cache: LRUCache<string, DecisionOutcome> | undefined;
  private readonly mask: (input: JsonObject) => JsonObject;
  private readonly shadowDeltas = new Map<string, ShadowDelta>();
  private flushTimer: NodeJS.Timeout | undefined;
  private benchmarking = false;
  private closed = false;

  private readonly counts = { hits: 0, misses: 0, evictions: 0, clears: 0, evaluationErrors: 0 };
  private readonly decisions: Record<DecisionKind, number> = { allow: 0, deny: 0, divert: 0, tarpit: 0 };
  private readonly since = new Date();

  private readonly metrics: {
    decisions: Counter<"decision" | "cached">;
    lookups: Counter<"result">;
    evaluationSeconds: Histogram<"engine">;
    evaluationErrors: Counter;
    shadow: Counter<"outcome">;
    clears: Counter;
  };

  constructor(
    private readonly store: BundleStore,
    private readonly config: PolicyConfig,
    private readonly logger: Logger,
    registry: Registry,
  ) {
    this.cache =
      config.cacheMaxEntries > 0
        ? new LRUCache<string, DecisionOutcome>({
            max: config.cacheMaxEntries,
            ttl: config.cacheTtlMs,
            // Only evictions for lack of space count as evictions (not TTL expiry, not clears).
            disposeAfter: (_value, _key, reason) => {
              if (reason === "evict") this.counts.evictions++;
            },
          })
        : undefined;
    this.mask = createMasker(config.sensitiveFields);
    const registers = [registry];
    this.metrics = {
      decisions: new Counter({ name: "orca_policy_decisions_total", help: "Decisions returned, by decision and whether the cache answered", labelNames: ["decision", "cached"], registers }),
      lookups: new Counter({ name: "orca_policy_decision_cache_lookups_total", help: "Decision cache lookups (bypassed calls are not counted)", labelNames: ["result"], registers }),
      evaluationSeconds: new Histogram({
        name: "orca_policy_evaluation_seconds",
        help: "Engine evaluation latency (cache misses only)",
        labelNames: ["engine"],
        buckets: [0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05],
        registers,
      }),
      evaluationErrors: new Counter({ name: "orca_policy_evaluation_errors_total", help: "Evaluations that failed and were answered DENY (fail closed)", registers }),
      shadow: new Counter({ name: "orca_policy_shadow_evaluations_total", help: "Shadow evaluations by outcome (agree, disagree, error)", labelNames: ["outcome"], registers }),
      clears: new Counter({ name: "orca_policy_decision_cache_clears_total", help: "Decision cache clears (activations and rollbacks)", registers }),
    };
    const self = this;
    new Gauge({
      name: "orca_policy_decision_cache_hit_ratio",
      help: "Decision cache hits / lookups since start",
      registers,
      collect() {
        const total = self.counts.hits + self.counts.misses;
        this.set(total === 0 ? 0 : self.counts.hits / total);
      },
    });
    new Gauge({
      name: "orca_policy_decision_cache_entries",
      help: "Decision cache entries held",
      registers,
      collect() {
        this.set(self.cache?.size ?? 0);
      },
    });
    this.flushTimer = setInterval(() => void this.flushShadows().catch((error: unknown) => this.logger.warn({ err: error }, "shadow report flush failed; will retry")), config.shadowFlushMs);
    this.flushTimer.unref();
  }

  // ---- loading ---------------------------------------------------------------------------

  /** The engine for a stored version (content required), loaded once per digest. */
  async engineFor(bundle: StoredBundle): Promise<Engine> {
    let pending = this.engines.get(bundle.digest);
    if (!pending) {
      pending = loadEngine({ engine: bundle.engine, content: bundle.content, cedarSchema: bundle.cedarSchema, entrypoint: bundle.entrypoint }).then((result) => {
        if (!result.ok) throw new Error(`stored version ${bundle.version} of ${bundleLabel(bundle.tenant, bundle.name)} no longer loads: ${result.failures.map((f) => f.message).join("; ")}`);
        return result.engine;
      });
      this.engines.set(bundle.digest, pending);
      pending.catch(() => this.engines.delete(bundle.digest));
    }
    return pending;
  }

  /** Seeds the engine cache with an engine that validation already loaded. */
  rememberEngine(digest: string, engine: Engine): void {
    if (!this.engines.has(digest)) this.engines.set(digest, Promise.resolve(engine));
  }

  private async loadState(tenant: string, name: string): Promise<BundleState | undefined> {
    const active = await this.store.getActive(tenant, name);
    if (!active) return undefined;
    const engine = await this.engineFor(active);
    const state: BundleState = { tenant, name, version: active.version, digest: active.digest, engineKind: active.engine, engine };
    state.shadow = await this.loadShadow(tenant, name);
    return state;
  }

  private async loadShadow(tenant: string, name: string): Promise<LoadedShadow | undefined> {
    const setting = await this.store.getShadow(tenant, name);
    if (!setting) return undefined;
    const bundle = await this.store.get(tenant, name, setting.version);
    return { setting, engine: await this.engineFor(bundle) };
  }

  /** The loaded state of a bundle, loading it on first use. FailedPrecondition when nothing is active. */
  private async state(tenant: string, name: string): Promise<BundleState> {
    const k = key(tenant, name);
    const loaded = this.states.get(k);
    if (loaded) return loaded;
    let pending = this.loading.get(k);
    if (!pending) {
      pending = this.loadState(tenant, name).finally(() => this.loading.delete(k));
      this.loading.set(k, pending);
    }
    const state = await pending;
    if (!state) throw new FailedPreconditionError(`${bundleLabel(tenant, name)} has no active version`);
    // A refresh may have installed a newer state meanwhile; keep that one.
    const current = this.states.get(k);
    if (current) return current;
    this.states.set(k, state);
    return state;
  }

  /**
   * Re-reads a bundle's active version and shadow from Postgres and swaps them in. Called after
   * this replica changed the bundle (`force`: load it even if not loaded yet) and on NOTIFY from
   * any replica (only bundles this replica has loaded). Serialized per bundle.
   */
  refresh(tenant: string, name: string, force = false): Promise<void> {
    const k = key(tenant, name);
    const previous = this.refreshChains.get(k) ?? Promise.resolve();
    const next = previous.then(async () => {
      if (!force && !this.states.has(k) && !this.loading.has(k)) return;
      const before = this.states.get(k);
      const after = await this.loadState(tenant, name);
      if (!after) {
        if (before) {
          this.states.delete(k);
          this.clearCache();
        }
        return;
      }
      if (before && before.version === after.version && before.shadow?.setting.reportId === after.shadow?.setting.reportId) {
        return;
      }
      this.states.set(k, after);
      if (!before || before.version !== after.version) {
        this.clearCache();
        this.logger.info({ event: "policy.activated", bundle_tenant: tenant, bundle: name, version: after.version.toString(), previous_version: before?.version.toString() ?? "0" }, "policy bundle switched");
      }
    });
    const tracked = next.catch((error: unknown) => {
      this.logger.error({ err: error, bundle_tenant: tenant, bundle: name }, "policy bundle reload failed; the loaded version keeps serving");
    });
    this.refreshChains.set(k, tracked);
    void tracked.finally(() => {
      if (this.refreshChains.get(k) === tracked) this.refreshChains.delete(k);
    });
    return next;
  }

  /** The version this replica currently serves for a bundle (0 when not loaded). */
  loadedVersion(tenant: string, name: string): bigint {
    return this.states.get(key(tenant, name))?.version ?? 0n;
  }

  async preloadActive(): Promise<void> {
    for (const { tenant, name } of await this.store.listActive()) {
      await this.state(tenant, name).catch((error: unknown) => this.logger.error({ err: error, bundle_tenant: tenant, bundle: name }, "could not preload policy bundle"));
    }
  }

  clearCache(): void {
    this.cache?.clear();
    this.counts.clears++;
    this.metrics.clears.inc();
  }

  // ---- deciding --------------------------------------------------------------------------

  /** Resolves the states of all calls first (so a batch fails before anything is evaluated). */
  async decideMany(calls: DecideCall[]): Promise<DecisionRecord[]> {
    const states: BundleState[] = [];
    for (const call of calls) states.push(await this.state(call.bundleTenant, call.bundleName));
    return calls.map((call, i) => this.decideWith(states[i]!, call));
  }

  async decide(call: DecideCall): Promise<DecisionRecord> {
    const state = this.states.get(key(call.bundleTenant, call.bundleName)) ?? (await this.state(call.bundleTenant, call.bundleName));
    return this.decideWith(state, call);
  }

  private decideWith(state: BundleState, call: DecideCall): DecisionRecord {
    let outcome: DecisionOutcome | undefined;
    let cached = false;
    let cacheKey: string | undefined;
    if (this.cache && !call.bypassCache) {
      cacheKey = decisionCacheKey(state.tenant, state.name, state.version, stableStringify(call.input));
      outcome = this.cache.get(cacheKey);
      if (outcome) {
        cached = true;
        this.counts.hits++;
        this.metrics.lookups.inc({ result: "hit" });
      } else {
        this.counts.misses++;
        this.metrics.lookups.inc({ result: "miss" });
      }
    }
    if (!outcome) {
      const started = process.hrtime.bigint();
      outcome = state.engine.evaluate(call.input);
      this.metrics.evaluationSeconds.observe({ engine: state.engineKind }, Number(process.hrtime.bigint() - started) / 1e9);
      if (outcome.evaluationError) {
        this.counts.evaluationErrors++;
        this.metrics.evaluationErrors.inc();
      } else if (cacheKey) {
        // Failed evaluations are not cached: they may be transient (memory) and must stay visible.
        this.cache!.set(cacheKey, outcome);
      }
    }
    const record: DecisionRecord = { outcome, bundleName: state.name, bundleVersion: state.version, decisionId: randomUUID(), cached };
    this.decisions[outcome.decision]++;
    this.metrics.decisions.inc({ decision: outcome.decision, cached: cached ? "true" : "false" });
    this.logger.info(
      {
        event: "policy.decision",
        decision_id: record.decisionId,
        bundle_tenant: state.tenant,
        bundle: state.name,
        version: state.version.toString(),
        decision: outcome.decision,
        reasons: outcome.reasons,
        divert_target: outcome.divertTarget,
        tarpit_delay_ms: outcome.tarpitDelayMs,
        cached,
        input: this.mask(call.input),
      },
      "policy decision",
    );
    const shadow = state.shadow;
    if (shadow && (shadow.setting.sampleRate >= 1 || Math.random() < shadow.setting.sampleRate)) {
      // Off the response path: the caller's answer does not wait for the shadow engine.
      const activeOutcome = outcome;
      setImmediate(() => this.shadowEvaluate(state, shadow, call.input, activeOutcome, record.decisionId));
    }
    return record;
  }

  // ---- shadow ----------------------------------------------------------------------------

  private shadowEvaluate(state: BundleState, shadow: LoadedShadow, input: JsonObject, active: DecisionOutcome, decisionId: string): void {
    if (this.closed) return;
    const setting = shadow.setting;
    let delta = this.shadowDeltas.get(setting.reportId);
    if (!delta) {
      delta = { tenant: setting.tenant, name: setting.name, reportId: setting.reportId, evaluated: 0, agreements: 0, disagreements: 0, shadowErrors: 0, pairs: new Map(), examples: [] };
      this.shadowDeltas.set(setting.reportId, delta);
    }
    const result = shadow.engine.evaluate(input);
    if (result.evaluationError) {
      delta.shadowErrors++;
      this.metrics.shadow.inc({ outcome: "error" });
      return;
    }
    const agreed = outcomesAgree(active, result);
    delta.evaluated++;
    if (agreed) delta.agreements++;
    else delta.disagreements++;
    const pair = `${active.decision}/${result.decision}`;
    delta.pairs.set(pair, (delta.pairs.get(pair) ?? 0) + 1);
    this.metrics.shadow.inc({ outcome: agreed ? "agree" : "disagree" });
    const example: ShadowExampleRecord = {
      input: this.mask(input),
      active: { ...active, decisionId, version: state.version.toString() },
      shadow: { ...result, version: setting.version.toString() },
      decidedAt: new Date(),
    };
    delta.examples.push({ agreed, example });
    // Keep only the most recent 10 of each kind between flushes.
    const same = delta.examples.filter((e) => e.agreed === agreed);
    if (same.length > 10) delta.examples.splice(delta.examples.indexOf(same[0]!), 1);
  }

  /** Adds this replica's pending shadow counts to the shared reports in Postgres. */
  async flushShadows(): Promise<void> {
    const deltas = [...this.shadowDeltas.values()];
    this.shadowDeltas.clear();
    for (const delta of deltas) {
      try {
        await this.store.flushShadow(delta);
      } catch (error) {
        // Put the counts back (merged with anything new) for the next flush.
        const current = this.shadowDeltas.get(delta.reportId);
        if (current) {
          current.evaluated += delta.evaluated;
          current.agreements += delta.agreements;
          current.disagreements += delta.disagreements;
          current.shadowErrors += delta.shadowErrors;
          for (const [p, c] of delta.pairs) current.pairs.set(p, (current.pairs.get(p) ?? 0) + c);
          current.examples.unshift(...delta.examples);
        } else {
          this.shadowDeltas.set(delta.reportId, delta);
        }
        throw error;
      }
    }
  }

  /** Waits for pending shadow evaluations (queued with setImmediate) to run. */
  async settleShadows(): Promise<void> {
    await new Promise<void>((resolve) => setImmediate(resolve));
  }

  // ---- benchmark and stats ---------------------------------------------------------------

  async benchmark(bundle: StoredBundle, input: JsonObject, iterations: number, warmup: number): Promise<BenchmarkResult> {
    if (this.benchmarking) throw new ResourceExhaustedError("another benchmark is running on this replica; try again when it finishes");
    this.benchmarking = true;
    try {
      const engine = await this.engineFor(bundle);
      const deadline = Date.now() + this.config.benchmarkBudgetMs;
      const yieldEvery = 20; // ms of evaluation between yields, so the replica keeps serving
      let sliceStart = Date.now();
      const pause = async (): Promise<void> => {
        if (Date.now() - sliceStart >= yieldEvery) {
          await new Promise<void>((resolve) => setImmediate(resolve));
          sliceStart = Date.now();
        }
      };
      let outcome = engine.evaluate(input);
      for (let i = 0; i < warmup && Date.now() < deadline; i++) {
        engine.evaluate(input);
        await pause();
      }
      const samples: bigint[] = [];
      let total = 0n;
      for (let i = 0; i < iterations && Date.now() < deadline; i++) {
        const t0 = process.hrtime.bigint();
        outcome = engine.evaluate(input);
        const dt = process.hrtime.bigint() - t0;
        samples.push(dt);
        total += dt;
        await pause();
      }
      samples.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
      const n = samples.length;
      return {
        engine: bundle.engine,
        version: bundle.version,
        iterations: n,
        p50Ns: percentile(samples, 50),
        p99Ns: percentile(samples, 99),
        meanNs: n === 0 ? 0n : total / BigInt(n),
        minNs: samples[0] ?? 0n,
        maxNs: samples[n - 1] ?? 0n,
        evaluationsPerSecond: total === 0n ? 0 : n / (Number(total) / 1e9),
        outcome,
      };
    } finally {
      this.benchmarking = false;
    }
  }

  stats(): DecisionStats {
    const lookups = this.counts.hits + this.counts.misses;
    return {
      cache: {
        entries: this.cache?.size ?? 0,
        maxEntries: this.config.cacheMaxEntries,
        ttlMs: this.config.cacheTtlMs,
        hits: this.counts.hits,
        misses: this.counts.misses,
        hitRatio: lookups === 0 ? 0 : this.counts.hits / lookups,
        evictions: this.counts.evictions,
        clears: this.counts.clears,
      },
      decisions: { ...this.decisions },
      evaluationErrors: this.counts.evaluationErrors,
      replica: this.config.replica,
      since: this.since,
    };
  }

  async close(): Promise<void> {
    clearInterval(this.flushTimer);
    await this.settleShadows();
    await this.flushShadows().catch((error: unknown) => this.logger.warn({ err: errorText(error) }, "final shadow flush failed"));
    this.closed = true;
  }
}

export { DECISION_KINDS };
