import { readFileSync, rmSync, statSync } from "node:fs";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { EchoService } from "../../gen/orca/testing/v1/echo_pb.js";
import { createGrpcFastPath } from "../../services/kit/server/grpc-fast-path.js";
import { OrcaServer, registration } from "../../services/kit/server/server.js";
import { createLogger } from "../../services/kit/telemetry/logger.js";
import { startTracing } from "../../services/kit/telemetry/tracing.js";
import { createEchoHandlers } from "../../services/kit/testing/echo.js";
import { SERVER_KINDS, echoResponseFrame, repoRoot, type ChildMessage, type ParentMessage, type ServerKind } from "./common.js";

/**
 * One benchmark server, run by run.ts in its own child process so that it gets a CPU of its own
 * instead of sharing an event loop with the load generator:
 *   node dist/bench/rpc/server.js <bare|grpc-js|kit|kit-slow|kit-raw|kit-id-in-body>
 * It listens on an ephemeral port on 127.0.0.1, reports it over IPC, answers "cpu" requests with
 * its process.cpuUsage(), and exits on SIGTERM (which also writes a --cpu-prof profile).
 */

const kind = process.argv[2] as ServerKind;
if (!SERVER_KINDS.includes(kind)) {
  console.error(`usage: server.js <${SERVER_KINDS.join("|")}>`);
  process.exit(2);
}
const payloadBytes = Number(process.env.BENCH_PAYLOAD_BYTES ?? "64");

let logFile: string | undefined;

/** (a) The floor: node:http2 answering every stream with prebuilt bytes, no protobuf, no routing. */
async function startBare(): Promise<{ port: number; close: () => Promise<void> }> {
  const body = echoResponseFrame(payloadBytes);
  const server = http2.createServer();
  server.on("stream", (stream) => {
    stream.on("data", () => {});
    stream.once("end", () => {
      if (stream.destroyed) return;
      stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
      stream.once("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
      stream.end(body);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** (b) The reference: a plain @grpc/grpc-js server, proto loaded at run time, the same echo logic. */
async function startGrpcJs(): Promise<{ port: number; close: () => Promise<void> }> {
  const definition = protoLoader.loadSync(join(repoRoot(), "proto/orca/testing/v1/echo.proto"), { defaults: true });
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- proto-loader packages are untyped
  const pkg = grpc.loadPackageDefinition(definition) as any;
  const server = new grpc.Server();
  type EchoRequest = { payload: Buffer; delayMs: number; failWithCode: number; failWithMessage: string; throwUnexpected: boolean };
  server.addService(pkg.orca.testing.v1.EchoService.service, {
    echo(call: grpc.ServerUnaryCall<EchoRequest, unknown>, callback: grpc.sendUnaryData<unknown>) {
      const req = call.request;
      void (async () => {
        if (req.delayMs > 0) await sleep(req.delayMs);
        if (req.throwUnexpected) return callback({ code: grpc.status.INTERNAL, details: "internal error" });
        if (req.failWithCode !== 0) return callback({ code: req.failWithCode, details: req.failWithMessage });
        const echo = call.metadata.get("x-echo");
        let trailer: grpc.Metadata | undefined;
        if (echo.length > 0) {
          const header = new grpc.Metadata();
          header.set("x-echo", echo[0]);
          call.sendMetadata(header);
          trailer = new grpc.Metadata();
          trailer.set("x-echo-trailer", echo[0]);
        }
        callback(null, { payload: req.payload, correlationId: "" }, trailer);
      })();
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (error, bound) => (error ? reject(error) : resolve(bound))),
  );
  return { port, close: () => new Promise<void>((resolve) => server.tryShutdown(() => resolve())) };
}

/**
 * (c, d) The kit: OrcaServer with EchoService and all its interceptors, the OTel SDK started as a
 * service starts it (no exporter), and one pino line per call into a file, as in production.
 */
async function startKit(fastPath: boolean): Promise<{ port: number; close: () => Promise<void> }> {
  const tracing = startTracing({ serviceName: "orca-bench" });
  logFile = join(tmpdir(), `orca-bench-${kind}-${process.pid}.log`);
  const logger = createLogger({ level: "info", service: "bench", destination: logFile });
  const server = new OrcaServer({
    name: "bench",
    host: "127.0.0.1",
    port: 0,
    adminPort: 0,
    // The same echo as the grpc-js server's: the correlation id goes out in the x-request-id
    // header only, unless the kit-id-in-body variant asks for it in the response body too.
    services: [registration(EchoService, createEchoHandlers({ correlationIdInResponse: kind === "kit-id-in-body" }))],
    logger,
    shutdownGraceMs: 1000,
    maxMessageBytes: 4 * 1024 * 1024,
    fastPath,
  });
  const { port } = await server.start();
  return {
    port,
    close: async () => {
      await server.shutdown();
      await tracing.shutdown();
    },
  };
}

/** Diagnostic: the kit's fast path alone (no interceptors, no OrcaServer) on a plain http2 server. */
async function startKitRaw(): Promise<{ port: number; close: () => Promise<void> }> {
  const fastPath = createGrpcFastPath({
    services: [{ service: EchoService, impl: createEchoHandlers({ correlationIdInResponse: false }) as never }],
    interceptors: [],
    acceptCompression: [],
    readMaxBytes: 4 * 1024 * 1024,
    writeMaxBytes: 4 * 1024 * 1024,
    compressMinBytes: 1024,
    shutdownSignal: new AbortController().signal,
    scheme: "http",
  });
  const server = http2.createServer();
  server.on("stream", (stream, headers) => {
    if (!fastPath(stream, headers)) stream.respond({ ":status": 404 }, { endStream: true });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

const started = await (kind === "bare"
  ? startBare()
  : kind === "grpc-js"
    ? startGrpcJs()
    : kind === "kit-raw"
      ? startKitRaw()
      : startKit(kind !== "kit-slow"));
const heapProfile = process.env.BENCH_HEAP_PROF_FILE ? await startHeapSampling() : undefined;

/**
 * With BENCH_HEAP_PROF_FILE, samples allocations (including objects that the GC already
 * collected, which is what per-call garbage is) and writes a .heapprofile there on exit.
 */
async function startHeapSampling(): Promise<() => Promise<void>> {
  const { Session } = await import("node:inspector");
  const { writeFileSync } = await import("node:fs");
  const session = new Session();
  session.connect();
  const post = (method: string, params?: object) =>
    new Promise<unknown>((resolve, reject) => session.post(method, params ?? {}, (error, result) => (error ? reject(error) : resolve(result))));
  await post("HeapProfiler.startSampling", {
    samplingInterval: 4096,
    includeObjectsCollectedByMajorGC: true,
    includeObjectsCollectedByMinorGC: true,
  });
  return async () => {
    const { profile } = (await post("HeapProfiler.stopSampling")) as { profile: unknown };
    writeFileSync(process.env.BENCH_HEAP_PROF_FILE!, JSON.stringify(profile));
  };
}

const send = (message: ChildMessage) => process.send?.(message);
process.on("message", (message: ParentMessage) => {
  if (message.type === "cpu") {
    send({ type: "cpu", usage: process.cpuUsage(), mainThreadUs: mainThreadCpuUs(), logBytes: logFile ? statSync(logFile).size : undefined });
  }
});

/**
 * CPU time of the main (event loop) thread alone, from /proc (Linux): process.cpuUsage() also
 * counts the GC helper threads and the libuv pool, which do real work but in parallel.
 */
function mainThreadCpuUs(): number | undefined {
  try {
    const stat = readFileSync(`/proc/self/task/${process.pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // utime and stime, fields 14 and 15 of stat(5), in clock ticks (100 per second on Linux).
    return (Number(fields[11]) + Number(fields[12])) * 10_000;
  } catch {
    return undefined;
  }
}
process.once("SIGTERM", () => {
  const timer = setTimeout(() => process.exit(0), 3000);
  timer.unref();
  void (heapProfile?.() ?? Promise.resolve())
    .then(() => started.close())
    .finally(() => {
      if (logFile) rmSync(logFile, { force: true });
      process.exit(0);
    });
});
// Without a parent (run by hand), print the port instead.
if (process.send) send({ type: "ready", port: started.port });
else console.log(`${kind} listening on 127.0.0.1:${started.port}`);
