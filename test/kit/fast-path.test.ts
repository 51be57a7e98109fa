/**
 * Conformance of the kit's unary gRPC fast path (services/kit/server/grpc-fast-path.ts) with
 * connect-node's path: the same calls against two servers, fastPath true and false, must give
 * the same observable results on the wire, in the logs and in the metrics.
 */
import * as http2 from "node:http2";
import { createRequire, syncBuiltinESMExports } from "node:module";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code, createClient } from "@connectrpc/connect";
import { compressionGzip, createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EchoRequestSchema, EchoService, type EchoRequest } from "../../gen/orca/testing/v1/echo_pb.js";
import { fetchText, metricValue, observeEcho as observe, startEchoServer, type EchoServerHandle } from "./helpers.js";

// Counts the requests that go through Node's http2 compatibility layer, i.e. connect-node's
// path (server.ts builds an Http2ServerRequest for every stream the fast path does not take).
// The kit is not changed for this: the builtin's export is wrapped for the test process only.
const http2cjs = createRequire(import.meta.url)("node:http2") as typeof http2;
const OriginalRequest = http2cjs.Http2ServerRequest;
let compatRequests = 0;
class CountingRequest extends OriginalRequest {
  constructor(...args: ConstructorParameters<typeof OriginalRequest>) {
    super(...args);
    compatRequests++;
  }
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const ECHO_PATH = "/orca.testing.v1.EchoService/Echo";
const LABELS = { grpc_service: "orca.testing.v1.EchoService", grpc_method: "Echo", grpc_type: "unary" };

type Mode = "fast" | "slow";
const MODES: Mode[] = ["fast", "slow"];

let servers: Record<Mode, EchoServerHandle>;
let small: Record<Mode, EchoServerHandle>;

beforeAll(async () => {
  http2cjs.Http2ServerRequest = CountingRequest as typeof OriginalRequest;
  syncBuiltinESMExports();
  servers = { fast: await startEchoServer({ fastPath: true }), slow: await startEchoServer({ fastPath: false }) };
  small = {
    fast: await startEchoServer({ fastPath: true, maxMessageBytes: 1024 }),
    slow: await startEchoServer({ fastPath: false, maxMessageBytes: 1024 }),
  };
});

afterAll(async () => {
  await Promise.all([...Object.values(servers ?? {}), ...Object.values(small ?? {})].map((s) => s.server.shutdown()));
  http2cjs.Http2ServerRequest = OriginalRequest;
  syncBuiltinESMExports();
});

async function both<T>(run: (mode: Mode) => Promise<T>): Promise<Record<Mode, T>> {
  return { fast: await run("fast"), slow: await run("slow") };
}

/** A raw HTTP/2 gRPC call, to send headers the generated client would not. */
async function rawCall(url: string, headers: http2.OutgoingHttpHeaders, body: Uint8Array) {
  const session = http2.connect(url);
  try {
    return await new Promise<{ status: number; header: Record<string, string>; trailer: Record<string, string>; body: number }>((resolve, reject) => {
      const req = session.request({ ":method": "POST", ":path": ECHO_PATH, "content-type": "application/grpc", te: "trailers", ...headers });
      const result = { status: 0, header: {} as Record<string, string>, trailer: {} as Record<string, string>, body: 0 };
      const flat = (h: http2.IncomingHttpHeaders) => {
        const out: Record<string, string> = {};
        for (const [key, value] of Object.entries(h)) {
          if (key === "date" || key === ":status" || value === undefined) continue;
          const text = String(value);
          out[key] = key === "x-request-id" && UUID.test(text) ? "<uuid>" : text;
        }
        return out;
      };
      req.on("response", (h) => {
        result.status = Number(h[":status"]);
        result.header = flat(h);
      });
      req.on("trailers", (t) => (result.trailer = flat(t)));
      req.on("data", (chunk: Buffer) => (result.body += chunk.length));
      req.on("error", reject);
      req.on("close", () => resolve(result));
      req.end(body);
    });
  } finally {
    session.close();
  }
}

function envelope(request: EchoRequest, flags = 0): Buffer {
  const message = toBinary(EchoRequestSchema, request);
  const out = Buffer.alloc(5 + message.length);
  out[0] = flags;
  out.writeUInt32BE(message.length, 1);
  Buffer.from(message).copy(out, 5);
  return out;
}

async function metrics(handle: EchoServerHandle): Promise<string> {
  return (await fetchText(`http://127.0.0.1:${handle.endpoints.adminPort}/metrics`)).body;
}

function handled(text: string, code: string): number {
  return metricValue(text, "grpc_server_handled_total", { ...LABELS, grpc_code: code }) ?? 0;
}

describe("fast path conformance (fastPath true vs false)", () => {
  const transport = (mode: Mode) => createGrpcTransport({ baseUrl: servers[mode].url });

  it("success: payload, response header x-echo, trailer x-echo-trailer, x-request-id", async () => {
    const payload = new Uint8Array(300).map((_, i) => i % 251);
    const got = await both((mode) => observe(transport(mode), { payload }, { headers: { "x-echo": "hello", "x-request-id": "conf-1" } }));
    expect(got.fast).toEqual(got.slow);
    expect(got.fast).toEqual({
      ok: true,
      payload: Buffer.from(payload).toString("base64"),
      correlationId: "conf-1",
      // connect's client accepts gzip and br; the server names the encoding it would use.
      header: { "content-type": "application/grpc+proto", "grpc-encoding": "gzip", "x-echo": "hello", "x-request-id": "conf-1" },
      trailer: { "grpc-status": "0", "x-echo-trailer": "hello" },
    });
    const generated = await both((mode) => observe(transport(mode), {}));
    expect(generated.fast).toEqual(generated.slow);
    expect(generated.fast).toMatchObject({ ok: true, correlationId: "<uuid>", header: { "x-request-id": "<uuid>" } });
  });

  it.each([Code.InvalidArgument, Code.NotFound, Code.FailedPrecondition, Code.Unavailable, Code.Unknown, Code.DataLoss])(
    "fail_with_code %i: code, message and metadata",
    async (code) => {
      const request = { failWithCode: code, failWithMessage: `failed: 100% on purpose, "quoted" & ünïcode\ttab` };
      const got = await both((mode) => observe(transport(mode), request, { headers: { "x-request-id": "conf-err" } }));
      expect(got.fast).toEqual(got.slow);
      expect(got.fast).toEqual({
        ok: false,
        code: Code[code],
        message: request.failWithMessage,
        metadata: expect.objectContaining({ "x-echo-error": "yes", "x-request-id": "conf-err", "grpc-status": String(code) }),
      });
    },
  );

  it("fail_with_code out of range becomes InvalidArgument from the domain error", async () => {
    const got = await both((mode) => observe(transport(mode), { failWithCode: 99 }));
    expect(got.fast).toEqual(got.slow);
    expect(got.fast).toMatchObject({ ok: false, code: "InvalidArgument", message: "fail_with_code: must be 1-16" });
  });

  it("throw_unexpected: Internal with the correlation id, no detail", async () => {
    const got = await both((mode) => observe(transport(mode), { throwUnexpected: true }, { headers: { "x-request-id": "conf-boom" } }));
    expect(got.fast).toEqual(got.slow);
    expect(got.fast).toMatchObject({ ok: false, code: "Internal", message: "internal error (correlation id conf-boom)" });
    for (const mode of MODES) {
      expect(servers[mode].logs.lines.filter((l) => l.correlationId === "conf-boom" && l.msg === "unexpected error in handler")).toHaveLength(1);
    }
  });

  it("deadline: delay_ms 2000 with a 100 ms client timeout is DeadlineExceeded on both", async () => {
    const before = await both((mode) => metrics(servers[mode]));
    const started = performance.now();
    const got = await both((mode) => observe(transport(mode), { delayMs: 2000 }, { timeoutMs: 100 }));
    expect(performance.now() - started).toBeLessThan(1500);
    expect(got.fast).toEqual(got.slow);
    expect(got.fast).toMatchObject({ ok: false, code: "DeadlineExceeded" });
    // The server ends the call too, on both paths. Whether it records DeadlineExceeded (its own
    // grpc-timeout timer) or Canceled (the client's RST_STREAM arriving first) is a race between
    // two 100 ms timers, so either is accepted here; the next test pins the server's deadline.
    for (const mode of MODES) {
      const ended = async () => {
        const text = await metrics(servers[mode]);
        return (
          handled(text, "DeadlineExceeded") - handled(before[mode], "DeadlineExceeded") + handled(text, "Canceled") - handled(before[mode], "Canceled")
        );
      };
      const deadline = Date.now() + 1500;
      while ((await ended()) < 1 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
      expect(await ended(), mode).toBe(1);
      expect(handled(await metrics(servers[mode]), "OK") - handled(before[mode], "OK"), mode).toBe(0);
    }
  });

  it("deadline enforced by the server: grpc-timeout 100m, no client timer", async () => {
    const body = envelope(create(EchoRequestSchema, { delayMs: 2000 }));
    const got = await both((mode) => rawCall(servers[mode].url, { "grpc-timeout": "100m", "x-request-id": "conf-deadline" }, body));
    expect(got.fast).toEqual(got.slow);
    expect(got.fast.trailer["grpc-status"]).toBe(String(Code.DeadlineExceeded));
    expect(got.fast.trailer["x-request-id"]).toBe("conf-deadline");
    for (const mode of MODES) {
      const line = servers[mode].logs.rpcLines().find((l) => l.correlationId === "conf-deadline");
      expect(line?.code, mode).toBe("DeadlineExceeded");
    }
  });

  it.each(["abc", "123456789S", "10", "-5S", "1.5S"])("grpc-timeout %s is rejected the same way", async (value) => {
    const body = envelope(create(EchoRequestSchema, {}));
    const got = await both((mode) => rawCall(servers[mode].url, { "grpc-timeout": value }, body));
    expect(got.fast).toEqual(got.slow);
    expect(got.fast.status).toBe(200);
    expect(got.fast.trailer["grpc-status"]).toBe(String(Code.InvalidArgument));
    expect(decodeURIComponent(got.fast.trailer["grpc-message"])).toContain(`invalid grpc timeout value: ${value}`);
  });

  it.each(["1H", "5M", "30S", "500m", "100000u", "99999999n"])("grpc-timeout %s is accepted the same way", async (value) => {
    const body = envelope(create(EchoRequestSchema, { payload: new Uint8Array([7]) }));
    const got = await both((mode) => rawCall(servers[mode].url, { "grpc-timeout": value }, body));
    expect(got.fast).toEqual(got.slow);
    expect(got.fast.trailer["grpc-status"]).toBe("0");
  });

  it("message too large (maxMessageBytes 1024, 4 KiB request) is ResourceExhausted on both", async () => {
    const payload = new Uint8Array(4096).fill(120);
    const got = await both((mode) => observe(createGrpcTransport({ baseUrl: small[mode].url }), { payload }));
    expect(got.fast).toEqual(got.slow);
    expect(got.fast).toMatchObject({ ok: false, code: "ResourceExhausted" });
    // A request within the limit still works on both.
    const fits = await both((mode) => observe(createGrpcTransport({ baseUrl: small[mode].url }), { payload: payload.subarray(0, 900) }));
    expect(fits.fast).toEqual(fits.slow);
    expect(fits.fast.ok).toBe(true);
  });

  it("message too large after decompression is ResourceExhausted on both", async () => {
    // 64 KiB of zeros gzip to well under 1 KiB on the wire: the limit applies to the message.
    const gzip = (mode: Mode) =>
      createGrpcTransport({ baseUrl: small[mode].url, sendCompression: compressionGzip, acceptCompression: [compressionGzip] });
    const got = await both((mode) => observe(gzip(mode), { payload: new Uint8Array(64 * 1024) }));
    expect(got.fast).toEqual(got.slow);
    expect(got.fast).toMatchObject({ ok: false, code: "ResourceExhausted" });
  });

  it("gzip request and response compression works on both with a payload > 1 KiB", async () => {
    const text = "orca gzip conformance ".repeat(400); // ~8.8 KiB, compresses well
    const payload = new TextEncoder().encode(text);
    const gzip = (mode: Mode) =>
      createGrpcTransport({ baseUrl: servers[mode].url, sendCompression: compressionGzip, acceptCompression: [compressionGzip] });
    const got = await both((mode) => observe(gzip(mode), { payload }, { headers: { "x-request-id": "conf-gzip" } }));
    expect(got.fast).toEqual(got.slow);
    expect(got.fast).toMatchObject({ ok: true, payload: Buffer.from(payload).toString("base64"), header: { "grpc-encoding": "gzip" } });
    // Small responses are not compressed (compressMinBytes 1024), on both.
    const tiny = await both((mode) => observe(gzip(mode), { payload: new Uint8Array(10) }, { headers: { "x-request-id": "conf-tiny" } }));
    expect(tiny.fast).toEqual(tiny.slow);
    expect(tiny.fast.ok).toBe(true);
  });

  it("a compressed envelope without grpc-encoding is rejected the same way", async () => {
    const body = envelope(create(EchoRequestSchema, {}), 1);
    const got = await both((mode) => rawCall(servers[mode].url, {}, body));
    expect(got.fast).toEqual(got.slow);
    expect(got.fast.trailer["grpc-status"]).not.toBe("0");
  });

  it("unknown grpc-encoding (snappy) is Unimplemented on both", async () => {
    const body = envelope(create(EchoRequestSchema, {}));
    const got = await both((mode) => rawCall(servers[mode].url, { "grpc-encoding": "snappy" }, body));
    expect(got.fast).toEqual(got.slow);
    expect(got.fast.trailer["grpc-status"]).toBe(String(Code.Unimplemented));
    expect(got.fast.trailer["grpc-accept-encoding"]).toBe("gzip,br");
  });

  it("missing and extra request messages are rejected the same way", async () => {
    const one = envelope(create(EchoRequestSchema, {}));
    for (const body of [Buffer.alloc(0), Buffer.concat([one, one]), one.subarray(0, 3)]) {
      const got = await both((mode) => rawCall(servers[mode].url, {}, body));
      expect(got.fast).toEqual(got.slow);
      expect(got.fast.trailer["grpc-status"]).not.toBe("0");
    }
  });

  it("client cancellation reaches the handler and is recorded as Canceled on both", async () => {
    for (const mode of MODES) {
      const controller = new AbortController();
      const client = createClient(EchoService, transport(mode));
      const call = client.echo({ delayMs: 2000 }, { signal: controller.signal, headers: { "x-request-id": `conf-cancel-${mode}` } });
      setTimeout(() => controller.abort(), 100);
      await expect(call).rejects.toMatchObject({ code: Code.Canceled });
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
    for (const mode of MODES) {
      const line = servers[mode].logs.rpcLines().find((l) => l.correlationId === `conf-cancel-${mode}`);
      expect(line?.code, mode).toBe("Canceled");
      expect(line?.durationMs as number, mode).toBeLessThan(1000);
    }
  });

  it("the fast path is really taken for unary gRPC, and both paths log and count the same", async () => {
    const sequence = async (mode: Mode) => {
      const t = transport(mode);
      await observe(t, { payload: new Uint8Array([1]) });
      await observe(t, { failWithCode: Code.NotFound });
      await observe(t, { throwUnexpected: true });
    };
    const before = await both((mode) => metrics(servers[mode]));
    const linesBefore = { fast: servers.fast.logs.rpcLines().length, slow: servers.slow.logs.rpcLines().length };

    let compatBefore = compatRequests;
    await sequence("fast");
    const fastCompat = compatRequests - compatBefore;
    compatBefore = compatRequests;
    await sequence("slow");
    const slowCompat = compatRequests - compatBefore;
    expect(fastCompat).toBe(0);
    expect(slowCompat).toBe(3);

    const after = await both((mode) => metrics(servers[mode]));
    const delta = (mode: Mode) => ({
      started: (metricValue(after[mode], "grpc_server_started_total", LABELS) ?? 0) - (metricValue(before[mode], "grpc_server_started_total", LABELS) ?? 0),
      ok: handled(after[mode], "OK") - handled(before[mode], "OK"),
      notFound: handled(after[mode], "NotFound") - handled(before[mode], "NotFound"),
      internal: handled(after[mode], "Internal") - handled(before[mode], "Internal"),
      observed:
        (metricValue(after[mode], "grpc_server_handling_seconds_count", LABELS) ?? 0) -
        (metricValue(before[mode], "grpc_server_handling_seconds_count", LABELS) ?? 0),
    });
    expect(delta("fast")).toEqual(delta("slow"));
    expect(delta("fast")).toEqual({ started: 3, ok: 1, notFound: 1, internal: 1, observed: 3 });

    const newLines = (mode: Mode) =>
      servers[mode].logs
        .rpcLines()
        .slice(linesBefore[mode])
        .map((l) => ({ method: l.method, code: l.code, level: l.level }));
    expect(newLines("fast")).toEqual(newLines("slow"));
    expect(newLines("fast").map((l) => l.code)).toEqual(["OK", "NotFound", "Internal"]);
  });

  it("other protocols on the fast-path server still take connect-node's path", async () => {
    const before = compatRequests;
    const { createConnectTransport, createGrpcWebTransport } = await import("@connectrpc/connect-node");
    for (const t of [
      createConnectTransport({ baseUrl: servers.fast.url, httpVersion: "2" }),
      createGrpcWebTransport({ baseUrl: servers.fast.url, httpVersion: "2" }),
      createGrpcTransport({ baseUrl: servers.fast.url, useBinaryFormat: false }),
    ]) {
      const got = await observe(t, { payload: new Uint8Array([9]) }, { headers: { "x-echo": "p" } });
      expect(got).toMatchObject({ ok: true, payload: "CQ==", header: { "x-echo": "p" } });
    }
    expect(compatRequests - before).toBe(3);
  });
});
