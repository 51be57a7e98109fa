import { randomUUID } from "node:crypto";
import { hostname } from "node:os";
import type { Redis } from "ioredis";
import type { Kysely } from "kysely";
import { LRUCache } from "lru-cache";
import type { Registry } from "prom-client";
import type { Database } from "../kit/db/database.js";
import { ResourceExhaustedError, UnavailableError } from "../kit/errors.js";
import type { Logger } from "../kit/telemetry/logger.js";
import { policyFor, type CacheConfig, type NamespacePolicy } from "./config.js";
import { namespaceId, type StoredEntry, type TierName, withTimeout } from "./entry.js";
import { globMatcher } from "./glob.js";
import { L1Tier } from "./l1.js";
import { L2Tier } from "./l2.js";
import { L3Tier, NOTIFY_CHANNEL, SCHEMA, type Selector } from "./l3.js";
import type { CacheTables } from "./schema.js";
import { CacheStats } from "./stats.js";

export type { Selector };

export type InvalidationCauseName = "set" | "delete" | "invalidate" | "flush";

/** One invalidation, as sent between replicas (JSON over Redis pub/sub and pg_notify) and to watchers. */
export interface Invalidation {
  id: string;
  /** Replica that performed the operation. */
  origin: string;
  tenant: string;
  /** Empty only for a FLUSH of every namespace of the tenant. */
  namespace: string;
  cause: InvalidationCauseName;
  selector?: Selector;
  /** Epoch ms on the origin replica. */
  at: number;
}

type BusMessage = ({ type: "inv" } & Invalidation) | { type: "gen"; id: string; gen: string };

export interface Lookup {
  key: string;
  found: boolean;
  entry?: StoredEntry;
  tier?: TierName;
  stale: boolean;
}

/** What the lower tiers (L2, L3) said about one key. */
interface Lower {
  fresh?: { entry: StoredEntry; tier: TierName };
  stale?: { entry: StoredEntry; tier: TierName };
  /** L3 failed or was slower than its timeout (and L2 had nothing fresh). */
  failed: boolean;
}

interface Watcher {
  tenant: string;
  namespaces: Set<string> | null;
  queue: Invalidation[];
  wake?: () => void;
}

/** Queue length after which a slow watcher gets a FLUSH instead of the backlog. */
const WATCH_QUEUE_LIMIT = 10_000;

export interface CacheDeps {
  database: Database;
  redis?: Redis;
  config: CacheConfig;
  logger: Logger;
  registry: Registry;
  /** Largest BatchGet response (values included); the kit's ORCA_MAX_MESSAGE_BYTES. */
  maxResponseBytes: number;
  replicaId?: string;
}

/**
 * The three-tier cache of one replica, without transport: L1 (memory) -> L2 (Redis) -> L3
 * (Postgres), single flight per key, stale windows per namespace, invalidation to every
 * replica's L1 and to watchers.
 *
 * Coherence of L1 (why a replica never keeps serving a replaced value past the propagation bound):
 *  - every Set/Delete/Invalidate sends one message through pg_notify inside its L3 transaction,
 *    and also through Redis pub/sub when Redis is up. Receivers dedupe by message id. NOTIFY
 *    is always on because it is tied to the commit and survives a Redis outage; Redis pub/sub
 *    is usually a little faster and covers a lost LISTEN connection.
 *  - a lookup of the lower tiers records the namespace's invalidation epoch before it starts and
 *    promotes its result into L1 only if no invalidation of that namespace arrived meanwhile; an
 *    invalidation also detaches the in-flight lookups of the keys it covers, so a Get that
 *    arrives after a Set never joins a lookup that may have read the old value.
 *  - L1 keeps the entry with the larger version (versions come from one Postgres sequence).
 */
export class TieredCache {
  readonly replicaId: string;
  readonly l1: L1Tier;
  readonly l2?: L2Tier;
  readonly l3: L3Tier;
  readonly stats: CacheStats;
  private readonly flights = new Map<string, Map<string, Promise<Lower>>>();
  private readonly epochs = new Map<string, number>();
  private readonly seen = new LRUCache<string, true>({ max: 100_000, ttl: 120_000 });
  private readonly watchers = new Set<Watcher>();
  private readonly subscriber?: Redis;
  private readonly channel: string;
  private stopListening?: () => Promise<void>;
  private pgListening = false;
  private redisSubscribed = false;
  private purgeTimer?: NodeJS.Timeout;
  private clockOffset = 0;
  private closed = false;

  constructor(private readonly deps: CacheDeps) {
    this.replicaId = deps.replicaId ?? `${hostname()}-${process.pid}-${randomUUID().slice(0, 8)}`;
    this.l1 = new L1Tier(deps.config.l1MaxBytes);
    this.l3 = new L3Tier(deps.database.db.withSchema(SCHEMA) as Kysely<CacheTables>);
    this.channel = `${deps.config.redisPrefix}invalidations`;
    if (deps.redis) {
      this.l2 = new L2Tier(deps.redis, deps.config.redisPrefix, deps.config.l2TimeoutMs, deps.logger);
      this.l2.onGenerationBumped = (gen) => void this.publishRedis({ type: "gen", id: randomUUID(), gen });
      // Pub/sub needs a connection of its own (a subscribed connection cannot run commands).
      this.subscriber = deps.redis.duplicate();
      this.subscriber.on("error", () => undefined); // the main connection logs outages
    }
    this.stats = new CacheStats(deps.registry, {
      l1Bytes: () => this.l1.totalBytes,
      l1Entries: () => this.l1.totalEntries,
      l2Available: () => (this.l2?.available ? 1 : 0),
    });
    this.l1.onEvict = () => this.stats.metrics.evictions.inc();
  }

  async start(): Promise<void> {
    try {
      this.stopListening = await this.deps.database.listen(NOTIFY_CHANNEL, (payload) => this.receive(payload, "postgres"), {
        // Without Redis, NOTIFY is the only way invalidations arrive: any sent while LISTEN was
        // down are lost, so L1 (and every watcher's near-cache) starts over.
        onReconnect: () => {
          if (!this.redisSubscribed) this.dropLocalState();
        },
      });
      this.pgListening = true;
    } catch (error) {
      this.deps.logger.warn({ err: error }, "cache: LISTEN failed; invalidations arrive through Redis only");
    }
    if (this.subscriber) {
      const subscriber = this.subscriber;
      subscriber.on("message", (_channel: string, payload: string) => this.receive(payload, "redis"));
      const subscribe = () => {
        if (this.redisSubscribed || this.closed) return;
        subscriber.subscribe(this.channel).then(
          () => (this.redisSubscribed = true),
          () => undefined,
        );
      };
      // ioredis re-subscribes by itself after a reconnect (autoResubscribe); this covers the first connection.
      subscriber.on("ready", subscribe);
      if (subscriber.status === "ready") subscribe();
      await this.l2!.start();
    }
    await this.measureClock().catch(() => undefined);
    this.purgeTimer = setInterval(() => void this.purgeOnce(), this.deps.config.purgeIntervalMs);
    this.purgeTimer.unref();
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.purgeTimer);
    this.l2?.stop();
    await this.stopListening?.().catch(() => undefined);
    this.subscriber?.disconnect();
    for (const watcher of this.watchers) {
      watcher.queue.length = 0;
      watcher.wake?.();
    }
  }

  /** Server clock: local time corrected by the offset to the database clock (TTLs are set by the database). */
  now(): number {
    return Date.now() + this.clockOffset;
  }

  private async measureClock(): Promise<void> {
    const t0 = Date.now();
    const db = await this.l3.now();
    const t1 = Date.now();
    this.clockOffset = db - (t0 + t1) / 2;
  }

  async purgeOnce(): Promise<number> {
    try {
      await this.measureClock();
      const n = await this.l3.purge();
      if (n > 0) {
        this.stats.metrics.purged.inc(n);
        this.deps.logger.debug({ purged: n }, "cache: purged expired L3 rows");
      }
      return n;
    } catch (error) {
      this.deps.logger.warn({ err: error }, "cache: purge of expired L3 rows failed; retrying next interval");
      return 0;
    }
  }

  policy(namespace: string): NamespacePolicy {
    return policyFor(this.deps.config, namespace);
  }

  /** Whether invalidations from other replicas can reach this one (for watchers and readiness). */
  get notificationsAvailable(): boolean {
    return this.pgListening || this.redisSubscribed;
  }

  // ---------------------------------------------------------------- reads

  async get(tenant: string, namespace: string, key: string): Promise<Lookup> {
    return (await this.getMany(tenant, namespace, [key]))[0];
  }

  async getMany(tenant: string, namespace: string, keys: string[]): Promise<Lookup[]> {
    const now = this.now();
    const policy = this.policy(namespace);
    const results: Lookup[] = new Array(keys.length);
    const pending: number[] = [];
    const l1Stale = new Map<number, StoredEntry>();
    let revalidate: string[] | undefined;
    for (let i = 0; i < keys.length; i++) {
      const entry = this.l1.get(tenant, namespace, keys[i]);
      if (entry && now < entry.expiresAt) {
        results[i] = this.answer(keys[i], entry, "l1", false);
      } else if (entry && now < entry.expiresAt + policy.staleWhileRevalidateMs) {
        // Stale-while-revalidate: answer now, refresh L1 from the lower tiers in the background.
        results[i] = this.answer(keys[i], entry, "l1", true);
        (revalidate ??= []).push(keys[i]);
      } else {
        this.stats.tierMiss(tenant, namespace, "l1");
        if (entry) l1Stale.set(i, entry);
        pending.push(i);
      }
    }
    if (revalidate) for (const p of this.lower(tenant, namespace, revalidate)) p.catch(() => undefined);
    if (pending.length > 0) {
      const lowers = await Promise.all(this.lower(tenant, namespace, pending.map((i) => keys[i])));
      const unavailable: string[] = [];
      pending.forEach((i, n) => {
        const result = this.settle(keys[i], l1Stale.get(i), lowers[n], policy, now);
        if (result) results[i] = result;
        else unavailable.push(keys[i]);
      });
      if (unavailable.length > 0) {
        throw new UnavailableError(
          `Postgres (L3) did not answer within ${this.deps.config.l3TimeoutMs} ms and no other tier holds a usable value for ${JSON.stringify(unavailable[0])}${unavailable.length > 1 ? ` and ${unavailable.length - 1} more keys` : ""}`,
        );
      }
    }
    for (const r of results) {
      this.stats.read(tenant, namespace, !r.found ? "miss" : r.stale ? "stale" : "hit");
      if (r.found) this.stats.tierHit(tenant, namespace, r.tier!, r.stale);
    }
    return results;
  }

  private answer(key: string, entry: StoredEntry, tier: TierName, stale: boolean): Lookup {
    return { key, found: true, entry, tier, stale };
  }

  /** The answer for a key L1 could not give fresh, from what the lower tiers said; undefined = unavailable. */
  private settle(key: string, l1Stale: StoredEntry | undefined, lower: Lower, policy: NamespacePolicy, now: number): Lookup | undefined {
    if (lower.fresh) return this.answer(key, lower.fresh.entry, lower.fresh.tier, false);
    if (lower.failed) {
      // Stale-if-error: L3 is down or slow. Any value still within its grace is better than an error.
      const grace = Math.max(policy.staleIfErrorMs, policy.staleWhileRevalidateMs);
      const candidates: Array<{ entry: StoredEntry; tier: TierName }> = [];
      if (l1Stale) candidates.push({ entry: l1Stale, tier: "l1" });
      if (lower.stale) candidates.push(lower.stale);
      const usable = candidates.filter((c) => now < c.entry.expiresAt + grace).sort((a, b) => (a.entry.version > b.entry.version ? -1 : 1));
      if (usable.length > 0) return this.answer(key, usable[0].entry, usable[0].tier, true);
      return undefined;
    }
    // L3 answered: it is the tier of record, so an older L1 value is not served.
    if (lower.stale && now < lower.stale.entry.expiresAt + policy.staleWhileRevalidateMs) {
      return this.answer(key, lower.stale.entry, lower.stale.tier, true);
    }
    return { key, found: false, stale: false };
  }

  private epoch(nsId: string): number {
    return this.epochs.get(nsId) ?? 0;
  }

  /** One promise per key: joins the lookup in flight for the key, or starts one (batched) for the others. */
  private lower(tenant: string, namespace: string, keys: string[]): Promise<Lower>[] {
    const nsId = namespaceId(tenant, namespace);
    let inFlight = this.flights.get(nsId);
    if (!inFlight) this.flights.set(nsId, (inFlight = new Map()));
    const flights = inFlight;
    const mine = new Map<string, { promise: Promise<Lower>; resolve: (l: Lower) => void }>();
    const out = keys.map((key) => {
      const existing = flights.get(key);
      if (existing) {
        if (!mine.has(key)) this.stats.metrics.singleFlightJoins.inc();
        return existing;
      }
      let resolve!: (l: Lower) => void;
      const promise = new Promise<Lower>((r) => (resolve = r));
      flights.set(key, promise);
      mine.set(key, { promise, resolve });
      return promise;
    });
    if (mine.size > 0) {
      const loadKeys = [...mine.keys()];
      const finish = (results: Map<string, Lower>) => {
        for (const [key, { promise, resolve }] of mine) {
          resolve(results.get(key) ?? { failed: true });
          if (flights.get(key) === promise) flights.delete(key);
        }
        if (flights.size === 0 && this.flights.get(nsId) === flights) this.flights.delete(nsId);
      };
      this.load(tenant, namespace, loadKeys).then(finish, (error: unknown) => {
        this.deps.logger.warn({ err: error }, "cache: lookup of lower tiers failed");
        finish(new Map());
      });
    }
    return out;
  }

  /** Reads keys from L2 then L3, promoting what it finds. */
  private async load(tenant: string, namespace: string, keys: string[]): Promise<Map<string, Lower>> {
    const nsId = namespaceId(tenant, namespace);
    const epoch = this.epoch(nsId);
    const results = new Map<string, Lower>();
    let remaining = keys;
    const staleFromL2 = new Map<string, StoredEntry>();
    if (this.l2) {
      const reads = await this.l2.read(tenant, namespace, keys);
      remaining = [];
      let errors = 0;
      const now = this.now();
      keys.forEach((key, i) => {
        const read = reads[i];
        if (read.kind === "hit" && now < read.entry.expiresAt) {
          results.set(key, { fresh: { entry: read.entry, tier: "l2" }, failed: false });
        } else {
          if (read.kind === "hit") staleFromL2.set(key, read.entry);
          if (read.kind === "error") errors++;
          else this.stats.tierMiss(tenant, namespace, "l2");
          remaining.push(key);
        }
      });
      if (errors > 0 && this.l2.connected) this.stats.metrics.tierErrors.inc({ tier: "l2" }, errors);
    }
    if (remaining.length > 0) {
      try {
        const rows = await withTimeout(this.l3.read(tenant, namespace, remaining), this.deps.config.l3TimeoutMs, "postgres read");
        const byKey = new Map(rows.map((row) => [row.key, row]));
        const now = this.now();
        const promoteToL2: StoredEntry[] = [];
        for (const key of remaining) {
          const row = byKey.get(key);
          if (!row) {
            this.stats.tierMiss(tenant, namespace, "l3");
            results.set(key, { failed: false });
          } else if (now < row.expiresAt) {
            results.set(key, { fresh: { entry: row, tier: "l3" }, failed: false });
            promoteToL2.push(row);
          } else {
            this.stats.tierMiss(tenant, namespace, "l3");
            results.set(key, { stale: { entry: row, tier: "l3" }, failed: false });
          }
        }
        if (this.l2) for (const row of promoteToL2) void this.l2.promote(row, now);
      } catch (error) {
        this.stats.metrics.tierErrors.inc({ tier: "l3" });
        this.deps.logger.warn({ err: error }, "cache: Postgres (L3) read failed; stale-if-error applies");
        for (const key of remaining) {
          const stale = staleFromL2.get(key);
          results.set(key, { failed: true, stale: stale ? { entry: stale, tier: "l2" } : undefined });
        }
      }
    }
    // Promote into L1 unless the namespace saw an invalidation while we were reading.
    if (this.epoch(nsId) === epoch && !this.closed) {
      const now = this.now();
      for (const lower of results.values()) {
        const entry = lower.fresh?.entry ?? lower.stale?.entry;
        if (entry) this.l1.put(entry, now);
      }
    }
    return results;
  }

  // ---------------------------------------------------------------- writes

  private message(tenant: string, namespace: string, cause: InvalidationCauseName, selector?: Selector): Invalidation {
    const message: Invalidation = { id: randomUUID(), origin: this.replicaId, tenant, namespace, cause, selector, at: Date.now() };
    // Our own message comes back through NOTIFY and pub/sub: already applied, so ignored.
    this.seen.set(message.id, true);
    return message;
  }

  private wire(message: Invalidation): string {
    return JSON.stringify({ type: "inv", ...message } satisfies BusMessage);
  }

  private l3Unavailable(error: unknown, operation: string): never {
    if (error instanceof Error && /deadlock|serializ/i.test(error.message)) throw error;
    this.deps.logger.warn({ err: error }, `cache: ${operation} failed in Postgres (L3)`);
    throw new UnavailableError(`Postgres (L3) is unreachable: ${operation} was not applied to any tier; retry later`);
  }

  async set(input: {
    tenant: string;
    namespace: string;
    key: string;
    value: Uint8Array;
    contentType: string;
    ttlMs?: number;
    tags: string[];
  }): Promise<{ entry: StoredEntry; tiers: TierName[] }> {
    const policy = this.policy(input.namespace);
    const ttlMs = input.ttlMs && input.ttlMs > 0 ? input.ttlMs : policy.defaultTtlMs;
    const graceMs = Math.max(policy.staleWhileRevalidateMs, policy.staleIfErrorMs);
    const tags = [...new Set(input.tags)];
    const message = this.message(input.tenant, input.namespace, "set", { kind: "key", key: input.key });
    const nsId = namespaceId(input.tenant, input.namespace);
    const epoch = this.epoch(nsId);
    let entry: StoredEntry;
    try {
      // Before COMMIT (see l2.ts, Ordering): tombstone the key in L2 with the new version, so that
      // no replica re-reads the old value from L2 once it heard of this Set.
      entry = await this.l3.upsert({ ...input, tags, ttlMs, graceMs, notifyPayload: this.wire(message) }, async (e) => {
        if (this.l2) await this.l2.remove(e.tenant, e.namespace, [e.key], e.version);
      });
    } catch (error) {
      this.l3Unavailable(error, "Set");
    }
    // Another replica's invalidation of this namespace arrived while we wrote: its write may be
    // newer than ours, so L1 only drops the key (the next Get reads the tiers below).
    const raced = this.epoch(nsId) !== epoch;
    this.applyLocal(message);
    const now = this.now();
    if (!raced) this.l1.put(entry, now);
    const tiers: TierName[] = raced ? ["l3"] : ["l1", "l3"];
    if (this.l2 && (await this.l2.write(entry, now))) tiers.splice(tiers.length - 1, 0, "l2");
    await this.publishRedis({ type: "inv", ...message });
    return { entry, tiers };
  }

  async delete(tenant: string, namespace: string, key: string): Promise<boolean> {
    const count = await this.remove(tenant, namespace, { kind: "key", key }, "delete");
    return count > 0;
  }

  async invalidate(tenant: string, namespace: string, selector: Selector): Promise<number> {
    return this.remove(tenant, namespace, selector, "invalidate");
  }

  private async remove(tenant: string, namespace: string, selector: Selector, cause: "delete" | "invalidate"): Promise<number> {
    const message = this.message(tenant, namespace, cause, selector);
    let removed: { keys: string[]; version: bigint };
    // Tag members known to L2 (normally the same keys as L3's; read before the transaction so
    // that it is not held open for two Redis round trips).
    const tagged = this.l2 && selector.kind === "tag" ? await this.l2.tagMembers(tenant, namespace, selector.tag) : [];
    try {
      removed = await this.l3.remove(
        { tenant, namespace, selector, eventKind: cause === "delete" ? "cache.deleted" : "cache.invalidated", notifyPayload: this.wire(message) },
        // Before COMMIT, so the NOTIFY never arrives while L2 still holds a removed value.
        async (keys, version) => {
          if (!this.l2) return;
          const all = new Set([...keys, ...tagged]);
          if (selector.kind === "key") all.add(selector.key);
          await this.l2.remove(tenant, namespace, [...all], version, selector.kind === "tag" ? [selector.tag] : []);
        },
      );
    } catch (error) {
      this.l3Unavailable(error, cause === "delete" ? "Delete" : "Invalidate");
    }
    this.applyLocal(message);
    await this.publishRedis({ type: "inv", ...message });
    return removed.keys.length;
  }

  // ---------------------------------------------------------------- invalidation bus

  private async publishRedis(message: BusMessage): Promise<void> {
    if (!this.deps.redis || !this.l2?.connected) return;
    try {
      await withTimeout(this.deps.redis.publish(this.channel, JSON.stringify(message)), this.deps.config.l2TimeoutMs * 4, "redis PUBLISH");
    } catch {
      // NOTIFY (sent in the L3 transaction) carries the invalidation anyway.
      this.stats.metrics.tierErrors.inc({ tier: "l2" });
    }
  }

  private receive(payload: string, transport: "redis" | "postgres"): void {
    let message: BusMessage;
    try {
      message = JSON.parse(payload) as BusMessage;
    } catch {
      return;
    }
    if (!message || typeof message.id !== "string" || this.seen.has(message.id)) return;
    this.seen.set(message.id, true);
    if (message.type === "gen") {
      this.l2?.adoptGeneration(message.gen);
      return;
    }
    if (message.type !== "inv") return;
    this.stats.metrics.invalidationsReceived.inc({ transport });
    this.stats.metrics.propagation.observe(Math.max(0, Date.now() - message.at) / 1000);
    this.applyLocal(message);
  }

  /** Applies an invalidation to this replica's L1 and in-flight lookups, then tells the watchers. */
  private applyLocal(message: Invalidation): void {
    const { tenant, namespace, selector } = message;
    const nsId = namespaceId(tenant, namespace);
    this.epochs.set(nsId, this.epoch(nsId) + 1);
    const flights = this.flights.get(nsId);
    if (!selector) {
      this.l1.flush(tenant, namespace || undefined);
      flights?.clear();
    } else if (selector.kind === "key") {
      this.l1.delete(tenant, namespace, selector.key);
      flights?.delete(selector.key);
    } else if (selector.kind === "pattern") {
      const match = globMatcher(selector.pattern);
      this.l1.deleteWhere(tenant, namespace, (e) => match(e.key));
      flights?.clear();
    } else {
      this.l1.deleteWhere(tenant, namespace, (e) => e.tags.includes(selector.tag));
      flights?.clear();
    }
    this.emit(message);
  }

  /**
   * Forgets everything this replica learned from invalidation messages it may have missed: L1,
   * in-flight loads (their results could be older than a lost invalidation), and the watchers'
   * near-caches, which get FLUSH.
   */
  private dropLocalState(): void {
    this.l1.flush();
    for (const [nsId, flights] of this.flights) {
      this.epochs.set(nsId, this.epoch(nsId) + 1);
      flights.clear();
    }
    this.stats.metrics.resyncs.inc();
    for (const watcher of this.watchers) {
      watcher.queue = this.flushEvents(watcher.tenant, watcher.namespaces);
      watcher.wake?.();
    }
    this.deps.logger.warn("cache: invalidations may have been missed while LISTEN was down; L1 dropped, watchers sent FLUSH");
  }

  // ---------------------------------------------------------------- watchers

  private emit(message: Invalidation): void {
    for (const watcher of this.watchers) {
      if (watcher.tenant !== message.tenant) continue;
      if (watcher.namespaces && message.namespace && !watcher.namespaces.has(message.namespace)) continue;
      if (watcher.queue.length >= WATCH_QUEUE_LIMIT) {
        // Too slow a reader: replace the backlog with FLUSH events (what a near-cache needs anyway).
        watcher.queue = this.flushEvents(watcher.tenant, watcher.namespaces);
      } else {
        watcher.queue.push(message);
      }
      watcher.wake?.();
    }
  }

  private flushEvents(tenant: string, namespaces: Set<string> | null): Invalidation[] {
    const list = namespaces ? [...namespaces] : [""];
    return list.map((namespace) => ({ id: randomUUID(), origin: this.replicaId, tenant, namespace, cause: "flush" as const, at: Date.now() }));
  }

  /**
   * Invalidation events for a tenant's namespaces (all when `namespaces` is empty), starting
   * with FLUSH: one per watched namespace, or one with an empty namespace meaning all of them.
   */
  async *watch(tenant: string, namespaces: string[], signal: AbortSignal): AsyncGenerator<Invalidation> {
    if (this.watchers.size >= this.deps.config.maxWatchStreams) {
      throw new ResourceExhaustedError(`too many open WatchInvalidations streams on this replica (limit ${this.deps.config.maxWatchStreams}); retry later`);
    }
    if (!this.notificationsAvailable) {
      throw new UnavailableError("this replica cannot receive invalidations (neither Redis pub/sub nor Postgres LISTEN is up)");
    }
    const set = namespaces.length > 0 ? new Set(namespaces) : null;
    const watcher: Watcher = { tenant, namespaces: set, queue: this.flushEvents(tenant, set) };
    this.watchers.add(watcher);
    this.stats.metrics.watchers.set(this.watchers.size);
    const onAbort = () => watcher.wake?.();
    signal.addEventListener("abort", onAbort);
    try {
      while (!signal.aborted && !this.closed) {
        const next = watcher.queue.shift();
        if (next) {
          yield next;
          continue;
        }
        await new Promise<void>((resolve) => (watcher.wake = resolve));
        watcher.wake = undefined;
      }
    } finally {
      signal.removeEventListener("abort", onAbort);
      this.watchers.delete(watcher);
      this.stats.metrics.watchers.set(this.watchers.size);
    }
  }

  // ---------------------------------------------------------------- stats

  async statistics(tenant: string, namespace?: string) {
    let l3: Map<string, { entries: number; bytes: number }>;
    try {
      l3 = await withTimeout(this.l3.figures(tenant, namespace), Math.max(this.deps.config.l3TimeoutMs, 5_000), "postgres stats");
    } catch (error) {
      this.l3Unavailable(error, "GetStats");
    }
    const names = new Set<string>(namespace !== undefined ? [namespace] : [...l3.keys(), ...this.stats.namespaces(tenant), ...this.l1.namespaces(tenant)]);
    const sorted = [...names].sort();
    const out = [];
    for (const ns of sorted) {
      const counts = this.stats.get(tenant, ns);
      const l1 = this.l1.figures(tenant, ns);
      const l3Figures = l3.get(ns) ?? { entries: 0, bytes: 0 };
      const l2Entries = this.l2 ? await this.l2.approximateEntries(tenant, ns) : undefined;
      const avg = l3Figures.entries > 0 ? l3Figures.bytes / l3Figures.entries : 0;
      const tier = (name: TierName, available: boolean, figures: { bytes: number; entries: number; evictions: number }) => {
        const c = counts?.tiers[name] ?? { hits: 0, misses: 0 };
        return { tier: name, available, hits: c.hits, misses: c.misses, hitRatio: ratio(c.hits, c.misses), ...figures };
      };
      out.push({
        namespace: ns,
        tiers: [
          tier("l1", true, l1),
          // L2 bytes are estimated from L3's average entry size (Redis has no cheap per-prefix byte count).
          tier("l2", Boolean(this.l2?.available), { entries: l2Entries ?? 0, bytes: Math.round((l2Entries ?? 0) * avg), evictions: 0 }),
          tier("l3", true, { ...l3Figures, evictions: 0 }),
        ],
        hits: counts?.hits ?? 0,
        misses: counts?.misses ?? 0,
        hitRatio: ratio(counts?.hits ?? 0, counts?.misses ?? 0),
        staleHits: counts?.staleHits ?? 0,
        policy: this.policy(ns),
      });
    }
    return { namespaces: out, replica: this.replicaId, since: this.stats.since };
  }
}

function ratio(hits: number, misses: number): number {
  return hits + misses === 0 ? 0 : hits / (hits + misses);
}
