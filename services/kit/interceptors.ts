import { Code, ConnectError, type Interceptor, type StreamResponse, type UnaryResponse } from "@connectrpc/connect";
import { SpanKind, SpanStatusCode, context as otelContext, propagation, trace, type Context, type Span } from "@opentelemetry/api";
import { callInfoKey, callScope, correlationIdFrom, type CallInfo } from "./call-scope.js";
import { toConnectError } from "./errors.js";
import type { Logger } from "./telemetry/logger.js";
import type { ServiceMetrics } from "./telemetry/metrics.js";

/**
 * The kit's server interceptors. They are plain Connect interceptors, so the same chain runs on
 * connect-node's path (gRPC-Web, Connect, streams) and on the kit's unary gRPC fast path.
 * Order (outermost first): context (correlation id, trace span, async scope) -> observe (one log
 * line, metrics) -> [auth, added by the security issue] -> errors (domain error -> Connect code).
 */

type AnyResponse = UnaryResponse | StreamResponse;

/** gRPC code names as go-grpc-prometheus writes them ("OK", "InvalidArgument", ...). */
export function codeName(code: Code | 0): string {
  return code === 0 ? "OK" : (Code[code] ?? "Unknown");
}

const headerGetter = {
  keys: (carrier: Headers) => [...carrier.keys()],
  get: (carrier: Headers, key: string) => carrier.get(key) ?? undefined,
};

/**
 * Runs `pull` for each element of a response stream inside the call's async scope, and reports
 * the end (undefined) or the error. Streams are iterated by the transport after the interceptor
 * returned, so without this the handler's generator would run outside the call's scope.
 */
async function* scopedStream<T>(
  source: AsyncIterable<T>,
  enter: <R>(fn: () => R) => R,
  onEnd: (error: unknown) => void,
): AsyncGenerator<T> {
  const it = source[Symbol.asyncIterator]();
  try {
    for (;;) {
      const result = await enter(() => it.next());
      if (result.done) break;
      yield result.value;
    }
  } catch (error) {
    onEnd(error);
    throw error;
  } finally {
    // A consumer that stops early (client cancel) ends the source too.
    await it.return?.();
  }
  onEnd(undefined);
}

function withStream(res: AnyResponse, enter: <R>(fn: () => R) => R, onEnd: (error: unknown) => void): AnyResponse {
  if (!res.stream) return res;
  return { ...res, message: scopedStream(res.message, enter, onEnd) };
}

/** Correlation id, server span and async scope for the whole call. */
export function contextInterceptor(serviceName: string): Interceptor {
  const tracer = trace.getTracer("orca-kit");
  return (next) => async (req) => {
    const correlationId = correlationIdFrom(req.header.get("x-request-id"), req.header.get("traceparent"));
    const info: CallInfo = { correlationId };
    req.contextValues.set(callInfoKey, info);
    const parent = propagation.extract(otelContext.active(), req.header, headerGetter);
    const span = tracer.startSpan(
      `${req.service.typeName}/${req.method.name}`,
      {
        kind: SpanKind.SERVER,
        attributes: {
          "rpc.system": "grpc",
          "rpc.service": req.service.typeName,
          "rpc.method": req.method.name,
          "orca.service": serviceName,
          "orca.correlation_id": correlationId,
        },
      },
      parent,
    );
    const spanContext: Context = trace.setSpan(parent, span);
    const enter = <R>(fn: () => R): R => callScope.run(info, () => otelContext.with(spanContext, fn));
    try {
      const res = await enter(() => next(req));
      res.header.set("x-request-id", correlationId);
      if (!res.stream) endSpan(span, undefined);
      return withStream(res, enter, (error) => endSpan(span, error));
    } catch (error) {
      endSpan(span, error);
      if (error instanceof ConnectError) error.metadata.set("x-request-id", correlationId);
      throw error;
    }
  };
}

function endSpan(span: Span, error: unknown): void {
  const code = error === undefined ? 0 : ConnectError.from(error).code;
  span.setAttribute("rpc.grpc.status_code", code);
  if (code !== 0) span.setStatus({ code: SpanStatusCode.ERROR, message: codeName(code) });
  span.end();
}

/** One log line and the grpc_server_* metrics per call. Never logs payloads or headers. */
export function observeInterceptor(deps: { logger: Logger; metrics: ServiceMetrics }): Interceptor {
  const { logger, metrics } = deps;
  return (next) => async (req) => {
    const labels = {
      grpc_type: req.method.methodKind,
      grpc_service: req.service.typeName,
      grpc_method: req.method.name,
    };
    metrics.started.inc(labels);
    const startedAt = performance.now();
    const finish = (error: unknown) => {
      const seconds = (performance.now() - startedAt) / 1000;
      const code = error === undefined ? 0 : ConnectError.from(error).code;
      metrics.handled.inc({ ...labels, grpc_code: codeName(code) });
      metrics.handlingSeconds.observe(labels, seconds);
      const line = {
        method: `${req.service.typeName}/${req.method.name}`,
        code: codeName(code),
        durationMs: Math.round(seconds * 1e6) / 1e3,
        correlationId: req.contextValues.get(callInfoKey)?.correlationId,
      };
      if (code === Code.Internal || code === Code.Unknown || code === Code.DataLoss) logger.error(line, "rpc");
      else logger.info(line, "rpc");
    };
    let res: AnyResponse;
    try {
      res = await next(req);
    } catch (error) {
      finish(error);
      throw error;
    }
    if (!res.stream) {
      finish(undefined);
      return res;
    }
    return withStream(res, (fn) => fn(), finish);
  };
}

/** Domain errors become their Connect codes; unexpected errors become Internal, logged here. */
export function errorInterceptor(logger: Logger): Interceptor {
  return (next) => async (req) => {
    const map = (error: unknown): ConnectError => {
      const correlationId = req.contextValues.get(callInfoKey)?.correlationId ?? "unknown";
      const mapped = toConnectError(error, correlationId);
      if (mapped.unexpected) {
        logger.error(
          { err: error, method: `${req.service.typeName}/${req.method.name}`, correlationId },
          "unexpected error in handler",
        );
      }
      return mapped.error;
    };
    let res: AnyResponse;
    try {
      res = await next(req);
    } catch (error) {
      throw map(error);
    }
    if (!res.stream) return res;
    const source = res.message;
    return {
      ...res,
      message: (async function* () {
        try {
          yield* source;
        } catch (error) {
          throw map(error);
        }
      })(),
    };
  };
}
