import { mkdtempSync } from "node:fs";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";
import { expect } from "vitest";
export { waitFor } from "../support/wait.js";
import { EchoService } from "../../gen/orca/testing/v1/echo_pb.js";
import { openDatabase, openMemoryDatabase, type Database } from "../../services/kit/db/database.js";
import { OrcaServer, registration } from "../../services/kit/server/server.js";
import { createLogger } from "../../services/kit/telemetry/logger.js";
import { echoHandlers } from "../../services/kit/testing/echo.js";
import { createFreshDatabase, postgresAvailable } from "../support/postgres.js";

/** Real Postgres when DATABASE_URL is set, else in-memory PGlite. */
export async function openTestDatabase(): Promise<{ database: Database; cleanup: () => Promise<void>; kind: string }> {
  if (!postgresAvailable) {
    const database = await openMemoryDatabase();
    return { database, kind: "pglite", cleanup: () => database.close() };
  }
  const fresh = await createFreshDatabase();
  const database = await openDatabase({ databaseUrl: fresh.url, dataDir: mkdtempSync(join(tmpdir(), "orca-monitor-")), logger: createLogger({ level: "silent" }) });
  return {
    database,
    kind: "postgres",
    cleanup: async () => {
      await database.close();
      await fresh.drop();
    },
  };
}

/** Short intervals for tests (read by readMonitorConfig inside create()). */
export const FAST_ENV: Record<string, string> = {
  ORCA_MONITOR_MIN_INTERVAL_MS: "20",
  ORCA_MONITOR_PROBE_INTERVAL_MS: "50",
  ORCA_MONITOR_PROBE_TIMEOUT_MS: "1000",
  ORCA_MONITOR_BUILTIN_TARGETS: "0",
  ORCA_MONITOR_TICK_MS: "50",
  ORCA_MONITOR_WARMUP_SAMPLES: "10",
  // Faster-adapting baselines than production, so a test baseline settles in a few seconds.
  ORCA_MONITOR_EWMA_FAST_ALPHA: "0.5",
  ORCA_MONITOR_EWMA_SLOW_ALPHA: "0.2",
  ORCA_MONITOR_WEBHOOK_BACKOFF_MS: "20",
  ORCA_MONITOR_WEBHOOK_BACKOFF_MAX_MS: "100",
  ORCA_MONITOR_WEBHOOK_MAX_ATTEMPTS: "3",
  ORCA_MONITOR_WEBHOOK_TIMEOUT_MS: "2000",
  ORCA_MONITOR_RECOVERY_BACKOFF_MS: "50",
  ORCA_WEBHOOK_SECRET_TEST: "s3cret-current",
};

export function setEnv(env: Record<string, string>): () => void {
  const previous = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
  Object.assign(process.env, env);
  return () => {
    for (const [k, v] of Object.entries(previous)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  };
}

/** A real OrcaServer (Echo + the kit's health service) on a port; `port` 0 picks one. */
export async function startTargetServer(port = 0, shutdownGraceMs = 200): Promise<{ server: OrcaServer; port: number; url: string }> {
  const server = new OrcaServer({
    name: "target",
    host: "127.0.0.1",
    port,
    adminPort: 0,
    services: [registration(EchoService, echoHandlers)],
    logger: createLogger({ level: "silent" }),
    shutdownGraceMs,
    maxMessageBytes: 4 << 20,
    fastPath: true,
  });
  const endpoints = await server.start();
  return { server, port: endpoints.port, url: endpoints.url };
}

export interface ReceivedRequest {
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/** A local webhook receiver on 127.0.0.1; `respond` decides the status of each request. */
export async function startReceiver(respond: (req: ReceivedRequest) => number = () => 200) {
  const received: ReceivedRequest[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const entry = { headers: req.headers, body: Buffer.concat(chunks) };
      received.push(entry);
      res.writeHead(respond(entry)).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}/hook`,
    received,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** An HTTP target whose response delay can be changed. */
export async function startSlowHttpTarget() {
  const state = { delayMs: 0, status: 200 };
  const server = http.createServer((_req, res) => {
    setTimeout(() => res.writeHead(state.status).end("ok"), state.delayMs);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}/health`,
    state,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}


export async function expectCode(promise: Promise<unknown>, code: Code, field?: string): Promise<void> {
  try {
    await promise;
  } catch (error) {
    const ce = ConnectError.from(error);
    expect(Code[ce.code]).toBe(Code[code]);
    if (field) expect(ce.rawMessage).toContain(field);
    return;
  }
  throw new Error(`expected ${Code[code]}, got success`);
}
