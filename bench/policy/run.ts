import { fork, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { create, toBinary } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { DecideRequestSchema, Decision, PolicyService } from "../../gen/orca/policy/v1/policy_pb.js";
import { loadCedarEngine } from "../../services/policy/cedar-engine.js";
import { defaultsDir } from "../../services/policy/bundle-files.js";
import type { Engine, JsonObject } from "../../services/policy/engine.js";
import { loadOpaEngine } from "../../services/policy/opa-engine.js";
import { fixtureBundle } from "../../test/policy/fixtures/opa-abi-fixture.js";
import { ECHO_PATH, echoRequestFrame, grpcFrame, repoRoot } from "../rpc/common.js";
import { ensureH2load, percentile, readDurations, runH2load } from "../rpc/h2load.js";

/**
 * `npx tsx bench/policy/run.ts [--smoke]`: Policy Decide over unary gRPC, cached and uncached
 * (bypass_cache), for each engine (Cedar: the shipped defaults; OPA wasm: the ABI test fixture,
 * as no `opa` CLI is available to compile real Rego here), with the RPC baselines of
 * bench/rpc/ (a bare node:http2 responder and a plain @grpc/grpc-js echo server, started from
 * bench/rpc/server.ts) in the same run and with the same h2load settings. Every server runs in
 * its own child process. Also reports in-process engine evaluation p50/p99 (what
 * BenchmarkPolicy measures).
 *
 * Environment: BENCH_DURATION_S (10), BENCH_WARMUP_S (2), BENCH_CONNECTIONS (16), BENCH_STREAMS (8).
 * --smoke: 2 s per scenario, 1 s warm-up, fewer in-process iterations.
 */

const smoke = process.argv.includes("--smoke");
const envInt = (name: string, fallback: number): number => {
  const raw = process.env[name];
  if (!raw) return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0) throw new Error(`invalid ${name}=${raw}`);
  return n;
};
const config = {
  durationS: smoke ? 2 : envInt("BENCH_DURATION_S", 10),
  warmupS: smoke ? 1 : envInt("BENCH_WARMUP_S", 2),
  connections: envInt("BENCH_CONNECTIONS", 16),
  streams: envInt("BENCH_STREAMS", 8),
  inProcessIterations: smoke ? 2_000 : 20_000,
};
const progress = (line: string) => console.log(`· ${line}`);
const root = repoRoot();
const here = fileURLToPath(new URL(".", import.meta.url));

interface Child {
  port: number;
  process: ChildProcess;
  stop(): Promise<void>;
}

/** Forks a TypeScript server script under tsx and waits for its {type:"ready", port}. */
function startChild(script: string, args: string[]): Promise<Child> {
  const child = fork(script, args, { execArgv: ["--import", "tsx"], stdio: ["ignore", "inherit", "inherit", "ipc"], env: { ...process.env, BENCH_PAYLOAD_BYTES: "64" } });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${script} ${args.join(" ")}: not ready within 60 s`));
    }, 60_000);
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${script}: exited (code ${code}) before it was ready`));
    });
    child.on("message", (message: { type: string; port?: number }) => {
      if (message.type !== "ready") return;
      clearTimeout(timer);
      resolve({
        port: message.port!,
        process: child,
        stop: async () => {
          child.kill("SIGTERM");
          const killer = setTimeout(() => child.kill("SIGKILL"), 5000);
          await exited;
          clearTimeout(killer);
        },
      });
    });
  });
}

interface Row {
  scenario: string;
  callsPerSecond: number;
  p50Ms: number;
  p99Ms: number;
  calls: number;
  failed: number;
}

const work = mkdtempSync(join(tmpdir(), "orca-bench-policy-"));

async function load(scenario: string, port: number, path: string, body: Buffer): Promise<Row> {
  const bodyFile = join(work, `${scenario.replace(/\W+/g, "_")}.bin`);
  writeFileSync(bodyFile, body);
  const url = `http://127.0.0.1:${port}${path}`;
  if (config.warmupS > 0) await runH2load({ url, bodyFile, connections: config.connections, streams: config.streams, durationS: config.warmupS });
  const logFile = join(work, "h2load.log");
  rmSync(logFile, { force: true });
  const result = await runH2load({ url, bodyFile, connections: config.connections, streams: config.streams, durationS: config.durationS, logFile });
  const durations = readDurations(logFile);
  const row = {
    scenario,
    callsPerSecond: result.requestsPerSecond,
    p50Ms: percentile(durations, 50),
    p99Ms: percentile(durations, 99),
    calls: result.succeeded,
    failed: result.failed + result.errored + result.timedOut,
  };
  progress(`${scenario}: ${row.callsPerSecond.toFixed(0)} calls/s, p99 ${row.p99Ms.toFixed(2)} ms`);
  return row;
}

function decideFrame(bundle: string, bypassCache: boolean): Buffer {
  const input: JsonObject = bundle === "default" ? { ip_reputation: 42 } : { risk: "slow" };
  return grpcFrame(toBinary(DecideRequestSchema, create(DecideRequestSchema, { bundle, tenant: "trusted", action: "read", input, bypassCache })));
}

function inProcess(label: string, engine: Engine, input: JsonObject): { engine: string; p50Us: number; p99Us: number; evaluationsPerSecond: number } {
  for (let i = 0; i < 500; i++) engine.evaluate(input);
  const samples = new Float64Array(config.inProcessIterations);
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < samples.length; i++) {
    const s = process.hrtime.bigint();
    engine.evaluate(input);
    samples[i] = Number(process.hrtime.bigint() - s) / 1000;
  }
  const total = Number(process.hrtime.bigint() - t0) / 1e9;
  samples.sort();
  const out = { engine: label, p50Us: percentile(samples, 50), p99Us: percentile(samples, 99), evaluationsPerSecond: samples.length / total };
  progress(`in-process ${label}: p50 ${out.p50Us.toFixed(1)} µs, p99 ${out.p99Us.toFixed(1)} µs`);
  return out;
}

if (!ensureH2load(progress)) process.exit(1);
progress(`${smoke ? "smoke run" : "full run"}: ${config.durationS} s per scenario, h2load ${config.connections} connections x ${config.streams} streams, ${cpus().length} CPUs`);

const rows: Row[] = [];
const rpcServer = join(root, "bench", "rpc", "server.ts");
if (existsSync(rpcServer)) {
  for (const kind of ["bare", "grpc-js"]) {
    progress(`starting RPC baseline ${kind} (bench/rpc/server.ts)`);
    const child = await startChild(rpcServer, [kind]);
    try {
      rows.push(await load(kind === "bare" ? "baseline: bare node:http2 echo" : "baseline: @grpc/grpc-js echo", child.port, ECHO_PATH, echoRequestFrame(64)));
    } finally {
      await child.stop();
    }
  }
} else {
  progress("bench/rpc/server.ts not found: RPC baselines skipped");
}

progress("starting the Policy service (PGlite, Cedar defaults + OPA ABI fixture)");
const policy = await startChild(join(here, "server.ts"), []);
try {
  // h2load counts any HTTP 200 as success, so check once with a real client that each scenario decides.
  const client = createClient(PolicyService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${policy.port}` }));
  for (const [bundle, expected] of [["default", Decision.TARPIT], ["opa", Decision.TARPIT]] as const) {
    const r = await client.decide({ bundle, tenant: "trusted", action: "read", input: (bundle === "default" ? { ip_reputation: 42 } : { risk: "slow" }) as JsonObject });
    if (r.result?.decision !== expected) throw new Error(`bundle ${bundle} decided ${r.result?.decision}, expected ${expected}`);
  }
  const path = "/orca.policy.v1.PolicyService/Decide";
  rows.push(await load("Decide cedar cached", policy.port, path, decideFrame("default", false)));
  rows.push(await load("Decide cedar uncached", policy.port, path, decideFrame("default", true)));
  rows.push(await load("Decide opa-wasm cached", policy.port, path, decideFrame("opa", false)));
  rows.push(await load("Decide opa-wasm uncached", policy.port, path, decideFrame("opa", true)));
  const stats = await client.getStats({});
  progress(`policy replica: cache hit ratio ${stats.decisionCache?.hitRatio.toFixed(4)}, evaluation errors ${stats.evaluationErrors}`);
} finally {
  await policy.stop();
}

const cedar = loadCedarEngine(readFileSync(join(defaultsDir(), "default.cedar")), readFileSync(join(defaultsDir(), "default.cedarschema"), "utf8"));
const opa = await loadOpaEngine(await fixtureBundle(), "");
if (!cedar.ok || !opa.ok) throw new Error("engines did not load");
const engines = [
  inProcess("cedar (defaults)", cedar.engine, { tenant: "trusted", action: "read", ip_reputation: 42 }),
  inProcess("opa-wasm (ABI fixture)", opa.engine, { tenant: "trusted", action: "read", risk: "slow" }),
];

console.log("");
console.log("| scenario | calls/s | p50 ms | p99 ms | calls | failed |");
console.log("|---|---:|---:|---:|---:|---:|");
for (const r of rows) console.log(`| ${r.scenario} | ${r.callsPerSecond.toFixed(0)} | ${r.p50Ms.toFixed(2)} | ${r.p99Ms.toFixed(2)} | ${r.calls} | ${r.failed} |`);
console.log("");
console.log("| engine (in-process evaluate) | p50 µs | p99 µs | evaluations/s |");
console.log("|---|---:|---:|---:|");
for (const e of engines) console.log(`| ${e.engine} | ${e.p50Us.toFixed(1)} | ${e.p99Us.toFixed(1)} | ${e.evaluationsPerSecond.toFixed(0)} |`);

const resultsDir = join(root, "bench", "results");
mkdirSync(resultsDir, { recursive: true });
const file = join(resultsDir, `policy-${new Date().toISOString()}.json`);
writeFileSync(file, JSON.stringify({ smoke, config, cpus: cpus().length, node: process.version, rows, engines }, null, 2));
progress(`results written to ${file}`);
rmSync(work, { recursive: true, force: true });
