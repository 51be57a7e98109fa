import type { IncomingHttpHeaders, ServerHttp2Stream, OutgoingHttpHeaders } from "node:http2";
import type { DescService } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createHandlerContext,
  createServiceImplSpec,
  type Interceptor,
  type MethodImplSpec,
  type ServiceImpl,
} from "@connectrpc/connect";
import {
  compressionNegotiate,
  createMethodSerializationLookup,
  encodeEnvelope,
  envelopeCompress,
  envelopeDecompress,
  invokeUnaryImplementation,
  type Compression,
  type Serialization,
} from "@connectrpc/connect/protocol";
import { contentTypeProto, grpcStatusOk, parseTimeout, setTrailerStatus } from "@connectrpc/connect/protocol-grpc";

/**
 * The kit's unary gRPC fast path.
 *
 * connect-node serves every call through Node's http2 compatibility layer and Connect's
 * universal handler: web Headers conversions, WHATWG-style async-iterable pipes and several
 * AbortControllers per call. For unary gRPC over protobuf, the common case between services,
 * that plumbing costs several times the handler's own work. This path takes such streams
 * straight from the http2 `stream` event and answers them with the same building blocks connect
 * uses for the same job (handler context, envelope codec, serialization limits, compression
 * negotiation, timeout parsing, trailer status, and the same interceptor chain through
 * invokeUnaryImplementation), so the semantics match the slow path call for call. Everything
 * else (gRPC-Web, Connect, JSON, streaming methods) returns false and takes the normal path.
 *
 * Those helpers come from connect's `protocol` entry points, which connect marks as internal;
 * package.json pins connect to an exact version and the conformance tests compare both paths.
 */

export interface FastPathOptions {
  services: { service: DescService; impl: Partial<ServiceImpl<DescService>> }[];
  interceptors: Interceptor[];
  acceptCompression: Compression[];
  readMaxBytes: number;
  writeMaxBytes: number;
  compressMinBytes: number;
  shutdownSignal: AbortSignal;
  /** "http" or "https", for the URL handlers see. */
  scheme: string;
}

interface UnaryRoute {
  spec: MethodImplSpec & { kind: "unary" };
  service: DescService;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- the route table holds every method's types
  serialization: Serialization<any>;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  outputSerialization: Serialization<any>;
}

const GRPC_PROTO = /^application\/grpc(?:\+proto)?$/i;
const CANCELLED_BY_CLIENT = new ConnectError("the client cancelled the call", Code.Canceled);
const COMPLETED = new ConnectError("call completed", Code.Canceled);

export type FastPathHandler = (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => boolean;

export function createGrpcFastPath(options: FastPathOptions): FastPathHandler {
  const routes = new Map<string, UnaryRoute>();
  const limits = {
    readMaxBytes: options.readMaxBytes,
    writeMaxBytes: options.writeMaxBytes,
    compressMinBytes: options.compressMinBytes,
  };
  for (const { service, impl } of options.services) {
    const serviceSpec = createServiceImplSpec(service, impl);
    for (const method of service.methods) {
      const spec = serviceSpec.methods[method.localName];
      if (spec.kind !== "unary") continue;
      const lookup = createMethodSerializationLookup(method, undefined, undefined, limits);
      routes.set(`/${service.typeName}/${method.name}`, {
        spec,
        service,
        serialization: lookup.getI(true),
        outputSerialization: lookup.getO(true),
      });
    }
  }

  return function tryFastPath(stream, headers) {
    if (headers[":method"] !== "POST") return false;
    const contentType = headers["content-type"];
    if (contentType === undefined || !GRPC_PROTO.test(contentType)) return false;
    const route = routes.get(headers[":path"] ?? "");
    if (route === undefined) return false;
    void serveUnary(route, stream, headers, options);
    return true;
  };
}

function webHeaders(nodeHeaders: IncomingHttpHeaders): Headers {
  const header = new Headers();
  for (const key in nodeHeaders) {
    if (key.charCodeAt(0) === 58 /* ":" */) continue;
    const value = nodeHeaders[key];
    if (value === undefined) continue;
    if (typeof value === "string") header.append(key, value);
    else for (const item of value) header.append(key, item);
  }
  return header;
}

function nodeHeaders(from: Headers, into: OutgoingHttpHeaders): OutgoingHttpHeaders {
  from.forEach((value, key) => {
    into[key] = value;
  });
  return into;
}

/** Reads the request body and splits it into gRPC envelopes (1 flag byte, 4 length bytes, data). */
function readEnvelopes(stream: ServerHttp2Stream, readMaxBytes: number): Promise<{ flags: number; data: Uint8Array }[]> {
  const chunks: Buffer[] = [];
  let received = 0;
  return new Promise((resolve, reject) => {
    stream.on("data", (chunk: Buffer) => {
      received += chunk.length;
      chunks.push(chunk);
      // One envelope header may precede the message; anything beyond cannot be a valid unary request.
      if (received > readMaxBytes + 5) {
        stream.pause();
        reject(new ConnectError(`message size ${received - 5} is larger than configured readMaxBytes ${readMaxBytes}`, Code.ResourceExhausted));
      }
    });
    stream.once("end", () => {
      const bytes = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks);
      const envelopes: { flags: number; data: Uint8Array }[] = [];
      let offset = 0;
      while (offset < bytes.length) {
        if (bytes.length - offset < 5) return reject(new ConnectError("protocol error: incomplete envelope", Code.InvalidArgument));
        const flags = bytes[offset];
        const length = bytes.readUInt32BE(offset + 1);
        if (length > readMaxBytes) {
          return reject(new ConnectError(`message size ${length} is larger than configured readMaxBytes ${readMaxBytes}`, Code.ResourceExhausted));
        }
        if (bytes.length - offset - 5 < length) return reject(new ConnectError("protocol error: incomplete envelope", Code.InvalidArgument));
        envelopes.push({ flags, data: bytes.subarray(offset + 5, offset + 5 + length) });
        offset += 5 + length;
      }
      resolve(envelopes);
    });
    stream.once("error", reject);
    stream.once("aborted", () => reject(CANCELLED_BY_CLIENT));
  });
}

async function serveUnary(route: UnaryRoute, stream: ServerHttp2Stream, headers: IncomingHttpHeaders, options: FastPathOptions) {
  const timeout = parseTimeout((headers["grpc-timeout"] as string | undefined) ?? null, Number.MAX_SAFE_INTEGER);
  const context = createHandlerContext({
    service: route.service,
    method: route.spec.method,
    protocolName: "grpc",
    requestMethod: "POST",
    url: `${options.scheme}://${headers[":authority"] ?? "localhost"}${headers[":path"]}`,
    timeoutMs: timeout.timeoutMs,
    shutdownSignal: options.shutdownSignal,
    requestHeader: webHeaders(headers),
    responseHeader: { "content-type": contentTypeProto },
    responseTrailer: { "grpc-status": grpcStatusOk },
  });
  const compression = compressionNegotiate(
    options.acceptCompression,
    (headers["grpc-encoding"] as string | undefined) ?? null,
    (headers["grpc-accept-encoding"] as string | undefined) ?? null,
    "grpc-accept-encoding",
  );
  if (compression.response) context.responseHeader.set("grpc-encoding", compression.response.name);
  let finished = false;
  const onClose = () => {
    if (!finished) context.abort(CANCELLED_BY_CLIENT);
  };
  stream.once("close", onClose);

  let body: Uint8Array | undefined;
  try {
    if (compression.error) throw compression.error;
    if (timeout.error) throw timeout.error;
    const envelopes = await readEnvelopes(stream, options.readMaxBytes);
    if (envelopes.length !== 1) {
      throw new ConnectError(
        `protocol error: ${envelopes.length === 0 ? "missing input message" : "received extra input message"} for unary method`,
        Code.Unimplemented,
      );
    }
    const envelope = await envelopeDecompress(envelopes[0], compression.request, options.readMaxBytes);
    const input = route.serialization.parse(envelope.data);
    const output = await invokeUnaryImplementation(route.spec, context, input, options.interceptors);
    const encoded = await envelopeCompress(
      { flags: 0, data: route.outputSerialization.serialize(output as never) },
      compression.response,
      options.compressMinBytes,
    );
    body = encodeEnvelope(encoded.flags, encoded.data);
  } catch (error) {
    const connectError =
      error instanceof ConnectError ? error : new ConnectError("internal error", Code.Internal, undefined, undefined, error);
    setTrailerStatus(context.responseTrailer, connectError);
  } finally {
    finished = true;
    context.abort(COMPLETED);
  }
  if (stream.destroyed || stream.closed) return;
  const trailers = nodeHeaders(context.responseTrailer, {});
  stream.respond(nodeHeaders(context.responseHeader, { ":status": 200 }), { waitForTrailers: true });
  stream.once("wantTrailers", () => {
    if (!stream.destroyed) stream.sendTrailers(trailers);
  });
  stream.end(body);
}
