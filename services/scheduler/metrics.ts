import { Counter, Gauge, Histogram, type Registry } from "prom-client";

export interface SchedulerMetrics {
  /** Actual StartRun time minus scheduled time (seconds), SCHEDULED and CATCHUP firings. */
  lateness: Histogram<"kind">;
  /** Firings by final (non-PENDING) outcome and kind. */
  firings: Counter<"outcome" | "kind">;
  /** Event trigger dispatches by state. */
  dispatches: Counter<"state">;
  /** 1 while this replica is the elected firer. */
  leader: Gauge;
}

export function createSchedulerMetrics(registry: Registry): SchedulerMetrics {
  return {
    lateness: new Histogram({
      name: "orca_scheduler_fire_lateness_seconds",
      help: "Actual StartRun time minus the scheduled fire time",
      labelNames: ["kind"],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers: [registry],
    }),
    firings: new Counter({ name: "orca_scheduler_firings_total", help: "Firings by outcome", labelNames: ["outcome", "kind"], registers: [registry] }),
    dispatches: new Counter({ name: "orca_scheduler_trigger_dispatches_total", help: "Event trigger dispatches by state", labelNames: ["state"], registers: [registry] }),
    leader: new Gauge({ name: "orca_scheduler_is_firer", help: "1 while this replica is the elected firer", registers: [registry] }),
  };
}
