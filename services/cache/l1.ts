import { LRUCache } from "lru-cache";
import { entryId, entrySize, namespaceId, type StoredEntry } from "./entry.js";

export interface L1Figures {
  bytes: number;
  entries: number;
  evictions: number;
}

/**
 * L1: this replica's memory. An lru-cache bounded by bytes (maxSize + sizeCalculation), each
 * entry kept until its staleUntil (per-entry TTL) so a stale value can still be served within
 * its namespace's windows. A per-namespace index of keys makes pattern and tag invalidation
 * proportional to the namespace, not to the whole cache, and gives GetStats its bytes/entries.
 */
export class L1Tier {
  private readonly lru: LRUCache<string, StoredEntry>;
  private readonly byNamespace = new Map<string, { keys: Map<string, StoredEntry>; bytes: number; evictions: number }>();
  /** Called with the namespace id when LRU pressure evicts an entry (for metrics). */
  onEvict?: (nsId: string) => void;

  constructor(maxBytes: number) {
    this.lru = new LRUCache<string, StoredEntry>({
      maxSize: maxBytes,
      sizeCalculation: (entry) => entrySize(entry),
      // Expired entries are dropped when touched; the namespace index follows through dispose.
      ttlAutopurge: false,
      allowStale: false,
      updateAgeOnGet: false,
      dispose: (entry, _key, reason) => {
        const nsId = namespaceId(entry.tenant, entry.namespace);
        const ns = this.byNamespace.get(nsId);
        if (!ns) return;
        if (ns.keys.get(entry.key) === entry) {
          ns.keys.delete(entry.key);
          ns.bytes -= entrySize(entry);
        }
        if (reason === "evict") {
          ns.evictions++;
          this.onEvict?.(nsId);
        }
      },
    });
  }

  /** The entry, fresh or stale (callers decide), or undefined when absent or past staleUntil. */
  get(tenant: string, namespace: string, key: string): StoredEntry | undefined {
    return this.lru.get(entryId(tenant, namespace, key));
  }

  /** Stores the entry unless L1 already holds a newer version of the key. */
  put(entry: StoredEntry, now: number): void {
    const ttl = Math.floor(entry.staleUntil - now);
    if (ttl <= 0) return;
    const id = entryId(entry.tenant, entry.namespace, entry.key);
    const current = this.lru.peek(id);
    if (current && current.version > entry.version) return;
    const nsId = namespaceId(entry.tenant, entry.namespace);
    let ns = this.byNamespace.get(nsId);
    if (!ns) this.byNamespace.set(nsId, (ns = { keys: new Map(), bytes: 0, evictions: 0 }));
    this.lru.set(id, entry, { ttl });
    // An entry larger than the whole L1 is not stored (lru-cache refuses it silently).
    if (this.lru.peek(id) === entry) {
      ns.keys.set(entry.key, entry);
      ns.bytes += entrySize(entry);
    }
  }

  delete(tenant: string, namespace: string, key: string): void {
    this.lru.delete(entryId(tenant, namespace, key));
  }

  /** Drops every key of the namespace that `match` selects (all when omitted); returns how many. */
  deleteWhere(tenant: string, namespace: string, match?: (entry: StoredEntry) => boolean): number {
    const ns = this.byNamespace.get(namespaceId(tenant, namespace));
    if (!ns) return 0;
    let n = 0;
    for (const entry of [...ns.keys.values()]) {
      if (!match || match(entry)) {
        this.lru.delete(entryId(tenant, namespace, entry.key));
        n++;
      }
    }
    return n;
  }

  /** Drops everything of a tenant (all namespaces when `namespace` is undefined). */
  flush(tenant?: string, namespace?: string): void {
    if (tenant === undefined) {
      this.lru.clear();
      return;
    }
    for (const nsId of this.byNamespace.keys()) {
      const [ns, t] = nsId.split("\u0000");
      if (t === tenant && (namespace === undefined || ns === namespace)) this.deleteWhere(t, ns);
    }
  }

  figures(tenant: string, namespace: string): L1Figures {
    const ns = this.byNamespace.get(namespaceId(tenant, namespace));
    return { bytes: ns?.bytes ?? 0, entries: ns?.keys.size ?? 0, evictions: ns?.evictions ?? 0 };
  }

  /** Namespaces of a tenant that L1 has seen. */
  namespaces(tenant: string): string[] {
    const out: string[] = [];
    for (const nsId of this.byNamespace.keys()) {
      const [ns, t] = nsId.split("\u0000");
      if (t === tenant) out.push(ns);
    }
    return out;
  }

  get totalBytes(): number {
    return this.lru.calculatedSize;
  }

  get totalEntries(): number {
    return this.lru.size;
  }
}
