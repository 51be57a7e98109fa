import { gunzipSync, gzipSync } from "node:zlib";
import * as http2 from "node:http2";
import { Writable } from "node:stream";
import { pathToFileURL } from "node:url";
import { create, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { EchoRequestSchema, EchoResponseSchema, EchoService } from "../../gen/orca/testing/v1/echo_pb.js";
import { OrcaServer, registration } from "../../services/kit/server/server.js";
import { createLogger } from "../../services/kit/telemetry/logger.js";
import { createServiceMetrics } from "../../services/kit/telemetry/metrics.js";
import { echoHandlers } from "../../services/kit/testing/echo.js";
import { ECHO_PATH, grpcFrame } from "./common.js";

/**
 * Fast path vs slow path, call for call: the same raw gRPC requests (valid, failing, malformed,
 * compressed, oversized, with deadlines and metadata) go to two OrcaServers that differ only in
 * `fastPath`, and the responses must match: HTTP status, response headers, body bytes and
 * trailers (grpc-status, grpc-message, grpc-status-details-bin, metadata), plus the per-call log
 * line. Values that differ by nature (date, generated correlation ids) are normalized.
 *
 * `npm run bench:rpc` runs it before loading anything; alone: node dist/bench/rpc/conformance.js
 */

const MAX_MESSAGE_BYTES = 64 * 1024;

/** EchoService plus one way to fail with error details, which echo itself cannot produce. */
const handlers: ServiceImpl<typeof EchoService> = {
  ...echoHandlers,
  async echo(req, ctx) {
    if (req.failWithMessage === "with-details") {
      throw new ConnectError("failed with details", Code.FailedPrecondition, { "x-detail": "1" }, [
        { desc: EchoResponseSchema, value: { correlationId: "detail" } },
      ]);
    }
    if (req.failWithMessage === "read-signal-late") {
      // Reads the signal only after the deadline passed: it must already be aborted.
      await new Promise((resolve) => setTimeout(resolve, 60));
      return { payload: new TextEncoder().encode(`aborted=${ctx.signal.aborted} ${String(ConnectError.from(ctx.signal.reason).code)}`) };
    }
    return echoHandlers.echo(req, ctx);
  },
};

interface Case {
  name: string;
  headers?: Record<string, string>;
  body: Buffer;
}

type EchoInit = MessageInitShape<typeof EchoRequestSchema>;
const frame = (init: EchoInit) => grpcFrame(toBinary(EchoRequestSchema, create(EchoRequestSchema, init)));
const bytes = (n: number) => new Uint8Array(n).fill(120);

function compressedFrame(init: EchoInit): Buffer {
  const data = gzipSync(toBinary(EchoRequestSchema, create(EchoRequestSchema, init)));
  const out = grpcFrame(data);
  out[0] = 1;
  return out;
}

export const CASES: Case[] = [
  { name: "ok", body: frame({ payload: bytes(16) }) },
  { name: "ok, empty message", body: frame({}) },
  { name: "metadata in and out", headers: { "x-echo": "hello", "x-request-id": "req-1" }, body: frame({ payload: bytes(3) }) },
  { name: "correlation id from traceparent", headers: { traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" }, body: frame({}) },
  { name: "content-type application/grpc+proto", headers: { "content-type": "application/grpc+proto" }, body: frame({ payload: bytes(4) }) },
  { name: "error code, message and metadata", body: frame({ failWithCode: Code.NotFound, failWithMessage: "no such thing: ü%" }) },
  { name: "error with details (grpc-status-details-bin)", body: frame({ failWithCode: 0, failWithMessage: "with-details" }) },
  { name: "domain error (InvalidArgument)", body: frame({ failWithCode: 99 }) },
  { name: "unexpected error -> Internal", headers: { "x-request-id": "req-2" }, body: frame({ throwUnexpected: true }) },
  { name: "deadline exceeded while waiting", headers: { "grpc-timeout": "30m" }, body: frame({ delayMs: 500 }) },
  { name: "deadline in time", headers: { "grpc-timeout": "5S" }, body: frame({ delayMs: 5 }) },
  { name: "signal read after the deadline", headers: { "grpc-timeout": "20m" }, body: frame({ failWithMessage: "read-signal-late" }) },
  { name: "invalid grpc-timeout", headers: { "grpc-timeout": "soon" }, body: frame({}) },
  { name: "unknown grpc-encoding", headers: { "grpc-encoding": "snappy" }, body: frame({}) },
  { name: "gzip request", headers: { "grpc-encoding": "gzip" }, body: compressedFrame({ payload: bytes(100) }) },
  { name: "compressed flag without grpc-encoding", body: compressedFrame({ payload: bytes(10) }) },
  { name: "gzip response (large payload)", headers: { "grpc-accept-encoding": "gzip" }, body: frame({ payload: bytes(4000) }) },
  { name: "small payload stays uncompressed", headers: { "grpc-accept-encoding": "gzip, br" }, body: frame({ payload: bytes(10) }) },
  { name: "request larger than readMaxBytes", body: frame({ payload: bytes(MAX_MESSAGE_BYTES + 10) }) },
  { name: "response larger than writeMaxBytes", body: frame({ payload: bytes(MAX_MESSAGE_BYTES - 10) }) },
  { name: "missing message", body: Buffer.alloc(0) },
  { name: "truncated envelope header", body: Buffer.from([0, 0, 0]) },
  { name: "truncated message", body: frame({ payload: bytes(20) }).subarray(0, 15) },
  { name: "two messages", body: Buffer.concat([frame({}), frame({})]) },
  { name: "malformed protobuf", body: grpcFrame(Buffer.from([0x0a, 0xff, 0xff, 0xff])) },
];

interface Outcome {
  status: number;
  headers: Record<string, string>;
  body: string;
  trailers: Record<string, string>;
  logLine?: string;
}

const UUID = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/g;

/** Header order carries no meaning in HTTP/2, so both sides are sorted. */
function normalize(headers: http2.IncomingHttpHeaders): Record<string, string> {
  const out: Record<string, string> = {};
  for (const key of Object.keys(headers).sort()) {
    const value = headers[key];
    if (key === "date" || key === ":status" || value === undefined) continue;
    out[key] = String(value).replace(UUID, "<uuid>");
  }
  return out;
}

/** The response body as text, gzip envelopes decompressed, generated correlation ids masked. */
function normalizeBody(body: Buffer): string {
  if (body.length === 0) return "";
  let message = body.subarray(5);
  let prefix = `flags=${body[0]} `;
  if (body[0] === 1) {
    try {
      message = gunzipSync(message);
      prefix += "gunzipped ";
    } catch {
      prefix += "not-gzip ";
    }
  }
  return prefix + message.toString("latin1").replace(UUID, "<uuid>");
}

/** The per-call log lines a server writes, kept to compare them. */
class LogLines extends Writable {
  lines: Record<string, unknown>[] = [];
  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: () => void): void {
    for (const line of chunk.toString().split("\n")) if (line.trim()) this.lines.push(JSON.parse(line) as Record<string, unknown>);
    callback();
  }
}

async function call(session: http2.ClientHttp2Session, c: Case): Promise<Omit<Outcome, "logLine">> {
  return new Promise((resolve, reject) => {
    const req = session.request({ ":method": "POST", ":path": ECHO_PATH, "content-type": "application/grpc", te: "trailers", ...c.headers });
    let status = 0;
    let headers: Record<string, string> = {};
    let trailers: Record<string, string> = {};
    const chunks: Buffer[] = [];
    req.once("response", (h) => {
      status = Number(h[":status"]);
      headers = normalize(h);
    });
    req.once("trailers", (t) => (trailers = normalize(t)));
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.once("error", reject);
    req.once("close", () => resolve({ status, headers, trailers, body: normalizeBody(Buffer.concat(chunks)) }));
    req.end(c.body);
  });
}

async function startServer(fastPath: boolean) {
  const logs = new LogLines();
  const server = new OrcaServer({
    name: "conformance",
    host: "127.0.0.1",
    port: 0,
    adminPort: 0,
    services: [registration(EchoService, handlers)],
    logger: createLogger({ level: "info", service: "conformance", destination: logs }),
    metrics: createServiceMetrics("conformance", { processMetrics: false }),
    shutdownGraceMs: 1000,
    maxMessageBytes: MAX_MESSAGE_BYTES,
    fastPath,
  });
  const { url } = await server.start();
  return { server, url, logs };
}

/** Runs every case against both paths; returns the differences (empty when they agree). */
export async function checkConformance(log: (line: string) => void = () => {}): Promise<string[]> {
  const fast = await startServer(true);
  const slow = await startServer(false);
  const fastSession = http2.connect(fast.url);
  const slowSession = http2.connect(slow.url);
  const problems: string[] = [];
  try {
    for (const c of CASES) {
      const outcomes: Outcome[] = [];
      for (const [server, session] of [
        [fast, fastSession],
        [slow, slowSession],
      ] as const) {
        const before = server.logs.lines.length;
        const outcome: Outcome = await call(session, c);
        await new Promise((resolve) => setTimeout(resolve, 5)); // let the log line land
        const lines = server.logs.lines.slice(before).filter((line) => line.msg === "rpc");
        outcome.logLine = lines.map((line) => `${String(line.level)} ${String(line.method)} ${String(line.code)}`).join("; ");
        outcomes.push(outcome);
      }
      const [a, b] = outcomes.map((o) => JSON.stringify(o, null, 1));
      const status = outcomes[0].trailers["grpc-status"] ?? outcomes[0].headers["grpc-status"] ?? "?";
      if (a === b) log(`  ok    ${c.name} (grpc-status ${status})${process.env.CONFORMANCE_VERBOSE ? `\n        ${a.replace(/\n/g, "")}` : ""}`);
      else {
        log(`  DIFF  ${c.name}`);
        problems.push(`${c.name}:\n  fast path: ${a.replace(/\n/g, "")}\n  slow path: ${b.replace(/\n/g, "")}`);
      }
    }
  } finally {
    fastSession.close();
    slowSession.close();
    await Promise.all([fast.server.shutdown(), slow.server.shutdown()]);
  }
  return problems;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const problems = await checkConformance(console.log);
  if (problems.length > 0) {
    console.error(`\n${problems.length} of ${CASES.length} cases differ:\n${problems.join("\n")}`);
    process.exit(1);
  }
  console.log(`fast path and slow path agree on all ${CASES.length} cases`);
  process.exit(0);
}
