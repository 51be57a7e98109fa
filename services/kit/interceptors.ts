import type { DescMethod, DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, type ContextValues, type Interceptor, type StreamRequest, type StreamResponse, type UnaryRequest, type UnaryResponse } from "@connectrpc/connect";
import { SpanKind, SpanStatusCode, context as otelContext, propagation, trace, type Context, type Span, type SpanOptions } from "@opentelemetry/api";
import { callInfoKey, callScope, correlationIdFrom, type CallInfo } from "./call-scope.js";
import { toConnectError } from "./errors.js";
import { scalarLineLogger, type Logger } from "./telemetry/logger.js";
import type { MethodMetrics, ServiceMetrics } from "./telemetry/metrics.js";

/**
 * The kit's server interceptors. They are plain Connect interceptors, so the same chain runs on
 * connect-node's path (gRPC-Web, Connect, streams) and on the kit's unary gRPC fast path.
 * Order (outermost first): context (correlation id, trace span, async scope) -> observe (one log
 * line, metrics) -> [auth, added by the security issue] -> errors (domain error -> Connect code).
 *
 * They are written with promise.then() rather than async/await. The context interceptor enters
 * AsyncLocalStorage, and once that is in use Node 20 runs async_hooks for every promise: an
 * async function plus its await make two or three hooked promises, a then() one. Over the
 * interceptor chain that was the largest single cost of a call on the fast path.
 */

type AnyResponse = UnaryResponse | StreamResponse;

/** next(req), with a synchronous throw turned into a rejection, as an async function would. */
export function invokeNext<R, T>(next: (req: R) => Promise<T>, req: R): Promise<T> {
  try {
    return next(req);
  } catch (error) {
    return Promise.reject(error);
  }
}

/**
 * Runs `check` on every request message before the handler sees it: the one message of a unary
 * or server-streaming call at once, each message of a client stream as it arrives.
 */
export function checkRequestMessages(req: UnaryRequest | StreamRequest, check: (message: Record<string, unknown>) => void): UnaryRequest | StreamRequest {
  if (!req.stream) {
    check(req.message as unknown as Record<string, unknown>);
    return req;
  }
  const source = req.message;
  return {
    ...req,
    message: (async function* () {
      for await (const message of source) {
        check(message as unknown as Record<string, unknown>);
        yield message;
      }
    })(),
  };
}
type NextFn = Parameters<Interceptor>[0];
type AnyRequest = Parameters<NextFn>[0];

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
  // Span name and the method's constant attributes, made once per method (the SDK copies them).
  const spanStarts = new WeakMap<DescMethod, { name: string; options: SpanOptions }>();
  return (next) => (req) => {
    const correlationId = correlationIdFrom(req.header.get("x-request-id"), req.header.get("traceparent"));
    const info: CallInfo = { correlationId };
    req.contextValues.set(callInfoKey, info);
    const active = otelContext.active();
    const parent = propagation.extract(active, req.header, headerGetter);
    let start = spanStarts.get(req.method);
    if (start === undefined) {
      start = {
        name: `${req.service.typeName}/${req.method.name}`,
        options: {
          kind: SpanKind.SERVER,
          attributes: {
            "rpc.system": "grpc",
            "rpc.service": req.service.typeName,
            "rpc.method": req.method.name,
            "orca.service": serviceName,
          },
        },
      };
      spanStarts.set(req.method, start);
    }
    const span = tracer.startSpan(start.name, start.options, parent);
    span.setAttribute("orca.correlation_id", correlationId);
    // A span that records nothing (no SDK exporter), with no trace or baggage from the caller,
    // gives code inside the call nothing to read or pass on: then OTel's context is not entered,
    // which saves an AsyncLocalStorage (OTel's own) per call. The call scope is entered always.
    const spanContext: Context | undefined = span.isRecording() || parent !== active ? trace.setSpan(parent, span) : undefined;
    // run() and with() pass the arguments through, so entering the scope needs no closure.
    return callScope.run(info, runInContext, spanContext, next, req).then(
      (res) => {
        res.header.set("x-request-id", correlationId);
        if (!res.stream) {
          endSpan(span, undefined);
          return res;
        }
        const enter = <R>(fn: () => R): R => callScope.run(info, () => (spanContext ? otelContext.with(spanContext, fn) : fn()));
        return withStream(res, enter, (error) => endSpan(span, error));
      },
      (error: unknown) => {
        endSpan(span, error);
        if (error instanceof ConnectError) error.metadata.set("x-request-id", correlationId);
        throw error;
      },
    );
  };
}

function runInContext<T>(spanContext: Context | undefined, next: (req: T) => Promise<AnyResponse>, req: T): Promise<AnyResponse> {
  return spanContext ? otelContext.with(spanContext, invokeNext<T, AnyResponse>, undefined, next, req) : invokeNext(next, req);
}

function endSpan(span: Span, error: unknown): void {
  const code = error === undefined ? 0 : ConnectError.from(error).code;
  span.setAttribute("rpc.grpc.status_code", code);
  if (code !== 0) span.setStatus({ code: SpanStatusCode.ERROR, message: codeName(code) });
  span.end();
}

/** One log line and the grpc_server_* metrics per call. Never logs payloads or headers. */
export function observeInterceptor(deps: { logger: Logger; metrics: ServiceMetrics }): Interceptor {
  const { metrics } = deps;
  // The rpc line holds only the scalar fields below, so it skips pino's redaction (see scalarLineLogger).
  const rpcLog = scalarLineLogger(deps.logger);
  // Label objects, metric handles and the method name, made once per method instead of per call.
  const byMethod = new WeakMap<DescMethod, ObservedMethod>();
  const observed = (req: { service: DescService; method: DescMethod }): ObservedMethod => {
    let entry = byMethod.get(req.method);
    if (entry === undefined) {
      entry = {
        name: `${req.service.typeName}/${req.method.name}`,
        metrics: metrics.method(req.method.methodKind, req.service.typeName, req.method.name),
        log: rpcLog,
        logByCode: new Map(),
      };
      byMethod.set(req.method, entry);
    }
    return entry;
  };
  return (next) => (req) => {
    const method = observed(req);
    method.metrics.started();
    const startedAt = performance.now();
    return invokeNext(next, req).then(
      (res) => {
        if (!res.stream) {
          finishCall(method, req.contextValues, startedAt, undefined);
          return res;
        }
        return withStream(res, (fn) => fn(), (error) => finishCall(method, req.contextValues, startedAt, error));
      },
      (error: unknown) => {
        finishCall(method, req.contextValues, startedAt, error);
        throw error;
      },
    );
  };
}

interface ObservedMethod {
  /** "package.Service/Method", as logged. */
  name: string;
  metrics: MethodMetrics;
  log: Logger;
  /**
   * Child loggers with `method` and `code` bound: pino serializes bindings once, so each line
   * only formats its duration and correlation id. The line reads the same.
   */
  logByCode: Map<Code | 0, Logger>;
}

function finishCall(method: ObservedMethod, values: ContextValues, startedAt: number, error: unknown): void {
  const seconds = (performance.now() - startedAt) / 1000;
  const code = error === undefined ? 0 : ConnectError.from(error).code;
  const name = codeName(code);
  method.metrics.handled(name, seconds);
  let log = method.logByCode.get(code);
  if (log === undefined) method.logByCode.set(code, (log = method.log.child({ method: method.name, code: name })));
  const line = { durationMs: Math.round(seconds * 1e6) / 1e3, correlationId: values.get(callInfoKey)?.correlationId };
  if (code === Code.Internal || code === Code.Unknown || code === Code.DataLoss) log.error(line, "rpc");
  else log.info(line, "rpc");
}

/** Domain errors become their Connect codes; unexpected errors become Internal, logged here. */
export function errorInterceptor(logger: Logger): Interceptor {
  return (next) => (req) =>
    invokeNext(next, req).then(
      (res) => (res.stream ? mapStreamErrors(logger, req, res) : res),
      (error: unknown) => {
        throw mapError(logger, req, error);
      },
    );
}

function mapStreamErrors(logger: Logger, req: AnyRequest, res: StreamResponse): StreamResponse {
  const source = res.message;
  return {
    ...res,
    message: (async function* () {
      try {
        yield* source;
      } catch (error) {
        throw mapError(logger, req, error);
      }
    })(),
  };
}

/**
 * Ends server streams after `maxMs` with Unavailable, so no stream (or a slow client holding one)
 * lives forever; the contracts tell clients to resume (e.g. WatchRun from its last sequence).
 */
export function streamLimitInterceptor(maxMs: number): Interceptor {
  // Calls without a response stream pass straight through, without an async frame of their own.
  return (next) => (req) =>
    req.method.methodKind === "unary" || req.method.methodKind === "client_streaming" ? next(req) : limitStream(next, req, maxMs);
}

async function limitStream(next: NextFn, req: AnyRequest, maxMs: number): Promise<AnyResponse> {
  const res = await next(req);
  if (!res.stream) return res;
  const source = res.message;
  return {
    ...res,
    message: (async function* () {
      const it = source[Symbol.asyncIterator]();
      const deadline = Date.now() + maxMs;
      let timer: NodeJS.Timeout | undefined;
      try {
        for (;;) {
          const expired = new Promise<"expired">((resolve) => {
            timer = setTimeout(() => resolve("expired"), Math.max(0, deadline - Date.now()));
          });
          const result = await Promise.race([it.next(), expired]);
          clearTimeout(timer);
          if (result === "expired") throw new ConnectError(`stream reached its maximum duration of ${Math.round(maxMs / 1000)} s; reconnect to resume`, Code.Unavailable);
          if (result.done) return;
          yield result.value;
        }
      } finally {
        clearTimeout(timer);
        // Not awaited: after expiry the source may still be inside next(), and it only settles
        // once the call's signal aborts, which happens after this generator ends.
        void it.return?.()?.catch(() => undefined);
      }
    })(),
  };
}

function mapError(logger: Logger, req: { service: DescService; method: DescMethod; contextValues: ContextValues }, error: unknown): ConnectError {
  const correlationId = req.contextValues.get(callInfoKey)?.correlationId ?? "unknown";
  const mapped = toConnectError(error, correlationId);
  if (mapped.unexpected) {
    logger.error({ err: error, method: `${req.service.typeName}/${req.method.name}`, correlationId }, "unexpected error in handler");
  }
  return mapped.error;
}
