import { durationFromMs } from "@bufbuild/protobuf/wkt";
import type { Client } from "@connectrpc/connect";
import { CacheService, InvalidationCause, type InvalidationEvent, type LookupResult } from "../../gen/orca/cache/v1/cache_pb.js";
import { createOrcaClient, type ClientOptions } from "../kit/clients/factory.js";
import { globMatcher } from "./glob.js";

/**
 * Typed-client helpers for the Cache (exported for users; re-exported by the clients entry point):
 *   const cache = createCacheClient({ baseUrl: "http://127.0.0.1:50055" });
 *   const memo = new CacheHelper(cache, { namespace: "reports" });
 *   const bytes = await memo.getOrSet("2024-q1", () => render(), 60_000);
 *   const near = new NearCache(cache, { namespaces: ["reports"] });   // opt-in
 *   await near.ready();  const r = await near.get("reports", "2024-q1");
 */

export type CacheClient = Client<typeof CacheService>;

export function createCacheClient(options: ClientOptions): CacheClient {
  return createOrcaClient(CacheService, { target: "cache", ...options });
}

export type Loaded = Uint8Array | { value: Uint8Array; contentType?: string; tags?: string[] };

/**
 * getOrSet with single flight on the client: concurrent calls for one key in this process share
 * one Get and, on a miss, one loader call and one Set. A stale answer (the server's
 * stale-while-revalidate or stale-if-error window) is returned at once and the value is reloaded
 * in the background, once.
 */
export class CacheHelper {
  private readonly inFlight = new Map<string, Promise<Uint8Array>>();
  private readonly refreshing = new Set<string>();

  constructor(
    private readonly client: CacheClient,
    private readonly options: { namespace: string; tenant?: string },
  ) {}

  getOrSet(key: string, loader: () => Promise<Loaded> | Loaded, ttlMs?: number): Promise<Uint8Array> {
    const existing = this.inFlight.get(key);
    if (existing) return existing;
    const promise = (async () => {
      const { result } = await this.client.get({ tenant: this.options.tenant, namespace: this.options.namespace, key });
      if (result?.found && result.entry) {
        if (result.stale) this.refresh(key, loader, ttlMs);
        return result.entry.value;
      }
      return this.load(key, loader, ttlMs);
    })().finally(() => this.inFlight.delete(key));
    this.inFlight.set(key, promise);
    return promise;
  }

  private async load(key: string, loader: () => Promise<Loaded> | Loaded, ttlMs?: number): Promise<Uint8Array> {
    const loaded = await loader();
    const { value, contentType, tags } = loaded instanceof Uint8Array ? { value: loaded, contentType: undefined, tags: undefined } : loaded;
    await this.client.set({
      tenant: this.options.tenant,
      namespace: this.options.namespace,
      key,
      value,
      contentType: contentType ?? "",
      tags: tags ?? [],
      ttl: ttlMs ? durationFromMs(ttlMs) : undefined,
    });
    return value;
  }

  private refresh(key: string, loader: () => Promise<Loaded> | Loaded, ttlMs?: number): void {
    if (this.refreshing.has(key)) return;
    this.refreshing.add(key);
    void this.load(key, loader, ttlMs)
      .catch(() => undefined)
      .finally(() => this.refreshing.delete(key));
  }
}

interface NearEntry {
  result: LookupResult;
  tags: string[];
  /** Client clock; the entry is also bounded by maxAgeMs so clock skew cannot keep it forever. */
  until: number;
}

/**
 * An opt-in near-cache: Get results kept in this process and dropped by the server's
 * WatchInvalidations stream. Guarantees (tested): once the invalidation event for a key has been
 * delivered to this near-cache, it never serves the old value again:
 *  - it serves nothing until the stream's first FLUSH arrived (from then on no event is missed),
 *    and drops everything when the stream ends or fails (then reconnects, and waits for FLUSH again);
 *  - a Get that was in flight while an invalidation of its namespace arrived is not cached, and is
 *    repeated (up to 3 times) so that its answer is not older than the event;
 *  - stale answers are never cached.
 * Gets go through the same client (same HTTP/2 connection, so the same replica that streams the
 * events): that replica applies an invalidation to its own L1 before it sends the event.
 */
export class NearCache {
  private readonly entries = new Map<string, NearEntry>();
  private readonly epochs = new Map<string, number>();
  private globalEpoch = 0;
  private live = false;
  private closed = false;
  private abort?: AbortController;
  private readyWaiters: Array<() => void> = [];
  private readonly loop: Promise<void>;
  /** Counters, for tests and metrics. */
  readonly counters = { nearHits: 0, remoteGets: 0, events: 0, flushes: 0, reconnects: 0 };
  /** Called after each event was applied. */
  onEvent?: (event: InvalidationEvent) => void;

  constructor(
    private readonly client: CacheClient,
    private readonly options: { tenant?: string; namespaces?: string[]; maxEntries?: number; maxAgeMs?: number; reconnectDelayMs?: number } = {},
  ) {
    this.loop = this.run();
  }

  /** Resolves once the stream delivered its first FLUSH (the near-cache serves from then on). */
  ready(): Promise<void> {
    if (this.live) return Promise.resolve();
    return new Promise((resolve) => this.readyWaiters.push(resolve));
  }

  get isLive(): boolean {
    return this.live;
  }

  private id(namespace: string, key: string): string {
    return `${namespace}\u0000${key}`;
  }

  private bump(namespace: string): void {
    this.epochs.set(namespace, (this.epochs.get(namespace) ?? 0) + 1);
  }

  private dropAll(): void {
    this.entries.clear();
    this.globalEpoch++;
  }

  private async run(): Promise<void> {
    const watched = new Set(this.options.namespaces ?? []);
    while (!this.closed) {
      this.abort = new AbortController();
      const flushed = new Set<string>();
      try {
        const stream = this.client.watchInvalidations(
          { tenant: this.options.tenant, namespaces: this.options.namespaces ?? [] },
          { signal: this.abort.signal, timeoutMs: 0 },
        );
        for await (const { event } of stream) {
          if (!event) continue;
          this.apply(event);
          if (event.cause === InvalidationCause.FLUSH && !this.live) {
            flushed.add(event.namespace);
            if (event.namespace === "" || [...watched].every((ns) => flushed.has(ns))) {
              this.live = true;
              for (const resolve of this.readyWaiters.splice(0)) resolve();
            }
          }
          this.onEvent?.(event);
        }
      } catch {
        // Stream failed: fall through to drop and reconnect.
      }
      this.live = false;
      this.dropAll();
      if (this.closed) break;
      this.counters.reconnects++;
      await new Promise((r) => setTimeout(r, this.options.reconnectDelayMs ?? 500));
    }
  }

  private apply(event: InvalidationEvent): void {
    this.counters.events++;
    const ns = event.namespace;
    if (event.cause === InvalidationCause.FLUSH || !event.selector) {
      this.counters.flushes++;
      if (ns === "") this.dropAll();
      else {
        for (const id of [...this.entries.keys()]) if (id.startsWith(`${ns}\u0000`)) this.entries.delete(id);
        this.bump(ns);
      }
      return;
    }
    this.bump(ns);
    const s = event.selector.selector;
    if (s.case === "key") {
      this.entries.delete(this.id(ns, s.value));
      return;
    }
    let match: (key: string, entry: NearEntry) => boolean;
    if (s.case === "pattern") {
      const m = globMatcher(s.value);
      match = (key) => m(key);
    } else if (s.case === "tag") {
      const tag = s.value;
      match = (_key, entry) => entry.tags.includes(tag);
    } else {
      match = () => true;
    }
    for (const [id, entry] of [...this.entries]) {
      const [entryNs, key] = [id.slice(0, id.indexOf("\u0000")), id.slice(id.indexOf("\u0000") + 1)];
      if (entryNs === ns && match(key, entry)) this.entries.delete(id);
    }
  }

  /** The result for a key: from this process when cached and still valid, else from the server. */
  async get(namespace: string, key: string): Promise<LookupResult & { near: boolean }> {
    const id = this.id(namespace, key);
    const cached = this.entries.get(id);
    if (cached && this.live) {
      if (Date.now() < cached.until) {
        this.counters.nearHits++;
        return { ...cached.result, near: true };
      }
      this.entries.delete(id);
    }
    let last: LookupResult | undefined;
    for (let attempt = 0; attempt < 3; attempt++) {
      const epoch = this.epochs.get(namespace) ?? 0;
      const global = this.globalEpoch;
      const wasLive = this.live;
      this.counters.remoteGets++;
      const { result } = await this.client.get({ tenant: this.options.tenant, namespace, key });
      last = result;
      const unchanged = (this.epochs.get(namespace) ?? 0) === epoch && this.globalEpoch === global;
      if (!unchanged) continue; // an invalidation arrived meanwhile: the answer may predate it
      if (wasLive && this.live && result?.found && !result.stale && result.entry) this.store(id, result);
      break;
    }
    return { ...(last as LookupResult), near: false };
  }

  private store(id: string, result: LookupResult): void {
    const maxEntries = this.options.maxEntries ?? 10_000;
    if (this.entries.size >= maxEntries) {
      // Map keeps insertion order: drop the oldest.
      const oldest = this.entries.keys().next().value;
      if (oldest !== undefined) this.entries.delete(oldest);
    }
    const expires = result.entry?.expiresAt ? Number(result.entry.expiresAt.seconds) * 1000 + result.entry.expiresAt.nanos / 1e6 : Infinity;
    const until = Math.min(expires, Date.now() + (this.options.maxAgeMs ?? 60_000));
    this.entries.set(id, { result, tags: result.entry?.tags ?? [], until });
  }

  /** Drops one key locally (e.g. after this process wrote it). */
  forget(namespace: string, key: string): void {
    this.entries.delete(this.id(namespace, key));
    this.bump(namespace);
  }

  async close(): Promise<void> {
    this.closed = true;
    this.abort?.abort();
    await this.loop.catch(() => undefined);
    this.dropAll();
  }
}
