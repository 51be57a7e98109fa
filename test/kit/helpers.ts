import { Writable } from "node:stream";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { EchoService, type EchoRequestSchema } from "../../gen/orca/testing/v1/echo_pb.js";
import { OrcaServer, registration, type Endpoints, type OrcaServerOptions } from "../../services/kit/server/server.js";
import { createLogger, type Logger } from "../../services/kit/telemetry/logger.js";
import { createServiceMetrics } from "../../services/kit/telemetry/metrics.js";
import { echoHandlers } from "../../services/kit/testing/echo.js";

/** A pino destination that keeps every JSON line it receives. */
export class LogCapture extends Writable {
  readonly lines: Record<string, unknown>[] = [];
  readonly raw: string[] = [];
  private pending = "";

  override _write(chunk: Buffer | string, _encoding: BufferEncoding, callback: () => void): void {
    this.pending += chunk.toString();
    let newline: number;
    while ((newline = this.pending.indexOf("\n")) >= 0) {
      const line = this.pending.slice(0, newline);
      this.pending = this.pending.slice(newline + 1);
      if (line.trim() === "") continue;
      this.raw.push(line);
      this.lines.push(JSON.parse(line) as Record<string, unknown>);
    }
    callback();
  }

  /** The per-call "rpc" log lines. */
  rpcLines(): Record<string, unknown>[] {
    return this.lines.filter((line) => line.msg === "rpc");
  }
}

export interface EchoServerHandle {
  server: OrcaServer;
  endpoints: Endpoints;
  url: string;
  logs: LogCapture;
  logger: Logger;
}

/** Starts an OrcaServer with the EchoService on ephemeral ports (grpc and admin). */
export async function startEchoServer(overrides: Partial<OrcaServerOptions> = {}): Promise<EchoServerHandle> {
  const logs = new LogCapture();
  const logger = createLogger({ level: "info", service: "echo", destination: logs });
  const server = new OrcaServer({
    name: "echo",
    host: "127.0.0.1",
    port: 0,
    adminPort: 0,
    services: [registration(EchoService, echoHandlers)],
    logger,
    metrics: createServiceMetrics("echo", { processMetrics: false }),
    shutdownGraceMs: 5_000,
    maxMessageBytes: 4 * 1024 * 1024,
    fastPath: true,
    ...overrides,
  });
  const endpoints = await server.start();
  return { server, endpoints, url: endpoints.url, logs, logger };
}

export async function fetchText(url: string): Promise<{ status: number; body: string }> {
  const res = await fetch(url);
  return { status: res.status, body: await res.text() };
}

/** Reads a counter or histogram sample from Prometheus text output. */
export function metricValue(text: string, name: string, labels: Record<string, string>): number | undefined {
  for (const line of text.split("\n")) {
    if (!line.startsWith(name + "{") && !line.startsWith(name + " ")) continue;
    const match = /^([^{ ]+)(?:\{([^}]*)\})? (\S+)/.exec(line);
    if (!match || match[1] !== name) continue;
    const found: Record<string, string> = {};
    for (const pair of (match[2] ?? "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) found[pair[1]] = pair[2];
    if (Object.entries(labels).every(([key, value]) => found[key] === value)) return Number(match[3]);
  }
  return undefined;
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const UUID_SHAPE = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

/** Headers as a caller sees them, with values that differ per call (date, generated ids) replaced by their shape. */
export function normalizeHeaders(headers: Headers | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  headers?.forEach((value, key) => {
    if (key === "date") return;
    out[key] = key === "x-request-id" && UUID_SHAPE.test(value) ? "<uuid>" : value;
  });
  return out;
}

/** One Echo call through the generated client, reduced to what a caller can observe. */
export async function observeEcho(
  transport: Transport,
  request: MessageInitShape<typeof EchoRequestSchema>,
  options: { headers?: Record<string, string>; timeoutMs?: number; signal?: AbortSignal } = {},
) {
  let header: Headers | undefined;
  let trailer: Headers | undefined;
  try {
    const res = await createClient(EchoService, transport).echo(request, { ...options, onHeader: (h) => (header = h), onTrailer: (t) => (trailer = t) });
    return {
      ok: true,
      payload: Buffer.from(res.payload).toString("base64"),
      correlationId: UUID_SHAPE.test(res.correlationId) ? "<uuid>" : res.correlationId,
      header: normalizeHeaders(header),
      trailer: normalizeHeaders(trailer),
    };
  } catch (e) {
    const error = ConnectError.from(e);
    return { ok: false, code: Code[error.code], message: error.rawMessage, metadata: normalizeHeaders(error.metadata) };
  }
}
