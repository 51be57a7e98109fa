import { Code, ConnectError, type Interceptor, type StreamRequest, type StreamResponse, type UnaryRequest, type UnaryResponse } from "@connectrpc/connect";
import { mapError, type CallTelemetry } from "./call-telemetry.js";
import type { Logger } from "./telemetry/logger.js";

/**
 * The kit's server interceptors, plain Connect interceptors for connect-node's path (gRPC-Web,
 * Connect, streams). Order (outermost first): call (CallTelemetry: correlation id, span, async
 * scope, log line, metrics) -> [auth, rate limits, added by the security issue] -> stream
 * limit -> request guard -> errors (domain error -> Connect code). The unary gRPC fast path runs
 * the same steps without the interceptor frames (see server/grpc-fast-path.ts).
 *
 * They are written with promise.then() rather than async/await: while AsyncLocalStorage is in
 * use Node 20 runs async_hooks for every promise, and an async function plus its await make two
 * or three hooked promises, a then() one.
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

/**
 * The kit's own work around every call (CallTelemetry): correlation id, span, async scope, log
 * line, metrics, and the final error mapping. Outermost, so that it sees every outcome,
 * including errors thrown by the interceptors inside it (auth, rate limits).
 */
export function callInterceptor(calls: CallTelemetry): Interceptor {
  return (next) => (req) => {
    const record = calls.begin(req);
    return calls.run(record, invokeNext<AnyRequest, AnyResponse>, next, req).then(
      (res) => {
        calls.answered(record, res.header);
        if (!res.stream) {
          calls.finish(record, undefined);
          return res;
        }
        return withStream(res, calls.enter(record), (error) => calls.finish(record, error));
      },
      (error: unknown) => {
        const mapped = calls.failed(req, record, error);
        calls.finish(record, mapped);
        throw mapped;
      },
    );
  };
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
