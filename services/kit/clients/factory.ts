import { readFileSync } from "node:fs";
import type { DescService } from "@bufbuild/protobuf";
import { MethodOptions_IdempotencyLevel as IdempotencyLevel } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { Http2SessionManager, createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { context as otelContext, propagation } from "@opentelemetry/api";
import {
  ConsecutiveBreaker,
  ExponentialBackoff,
  circuitBreaker,
  handleWhen,
  isBrokenCircuitError,
  retry,
  type CircuitBreakerPolicy,
  type RetryPolicy,
} from "cockatiel";
import { callScope, readCallScope } from "../call-scope.js";
import { createFastGrpcTransport } from "./grpc-fast-transport.js";

/**
 * Typed clients for the mesh's services, as the services themselves use them and as users'
 * TypeScript services can: generated protobuf-es clients on connect, with
 *  - a deadline on every call (defaultTimeoutMs; a per-call timeoutMs overrides it),
 *  - retries with exponential backoff and full jitter, only for methods the contract marks
 *    idempotent (idempotency_level NO_SIDE_EFFECTS or IDEMPOTENT) and only on Unavailable,
 *  - a circuit breaker per target that fails fast with Unavailable after repeated failures,
 *  - correlation id (x-request-id) and W3C trace context propagated from the call being served.
 */
export interface ClientOptions {
  /** Base URL, e.g. http://127.0.0.1:50054 (h2c) or https://lock.orca.svc:50054. */
  baseUrl: string;
  /** A name for the target in errors, e.g. "lock". */
  target?: string;
  /** "grpc" (default) or "connect" (HTTP/1.1 or h2, useful through plain HTTP proxies). */
  protocol?: "grpc" | "connect";
  defaultTimeoutMs?: number;
  maxAttempts?: number;
  /** Consecutive failures that open the breaker; 0 disables it. */
  breakerThreshold?: number;
  breakerHalfOpenAfterMs?: number;
  tls?: { caFile?: string; certFile?: string; keyFile?: string };
  interceptors?: Interceptor[];
  /**
   * Unary gRPC calls on the kit's client path (grpc-fast-transport.ts, default) instead of
   * connect-node's universal client; streaming calls and protocol "connect" use connect-node.
   */
  fastPath?: boolean;
}

const RETRYABLE = new Set<Code>([Code.Unavailable]);
const BREAKER_FAILURES = new Set<Code>([Code.Unavailable, Code.DeadlineExceeded, Code.Internal, Code.Unknown]);

function codeOf(error: unknown): Code | undefined {
  return error instanceof ConnectError ? error.code : undefined;
}

/** Propagates the served call's correlation id and trace context to outgoing calls. */
export function propagationInterceptor(): Interceptor {
  readCallScope();
  return (next) => (req) => {
    const info = callScope.getStore();
    if (info && !req.header.has("x-request-id")) req.header.set("x-request-id", info.correlationId);
    propagation.inject(otelContext.active(), req.header, { set: (carrier, key, value) => carrier.set(key, value) });
    return next(req);
  };
}

/** Retries idempotent unary calls on Unavailable, inside a per-target circuit breaker. */
export function resilienceInterceptor(options: {
  target: string;
  retryPolicy: RetryPolicy;
  breaker?: CircuitBreakerPolicy;
}): Interceptor {
  const { target, retryPolicy, breaker } = options;
  return (next) => async (req) => {
    if (req.stream) return next(req);
    const once = () => (breaker ? breaker.execute(() => next(req)) : next(req));
    const idempotent = req.method.idempotency !== IdempotencyLevel.IDEMPOTENCY_UNKNOWN;
    try {
      return idempotent ? await retryPolicy.execute(({ signal }) => (signal.aborted || req.signal.aborted ? next(req) : once())) : await once();
    } catch (error) {
      if (isBrokenCircuitError(error)) {
        throw new ConnectError(`circuit open for ${target}: its recent calls failed; retry later`, Code.Unavailable);
      }
      throw error;
    }
  };
}

export function createOrcaTransport(options: ClientOptions): Transport {
  const target = options.target ?? options.baseUrl;
  const retryPolicy = retry(
    handleWhen((error) => RETRYABLE.has(codeOf(error) ?? Code.Unknown)),
    { maxAttempts: (options.maxAttempts ?? 3) - 1, backoff: new ExponentialBackoff({ initialDelay: 50, maxDelay: 1_000 }) },
  );
  const threshold = options.breakerThreshold ?? 5;
  const breaker =
    threshold > 0
      ? circuitBreaker(
          handleWhen((error) => BREAKER_FAILURES.has(codeOf(error) ?? Code.Unknown)),
          { halfOpenAfter: options.breakerHalfOpenAfterMs ?? 5_000, breaker: new ConsecutiveBreaker(threshold) },
        )
      : undefined;
  const interceptors = [
    ...(options.interceptors ?? []),
    propagationInterceptor(),
    resilienceInterceptor({ target, retryPolicy, breaker }),
  ];
  const nodeOptions = options.tls
    ? {
        ca: options.tls.caFile ? readFileSync(options.tls.caFile) : undefined,
        cert: options.tls.certFile ? readFileSync(options.tls.certFile) : undefined,
        key: options.tls.keyFile ? readFileSync(options.tls.keyFile) : undefined,
      }
    : undefined;
  const common = { baseUrl: options.baseUrl, interceptors, defaultTimeoutMs: options.defaultTimeoutMs ?? 5_000, nodeOptions };
  if (options.protocol === "connect") return createConnectTransport({ ...common, httpVersion: "2" });
  if (options.fastPath === false) return createGrpcTransport(common);
  // One connection per target, shared by both paths.
  const sessionManager = new Http2SessionManager(options.baseUrl, {}, nodeOptions);
  return createFastGrpcTransport({ ...common, sessionManager, streaming: createGrpcTransport({ ...common, sessionManager }) });
}

/** A typed client for one service at one address. */
export function createOrcaClient<S extends DescService>(service: S, options: ClientOptions): Client<S> {
  return createClient(service, createOrcaTransport(options));
}
