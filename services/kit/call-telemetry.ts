import type { DescMethod, DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, type ContextValues } from "@connectrpc/connect";
import { SpanKind, SpanStatusCode, context as otelContext, propagation, trace, type Context, type Span, type SpanOptions, type Tracer } from "@opentelemetry/api";
import { callInfoKey, callScope, correlationIdFrom, type CallInfo } from "./call-scope.js";
import { toConnectError } from "./errors.js";
import { scalarLineLogger, type Logger } from "./telemetry/logger.js";
import { RpcLine } from "./telemetry/rpc-line.js";
import type { MethodMetrics, ServiceMetrics } from "./telemetry/metrics.js";

/**
 * What the kit does around every call it serves, as plain synchronous steps: correlation id,
 * server span and async scope at the start; at the end the x-request-id response header, the
 * span's status, the grpc_server_* metrics, one log line, and domain errors mapped to their
 * Connect codes. connect-node's path runs them from interceptors (interceptors.ts); the unary
 * gRPC fast path calls them directly around the handler, which spares it an interceptor frame,
 * a closure and a promise per step on every call. Both paths log, count and trace the same.
 */

/** The parts of a call (Connect request or fast-path call) that the steps read. */
export interface ServedCall {
  service: DescService;
  method: DescMethod;
  header: Headers;
  contextValues: ContextValues;
}

/** One call in flight, from begin() to finish(). */
export interface CallRecord {
  readonly info: CallInfo;
  readonly span: Span;
  /**
   * The OTel context to enter around the handler, or undefined: a span that records nothing
   * (no SDK exporter), with no trace or baggage from the caller, gives code inside the call
   * nothing to read or pass on, so OTel's own AsyncLocalStorage is not entered for it.
   */
  readonly spanContext: Context | undefined;
  readonly method: ObservedMethod;
  readonly startedAt: number;
}

interface ObservedMethod {
  /** "package.Service/Method", as logged. */
  name: string;
  /** The span name and the method's constant attributes (the SDK copies them). */
  spanOptions: SpanOptions;
  metrics: MethodMetrics;
  /** The rpc line per code, from a child logger with `method` and `code` bound (see RpcLine). */
  logByCode: Map<Code | 0, RpcLine>;
}

/** gRPC code names as go-grpc-prometheus writes them ("OK", "InvalidArgument", ...). */
export function codeName(code: Code | 0): string {
  return code === 0 ? "OK" : (Code[code] ?? "Unknown");
}

const headerGetter = {
  keys: (carrier: Headers) => [...carrier.keys()],
  get: (carrier: Headers, key: string) => carrier.get(key) ?? undefined,
};

export class CallTelemetry {
  private readonly tracer: Tracer = trace.getTracer("orca-kit");
  private readonly logger: Logger;
  /** The per-call line holds only scalar fields, so it skips pino's redaction (see scalarLineLogger). */
  private readonly rpcLog: Logger;
  private readonly metrics: ServiceMetrics;
  private readonly serviceName: string;
  // Label objects, metric handles, span options and names, made once per method, not per call.
  private readonly byMethod = new WeakMap<DescMethod, ObservedMethod>();

  constructor(options: { serviceName: string; logger: Logger; metrics: ServiceMetrics }) {
    this.serviceName = options.serviceName;
    this.logger = options.logger;
    this.rpcLog = scalarLineLogger(options.logger);
    this.metrics = options.metrics;
  }

  /** The call starts: its correlation id (in `contextValues`), its span, the started counter. */
  begin(call: ServedCall): CallRecord {
    const method = this.observed(call.service, call.method);
    method.metrics.started();
    const info: CallInfo = { correlationId: correlationIdFrom(call.header.get("x-request-id"), call.header.get("traceparent")) };
    call.contextValues.set(callInfoKey, info);
    const active = otelContext.active();
    const parent = propagation.extract(active, call.header, headerGetter);
    const span = this.tracer.startSpan(method.name, method.spanOptions, parent);
    span.setAttribute("orca.correlation_id", info.correlationId);
    const spanContext = span.isRecording() || parent !== active ? trace.setSpan(parent, span) : undefined;
    return { info, span, spanContext, method, startedAt: performance.now() };
  }

  /** fn(a, b) inside the call's async scope and, when it has one, its trace context. */
  run<A, B, R>(record: CallRecord, fn: (a: A, b: B) => R, a: A, b: B): R {
    const spanContext = record.spanContext;
    if (spanContext === undefined) return callScope.run(record.info, fn, a, b);
    return callScope.run(record.info, () => otelContext.with(spanContext, fn, undefined, a, b));
  }

  /** An `enter` for code that runs later on the call's behalf (the elements of a response stream). */
  enter(record: CallRecord): <R>(fn: () => R) => R {
    return (fn) => this.run(record, fn as (a: undefined, b: undefined) => ReturnType<typeof fn>, undefined, undefined);
  }

  /** The handler answered: the correlation id goes back in the response header. */
  answered(record: CallRecord, responseHeader: Headers): void {
    responseHeader.set("x-request-id", record.info.correlationId);
  }

  /**
   * The handler failed: the error mapped to its Connect code (unexpected errors are logged with
   * their stack here and answered Internal with the correlation id, never the stack), with the
   * correlation id in its metadata. Returns what the client is to receive.
   */
  failed(call: ServedCall, record: CallRecord, error: unknown): ConnectError {
    const mapped = mapError(this.logger, call, error);
    mapped.metadata.set("x-request-id", record.info.correlationId);
    return mapped;
  }

  /** The call is over (for a stream, its last element): span status, metrics, the log line. */
  finish(record: CallRecord, error: unknown): void {
    const seconds = (performance.now() - record.startedAt) / 1000;
    const code = error === undefined ? 0 : ConnectError.from(error).code;
    const name = codeName(code);
    const span = record.span;
    span.setAttribute("rpc.grpc.status_code", code);
    if (code !== 0) span.setStatus({ code: SpanStatusCode.ERROR, message: name });
    span.end();
    const method = record.method;
    method.metrics.handled(name, seconds);
    let log = method.logByCode.get(code);
    if (log === undefined) method.logByCode.set(code, (log = new RpcLine(this.rpcLog.child({ method: method.name, code: name }))));
    const durationMicros = Math.round(seconds * 1e6);
    if (code === Code.Internal || code === Code.Unknown || code === Code.DataLoss) log.error(durationMicros, record.info.correlationId);
    else log.info(durationMicros, record.info.correlationId);
  }

  private observed(service: DescService, descMethod: DescMethod): ObservedMethod {
    let method = this.byMethod.get(descMethod);
    if (method === undefined) {
      method = {
        name: `${service.typeName}/${descMethod.name}`,
        spanOptions: {
          kind: SpanKind.SERVER,
          attributes: {
            "rpc.system": "grpc",
            "rpc.service": service.typeName,
            "rpc.method": descMethod.name,
            "orca.service": this.serviceName,
          },
        },
        metrics: this.metrics.method(descMethod.methodKind, service.typeName, descMethod.name),
        logByCode: new Map(),
      };
      this.byMethod.set(descMethod, method);
    }
    return method;
  }
}

/** A domain or unexpected error as the client is to see it; unexpected ones are logged here. */
export function mapError(logger: Logger, call: { service: DescService; method: DescMethod; contextValues: ContextValues }, error: unknown): ConnectError {
  const correlationId = call.contextValues.get(callInfoKey)?.correlationId ?? "unknown";
  const mapped = toConnectError(error, correlationId);
  if (mapped.unexpected) {
    logger.error({ err: error, method: `${call.service.typeName}/${call.method.name}`, correlationId }, "unexpected error in handler");
  }
  return mapped.error;
}
