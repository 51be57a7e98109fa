/**
 * Client-side RPC speed: `npm run bench:client`. One kit echo server (fast path, all
 * interceptors) in a child process; in this process, unary echo calls through
 *  - connect-node's gRPC transport (what the kit's clients used before the client fast path),
 *  - the kit's client (createOrcaClient: retries, breaker, propagation, unary fast path),
 *  - an @grpc/grpc-js client built from the .proto with @grpc/proto-loader,
 * each with the same concurrency, in rounds (order reversed every other round). The load
 * generator is the client itself, so calls/s and the client's CPU per call are what is compared.
 *
 * Environment: BENCH_ROUNDS (3), BENCH_CALLS (20000 per client and round), BENCH_CONCURRENCY (16),
 * BENCH_PAYLOAD_BYTES (64). Writes bench/results/client-<iso>.json.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { EchoService } from "../../gen/orca/testing/v1/echo_pb.js";
import { createOrcaClient } from "../../services/kit/clients/factory.js";
import { startServerChild } from "../lib/server-child.js";
import { benchPayload, repoRoot } from "./common.js";

const envInt = (name: string, fallback: number) => {
  const value = Number(process.env[name] ?? fallback);
  if (!Number.isInteger(value) || value < 1) throw new Error(`${name} must be a positive integer, got ${process.env[name]}`);
  return value;
};
const rounds = envInt("BENCH_ROUNDS", 3);
const callsPerRound = envInt("BENCH_CALLS", 20_000);
const concurrency = envInt("BENCH_CONCURRENCY", 16);
const payload = benchPayload(envInt("BENCH_PAYLOAD_BYTES", 64));

const server = await startServerChild("kit", { env: { ...process.env, BENCH_PAYLOAD_BYTES: String(payload.length) } });
const url = `http://127.0.0.1:${server.port}`;

const connectClient = createClient(EchoService, createGrpcTransport({ baseUrl: url }));
const kitClient = createOrcaClient(EchoService, { baseUrl: url, target: "echo" });
const definition = protoLoader.loadSync(join(repoRoot(), "proto/orca/testing/v1/echo.proto"), { defaults: true });
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- proto-loader packages are untyped
const grpcPackage = grpc.loadPackageDefinition(definition) as any;
const grpcClient = new grpcPackage.orca.testing.v1.EchoService(`127.0.0.1:${server.port}`, grpc.credentials.createInsecure());
const grpcPayload = Buffer.from(payload);

const CLIENTS = {
  "connect-node transport": () => connectClient.echo({ payload }),
  "kit client (fast path)": () => kitClient.echo({ payload }),
  "@grpc/grpc-js client": () =>
    new Promise<void>((resolve, reject) => grpcClient.echo({ payload: grpcPayload }, (error: Error | null) => (error ? reject(error) : resolve()))),
} satisfies Record<string, () => Promise<unknown>>;
type ClientName = keyof typeof CLIENTS;

async function measure(call: () => Promise<unknown>): Promise<{ callsPerSecond: number; cpuMicrosPerCall: number }> {
  let started = 0;
  const cpu = process.cpuUsage();
  const begin = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (started < callsPerRound) {
        started++;
        await call();
      }
    }),
  );
  const seconds = (performance.now() - begin) / 1000;
  const used = process.cpuUsage(cpu);
  return { callsPerSecond: callsPerRound / seconds, cpuMicrosPerCall: (used.user + used.system) / callsPerRound };
}

const names = Object.keys(CLIENTS) as ClientName[];
console.log(`· ${names.join(", ")}: ${rounds} round(s) of ${callsPerRound} calls each, concurrency ${concurrency}, ${payload.length}-byte payload`);
for (const name of names) await measure(CLIENTS[name]); // warm-up: connections, JIT
const results = new Map<ClientName, { callsPerSecond: number; cpuMicrosPerCall: number }[]>(names.map((n) => [n, []]));
for (let round = 1; round <= rounds; round++) {
  const order = round % 2 === 1 ? names : [...names].reverse();
  console.log(`· round ${round} of ${rounds}: ${order.join(" -> ")}`);
  for (const name of order) {
    const result = await measure(CLIENTS[name]);
    results.get(name)!.push(result);
    console.log(`· ${name}: ${result.callsPerSecond.toFixed(0)} calls/s, client CPU per call ${result.cpuMicrosPerCall.toFixed(0)} µs`);
  }
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor((values.length - 1) / 2)];
const rows = names.map((name) => ({
  client: name,
  callsPerSecond: median(results.get(name)!.map((r) => r.callsPerSecond)),
  cpuMicrosPerCall: median(results.get(name)!.map((r) => r.cpuMicrosPerCall)),
}));
const connectRow = rows[0];
console.log(`\n${"client".padEnd(24)}  calls/s  CPU µs/call  vs connect-node (calls/s)`);
for (const row of rows) {
  console.log(`${row.client.padEnd(24)}  ${row.callsPerSecond.toFixed(0).padStart(7)}  ${row.cpuMicrosPerCall.toFixed(0).padStart(11)}  ${(row.callsPerSecond / connectRow.callsPerSecond).toFixed(2)}x`);
}
const dir = join(repoRoot(), "bench", "results");
mkdirSync(dir, { recursive: true });
const file = join(dir, `client-${new Date().toISOString()}.json`);
writeFileSync(file, JSON.stringify({ config: { rounds, callsPerRound, concurrency, payloadBytes: payload.length }, rows, rounds: Object.fromEntries(results) }, null, 2));
console.log(`results: ${file}`);
grpcClient.close();
await server.stop();
process.exit(0);
