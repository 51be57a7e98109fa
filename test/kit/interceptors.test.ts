import { Code, ConnectError, createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import { InMemorySpanExporter } from "@opentelemetry/sdk-trace-base";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { EchoService } from "../../gen/orca/testing/v1/echo_pb.js";
import { callScope, readCallScope } from "../../services/kit/call-scope.js";
import { startTracing, type TracingHandle } from "../../services/kit/telemetry/tracing.js";
import { fetchText, metricValue, startEchoServer, type EchoServerHandle } from "./helpers.js";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID = "00f067aa0ba902b7";
const TRACEPARENT = `00-${TRACE_ID}-${PARENT_SPAN_ID}-01`;

/** What the handler's async context looked like, seen from an interceptor inside the chain. */
interface SeenInside {
  correlationId?: string;
  spanId?: string;
  traceId?: string;
}

let exporter: InMemorySpanExporter;
let tracing: TracingHandle;
let echo: EchoServerHandle;
let seenInside: SeenInside[] = [];
let transports: Record<"grpc" | "connect", Transport>;

// Runs between observe and error mapping (options.interceptors), that is inside the call's scope.
const probe: Interceptor = (next) => async (req) => {
  const span = trace.getActiveSpan()?.spanContext();
  seenInside.push({ correlationId: callScope.getStore()?.correlationId, spanId: span?.spanId, traceId: span?.traceId });
  return next(req);
};

beforeAll(async () => {
  // The probe reads the call scope, as an outgoing client's propagation does.
  readCallScope();
  exporter = new InMemorySpanExporter();
  tracing = startTracing({ serviceName: "echo-test", exporter });
  echo = await startEchoServer({ interceptors: [probe] });
  transports = {
    grpc: createGrpcTransport({ baseUrl: echo.url }),
    connect: createConnectTransport({ baseUrl: echo.url, httpVersion: "1.1" }),
  };
});

afterAll(async () => {
  await echo?.server.shutdown();
  await tracing?.shutdown();
});

beforeEach(() => {
  seenInside = [];
  exporter.reset();
});

async function echoWithHeaders(client: Client<typeof EchoService>, headers: Record<string, string>) {
  let responseHeader: Headers | undefined;
  const res = await client.echo({ payload: new TextEncoder().encode("hi") }, { headers, onHeader: (h) => (responseHeader = h) });
  return { correlationId: res.correlationId, header: responseHeader?.get("x-request-id") };
}

describe.each(["grpc", "connect"] as const)("correlation id over %s", (protocol) => {
  const client = () => createClient(EchoService, transports[protocol]);

  it("accepts a well-formed x-request-id and echoes it back", async () => {
    const got = await echoWithHeaders(client(), { "x-request-id": "req-42.a:b_C" });
    expect(got).toEqual({ correlationId: "req-42.a:b_C", header: "req-42.a:b_C" });
    expect(seenInside.at(-1)?.correlationId).toBe("req-42.a:b_C");
  });

  it("replaces an ill-formed x-request-id with a new UUID", async () => {
    for (const bad of ["has spaces in it", "a".repeat(129), "quote\"d", "{\"json\":1}"]) {
      const got = await echoWithHeaders(client(), { "x-request-id": bad });
      expect(got.correlationId).toMatch(UUID);
      expect(got.header).toBe(got.correlationId);
    }
  });

  it("uses the traceparent's trace id when there is no x-request-id", async () => {
    const got = await echoWithHeaders(client(), { traceparent: TRACEPARENT });
    expect(got).toEqual({ correlationId: TRACE_ID, header: TRACE_ID });
  });

  it("prefers x-request-id over traceparent", async () => {
    const got = await echoWithHeaders(client(), { "x-request-id": "mine", traceparent: TRACEPARENT });
    expect(got.correlationId).toBe("mine");
  });

  it("ignores an invalid traceparent and creates a new UUID when nothing usable is sent", async () => {
    const a = await echoWithHeaders(client(), {});
    const b = await echoWithHeaders(client(), { traceparent: "00-00000000000000000000000000000000-00f067aa0ba902b7-01" });
    const c = await echoWithHeaders(client(), { traceparent: "garbage" });
    for (const got of [a, b, c]) {
      expect(got.correlationId).toMatch(UUID);
      expect(got.header).toBe(got.correlationId);
    }
    expect(new Set([a.correlationId, b.correlationId, c.correlationId]).size).toBe(3);
  });

  it("returns the correlation id on errors too", async () => {
    let error: ConnectError | undefined;
    try {
      await client().echo({ failWithCode: Code.NotFound, failWithMessage: "nope" }, { headers: { "x-request-id": "err-1" } });
    } catch (e) {
      error = ConnectError.from(e);
    }
    expect(error?.code).toBe(Code.NotFound);
    expect(error?.metadata.get("x-request-id")).toBe("err-1");
  });
});

describe("metrics", () => {
  it("exposes grpc_server_started_total, grpc_server_handled_total and grpc_server_handling_seconds on the admin port", async () => {
    const client = createClient(EchoService, transports.grpc);
    const base = { grpc_service: "orca.testing.v1.EchoService", grpc_method: "Echo", grpc_type: "unary" };
    const before = (await fetchText(`http://127.0.0.1:${echo.endpoints.adminPort}/metrics`)).body;
    const startedBefore = metricValue(before, "grpc_server_started_total", base) ?? 0;
    const okBefore = metricValue(before, "grpc_server_handled_total", { ...base, grpc_code: "OK" }) ?? 0;
    const notFoundBefore = metricValue(before, "grpc_server_handled_total", { ...base, grpc_code: "NotFound" }) ?? 0;
    const countBefore = metricValue(before, "grpc_server_handling_seconds_count", base) ?? 0;

    await client.echo({});
    await client.echo({});
    await expect(client.echo({ failWithCode: Code.NotFound })).rejects.toMatchObject({ code: Code.NotFound });

    const res = await fetchText(`http://127.0.0.1:${echo.endpoints.adminPort}/metrics`);
    expect(res.status).toBe(200);
    const text = res.body;
    expect(text).toContain("# TYPE grpc_server_started_total counter");
    expect(text).toContain("# TYPE grpc_server_handled_total counter");
    expect(text).toContain("# TYPE grpc_server_handling_seconds histogram");
    expect(metricValue(text, "grpc_server_started_total", base)).toBe(startedBefore + 3);
    expect(metricValue(text, "grpc_server_handled_total", { ...base, grpc_code: "OK" })).toBe(okBefore + 2);
    expect(metricValue(text, "grpc_server_handled_total", { ...base, grpc_code: "NotFound" })).toBe(notFoundBefore + 1);
    expect(metricValue(text, "grpc_server_handling_seconds_count", base)).toBe(countBefore + 3);
    expect(metricValue(text, "grpc_server_handling_seconds_bucket", { ...base, le: "+Inf" })).toBe(countBefore + 3);
    expect(metricValue(text, "grpc_server_handling_seconds_sum", base)).toBeGreaterThan(0);
    // Each service has its own registry, labelled with its name.
    expect(text).toMatch(/grpc_server_started_total\{[^}]*orca_service="echo"/);
  });
});

describe("log lines", () => {
  it("writes one line per call with method, code, durationMs and correlationId, and never payloads or headers", async () => {
    const payload = "PAYLOAD-CANARY-8c1f";
    const secretHeaders = { "x-echo": "HEADER-CANARY-91d2", authorization: "Bearer TOKEN-CANARY-55aa" };
    for (const protocol of ["grpc", "connect"] as const) {
      const client = createClient(EchoService, transports[protocol]);
      const ids = { ok: `${protocol}-ok`, fail: `${protocol}-fail`, boom: `${protocol}-boom` };
      await client.echo({ payload: new TextEncoder().encode(payload) }, { headers: { ...secretHeaders, "x-request-id": ids.ok } });
      await expect(
        client.echo({ payload: new TextEncoder().encode(payload), failWithCode: Code.FailedPrecondition, failWithMessage: "wrong state" }, {
          headers: { ...secretHeaders, "x-request-id": ids.fail },
        }),
      ).rejects.toMatchObject({ code: Code.FailedPrecondition });
      await expect(
        client.echo({ payload: new TextEncoder().encode(payload), throwUnexpected: true }, { headers: { ...secretHeaders, "x-request-id": ids.boom } }),
      ).rejects.toMatchObject({ code: Code.Internal });

      const expected = { [ids.ok]: ["OK", "info"], [ids.fail]: ["FailedPrecondition", "info"], [ids.boom]: ["Internal", "error"] };
      for (const [id, [code, level]] of Object.entries(expected)) {
        const lines = echo.logs.rpcLines().filter((line) => line.correlationId === id);
        expect(lines, `rpc lines for ${id}`).toHaveLength(1);
        const line = lines[0];
        expect(Object.keys(line).sort()).toEqual(["code", "correlationId", "durationMs", "level", "method", "msg", "service", "time"]);
        expect(line).toMatchObject({ method: "orca.testing.v1.EchoService/Echo", code, level, service: "echo" });
        expect(typeof line.durationMs).toBe("number");
        expect(line.durationMs as number).toBeGreaterThanOrEqual(0);
      }
    }
    const all = echo.logs.raw.join("\n");
    for (const canary of [payload, Buffer.from(payload).toString("base64"), "HEADER-CANARY", "TOKEN-CANARY"]) {
      expect(all).not.toContain(canary);
    }
    // The unexpected error's detail stays in the server log, with the correlation id to find it.
    const detail = echo.logs.lines.find((line) => line.msg === "unexpected error in handler" && line.correlationId === "grpc-boom");
    expect(detail).toBeDefined();
  });
});

describe("tracing", () => {
  function serverSpans() {
    return exporter.getFinishedSpans().filter((span) => span.kind === SpanKind.SERVER && span.name === "orca.testing.v1.EchoService/Echo");
  }

  it.each(["grpc", "connect"] as const)("records a SERVER span that continues the caller's traceparent (%s)", async (protocol) => {
    const client = createClient(EchoService, transports[protocol]);
    const res = await client.echo({}, { headers: { traceparent: TRACEPARENT } });
    expect(res.correlationId).toBe(TRACE_ID);
    const spans = serverSpans();
    expect(spans).toHaveLength(1);
    const span = spans[0];
    expect(span.spanContext().traceId).toBe(TRACE_ID);
    expect(span.parentSpanContext?.spanId).toBe(PARENT_SPAN_ID);
    expect(span.parentSpanContext?.isRemote).toBe(true);
    expect(span.attributes).toMatchObject({
      "rpc.system": "grpc",
      "rpc.service": "orca.testing.v1.EchoService",
      "rpc.method": "Echo",
      "orca.service": "echo",
      "orca.correlation_id": TRACE_ID,
      "rpc.grpc.status_code": 0,
    });
    expect(span.status.code).not.toBe(SpanStatusCode.ERROR);
    expect(span.resource.attributes["service.name"]).toBe("echo-test");
    // The span is the active one inside the chain (AsyncLocalStorage context manager works).
    expect(seenInside).toHaveLength(1);
    expect(seenInside[0]).toEqual({ correlationId: TRACE_ID, spanId: span.spanContext().spanId, traceId: TRACE_ID });
  });

  it("starts a new trace without a traceparent and marks failed calls as errors", async () => {
    const client = createClient(EchoService, transports.grpc);
    await expect(client.echo({ failWithCode: Code.Aborted })).rejects.toMatchObject({ code: Code.Aborted });
    const spans = serverSpans();
    expect(spans).toHaveLength(1);
    expect(spans[0].parentSpanContext).toBeUndefined();
    expect(spans[0].spanContext().traceId).toMatch(/^[0-9a-f]{32}$/);
    expect(spans[0].spanContext().traceId).not.toBe(TRACE_ID);
    expect(spans[0].status).toEqual({ code: SpanStatusCode.ERROR, message: "Aborted" });
    expect(spans[0].attributes["rpc.grpc.status_code"]).toBe(Code.Aborted);
    expect(seenInside[0].spanId).toBe(spans[0].spanContext().spanId);
  });

  it("records spans for server-streaming calls when the stream ends", async () => {
    const client = createClient(EchoService, transports.grpc);
    let count = 0;
    for await (const _ of client.echoStream({ repeat: 3 }, { headers: { traceparent: TRACEPARENT } })) count++;
    expect(count).toBe(3);
    const span = exporter.getFinishedSpans().find((s) => s.name === "orca.testing.v1.EchoService/EchoStream");
    expect(span?.spanContext().traceId).toBe(TRACE_ID);
    expect(span?.attributes["rpc.grpc.status_code"]).toBe(0);
  });
});
