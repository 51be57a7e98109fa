import { Counter, Histogram, Registry, collectDefaultMetrics } from "prom-client";

/**
 * Prometheus metrics for one service, on its own registry so that each admin port shows its
 * own service even when the whole mesh runs in one process. Names follow go-grpc-prometheus.
 */
export interface ServiceMetrics {
  registry: Registry;
  started: Counter<"grpc_type" | "grpc_service" | "grpc_method">;
  handled: Counter<"grpc_type" | "grpc_service" | "grpc_method" | "grpc_code">;
  handlingSeconds: Histogram<"grpc_type" | "grpc_service" | "grpc_method">;
  /** The per-call recorder for one method (the same object for the same labels). */
  method(type: string, service: string, method: string): MethodMetrics;
}

type MethodLabels = Record<"grpc_type" | "grpc_service" | "grpc_method", string>;

/**
 * Records one method's calls into the grpc_server_* metrics, built once per method.
 *
 * prom-client hashes and validates the label object on every inc/observe (about 1 µs each,
 * three per call). Here the counters are plain numbers that are added to the prom-client
 * counters by their `collect` hook, which prom-client runs before every read (/metrics, get()),
 * so every read still sees exact values; the histogram uses a prom-client child bound to the
 * method's labels.
 */
export class MethodMetrics {
  /** Calls started since the last collect. */
  startedPending = 0;
  /** Calls handled since the last collect, by code name. */
  readonly handledPending = new Map<string, number>();
  private readonly handlingSeconds: { observe(value: number): void };
  /** Label objects with grpc_code, made once per code. */
  readonly handledLabels = new Map<string, MethodLabels & { grpc_code: string }>();

  constructor(
    readonly labels: MethodLabels,
    histogram: ServiceMetrics["handlingSeconds"],
  ) {
    this.handlingSeconds = histogram.labels(labels);
  }

  started(): void {
    this.startedPending++;
  }

  handled(code: string, seconds: number): void {
    this.handledPending.set(code, (this.handledPending.get(code) ?? 0) + 1);
    this.handlingSeconds.observe(seconds);
  }
}

export function createServiceMetrics(service: string, options: { processMetrics?: boolean } = {}): ServiceMetrics {
  const registry = new Registry();
  registry.setDefaultLabels({ orca_service: service });
  if (options.processMetrics ?? true) collectDefaultMetrics({ register: registry });
  const methods = new Map<string, MethodMetrics>();
  const handlingSeconds = new Histogram({
    name: "grpc_server_handling_seconds",
    help: "Time from the start of an RPC to its completion on the server.",
    labelNames: ["grpc_type", "grpc_service", "grpc_method"],
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [registry],
  });
  return {
    registry,
    started: new Counter({
      name: "grpc_server_started_total",
      help: "RPCs started on the server.",
      labelNames: ["grpc_type", "grpc_service", "grpc_method"],
      registers: [registry],
      collect() {
        for (const m of methods.values()) {
          if (m.startedPending === 0) continue;
          this.inc(m.labels, m.startedPending);
          m.startedPending = 0;
        }
      },
    }),
    handled: new Counter({
      name: "grpc_server_handled_total",
      help: "RPCs completed on the server, by status code.",
      labelNames: ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
      registers: [registry],
      collect() {
        for (const m of methods.values()) {
          for (const [code, count] of m.handledPending) {
            let labels = m.handledLabels.get(code);
            if (!labels) m.handledLabels.set(code, (labels = { ...m.labels, grpc_code: code }));
            this.inc(labels, count);
          }
          m.handledPending.clear();
        }
      },
    }),
    handlingSeconds,
    method(type, service, method) {
      const key = `${type}\n${service}\n${method}`;
      let m = methods.get(key);
      if (!m) {
        m = new MethodMetrics({ grpc_type: type, grpc_service: service, grpc_method: method }, handlingSeconds);
        methods.set(key, m);
      }
      return m;
    },
  };
}
