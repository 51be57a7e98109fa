import { Counter, Gauge, Histogram, type Registry } from "prom-client";

/** The Lock service's metrics, on the service's own registry (served on its admin port). */
export interface LockMetrics {
  grants: Counter<"mode">;
  waitSeconds: Histogram<string>;
  expiries: Counter<string>;
  localWaiters: Gauge<string>;
}

export function createLockMetrics(registry: Registry, queueDepth: () => Promise<number>): LockMetrics {
  new Gauge({
    name: "orca_lock_queue_depth",
    help: "Acquire calls waiting in wait queues, across all replicas (read from the database at scrape time)",
    registers: [registry],
    async collect() {
      try {
        this.set(await queueDepth());
      } catch {
        /* database down: keep the last value; /readyz reports the outage */
      }
    },
  });
  return {
    grants: new Counter({
      name: "orca_lock_grants_total",
      help: "Leases granted, by mode: immediate (no wait) or queued (handed to a waiter)",
      labelNames: ["mode"],
      registers: [registry],
    }),
    waitSeconds: new Histogram({
      name: "orca_lock_wait_seconds",
      help: "Time an Acquire waited in the queue before its grant (0 for immediate grants)",
      buckets: [0, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 600],
      registers: [registry],
    }),
    expiries: new Counter({
      name: "orca_lock_expiries_total",
      help: "Leases that reached their TTL without being extended and were reaped",
      registers: [registry],
    }),
    localWaiters: new Gauge({
      name: "orca_lock_local_waiters",
      help: "Acquire calls waiting on this replica",
      registers: [registry],
    }),
  };
}
