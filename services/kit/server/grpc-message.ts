import type { Http2Stream, OutgoingHttpHeaders, ServerHttp2Stream } from "node:http2";

/**
 * grpc-message as the gRPC spec encodes it (PROTOCOL-HTTP2.md, "Status-Message"): UTF-8, with
 * only the bytes outside 0x20-0x7E and "%" itself percent-encoded.
 *
 * connect encodes it with encodeURIComponent instead, which also escapes ",", ":", "/", "?",
 * "=" ... Decoders that follow the spec accept both, but @grpc/grpc-js decodes with decodeURI,
 * which leaves exactly those escapes alone: its users would read "lease_ms%3A must be
 * positive". Orca's messages name fields as "field: problem", so the kit sends the spec's form.
 */
export function encodeGrpcMessage(message: string): string {
  if (SAFE.test(message)) return message;
  let out = "";
  for (const byte of Buffer.from(message, "utf8")) {
    out += byte >= 0x20 && byte <= 0x7e && byte !== 0x25 ? String.fromCharCode(byte) : `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

const SAFE = /^[\x20-\x24\x26-\x7e]*$/;

/** The same message in the spec's encoding, from connect's encodeURIComponent form. */
function reencode(value: OutgoingHttpHeaders[string]): OutgoingHttpHeaders[string] {
  if (typeof value !== "string") return value;
  try {
    return encodeGrpcMessage(decodeURIComponent(value));
  } catch {
    return value; // not connect's encoding after all: leave it as it is
  }
}

function withSpecMessage(headers: OutgoingHttpHeaders | undefined): OutgoingHttpHeaders | undefined {
  if (headers?.["grpc-message"] === undefined) return headers;
  return { ...headers, "grpc-message": reencode(headers["grpc-message"]) };
}

/**
 * For gRPC calls served by connect-node (streams, and unary calls off the fast path): rewrites
 * grpc-message in the trailers (and in a trailers-only response's headers) of this one stream
 * into the spec's encoding, as the fast path writes it.
 */
export function specGrpcMessages(stream: ServerHttp2Stream): void {
  const respond = stream.respond;
  const sendTrailers = stream.sendTrailers;
  stream.respond = function (this: ServerHttp2Stream, headers, options) {
    return respond.call(this, withSpecMessage(headers), options);
  };
  (stream as Http2Stream).sendTrailers = function (this: Http2Stream, headers) {
    return sendTrailers.call(this, withSpecMessage(headers) ?? {});
  };
}
