import { NodeSDK } from "@opentelemetry/sdk-node";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import type { SpanExporter } from "@opentelemetry/sdk-trace-base";
import { SimpleSpanProcessor, BatchSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { ATTR_SERVICE_NAME } from "@opentelemetry/semantic-conventions";

export interface TracingHandle {
  shutdown(): Promise<void>;
}

/**
 * Starts the OpenTelemetry SDK for this process: W3C trace context propagation and an
 * AsyncLocalStorage context manager, so the kit's spans nest across awaits. Spans are exported
 * over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set, to `exporter` when a test passes one,
 * and nowhere otherwise. No auto-instrumentation: under ESM it needs loader hooks, and the kit's
 * interceptors create the RPC spans themselves.
 */
export function startTracing(options: { serviceName: string; otlpEndpoint?: string; exporter?: SpanExporter }): TracingHandle {
  const spanProcessors = [];
  if (options.exporter) spanProcessors.push(new SimpleSpanProcessor(options.exporter));
  if (options.otlpEndpoint) {
    spanProcessors.push(new BatchSpanProcessor(new OTLPTraceExporter({ url: `${options.otlpEndpoint.replace(/\/$/, "")}/v1/traces` })));
  }
  const sdk = new NodeSDK({
    resource: resourceFromAttributes({ [ATTR_SERVICE_NAME]: options.serviceName }),
    spanProcessors,
    logRecordProcessors: [],
    autoDetectResources: false,
    instrumentations: [],
  });
  sdk.start();
  return { shutdown: () => sdk.shutdown() };
}
