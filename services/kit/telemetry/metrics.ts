import { Counter, Registry, collectDefaultMetrics, type Metric } from "prom-client";

/**
 * Prometheus metrics for one service, on its own registry so that each admin port shows its
 * own service even when the whole mesh runs in one process. Names follow go-grpc-prometheus.
 */
export interface ServiceMetrics {
  registry: Registry;
  started: Counter<"grpc_type" | "grpc_service" | "grpc_method">;
  handled: Counter<"grpc_type" | "grpc_service" | "grpc_method" | "grpc_code">;
  handlingSeconds: HandlingSecondsHistogram;
  /** The per-call recorder for one method (the same object for the same labels). */
  method(type: string, service: string, method: string): MethodMetrics;
}

type MethodLabels = Record<"grpc_type" | "grpc_service" | "grpc_method", string>;

const HANDLING_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/**
 * Records one method's calls into the grpc_server_* metrics.
 *
 * prom-client builds, validates and hashes a label object on every inc() and observe() (1 to
 * 2 µs each, three per call, more than the rest of the bookkeeping of a call). Here each method
 * has plain numbers: the counters are added to the prom-client counters by their `collect` hook,
 * which prom-client runs before every read (/metrics, get()), and the histogram is exposed by
 * HandlingSecondsHistogram; every read sees exact values.
 */
export class MethodMetrics {
  /** Calls started since the last collect. */
  startedPending = 0;
  /** Calls handled since the last collect, by code name. */
  readonly handledPending = new Map<string, number>();
  /** Label objects with grpc_code, made once per code. */
  readonly handledLabels = new Map<string, MethodLabels & { grpc_code: string }>();
  /** grpc_server_handling_seconds: observations per bucket (not cumulative; the last is +Inf). */
  readonly bucketCounts = new Float64Array(HANDLING_BUCKETS.length + 1);
  secondsSum = 0;
  secondsCount = 0;

  constructor(readonly labels: MethodLabels) {}

  started(): void {
    this.startedPending++;
  }

  handled(code: string, seconds: number): void {
    this.handledPending.set(code, (this.handledPending.get(code) ?? 0) + 1);
    this.observeSeconds(seconds);
  }

  observeSeconds(seconds: number): void {
    let bucket = 0;
    while (bucket < HANDLING_BUCKETS.length && seconds > HANDLING_BUCKETS[bucket]) bucket++;
    this.bucketCounts[bucket]++;
    this.secondsSum += seconds;
    this.secondsCount++;
  }
}

/**
 * grpc_server_handling_seconds, read from the methods' MethodMetrics. It is registered like any
 * prom-client metric and answers get() and getForPromString() in prom-client's own shapes, so
 * the exposition text is the same as a prom-client Histogram's.
 */
export class HandlingSecondsHistogram {
  readonly name = "grpc_server_handling_seconds";
  readonly help = "Time from the start of an RPC to its completion on the server.";
  readonly type = "histogram" as const;
  readonly aggregator = "sum" as const;
  readonly labelNames = ["grpc_type", "grpc_service", "grpc_method"];
  readonly upperBounds = HANDLING_BUCKETS;

  constructor(private readonly methods: Map<string, MethodMetrics>) {}

  /** prom-client's Histogram#observe, for callers outside the interceptors. */
  observe(labels: MethodLabels, seconds: number): void {
    if (!Number.isFinite(seconds)) throw new TypeError(`Value is not a valid number: ${seconds}`);
    methodMetrics(this.methods, labels.grpc_type, labels.grpc_service, labels.grpc_method).observeSeconds(seconds);
  }

  async getForPromString(): Promise<HistogramData> {
    const values: HistogramValue[] = [];
    const bucket = `${this.name}_bucket`;
    for (const m of this.methods.values()) {
      if (m.secondsCount === 0) continue;
      let cumulative = 0;
      HANDLING_BUCKETS.forEach((le, i) => {
        cumulative += m.bucketCounts[i];
        values.push({ labels: { le }, sharedLabels: m.labels, value: cumulative, metricName: bucket, exemplar: null });
      });
      values.push({ labels: { le: "+Inf" }, sharedLabels: m.labels, value: m.secondsCount, metricName: bucket, exemplar: null });
      values.push({ labels: {}, sharedLabels: m.labels, value: m.secondsSum, metricName: `${this.name}_sum` });
      values.push({ labels: {}, sharedLabels: m.labels, value: m.secondsCount, metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator };
  }

  /** The values with the method labels merged in, as prom-client's Histogram#get() returns them. */
  async get(): Promise<HistogramData> {
    const data = await this.getForPromString();
    data.values = data.values.map(({ labels, sharedLabels, ...rest }) => ({ ...rest, labels: { ...labels, ...sharedLabels } }));
    return data;
  }

  reset(): void {
    for (const m of this.methods.values()) {
      m.bucketCounts.fill(0);
      m.secondsSum = 0;
      m.secondsCount = 0;
    }
  }
}

interface HistogramValue {
  labels: Record<string, string | number>;
  sharedLabels?: MethodLabels;
  value: number;
  metricName: string;
  exemplar?: null;
}

interface HistogramData {
  name: string;
  help: string;
  type: "histogram";
  values: HistogramValue[];
  aggregator: "sum";
}

function methodMetrics(methods: Map<string, MethodMetrics>, type: string, service: string, method: string): MethodMetrics {
  const key = `${type}\n${service}\n${method}`;
  let m = methods.get(key);
  if (!m) methods.set(key, (m = new MethodMetrics({ grpc_type: type, grpc_service: service, grpc_method: method })));
  return m;
}

export function createServiceMetrics(service: string, options: { processMetrics?: boolean } = {}): ServiceMetrics {
  const registry = new Registry();
  registry.setDefaultLabels({ orca_service: service });
  if (options.processMetrics ?? true) collectDefaultMetrics({ register: registry });
  const methods = new Map<string, MethodMetrics>();
  const handlingSeconds = new HandlingSecondsHistogram(methods);
  const metrics: ServiceMetrics = {
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
    method: (type, service, method) => methodMetrics(methods, type, service, method),
  };
  // prom-client registers metrics as they are made; the histogram comes after the counters.
  registry.registerMetric(handlingSeconds as unknown as Metric);
  return metrics;
}
