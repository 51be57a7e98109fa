import { Code, ConnectError } from "@connectrpc/connect";

/**
 * gRPC length-prefixed messages, for the kit's unary paths (server: server/grpc-fast-path.ts,
 * client: clients/grpc-fast-transport.ts), with connect's wording for the errors.
 */

/** A gRPC envelope (flags 0, big-endian length, data) in a pooled Buffer (small typed arrays of their own are costly to allocate). */
export function envelope(data: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(5 + data.byteLength);
  out[0] = 0;
  out.writeUInt32BE(data.byteLength, 1);
  out.set(data, 5);
  return out;
}

export const incompleteEnvelope = () => new ConnectError("protocol error: incomplete envelope", Code.InvalidArgument);

export const tooLarge = (size: number, readMaxBytes: number) =>
  new ConnectError(`message size ${size} is larger than configured readMaxBytes ${readMaxBytes}`, Code.ResourceExhausted);
