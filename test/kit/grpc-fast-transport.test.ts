/**
 * Conformance of the kit's unary gRPC client path (services/kit/clients/grpc-fast-transport.ts)
 * with connect-node's gRPC transport: the same calls against the same kit servers must give the
 * same results to the caller (message, header, trailer, error code, message and metadata).
 */
import { createServer } from "node:net";
import { Code, ConnectError, createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { LockService } from "../../gen/orca/lock/v1/lock_pb.js";
import { EchoService } from "../../gen/orca/testing/v1/echo_pb.js";
import { createOrcaTransport } from "../../services/kit/clients/factory.js";
import { createFastGrpcTransport } from "../../services/kit/clients/grpc-fast-transport.js";
import { observeEcho as observe, startEchoServer, type EchoServerHandle } from "./helpers.js";

let server: EchoServerHandle;
let small: EchoServerHandle;

beforeAll(async () => {
  server = await startEchoServer({ fastPath: true });
  small = await startEchoServer({ fastPath: false, maxMessageBytes: 1024 });
});

afterAll(async () => {
  await Promise.all([server, small].filter(Boolean).map((s) => s.server.shutdown()));
});

type Kind = "connect" | "fast";

function transports(url: string, options: { readMaxBytes?: number; interceptors?: Interceptor[] } = {}): Record<Kind, Transport> {
  const interceptors = options.interceptors ?? [];
  const sessionManager = new Http2SessionManager(url);
  const streaming = createGrpcTransport({ baseUrl: url, interceptors, sessionManager, readMaxBytes: options.readMaxBytes });
  return {
    connect: createGrpcTransport({ baseUrl: url, interceptors, readMaxBytes: options.readMaxBytes }),
    fast: createFastGrpcTransport({ baseUrl: url, interceptors, sessionManager, streaming, readMaxBytes: options.readMaxBytes }),
  };
}

async function both<T>(all: Record<Kind, Transport>, run: (transport: Transport) => Promise<T>): Promise<Record<Kind, T>> {
  return { connect: await run(all.connect), fast: await run(all.fast) };
}

describe("kit client fast path vs connect-node's gRPC transport", () => {
  it("success: payload, response header and trailer, the caller's x-request-id", async () => {
    const all = transports(server.url);
    const payload = new Uint8Array(300).map((_, i) => i % 251);
    const got = await both(all, (t) => observe(t, { payload }, { headers: { "x-echo": "hello", "x-request-id": "tr-1" } }));
    expect(got.fast).toEqual(got.connect);
    expect(got.fast).toEqual({
      ok: true,
      payload: Buffer.from(payload).toString("base64"),
      correlationId: "tr-1",
      header: { "content-type": "application/grpc+proto", "grpc-encoding": "gzip", "x-echo": "hello", "x-request-id": "tr-1" },
      trailer: { "grpc-status": "0", "x-echo-trailer": "hello" },
    });
  });

  it("a response over 1 KiB comes gzip-compressed and is decompressed", async () => {
    const all = transports(server.url);
    const payload = new Uint8Array(64 * 1024).map((_, i) => i % 7);
    const got = await both(all, (t) => observe(t, { payload }));
    expect(got.fast).toEqual(got.connect);
    expect(got.fast).toMatchObject({ ok: true, payload: Buffer.from(payload).toString("base64") });
  });

  it.each([Code.InvalidArgument, Code.NotFound, Code.FailedPrecondition, Code.Unavailable, Code.ResourceExhausted, Code.DataLoss])(
    "error %i: code, message and metadata",
    async (code) => {
      const all = transports(server.url);
      const request = { failWithCode: code, failWithMessage: `failed: 100% on purpose, "quoted" & ünïcode` };
      const got = await both(all, (t) => observe(t, request, { headers: { "x-request-id": "tr-err" } }));
      expect(got.fast).toEqual(got.connect);
      expect(got.fast).toMatchObject({ ok: false, code: Code[code], message: request.failWithMessage, metadata: expect.objectContaining({ "x-echo-error": "yes", "x-request-id": "tr-err" }) });
    },
  );

  it("an unexpected server error is Internal with the correlation id", async () => {
    const all = transports(server.url);
    const got = await both(all, (t) => observe(t, { throwUnexpected: true }, { headers: { "x-request-id": "tr-boom" } }));
    expect(got.fast).toEqual(got.connect);
    expect(got.fast).toMatchObject({ ok: false, code: "Internal", message: "internal error (correlation id tr-boom)" });
  });

  it("a method the server does not have is Unimplemented", async () => {
    const all = transports(server.url);
    const call = async (t: Transport) => {
      try {
        await createClient(LockService, t).getLock({ resource: "x" });
        return "ok";
      } catch (e) {
        return Code[ConnectError.from(e).code];
      }
    };
    expect(await both(all, call)).toEqual({ connect: "Unimplemented", fast: "Unimplemented" });
  });

  it("the deadline: DeadlineExceeded after the client timeout, not after the server's delay", async () => {
    const all = transports(server.url);
    const started = performance.now();
    const got = await both(all, (t) => observe(t, { delayMs: 3000 }, { timeoutMs: 100 }));
    expect(performance.now() - started).toBeLessThan(2500);
    expect(got.fast).toEqual(got.connect);
    expect(got.fast).toMatchObject({ ok: false, code: "DeadlineExceeded" });
  });

  it("the caller's abort signal cancels the call", async () => {
    const all = transports(server.url);
    const got = await both(all, (t) => observe(t, { delayMs: 3000 }, { signal: AbortSignal.timeout(100) }));
    expect(got.fast).toEqual(got.connect);
    expect(got.fast).toMatchObject({ ok: false, code: "Canceled" });
  });

  it("a request over the server's limit is ResourceExhausted; a response over the client's limit too", async () => {
    const toSmall = transports(small.url);
    const big = await both(toSmall, (t) => observe(t, { payload: new Uint8Array(4096) }));
    expect(big.fast).toEqual(big.connect);
    expect(big.fast).toMatchObject({ ok: false, code: "ResourceExhausted" });
    const limited = transports(server.url, { readMaxBytes: 100 });
    const got = await both(limited, (t) => observe(t, { payload: new Uint8Array(500) }));
    expect(got.fast).toMatchObject({ ok: false, code: "ResourceExhausted" });
    expect(got.connect).toMatchObject({ ok: false, code: "ResourceExhausted" });
  });

  it("a server that is not there is Unavailable (retryable), also through the kit's factory with retries", async () => {
    const port = await new Promise<number>((resolve) => {
      const probe = createServer().listen(0, "127.0.0.1", () => {
        const { port } = probe.address() as { port: number };
        probe.close(() => resolve(port));
      });
    });
    const url = `http://127.0.0.1:${port}`;
    const got = await both(transports(url), (t) => observe(t, {}));
    expect(got.fast).toMatchObject({ ok: false, code: "Unavailable" });
    expect(got.connect).toMatchObject({ ok: false, code: "Unavailable" });
    const viaFactory = createOrcaTransport({ baseUrl: url, target: "nowhere", fastPath: true, maxAttempts: 2, breakerThreshold: 0 });
    expect(await observe(viaFactory, {})).toMatchObject({ ok: false, code: "Unavailable" });
  });

  it("interceptors see the request (headers, signal) and the response, as with connect's transport", async () => {
    const seen: Record<Kind, string[]> = { connect: [], fast: [] };
    const interceptor =
      (kind: Kind): Interceptor =>
      (next) =>
      async (req) => {
        req.header.set("x-request-id", `from-interceptor-${kind}`);
        seen[kind].push(`${req.method.name} ${req.stream} aborted=${req.signal.aborted} ${req.url.endsWith("/orca.testing.v1.EchoService/Echo")}`);
        const res = await next(req);
        seen[kind].push(`response ${res.header.get("x-request-id")}`);
        return res;
      };
    const url = server.url;
    const sessionManager = new Http2SessionManager(url);
    const fast = createFastGrpcTransport({ baseUrl: url, interceptors: [interceptor("fast")], sessionManager, streaming: createGrpcTransport({ baseUrl: url, sessionManager }) });
    const connect = createGrpcTransport({ baseUrl: url, interceptors: [interceptor("connect")] });
    await observe(fast, {});
    await observe(connect, {});
    expect(seen.fast).toEqual(["Echo false aborted=false true", "response from-interceptor-fast"]);
    expect(seen.connect).toEqual(["Echo false aborted=false true", "response from-interceptor-connect"]);
  });

  it("streaming methods go through connect's transport on the same connection", async () => {
    const all = transports(server.url);
    const got = await both(all, async (t) => {
      const indexes: number[] = [];
      for await (const message of createClient(EchoService, t).echoStream({ payload: new Uint8Array([1, 2]), repeat: 3 })) indexes.push(message.index);
      return indexes;
    });
    expect(got).toEqual({ connect: [0, 1, 2], fast: [0, 1, 2] });
  });

  it("many calls at once on one connection each get their own answer", async () => {
    const { fast } = transports(server.url);
    const client = createClient(EchoService, fast);
    const answers = await Promise.all(Array.from({ length: 200 }, (_, i) => client.echo({ payload: new Uint8Array([i & 255, i >> 8]) }, { headers: { "x-request-id": `many-${i}` } })));
    expect(answers.map((a) => `${a.payload[0] + (a.payload[1] << 8)} ${a.correlationId}`)).toEqual(Array.from({ length: 200 }, (_, i) => `${i} many-${i}`));
  });
});
