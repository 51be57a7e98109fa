import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { SpanKind } from "@opentelemetry/api";
import { afterEach, describe, expect, it } from "vitest";
import { EchoService } from "../../gen/orca/testing/v1/echo_pb.js";
import { fetchText, metricValue, sleep } from "./helpers.js";

const root = fileURLToPath(new URL("../../", import.meta.url));
const TRACE_ID = "0af7651916cd43dd8448eb211c80319c";
const PARENT_SPAN_ID = "b7ad6b7169203331";

interface Fixture {
  child: ChildProcess;
  info: { port: number; adminPort: number; url: string; pid: number };
  stdoutLines: string[];
  stderr: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const started: ChildProcess[] = [];

afterEach(() => {
  // Only the processes this file started, and only if a test left them running.
  for (const child of started.splice(0)) {
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) child.kill("SIGKILL");
  }
});

async function startFixture(env: Record<string, string> = {}): Promise<Fixture> {
  const child = spawn("npx", ["tsx", "test/fixtures/echo-server.ts"], {
    cwd: root,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  started.push(child);
  let stderr = "";
  child.stderr!.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once("exit", (code, signal) => resolve({ code, signal })),
  );
  const stdoutLines: string[] = [];
  const lines = createInterface({ input: child.stdout! });
  const info = await new Promise<Fixture["info"]>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`fixture did not start; stderr:\n${stderr}`)), 25_000);
    lines.on("line", (line) => {
      stdoutLines.push(line);
      if (stdoutLines.length === 1) {
        clearTimeout(timer);
        resolve(JSON.parse(line) as Fixture["info"]);
      }
    });
    void exited.then(({ code }) => reject(new Error(`fixture exited with ${code} before listening; stderr:\n${stderr}`)));
  });
  return { child, info, stdoutLines, stderr: () => stderr, exited };
}

async function waitFor(condition: () => boolean | Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await sleep(10);
  }
}

describe("SIGTERM", () => {
  it.each([
    ["fast path", "1"],
    ["connect-node path", "0"],
  ])("drains (%s): the in-flight call completes, new calls are refused, the process exits 0", async (_name, fastPath) => {
    const fixture = await startFixture({ ORCA_FIXTURE_TRACING: "1", ORCA_GRPC_FAST_PATH: fastPath });
    const { port, adminPort, url, pid } = fixture.info;
    expect(port).toBeGreaterThan(0);
    const client = createClient(EchoService, createGrpcTransport({ baseUrl: url }));

    // A traced call, to check that the process records spans under ESM (node + tsx loader).
    const traced = await client.echo({}, { headers: { traceparent: `00-${TRACE_ID}-${PARENT_SPAN_ID}-01` } });
    expect(traced.correlationId).toBe(TRACE_ID);

    const startedAt = performance.now();
    const inFlight = client.echo({ payload: new TextEncoder().encode("finish me"), delayMs: 1000 });
    const labels = { grpc_service: "orca.testing.v1.EchoService", grpc_method: "Echo" };
    await waitFor(async () => {
      const text = (await fetchText(`http://127.0.0.1:${adminPort}/metrics`)).body;
      return (metricValue(text, "grpc_server_started_total", labels) ?? 0) >= 2;
    });

    process.kill(pid, "SIGTERM");
    await waitFor(() => fixture.stderr().includes("draining"));

    // New calls are refused: a new connection (listener closed) and every protocol.
    for (const transport of [
      createGrpcTransport({ baseUrl: url }),
      createConnectTransport({ baseUrl: url, httpVersion: "1.1" }),
      createConnectTransport({ baseUrl: url, httpVersion: "2" }),
    ]) {
      const error = await createClient(EchoService, transport)
        .echo({})
        .then(() => undefined, ConnectError.from);
      expect(error?.code).toBe(Code.Unavailable);
    }

    const res = await inFlight;
    expect(new TextDecoder().decode(res.payload)).toBe("finish me");
    expect(performance.now() - startedAt).toBeGreaterThanOrEqual(990);

    const exit = await fixture.exited;
    expect(exit).toEqual({ code: 0, signal: null });
    expect(fixture.stderr()).toMatch(/"msg":"stopped"/);

    // Spans recorded in the child: the traced call continues the caller's trace.
    const spans = JSON.parse(fixture.stdoutLines.find((line) => line.startsWith('{"spans"'))!) as {
      spans: { name: string; kind: number; traceId: string; parentSpanId?: string; code: number }[];
    };
    const server = spans.spans.filter((s) => s.kind === SpanKind.SERVER && s.name === "orca.testing.v1.EchoService/Echo");
    expect(server).toHaveLength(2);
    expect(server[0]).toMatchObject({ traceId: TRACE_ID, parentSpanId: PARENT_SPAN_ID, code: 0 });
    expect(server[1].traceId).not.toBe(TRACE_ID);
    expect(server[1].code).toBe(0);
  });

  it("exits 0 at once when idle", async () => {
    const fixture = await startFixture();
    const started = performance.now();
    process.kill(fixture.info.pid, "SIGTERM");
    expect(await fixture.exited).toEqual({ code: 0, signal: null });
    expect(performance.now() - started).toBeLessThan(5000);
  });

  it("cuts a call that outlives ORCA_SHUTDOWN_GRACE_MS and still exits 0", async () => {
    const fixture = await startFixture({ ORCA_SHUTDOWN_GRACE_MS: "300" });
    const client = createClient(EchoService, createGrpcTransport({ baseUrl: fixture.info.url }));
    const inFlight = client.echo({ delayMs: 10_000 }).then(() => undefined, ConnectError.from);
    await sleep(200);
    const started = performance.now();
    process.kill(fixture.info.pid, "SIGTERM");
    expect(await fixture.exited).toEqual({ code: 0, signal: null });
    expect(performance.now() - started).toBeLessThan(5000);
    const error = await inFlight;
    expect(error).toBeInstanceOf(ConnectError);
  });
});
