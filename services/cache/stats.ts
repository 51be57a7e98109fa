import { Counter, Gauge, Histogram, type Registry } from "prom-client";
import { namespaceId, type TierName } from "./entry.js";

export interface Counts {
  hits: number;
  misses: number;
}

export interface NamespaceCounts {
  tiers: Record<TierName, Counts>;
  hits: number;
  misses: number;
  staleHits: number;
}

/**
 * Per-namespace counters of this replica since it started (GetStats), and the Prometheus
 * metrics on the service's registry. Prometheus labels carry the tier, never the namespace
 * (namespaces are user-chosen: unbounded cardinality); GetStats has the per-namespace view.
 *
 * Counting rules: a tier's hit is a read it answered (fresh or stale); a tier's miss is a lookup
 * that reached it and found nothing usable. Concurrent misses joined by single flight reach the
 * lower tiers once, so L2/L3 count one lookup for them.
 */
export class CacheStats {
  readonly since = new Date();
  private readonly byNamespace = new Map<string, NamespaceCounts>();
  readonly metrics;

  constructor(registry: Registry, figures: { l1Bytes: () => number; l1Entries: () => number; l2Available: () => number }) {
    this.metrics = {
      lookups: new Counter({
        name: "orca_cache_lookups_total",
        help: "Cache lookups per tier and result (hit, stale, miss).",
        labelNames: ["tier", "result"],
        registers: [registry],
      }),
      requests: new Counter({
        name: "orca_cache_reads_total",
        help: "Keys read (Get and BatchGet), by outcome: hit, stale, miss.",
        labelNames: ["result"],
        registers: [registry],
      }),
      evictions: new Counter({ name: "orca_cache_l1_evictions_total", help: "L1 entries evicted for lack of space.", registers: [registry] }),
      tierErrors: new Counter({
        name: "orca_cache_tier_errors_total",
        help: "Failed or timed-out calls to a lower tier (answered as misses or stale values).",
        labelNames: ["tier"],
        registers: [registry],
      }),
      singleFlightJoins: new Counter({
        name: "orca_cache_single_flight_joins_total",
        help: "Misses that joined a lookup already in flight for the same key instead of starting one.",
        registers: [registry],
      }),
      invalidationsReceived: new Counter({
        name: "orca_cache_invalidations_received_total",
        help: "Invalidation events from other replicas applied to L1, by transport.",
        labelNames: ["transport"],
        registers: [registry],
      }),
      propagation: new Histogram({
        name: "orca_cache_invalidation_propagation_seconds",
        help: "Time from an invalidation on one replica to its application on another (replica clocks).",
        buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
        registers: [registry],
      }),
      resyncs: new Counter({
        name: "orca_cache_l1_resyncs_total",
        help: "Times L1 was dropped because invalidations may have been missed (LISTEN reconnected without Redis).",
        registers: [registry],
      }),
      purged: new Counter({ name: "orca_cache_l3_purged_total", help: "Expired L3 rows purged.", registers: [registry] }),
      watchers: new Gauge({ name: "orca_cache_watch_streams", help: "Open WatchInvalidations streams.", registers: [registry] }),
      l1Bytes: new Gauge({
        name: "orca_cache_l1_bytes",
        help: "Bytes held in L1 (this replica).",
        registers: [registry],
        collect() {
          this.set(figures.l1Bytes());
        },
      }),
      l1Entries: new Gauge({
        name: "orca_cache_l1_entries",
        help: "Entries held in L1 (this replica).",
        registers: [registry],
        collect() {
          this.set(figures.l1Entries());
        },
      }),
      l2Available: new Gauge({
        name: "orca_cache_l2_available",
        help: "1 when Redis (L2) is in use, 0 when it is down, being recovered or not configured.",
        registers: [registry],
        collect() {
          this.set(figures.l2Available());
        },
      }),
    };
  }

  private ns(tenant: string, namespace: string): NamespaceCounts {
    const id = namespaceId(tenant, namespace);
    let counts = this.byNamespace.get(id);
    if (!counts) {
      counts = { tiers: { l1: { hits: 0, misses: 0 }, l2: { hits: 0, misses: 0 }, l3: { hits: 0, misses: 0 } }, hits: 0, misses: 0, staleHits: 0 };
      this.byNamespace.set(id, counts);
    }
    return counts;
  }

  tierHit(tenant: string, namespace: string, tier: TierName, stale: boolean): void {
    this.ns(tenant, namespace).tiers[tier].hits++;
    this.metrics.lookups.inc({ tier, result: stale ? "stale" : "hit" });
  }

  tierMiss(tenant: string, namespace: string, tier: TierName, n = 1): void {
    this.ns(tenant, namespace).tiers[tier].misses += n;
    this.metrics.lookups.inc({ tier, result: "miss" }, n);
  }

  read(tenant: string, namespace: string, outcome: "hit" | "stale" | "miss"): void {
    const counts = this.ns(tenant, namespace);
    if (outcome === "miss") counts.misses++;
    else counts.hits++;
    if (outcome === "stale") counts.staleHits++;
    this.metrics.requests.inc({ result: outcome });
  }

  get(tenant: string, namespace: string): NamespaceCounts | undefined {
    return this.byNamespace.get(namespaceId(tenant, namespace));
  }

  namespaces(tenant: string): string[] {
    const out: string[] = [];
    for (const id of this.byNamespace.keys()) {
      const [ns, t] = id.split("\u0000");
      if (t === tenant) out.push(ns);
    }
    return out;
  }
}
