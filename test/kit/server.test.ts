import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/health/v1/health_pb.js";
import { EchoService } from "../../gen/orca/testing/v1/echo_pb.js";
import { fetchText, sleep, startEchoServer, type EchoServerHandle } from "./helpers.js";

const root = fileURLToPath(new URL("../../", import.meta.url));
const run = promisify(execFile);
const ECHO = "orca.testing.v1.EchoService";

// --- @grpc/grpc-js client built from the .proto files --------------------------------------

interface GrpcJsEchoClient extends grpc.Client {
  Echo(
    request: { payload?: Buffer; delayMs?: number; failWithCode?: number; failWithMessage?: string },
    metadata: grpc.Metadata,
    options: grpc.CallOptions,
    callback: (error: grpc.ServiceError | null, response?: { payload: Buffer; correlationId: string }) => void,
  ): grpc.ClientUnaryCall;
  EchoStream(request: { payload?: Buffer; repeat?: number }, metadata?: grpc.Metadata): grpc.ClientReadableStream<{ index: number }>;
}

function grpcJsEchoClient(port: number): GrpcJsEchoClient {
  const definition = protoLoader.loadSync("orca/testing/v1/echo.proto", { includeDirs: [`${root}proto`] });
  const loaded = grpc.loadPackageDefinition(definition) as unknown as {
    orca: { testing: { v1: { EchoService: new (address: string, credentials: grpc.ChannelCredentials) => GrpcJsEchoClient } } };
  };
  return new loaded.orca.testing.v1.EchoService(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
}

function grpcJsHealthClient(port: number) {
  const definition = protoLoader.loadSync("health/v1/health.proto", {
    includeDirs: [`${root}node_modules/grpc-health-check/proto`],
    enums: String,
  });
  const loaded = grpc.loadPackageDefinition(definition) as unknown as {
    grpc: { health: { v1: { Health: new (address: string, credentials: grpc.ChannelCredentials) => grpc.Client & Record<string, Function> } } };
  };
  return new loaded.grpc.health.v1.Health(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
}

// --- generated client over every protocol ---------------------------------------------------

function transportsFor(url: string): Record<string, Transport> {
  return {
    "gRPC": createGrpcTransport({ baseUrl: url }),
    "Connect HTTP/1.1": createConnectTransport({ baseUrl: url, httpVersion: "1.1" }),
    "Connect HTTP/2": createConnectTransport({ baseUrl: url, httpVersion: "2" }),
    "gRPC-Web HTTP/1.1": createGrpcWebTransport({ baseUrl: url, httpVersion: "1.1" }),
    "gRPC-Web HTTP/2": createGrpcWebTransport({ baseUrl: url, httpVersion: "2" }),
  };
}

async function buf(args: string[]) {
  return run("npx", ["buf", "curl", ...args], { cwd: root, timeout: 25_000 });
}

describe("OrcaServer", () => {
  let echo: EchoServerHandle;

  beforeAll(async () => {
    echo = await startEchoServer();
  });
  afterAll(async () => {
    await echo?.server.shutdown();
  });

  describe.each(Object.keys(transportsFor("http://x")))("generated client over %s", (name) => {
    const client = () => createClient(EchoService, transportsFor(echo.url)[name]);

    it("echoes the payload, the x-echo header and trailer, and the correlation id", async () => {
      let header: Headers | undefined;
      let trailer: Headers | undefined;
      const payload = new TextEncoder().encode(`hello over ${name}`);
      const res = await client().echo(
        { payload },
        { headers: { "x-echo": "v1", "x-request-id": "abc-123" }, onHeader: (h) => (header = h), onTrailer: (t) => (trailer = t) },
      );
      expect(new TextDecoder().decode(res.payload)).toBe(`hello over ${name}`);
      expect(res.correlationId).toBe("abc-123");
      expect(header?.get("x-echo")).toBe("v1");
      expect(header?.get("x-request-id")).toBe("abc-123");
      expect(trailer?.get("x-echo-trailer")).toBe("v1");
    });

    it("returns errors with code, message and metadata", async () => {
      const error = await client()
        .echo({ failWithCode: Code.AlreadyExists, failWithMessage: "already there" })
        .then(() => undefined, ConnectError.from);
      expect(error?.code).toBe(Code.AlreadyExists);
      expect(error?.rawMessage).toBe("already there");
      expect(error?.metadata.get("x-echo-error")).toBe("yes");
    });

    it("maps unexpected errors to Internal with a correlation id and no detail", async () => {
      const error = await client()
        .echo({ throwUnexpected: true }, { headers: { "x-request-id": "boom-1" } })
        .then(() => undefined, ConnectError.from);
      expect(error?.code).toBe(Code.Internal);
      expect(error?.rawMessage).toBe("internal error (correlation id boom-1)");
      expect(error?.rawMessage).not.toContain("boom:");
    });

    it("serves server streams", async () => {
      const indexes: number[] = [];
      for await (const res of client().echoStream({ payload: new Uint8Array([1, 2]), repeat: 5 })) indexes.push(res.index);
      expect(indexes).toEqual([0, 1, 2, 3, 4]);
    });
  });

  describe("@grpc/grpc-js client from the .proto files", () => {
    it("calls Echo with metadata", async () => {
      const client = grpcJsEchoClient(echo.endpoints.port);
      try {
        const metadata = new grpc.Metadata();
        metadata.set("x-echo", "from-grpc-js");
        metadata.set("x-request-id", "grpcjs-1");
        let responseMetadata: grpc.Metadata | undefined;
        let status: grpc.StatusObject | undefined;
        const res = await new Promise<{ payload: Buffer; correlationId: string }>((resolve, reject) => {
          const call = client.Echo({ payload: Buffer.from("grpc-js says hi") }, metadata, {}, (error, response) =>
            error ? reject(error) : resolve(response!),
          );
          call.on("metadata", (m) => (responseMetadata = m));
          call.on("status", (s) => (status = s));
        });
        expect(res.payload.toString()).toBe("grpc-js says hi");
        expect(res.correlationId).toBe("grpcjs-1");
        expect(responseMetadata?.get("x-echo")).toEqual(["from-grpc-js"]);
        expect(responseMetadata?.get("x-request-id")).toEqual(["grpcjs-1"]);
        await sleep(10);
        expect(status?.code).toBe(grpc.status.OK);
        expect(status?.metadata.get("x-echo-trailer")).toEqual(["from-grpc-js"]);
      } finally {
        client.close();
      }
    });

    it("receives error status, message and trailers", async () => {
      const client = grpcJsEchoClient(echo.endpoints.port);
      try {
        const error = await new Promise<grpc.ServiceError>((resolve, reject) => {
          client.Echo({ failWithCode: grpc.status.PERMISSION_DENIED, failWithMessage: "no thank you (50% sure) é" }, new grpc.Metadata(), {}, (e) =>
            e ? resolve(e) : reject(new Error("expected an error")),
          );
        });
        expect(error.code).toBe(grpc.status.PERMISSION_DENIED);
        expect(error.details).toBe("no thank you (50% sure) é");
        expect(error.metadata.get("x-echo-error")).toEqual(["yes"]);
      } finally {
        client.close();
      }
    });

    // connect percent-encodes grpc-message with encodeURIComponent (",", ":", "/" ... too) and
    // grpc-js decodes with decodeURI, which leaves those escapes alone; the kit sends the
    // spec's encoding instead (kit/server/grpc-message.ts), on both of its gRPC paths.
    const unaryError = (port: number, message: string) => {
      const client = grpcJsEchoClient(port);
      return new Promise<grpc.ServiceError>((resolve, reject) => {
        client.Echo({ failWithCode: grpc.status.INVALID_ARGUMENT, failWithMessage: message }, new grpc.Metadata(), {}, (e) =>
          e ? resolve(e) : reject(new Error("expected an error")),
        );
      }).finally(() => client.close());
    };
    const awkward = "lease_ms: must be positive, got -1 (100% sure / é ?=&#)";

    it("sees error messages with reserved characters (',', ':', '%', UTF-8) as sent (fast path)", async () => {
      const error = await unaryError(echo.endpoints.port, awkward);
      expect(error.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(error.details).toBe(awkward);
    });

    it("sees them as sent from connect-node too (server stream; unary with the fast path off)", async () => {
      const client = grpcJsEchoClient(echo.endpoints.port);
      try {
        const streamError = await new Promise<grpc.ServiceError>((resolve, reject) => {
          const call = client.EchoStream({ repeat: 1001 }, new grpc.Metadata());
          call.on("data", () => undefined);
          call.on("error", resolve);
          call.on("end", () => reject(new Error("expected an error")));
        });
        expect(streamError.code).toBe(grpc.status.INVALID_ARGUMENT);
        expect(streamError.details).toBe("repeat: must be at most 1000");
      } finally {
        client.close();
      }
      const slow = await startEchoServer({ fastPath: false });
      try {
        const error = await unaryError(slow.endpoints.port, awkward);
        expect(error.details).toBe(awkward);
      } finally {
        await slow.server.shutdown();
      }
      // Connect's own clients decode the spec's form as well.
      const transport = createGrpcTransport({ baseUrl: echo.server.url });
      const fromConnect = await createClient(EchoService, transport)
        .echo({ failWithCode: Code.InvalidArgument, failWithMessage: awkward })
        .catch((e: unknown) => ConnectError.from(e));
      expect((fromConnect as ConnectError).rawMessage).toBe(awkward);
    });

    it("gets DEADLINE_EXCEEDED when its deadline passes", async () => {
      const client = grpcJsEchoClient(echo.endpoints.port);
      try {
        const error = await new Promise<grpc.ServiceError>((resolve, reject) => {
          client.Echo({ delayMs: 2000 }, new grpc.Metadata(), { deadline: Date.now() + 100 }, (e) =>
            e ? resolve(e) : reject(new Error("expected an error")),
          );
        });
        expect(error.code).toBe(grpc.status.DEADLINE_EXCEEDED);
      } finally {
        client.close();
      }
    });

    it("checks health with the grpc-health-check proto", async () => {
      const client = grpcJsHealthClient(echo.endpoints.port);
      try {
        const res = await new Promise<{ status: string }>((resolve, reject) =>
          client.Check({ service: ECHO }, (e: Error | null, r: { status: string }) => (e ? reject(e) : resolve(r))),
        );
        expect(res.status).toBe("SERVING");
      } finally {
        client.close();
      }
    });
  });

  describe("grpc.health.v1", () => {
    it("Check answers SERVING for the server and for each service, NotFound for unknown names", async () => {
      for (const transport of [createGrpcTransport({ baseUrl: echo.url }), createConnectTransport({ baseUrl: echo.url, httpVersion: "1.1" })]) {
        const health = createClient(Health, transport);
        expect((await health.check({ service: "" })).status).toBe(ServingStatus.SERVING);
        expect((await health.check({ service: ECHO })).status).toBe(ServingStatus.SERVING);
        const error = await health.check({ service: "no.such.Service" }).then(() => undefined, ConnectError.from);
        expect(error?.code).toBe(Code.NotFound);
      }
    });
  });

  describe("admin port", () => {
    it("answers /healthz, /readyz and 404 elsewhere", async () => {
      const admin = `http://127.0.0.1:${echo.endpoints.adminPort}`;
      expect(await fetchText(`${admin}/healthz`)).toEqual({ status: 200, body: "ok\n" });
      expect(await fetchText(`${admin}/readyz`)).toEqual({ status: 200, body: "ready\n" });
      expect((await fetchText(`${admin}/nope`)).status).toBe(404);
      expect((await fetch(`${admin}/healthz`, { method: "POST" })).status).toBe(405);
    });
  });

  describe("server reflection through buf curl", () => {
    const listArgs = () => ["--http2-prior-knowledge", "--reflect", "--list-methods", echo.url];

    it("lists methods (default protocol negotiation)", async () => {
      const { stdout } = await buf(listArgs());
      const methods = stdout.trim().split("\n");
      expect(methods).toContain(`${ECHO}/Echo`);
      expect(methods).toContain(`${ECHO}/EchoStream`);
      expect(methods).toContain("grpc.health.v1.Health/Check");
      expect(methods).toContain("grpc.health.v1.Health/Watch");
    });

    it.each(["grpc-v1", "grpc-v1alpha"])("lists methods with --reflect-protocol %s", async (protocol) => {
      const { stdout } = await buf(["--reflect-protocol", protocol, ...listArgs()]);
      expect(stdout.trim().split("\n")).toContain(`${ECHO}/Echo`);
    });

    it("lists services", async () => {
      const { stdout } = await buf(["--http2-prior-knowledge", "--list-services", echo.url]);
      expect(stdout.trim().split("\n").sort()).toEqual(
        [ECHO, "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"].sort(),
      );
    });

    it.each(["connect", "grpc", "grpcweb"])("calls Echo with JSON data through reflection (--protocol %s)", async (protocol) => {
      const { stdout } = await buf([
        "--http2-prior-knowledge",
        "--protocol",
        protocol,
        "-H",
        "x-request-id: buf-curl-1",
        "--data",
        JSON.stringify({ payload: Buffer.from("from buf curl").toString("base64") }),
        `${echo.url}/${ECHO}/Echo`,
      ]);
      expect(JSON.parse(stdout)).toEqual({ payload: Buffer.from("from buf curl").toString("base64"), correlationId: "buf-curl-1" });
    });

    it("reports the error of a failing call through reflection", async () => {
      const error = await buf([
        "--http2-prior-knowledge",
        "--protocol",
        "grpc",
        "--data",
        JSON.stringify({ failWithCode: 5, failWithMessage: "gone" }),
        `${echo.url}/${ECHO}/Echo`,
      ]).then(() => undefined, (e: { code: number; stdout: string; stderr: string }) => e);
      expect(error).toBeDefined();
      expect(error!.stderr + error!.stdout).toMatch(/not_found/);
      expect(error!.stderr + error!.stdout).toMatch(/gone/);
    });
  });
});

describe("OrcaServer shutdown", () => {
  it("Watch streams SERVING, then NOT_SERVING when shutdown starts", async () => {
    const echo = await startEchoServer();
    try {
      const health = createClient(Health, createGrpcTransport({ baseUrl: echo.url }));
      const abort = new AbortController();
      const seen: ServingStatus[] = [];
      const watching = (async () => {
        try {
          for await (const res of health.watch({ service: ECHO }, { signal: abort.signal })) {
            seen.push(res.status);
            if (res.status === ServingStatus.NOT_SERVING) break;
          }
        } catch (error) {
          if (!abort.signal.aborted) throw error;
        }
      })();
      const whole: ServingStatus[] = [];
      const watchingWhole = (async () => {
        for await (const res of health.watch({ service: "" })) {
          whole.push(res.status);
          if (res.status === ServingStatus.NOT_SERVING) break;
        }
      })();
      const unknown = health.watch({ service: "no.such.Service" })[Symbol.asyncIterator]().next();
      await expect(unknown).resolves.toMatchObject({ value: { status: ServingStatus.SERVICE_UNKNOWN } });
      await waitFor(() => seen.length === 1 && whole.length === 1);
      expect(seen).toEqual([ServingStatus.SERVING]);
      await echo.server.shutdown();
      await Promise.race([Promise.all([watching, watchingWhole]), sleep(5000)]);
      abort.abort();
      expect(seen).toEqual([ServingStatus.SERVING, ServingStatus.NOT_SERVING]);
      expect(whole).toEqual([ServingStatus.SERVING, ServingStatus.NOT_SERVING]);
    } finally {
      await echo.server.shutdown();
    }
  });

  it("drains: /readyz turns 503, the in-flight call finishes OK, new calls are refused with Unavailable", async () => {
    const echo = await startEchoServer();
    const admin = `http://127.0.0.1:${echo.endpoints.adminPort}`;
    const transport = createGrpcTransport({ baseUrl: echo.url });
    const client = createClient(EchoService, transport);
    expect((await fetchText(`${admin}/readyz`)).status).toBe(200);

    const started = performance.now();
    // 1 s leaves room for the checks below to run during the drain, even on a loaded machine.
    const inFlight = client.echo({ payload: new TextEncoder().encode("slow"), delayMs: 1000 });
    await waitFor(() => echo.server.metrics.started.get().then((m) => m.values.length > 0));
    const shutdown = echo.server.shutdown();

    // During the drain: not ready, health NOT_SERVING, new calls refused.
    const ready = await fetchText(`${admin}/readyz`);
    expect(ready.status).toBe(503);
    expect(ready.body).toMatch(/shutting down/);
    expect((await fetchText(`${admin}/healthz`)).status).toBe(200);

    // A fresh client and the same client (its connection got GOAWAY) both get Unavailable.
    for (const late of [createClient(EchoService, createGrpcTransport({ baseUrl: echo.url })), client]) {
      const error = await late.echo({}).then(() => undefined, ConnectError.from);
      expect(error?.code).toBe(Code.Unavailable);
    }
    for (const late of [createConnectTransport({ baseUrl: echo.url, httpVersion: "1.1" }), createConnectTransport({ baseUrl: echo.url, httpVersion: "2" })]) {
      const error = await createClient(EchoService, late).echo({}).then(() => undefined, ConnectError.from);
      expect(error?.code).toBe(Code.Unavailable);
    }

    const res = await inFlight;
    expect(new TextDecoder().decode(res.payload)).toBe("slow");
    expect(performance.now() - started).toBeGreaterThanOrEqual(990);
    await shutdown;
    const logged = echo.logs.rpcLines().filter((line) => line.code === "OK");
    expect(logged).toHaveLength(1);
  });

  it("refuses a call racing the GOAWAY on an open connection without running it", async () => {
    // The client sends its next call on a connection that is already open, right as the drain
    // starts. The server's GOAWAY makes that stream REFUSED_STREAM (never processed, safe to
    // retry). grpc-js retries it transparently, reconnects, is refused and reports UNAVAILABLE.
    const echo = await startEchoServer();
    const client = grpcJsEchoClient(echo.endpoints.port);
    const call = (request: { delayMs?: number }) =>
      new Promise<grpc.ServiceError | { payload: Buffer }>((resolve) =>
        client.Echo(request, new grpc.Metadata(), {}, (error, response) => resolve(error ?? response!)),
      );
    try {
      await call({});
      const inFlight = call({ delayMs: 300 });
      await sleep(50);
      const shutdown = echo.server.shutdown();
      const refused = (await call({})) as grpc.ServiceError;
      expect(refused.code).toBe(grpc.status.UNAVAILABLE);
      const completed = await inFlight;
      expect(completed).not.toBeInstanceOf(Error);
      await shutdown;
      expect(echo.logs.rpcLines()).toHaveLength(2); // the first call and the in-flight one
    } finally {
      client.close();
    }
  });

  it("refuses a call racing the GOAWAY from the connect-node client without running it", async () => {
    // Same race with connect-node's gRPC transport. It reports the REFUSED_STREAM reset as
    // Internal (its stream 'error' event wins over its own rstCode -> Unavailable mapping), so
    // the kit's client factory must treat it as retryable; the server side is asserted here:
    // the call is refused, never reaches a handler, and the in-flight call completes.
    const echo = await startEchoServer();
    const client = createClient(EchoService, createGrpcTransport({ baseUrl: echo.url }));
    await client.echo({});
    const inFlight = client.echo({ delayMs: 300 });
    await sleep(50);
    const shutdown = echo.server.shutdown();
    const error = await client.echo({}).then(() => undefined, ConnectError.from);
    expect(error).toBeDefined();
    if (error!.code !== Code.Unavailable) {
      expect(error!.code).toBe(Code.Internal);
      expect(String(error!.cause ?? error!.message)).toMatch(/REFUSED_STREAM/);
    }
    await expect(inFlight).resolves.toBeDefined();
    await shutdown;
    expect(echo.logs.rpcLines()).toHaveLength(2);
  });

  it("cuts in-flight calls that outlive the grace period", async () => {
    const echo = await startEchoServer({ shutdownGraceMs: 200 });
    const client = createClient(EchoService, createGrpcTransport({ baseUrl: echo.url }));
    const inFlight = client.echo({ delayMs: 5000 }).then(() => undefined, ConnectError.from);
    await sleep(50);
    const started = performance.now();
    await echo.server.shutdown();
    expect(performance.now() - started).toBeLessThan(2000);
    // The handler's signal is aborted when the grace period ends; it answers Canceled.
    const error = await inFlight;
    expect(error?.code).toBe(Code.Canceled);
    expect(echo.logs.rpcLines().map((line) => line.code)).toEqual(["Canceled"]);
  });
});

async function waitFor(condition: () => boolean | Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await sleep(10);
  }
}
