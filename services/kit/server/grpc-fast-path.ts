import { sensitiveHeaders, type IncomingHttpHeaders, type OutgoingHttpHeaders, type ServerHttp2Stream } from "node:http2";
import { create, type DescMessage, type DescMethodUnary, type DescService } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createContextValues,
  createServiceImplSpec,
  type ContextValues,
  type HandlerContext,
  type Interceptor,
  type ServiceImpl,
  type UnaryRequest,
  type UnaryResponse,
} from "@connectrpc/connect";
import {
  compressedFlag,
  compressionNegotiate,
  createMethodSerializationLookup,
  encodeEnvelope,
  envelopeCompress,
  type Compression,
  type Serialization,
} from "@connectrpc/connect/protocol";
import { contentTypeProto, grpcStatusOk, parseTimeout, setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import type { CallRecord, CallTelemetry } from "../call-telemetry.js";
import { invokeNext } from "../interceptors.js";
import { envelope, incompleteEnvelope, tooLarge } from "../grpc-envelope.js";
import { encodeGrpcMessage } from "./grpc-message.js";
import { HeaderMap } from "./header-map.js";
import { encodeInScratch } from "./scratch-encoding.js";

/**
 * The kit's unary gRPC fast path.
 *
 * connect-node serves every call through Node's http2 compatibility layer and Connect's
 * universal handler: web Headers conversions, WHATWG-style async-iterable pipes and several
 * AbortControllers per call. For unary gRPC over protobuf, the common case between services,
 * that plumbing costs several times the handler's own work. This path takes such streams
 * straight from the http2 `stream` event and answers them itself, with connect's own building
 * blocks where they are cheap (serialization with its size limits, compression negotiation and
 * codecs, timeout parsing, trailer status) and the same interceptor chain, so handlers and
 * interceptors cannot tell the paths apart. Everything else (gRPC-Web, Connect, JSON, streaming
 * methods) returns false and takes the normal path.
 *
 * What makes it cheap, per call:
 * - no AbortController unless someone reads `signal` (creating and aborting one costs more than
 *   a whole echo call); a lazily created signal still aborts on the deadline, client cancel,
 *   server shutdown and call completion, exactly when the eager one would have;
 * - headers stay in Node's object form (HeaderMap) instead of two undici Headers conversions;
 * - no async-iterable pipeline: the body is collected from 'data' events and the response is
 *   written with one respond/end/sendTrailers; one promise per interceptor and for the handler,
 *   no async frames (each promise is hooked by async_hooks while AsyncLocalStorage is in use);
 * - stream listeners are shared functions that find the call on the stream, not closures;
 * - the response envelope is cut from Node's Buffer pool (a small typed array of its own costs
 *   more than a whole protobuf encode), and per-call-unique headers skip the HPACK table.
 *
 * The helpers come from connect's `protocol` entry points, which connect marks as internal;
 * package.json pins connect to an exact version, and bench/rpc/conformance.ts compares both
 * paths call for call.
 */

export interface FastPathOptions {
  services: { service: DescService; impl: Partial<ServiceImpl<DescService>> }[];
  /** The kit's steps around every call (correlation id, span, scope, log, metrics, error mapping). */
  telemetry?: CallTelemetry;
  /** Interceptors run inside the telemetry steps, outermost first (auth, rate limits). */
  interceptors: Interceptor[];
  /** Checks the request message before the handler sees it; throws to fail the call (request guard). */
  checkRequest?: (schema: DescMessage, message: unknown) => void;
  /** Called when the stream of a call this path took has closed, whatever the outcome. */
  onStreamClosed?: () => void;
  acceptCompression: Compression[];
  readMaxBytes: number;
  writeMaxBytes: number;
  compressMinBytes: number;
  shutdownSignal: AbortSignal;
  /** "http" or "https", for the URL handlers see. */
  scheme: string;
  /**
   * Response headers whose value is new on every call (the correlation id): sent as HPACK
   * "never indexed" literals, so they do not churn the connection's header table and push out
   * the entries that repeat (content-type, grpc-encoding), for both ends. Values are unchanged.
   */
  neverIndexHeaders?: string[];
}

type AnyUnaryMethod = DescMethodUnary<DescMessage, DescMessage>;
type UnaryFn = (req: UnaryRequest) => Promise<UnaryResponse>;
type UnaryImpl = (request: unknown, context: HandlerContext) => unknown;

interface UnaryRoute {
  method: AnyUnaryMethod;
  service: DescService;
  impl: UnaryImpl;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- the route table holds every method's types
  input: Serialization<any>;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  output: Serialization<any>;
}

export type FastPathHandler = (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => boolean;

const GRPC_PROTO = /^application\/grpc(?:\+proto)?$/i;
// Abort reasons, made once: creating errors (and their stack traces) per call is not free.
const CANCELLED_BY_CLIENT = new ConnectError("the client cancelled the call", Code.Canceled);
const COMPLETED = new ConnectError("call completed", Code.Canceled);
const RESPONSE_CONTENT_TYPE = { "content-type": contentTypeProto };

export function createGrpcFastPath(options: FastPathOptions): FastPathHandler {
  const routes = new Map<string, UnaryRoute>();
  const limits = {
    readMaxBytes: options.readMaxBytes,
    writeMaxBytes: options.writeMaxBytes,
    compressMinBytes: options.compressMinBytes,
  };
  for (const { service, impl } of options.services) {
    // createServiceImplSpec binds the handlers and answers missing ones with Unimplemented.
    const serviceSpec = createServiceImplSpec(service, impl);
    for (const method of service.methods) {
      const spec = serviceSpec.methods[method.localName];
      if (spec.kind !== "unary") continue;
      const lookup = createMethodSerializationLookup(method, undefined, undefined, limits);
      routes.set(`/${service.typeName}/${method.name}`, {
        method: spec.method as AnyUnaryMethod,
        service,
        impl: spec.impl as UnaryImpl,
        input: lookup.getI(true),
        output: lookup.getO(true),
      });
    }
  }

  return function tryFastPath(stream, headers) {
    if (headers[":method"] !== "POST") return false;
    const contentType = headers["content-type"];
    if (contentType !== "application/grpc" && (contentType === undefined || !GRPC_PROTO.test(contentType))) return false;
    const route = routes.get(headers[":path"] ?? "");
    if (route === undefined) return false;
    new UnaryCall(route, stream, headers, options).start();
    return true;
  };
}

// The call a stream belongs to, so that its listeners can be shared functions.
const kCall = Symbol("orca.fastPathCall");
type CallStream = ServerHttp2Stream & { [kCall]?: UnaryCall };

function onData(this: CallStream, chunk: Buffer): void {
  this[kCall]?.onData(chunk);
}
function onEnd(this: CallStream): void {
  this[kCall]?.onEnd();
}
function onClose(this: CallStream): void {
  const call = this[kCall];
  this[kCall] = undefined;
  call?.onClose();
}
function onError(): void {
  // 'close' follows and cancels the call; the listener only keeps the error from being thrown.
}
function onWantTrailers(this: CallStream): void {
  const call = this[kCall];
  if (call && !this.destroyed) this.sendTrailers(call.responseTrailer.toNode({}));
}

/**
 * The innermost step of every call's chain: one shared function that finds the call on the
 * request (interceptors that copy the request copy its symbol keys too), instead of a closure
 * per call. Not an async function: see interceptors.ts on promises and async_hooks.
 */
function invokeHandler(req: UnaryRequest): Promise<UnaryResponse> {
  try {
    return (req as unknown as { [kCall]: UnaryCall })[kCall].handle(req);
  } catch (error) {
    return Promise.reject(error);
  }
}

/** One unary call: collects the request, runs the interceptors and the handler, responds. */
class UnaryCall {
  readonly requestHeader: HeaderMap;
  readonly responseHeader = new HeaderMap();
  readonly responseTrailer = new HeaderMap();
  readonly values: ContextValues = createContextValues();
  readonly url: string;
  /** Absolute deadline (Date.now() scale) from grpc-timeout. */
  private deadline: number | undefined;
  /** The request body: almost always one chunk, so an array only when a second one comes. */
  private first: Buffer | undefined;
  private more: Buffer[] | undefined;
  private received = 0;
  /** Set once the call has an outcome: the reason a signal created from now on starts aborted. */
  private ended: ConnectError | undefined;
  private controller: AbortController | undefined;
  private timer: NodeJS.Timeout | undefined;
  private onShutdown: (() => void) | undefined;
  private compression: { request: Compression | null; response: Compression | null } = NO_COMPRESSION;

  constructor(
    private readonly route: UnaryRoute,
    private readonly stream: CallStream,
    headers: IncomingHttpHeaders,
    private readonly options: FastPathOptions,
  ) {
    this.requestHeader = HeaderMap.fromIncoming(headers);
    this.url = `${options.scheme}://${headers[":authority"] ?? "localhost"}${headers[":path"]}`;
  }

  start(): void {
    const stream = this.stream;
    stream[kCall] = this;
    stream.on("close", onClose);
    stream.on("error", onError);
    this.responseHeader.set("content-type", RESPONSE_CONTENT_TYPE["content-type"]);
    const headers = this.requestHeader;
    const compression = compressionNegotiate(
      this.options.acceptCompression,
      headers.get("grpc-encoding"),
      headers.get("grpc-accept-encoding"),
      "grpc-accept-encoding",
    );
    this.compression = compression;
    if (compression.response) this.responseHeader.set("grpc-encoding", compression.response.name);
    const timeout = parseTimeout(headers.get("grpc-timeout"), Number.MAX_SAFE_INTEGER);
    if (timeout.timeoutMs !== undefined) this.deadline = Date.now() + timeout.timeoutMs;
    // Like connect's handler: protocol errors are answered before the body is read.
    const early = compression.error ?? timeout.error;
    if (early) return this.fail(early);
    stream.on("data", onData);
    stream.on("end", onEnd);
  }

  onData(chunk: Buffer): void {
    if (this.ended) return;
    if (this.first === undefined) this.first = chunk;
    else (this.more ??= []).push(chunk);
    this.received += chunk.length;
    if (this.received >= 5 && this.first.length >= 5) {
      // Refuse an oversized message as soon as its envelope header says so, as connect does.
      const declared = this.first.readUInt32BE(1);
      if (declared > this.options.readMaxBytes) return this.fail(tooLarge(declared, this.options.readMaxBytes));
      // A unary request is one envelope; more than one envelope plus a header is not worth buffering.
      if (this.received > declared + 10) return this.fail(extraMessage());
    }
  }

  onEnd(): void {
    if (this.ended) return;
    let input: unknown;
    try {
      const bytes = this.more ? Buffer.concat([this.first!, ...this.more], this.received) : (this.first ?? EMPTY);
      this.first = this.more = undefined;
      if (bytes.length === 0) throw new ConnectError("protocol error: missing input message for unary method", Code.Unimplemented);
      if (bytes.length < 5) throw incompleteEnvelope();
      const length = bytes.readUInt32BE(1);
      if (length > this.options.readMaxBytes) throw tooLarge(length, this.options.readMaxBytes);
      if (bytes.length < 5 + length) throw incompleteEnvelope();
      checkRest(bytes, 5 + length, this.options.readMaxBytes);
      const data = bytes.subarray(5, 5 + length);
      if ((bytes[0] & compressedFlag) === compressedFlag) {
        // Compressed requests are rare between services; only they pay for an extra promise.
        void this.decompress(data).then(
          (decompressed) => this.invoke(this.route.input.parse(decompressed)),
          (error: unknown) => this.fail(error),
        );
        return;
      }
      input = this.route.input.parse(data);
    } catch (error) {
      return this.fail(error);
    }
    this.invoke(input);
  }

  onClose(): void {
    // The stream closed before we answered: the client cancelled or the connection went away.
    if (!this.ended) this.end(CANCELLED_BY_CLIENT);
    this.options.onStreamClosed?.();
  }

  private async decompress(data: Uint8Array): Promise<Uint8Array> {
    const compression = this.compression.request;
    if (!compression) throw new ConnectError("received compressed envelope, but do not know how to decompress", Code.Internal);
    return compression.decompress(data, this.options.readMaxBytes);
  }

  /** Runs the kit's steps and the interceptors around the handler, then responds. */
  private invoke(input: unknown): void {
    const { method, service } = this.route;
    const req = {
      stream: false,
      message: input as never,
      method,
      service,
      requestMethod: "POST",
      url: this.url,
      header: this.requestHeader,
      contextValues: this.values,
      [kCall]: this,
    };
    Object.defineProperty(req, "signal", REQUEST_SIGNAL);
    const request = req as unknown as UnaryRequest;
    // Built per call like connect does; the interceptor factories only allocate a closure each.
    let next: UnaryFn = invokeHandler;
    const interceptors = this.options.interceptors;
    for (let i = interceptors.length - 1; i >= 0; i--) next = interceptors[i](next as never) as UnaryFn;
    const telemetry = this.options.telemetry;
    if (telemetry === undefined) {
      invokeNext(next, request).then(
        (res) => this.succeed(res),
        (error: unknown) => this.fail(error),
      );
      return;
    }
    let record: CallRecord;
    try {
      record = telemetry.begin(request);
    } catch (error) {
      return this.fail(error);
    }
    telemetry.run(record, invokeNext<UnaryRequest, UnaryResponse>, next, request).then(
      (res) => {
        telemetry.answered(record, res.header);
        telemetry.finish(record, undefined);
        this.succeed(res);
      },
      (error: unknown) => {
        const mapped = telemetry.failed(request, record, error);
        telemetry.finish(record, mapped);
        this.fail(mapped);
      },
    );
  }

  /** The handler, called with what connect's invokeUnaryImplementation hands it (its mergeRequest). */
  handle(req: UnaryRequest): Promise<UnaryResponse> {
    const { method, service, impl } = this.route;
    this.options.checkRequest?.(method.input, req.message);
    const call = this;
    const context = {
      method,
      service: req.service,
      requestMethod: req.requestMethod,
      protocolName: "grpc",
      url: req.url,
      timeoutMs: () => (call.deadline === undefined ? undefined : call.deadline - Date.now()),
      requestHeader: req.header,
      responseHeader: this.responseHeader,
      responseTrailer: this.responseTrailer,
      values: req.contextValues,
      [kRequest]: req,
    };
    Object.defineProperty(context, "signal", CONTEXT_SIGNAL);
    const respond = (output: unknown): UnaryResponse => ({
      stream: false,
      method,
      service,
      message: create(method.output, output as never), // returns messages as they are
      header: call.responseHeader,
      trailer: call.responseTrailer,
    });
    const output = impl(req.message, context as unknown as HandlerContext);
    if (typeof (output as PromiseLike<unknown> | undefined)?.then === "function") return Promise.resolve(output).then(respond);
    return Promise.resolve(respond(output));
  }

  private succeed(res: UnaryResponse): void {
    if (this.ended) return;
    let body: Uint8Array;
    try {
      copyHeaders(res.header, this.responseHeader);
      copyHeaders(res.trailer, this.responseTrailer);
      // A view of the scratch buffer, valid until the next response is encoded: copied at once.
      const data = encodeInScratch(this.route.output.serialize, res.message);
      const compression = this.compression.response;
      if (compression && data.byteLength >= this.options.compressMinBytes) {
        void envelopeCompress({ flags: 0, data: data.slice() }, compression, this.options.compressMinBytes).then(
          (envelope) => this.respond(encodeEnvelope(envelope.flags, envelope.data), undefined),
          (error: unknown) => this.fail(error),
        );
        return;
      }
      body = envelope(data);
    } catch (error) {
      return this.fail(error);
    }
    this.respond(body, undefined);
  }

  private fail(error: unknown): void {
    if (this.ended) return;
    const connectError = error instanceof ConnectError ? error : new ConnectError("internal error", Code.Internal, undefined, undefined, error);
    this.respond(undefined, connectError);
  }

  private respond(body: Uint8Array | undefined, error: ConnectError | undefined): void {
    if (this.ended) return;
    if (error) {
      setTrailerStatus(this.responseTrailer, error);
      this.responseTrailer.set("grpc-message", encodeGrpcMessage(error.rawMessage));
    }
    else this.responseTrailer.set("grpc-status", grpcStatusOk);
    this.end(error ?? COMPLETED);
    const stream = this.stream;
    if (stream.destroyed || stream.closed) return;
    if (!stream.readableEnded) {
      // Answered early (an error): whatever the client still sends is read and dropped, so
      // that flow control never stalls.
      stream.off("data", onData);
      stream.resume();
    }
    try {
      const headers: OutgoingHttpHeaders & { [sensitiveHeaders]?: string[] } = { ":status": 200 };
      if (this.options.neverIndexHeaders) headers[sensitiveHeaders] = this.options.neverIndexHeaders;
      stream.respond(this.responseHeader.toNode(headers), { waitForTrailers: true });
      stream.on("wantTrailers", onWantTrailers); // emitted once per stream; on() skips once()'s wrapper
      stream.end(body);
    } catch {
      // The stream went away between the check and the write; nothing is left to tell.
      stream.destroy();
    }
  }

  /** The call has an outcome: abort the handler's signal if it has one, stop the timers. */
  private end(reason: ConnectError): void {
    this.ended = reason;
    if (this.timer !== undefined) clearTimeout(this.timer);
    if (this.onShutdown) this.options.shutdownSignal.removeEventListener("abort", this.onShutdown);
    if (this.controller && !this.controller.signal.aborted) this.controller.abort(reason);
  }

  /**
   * The handler's signal, created on first use. It aborts on the deadline (DeadlineExceeded),
   * when the client cancels, when the server shuts down, and when the call completes, as the
   * signal of connect's createHandlerContext does.
   */
  get signal(): AbortSignal {
    if (this.controller) return this.controller.signal;
    const controller = (this.controller = new AbortController());
    const shutdown = this.options.shutdownSignal;
    if (this.ended) controller.abort(this.ended);
    else if (shutdown.aborted) controller.abort(shutdown.reason);
    else {
      this.onShutdown = () => controller.abort(shutdown.reason);
      shutdown.addEventListener("abort", this.onShutdown, { once: true });
      if (this.deadline !== undefined) {
        const remaining = this.deadline - Date.now();
        if (remaining <= 0) controller.abort(deadlineExceeded());
        else this.timer = setTimeout(() => controller.abort(deadlineExceeded()), remaining);
      }
    }
    return controller.signal;
  }
}

const NO_COMPRESSION = { request: null, response: null };
const EMPTY = Buffer.alloc(0);

/**
 * `signal` of the request and the handler context: an own, enumerable accessor (so that
 * interceptors that spread the request keep a working signal) defined with one shared getter.
 * A getter written in an object literal would be a new closure per call, and V8 gives every
 * object with its own accessor function a new hidden class.
 */
const kRequest = Symbol("orca.fastPathRequest");
const REQUEST_SIGNAL: PropertyDescriptor = {
  get(this: { [kCall]: UnaryCall }) {
    return this[kCall].signal;
  },
  enumerable: true,
  configurable: true,
};
const CONTEXT_SIGNAL: PropertyDescriptor = {
  get(this: { [kRequest]: UnaryRequest }) {
    return this[kRequest].signal;
  },
  enumerable: true,
  configurable: true,
};

/** What connect's invokeUnaryImplementation does when an interceptor returns other Headers. */
function copyHeaders(from: Headers, to: HeaderMap): void {
  if (from === to) return;
  for (const key of [...to.keys()]) to.delete(key);
  from.forEach((value, key) => to.set(key, value));
}

/**
 * Bytes after the first envelope: connect's handler reads on and fails the call with
 * "incomplete envelope" or "extra input message"; so does this.
 */
function checkRest(bytes: Buffer, offset: number, readMaxBytes: number): void {
  const rest = bytes.length - offset;
  if (rest === 0) return;
  if (rest < 5) throw incompleteEnvelope();
  const length = bytes.readUInt32BE(offset + 1);
  if (length > readMaxBytes) throw tooLarge(length, readMaxBytes);
  if (rest < 5 + length) throw incompleteEnvelope();
  throw extraMessage();
}

const deadlineExceeded = () => new ConnectError("the operation timed out", Code.DeadlineExceeded);
const extraMessage = () => new ConnectError("protocol error: received extra input message for unary method", Code.Unimplemented);
