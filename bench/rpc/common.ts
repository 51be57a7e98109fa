import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { create, toBinary } from "@bufbuild/protobuf";
import { EchoRequestSchema, EchoResponseSchema } from "../../gen/orca/testing/v1/echo_pb.js";

/** Shared between the load generator (run.ts) and the server children (server.ts). */

export const ECHO_PATH = "/orca.testing.v1.EchoService/Echo";

export const SERVER_KINDS = ["bare", "grpc-js", "kit", "kit-slow", "kit-raw", "kit-id-in-body"] as const;
/** What `npm run bench:rpc` runs unless BENCH_SERVERS says otherwise. */
export const DEFAULT_SERVERS: readonly ServerKind[] = ["bare", "grpc-js", "kit", "kit-slow"];
export type ServerKind = (typeof SERVER_KINDS)[number];

export const SERVER_LABELS: Record<ServerKind, string> = {
  bare: "bare node:http2",
  "grpc-js": "@grpc/grpc-js",
  kit: "kit (fast path)",
  "kit-slow": "kit (fast path off)",
  "kit-raw": "kit fast path, no interceptors",
  "kit-id-in-body": "kit (fast path), id also in body",
};

/** Messages a server child sends to its parent over IPC. */
export type ChildMessage = { type: "ready"; port: number } | { type: "cpu"; usage: NodeJS.CpuUsage; mainThreadUs?: number; logBytes?: number };
/** Messages the parent sends to a server child. */
export type ParentMessage = { type: "cpu" };

/** The payload every call echoes: `size` deterministic bytes. */
export function benchPayload(size: number): Uint8Array {
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i++) bytes[i] = 97 + (i % 26);
  return bytes;
}

/** A gRPC length-prefixed message: flags byte 0 (uncompressed), 4-byte big-endian length, data. */
export function grpcFrame(message: Uint8Array): Buffer {
  const frame = Buffer.alloc(5 + message.length);
  frame.writeUInt32BE(message.length, 1);
  frame.set(message, 5);
  return frame;
}

export function echoRequestFrame(payloadBytes: number): Buffer {
  return grpcFrame(toBinary(EchoRequestSchema, create(EchoRequestSchema, { payload: benchPayload(payloadBytes) })));
}

/** What the bare responder sends back to every call. */
export function echoResponseFrame(payloadBytes: number): Buffer {
  return grpcFrame(toBinary(EchoResponseSchema, create(EchoResponseSchema, { payload: benchPayload(payloadBytes) })));
}

/** The repository root (the directory holding proto/), from bench/rpc or dist/bench/rpc. */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, "proto", "orca", "testing", "v1", "echo.proto"))) return dir;
    const parent = dirname(dir);
    if (parent === dir) throw new Error("cannot find the repository root (proto/orca/testing/v1/echo.proto)");
    dir = parent;
  }
}
