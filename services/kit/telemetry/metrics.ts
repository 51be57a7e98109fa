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
}

export function createServiceMetrics(service: string, options: { processMetrics?: boolean } = {}): ServiceMetrics {
  const registry = new Registry();
  registry.setDefaultLabels({ orca_service: service });
  if (options.processMetrics ?? true) collectDefaultMetrics({ register: registry });
  return {
    registry,
    started: new Counter({
      name: "grpc_server_started_total",
      help: "RPCs started on the server.",
      labelNames: ["grpc_type", "grpc_service", "grpc_method"],
      registers: [registry],
    }),
    handled: new Counter({
      name: "grpc_server_handled_total",
      help: "RPCs completed on the server, by status code.",
      labelNames: ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
      registers: [registry],
    }),
    handlingSeconds: new Histogram({
      name: "grpc_server_handling_seconds",
      help: "Time from the start of an RPC to its completion on the server.",
      labelNames: ["grpc_type", "grpc_service", "grpc_method"],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry],
    }),
  };
}
