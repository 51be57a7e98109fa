import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { cpus, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import {
  DEFAULT_SERVERS,
  ECHO_PATH,
  SERVER_KINDS,
  SERVER_LABELS,
  echoRequestFrame,
  repoRoot,
  type ServerKind,
} from "./common.js";
import { ensureH2load, percentile, readDurations, runH2load } from "../lib/h2load.js";
import { startServerChild, type ServerChild } from "../lib/server-child.js";
import { CASES, checkConformance } from "./conformance.js";
import { verifyServer } from "./verify.js";

/**
 * `npm run bench:rpc [-- --smoke]`: unary gRPC echo calls/s and latency of a bare node:http2
 * responder, a plain @grpc/grpc-js server and the kit's OrcaServer (all interceptors on), each in
 * its own child process, loaded in turn by h2load with the same settings, round after round.
 *
 * Environment: BENCH_ROUNDS (5; each server's median round is reported), BENCH_DURATION_S (4, per
 * server and round), BENCH_WARMUP_S (3, once per server), BENCH_REWARM_S (2, unmeasured load
 * before every window), BENCH_CONNECTIONS (16), BENCH_STREAMS (8),
 * BENCH_PAYLOAD_BYTES (64), BENCH_SERVERS (bare,grpc-js,kit,kit-slow; also kit-raw: the fast path
 * without interceptors on a plain http2 server, to see what the interceptors cost; kit-id-in-body:
 * the kit's echo also putting the correlation id in the response body, which the grpc-js echo
 * cannot, 38 bytes more to encode and send), BENCH_CPU_PROF
 * (servers to run under node --cpu-prof, e.g. "kit"; profiles land in bench/results/profiles).
 * --smoke runs one round of 2 s per server after 1 s of warm-up.
 */

const smoke = process.argv.includes("--smoke");

function envInt(name: string, fallback: number, min = 1): number {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min) {
    console.error(`invalid ${name}=${JSON.stringify(raw)}: expected an integer >= ${min}`);
    process.exit(2);
  }
  return value;
}

function envServers(name: string, fallback: readonly ServerKind[]): ServerKind[] {
  const raw = process.env[name];
  if (raw === undefined || raw.trim() === "") return [...fallback];
  const list = raw.split(",").map((s) => s.trim()).filter(Boolean);
  const bad = list.filter((s) => !(SERVER_KINDS as readonly string[]).includes(s));
  if (bad.length > 0) {
    console.error(`invalid ${name}: unknown server ${bad.join(", ")}; expected a comma list of ${SERVER_KINDS.join(", ")}`);
    process.exit(2);
  }
  return list as ServerKind[];
}

const config = {
  durationS: smoke ? 2 : envInt("BENCH_DURATION_S", 4),
  warmupS: smoke ? 1 : envInt("BENCH_WARMUP_S", 3, 0),
  rewarmS: smoke ? 1 : envInt("BENCH_REWARM_S", 2),
  connections: envInt("BENCH_CONNECTIONS", 16),
  streams: envInt("BENCH_STREAMS", 8),
  payloadBytes: envInt("BENCH_PAYLOAD_BYTES", 64, 0),
  rounds: smoke ? 1 : envInt("BENCH_ROUNDS", 5),
  servers: envServers("BENCH_SERVERS", DEFAULT_SERVERS),
  cpuProf: envServers("BENCH_CPU_PROF", []),
};

const progress = (line: string) => console.log(`· ${line}`);

interface Measurement {
  server: ServerKind;
  label: string;
  callsPerSecond: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  meanMs: number;
  maxMs: number;
  calls: number;
  failed: number;
  /** Server process CPU (user + system, all threads) per call over the measured window. */
  serverCpuUsPerCall: number;
  /** The same for the main (event loop) thread alone, where calls are served (Linux only). */
  mainThreadCpuUsPerCall?: number;
  /** Bytes of log the kit wrote (one pino line per call), as a check that logging happened. */
  logBytes?: number;
}

const root = repoRoot();
const profileDir = join(root, "bench", "results", "profiles");

function startChild(kind: ServerKind): Promise<ServerChild> {
  const execArgv = config.cpuProf.includes(kind) ? ["--cpu-prof", `--cpu-prof-dir=${profileDir}`, `--cpu-prof-name=${kind}-${Date.now()}.cpuprofile`] : [];
  return startServerChild(kind, { execArgv, env: { ...process.env, BENCH_PAYLOAD_BYTES: String(config.payloadBytes) } });
}

interface StartedServer {
  kind: ServerKind;
  label: string;
  child: ServerChild;
  load: { url: string; bodyFile: string; connections: number; streams: number };
}

/** Starts one server in its own process, checks that it answers, and warms it up. */
async function startServer(kind: ServerKind, bodyFile: string, requestFrame: Buffer): Promise<StartedServer> {
  const label = SERVER_LABELS[kind];
  progress(`${label}: starting`);
  const child = await startChild(kind);
  try {
    const url = `http://127.0.0.1:${child.port}`;
    await verifyServer(url, requestFrame, config.payloadBytes);
    progress(`${label}: verified (Connect gRPC client and raw h2 call: echo, grpc-status 0); warm-up ${config.warmupS} s`);
    const load = { url: url + ECHO_PATH, bodyFile, connections: config.connections, streams: config.streams };
    if (config.warmupS > 0) await runH2load({ ...load, durationS: config.warmupS });
    return { kind, label, child, load };
  } catch (error) {
    await child.stop();
    throw error;
  }
}

/** One measured window of one server (the others sit idle meanwhile). */
async function measure(server: StartedServer, workDir: string): Promise<Measurement> {
  const { kind, label, child, load } = server;
  const logFile = join(workDir, `${kind}.h2load.log`);
  // While a server idles (the others being measured), V8 drops optimized code and shrinks the
  // heap; a short unmeasured burst first brings it back to its steady state.
  await runH2load({ ...load, durationS: config.rewarmS });
  const before = await child.cpu();
  const result = await runH2load({ ...load, durationS: config.durationS, logFile });
  const after = await child.cpu();
  const durations = readDurations(logFile);
  rmSync(logFile, { force: true });
  const cpuUs = after.usage.user + after.usage.system - before.usage.user - before.usage.system;
  const measurement: Measurement = {
    server: kind,
    label,
    callsPerSecond: result.requestsPerSecond,
    p50Ms: percentile(durations, 50),
    p90Ms: percentile(durations, 90),
    p99Ms: percentile(durations, 99),
    meanMs: result.meanMs,
    maxMs: result.maxMs,
    calls: result.succeeded,
    failed: result.failed + result.errored + result.timedOut,
    serverCpuUsPerCall: result.succeeded > 0 ? cpuUs / result.succeeded : NaN,
    mainThreadCpuUsPerCall:
      before.mainThreadUs !== undefined && after.mainThreadUs !== undefined && result.succeeded > 0
        ? (after.mainThreadUs - before.mainThreadUs) / result.succeeded
        : undefined,
    logBytes: after.logBytes,
  };
  progress(
    `${label}: ${Math.round(measurement.callsPerSecond)} calls/s, p50 ${measurement.p50Ms.toFixed(2)} ms, ` +
      `p99 ${measurement.p99Ms.toFixed(2)} ms, server CPU per call ${measurement.serverCpuUsPerCall.toFixed(0)} µs` +
      (measurement.mainThreadCpuUsPerCall !== undefined ? ` (main thread ${measurement.mainThreadCpuUsPerCall.toFixed(0)} µs)` : "") +
      (measurement.failed > 0 ? `, ${measurement.failed} FAILED` : ""),
  );
  return measurement;
}

function median(values: Measurement[]): Measurement {
  const sorted = [...values].sort((a, b) => a.callsPerSecond - b.callsPerSecond);
  return sorted[Math.floor((sorted.length - 1) / 2)];
}

function printTable(rows: Measurement[]): void {
  const grpcJs = rows.find((r) => r.server === "grpc-js");
  const bare = rows.find((r) => r.server === "bare");
  const ratio = (r: Measurement, base?: Measurement) => (base ? `${(r.callsPerSecond / base.callsPerSecond).toFixed(2)}x` : "-");
  const header = ["server", "calls/s", "p50 ms", "p99 ms", "CPU µs/call", "vs grpc-js", "vs bare"];
  const body = rows.map((r) => [
    r.label,
    String(Math.round(r.callsPerSecond)),
    r.p50Ms.toFixed(2),
    r.p99Ms.toFixed(2),
    r.serverCpuUsPerCall.toFixed(0),
    ratio(r, grpcJs),
    ratio(r, bare),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((row) => row[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ");
  console.log("");
  console.log(line(header));
  console.log(widths.map((w) => "-".repeat(w)).join("  "));
  for (const row of body) console.log(line(row));
  console.log("");
}

async function main(): Promise<number> {
  if (!ensureH2load(progress)) return 1;
  const h2loadVersion = execFileSync("h2load", ["--version"]).toString().trim();
  const workDir = mkdtempSync(join(tmpdir(), "orca-bench-"));
  const requestFrame = echoRequestFrame(config.payloadBytes);
  const bodyFile = join(workDir, "echo-request.bin");
  writeFileSync(bodyFile, requestFrame);
  if (config.cpuProf.length > 0) mkdirSync(profileDir, { recursive: true });
  progress(
    `${config.servers.join(", ")}: ${config.rounds} round(s) of ${config.durationS} s each after ${config.warmupS} s warm-up, ` +
      `${config.connections} connections x ${config.streams} streams, ${config.payloadBytes}-byte payload, ${cpus().length} CPUs`,
  );

  if (config.servers.some((kind) => kind.startsWith("kit"))) {
    const problems = await checkConformance();
    if (problems.length > 0) {
      console.error(`the kit's fast path and slow path answer differently:\n${problems.join("\n")}`);
      return 1;
    }
    progress(`kit: fast path and slow path give the same answers in all ${CASES.length} conformance cases`);
  }

  // The servers and h2load need the CPUs to themselves; other work skews every figure.
  const loadBefore = loadavg()[0];
  if (loadBefore > cpus().length * 0.5) {
    progress(`warning: load average ${loadBefore.toFixed(1)} on ${cpus().length} CPUs: other work is running, figures will be noisy`);
  }

  // All servers run for the whole benchmark, each in its own process, and are measured in turn,
  // round after round, in a different order each round: on a shared or virtual machine the speed
  // of the CPUs drifts over minutes, and alternating short windows lets every server see the
  // same drift. Each round's kit/grpc-js ratio compares two windows taken moments apart.
  const rounds = new Map<ServerKind, Measurement[]>();
  const servers: StartedServer[] = [];
  try {
    for (const kind of config.servers) servers.push(await startServer(kind, bodyFile, requestFrame));
    for (let round = 1; round <= config.rounds; round++) {
      const order = round % 2 === 1 ? servers : [...servers].reverse();
      progress(`round ${round} of ${config.rounds}: ${config.durationS} s per server, ${order.map((s) => s.kind).join(" -> ")}`);
      for (const server of order) {
        const m = await measure(server, workDir);
        rounds.set(server.kind, [...(rounds.get(server.kind) ?? []), m]);
      }
    }
  } finally {
    await Promise.all(servers.map((s) => s.child.stop()));
    rmSync(workDir, { recursive: true, force: true });
  }

  const rows = config.servers.map((kind) => median(rounds.get(kind)!));
  printTable(rows);
  const grpcJsRounds = rounds.get("grpc-js");
  const kitRounds = rounds.get("kit");
  let goalMet: boolean | undefined;
  let pairedRatios: number[] | undefined;
  if (grpcJsRounds && kitRounds) {
    pairedRatios = kitRounds.map((k, i) => k.callsPerSecond / grpcJsRounds[i].callsPerSecond);
    const sortedRatios = [...pairedRatios].sort((a, b) => a - b);
    const medianRatio = sortedRatios[Math.floor((sortedRatios.length - 1) / 2)];
    const kitMedian = rows.find((r) => r.server === "kit")!;
    const grpcJsMedian = rows.find((r) => r.server === "grpc-js")!;
    goalMet = kitMedian.callsPerSecond >= grpcJsMedian.callsPerSecond && medianRatio >= 1;
    console.log(`kit / grpc-js per round: ${pairedRatios.map((r) => r.toFixed(2)).join(", ")} (median ${medianRatio.toFixed(2)})`);
    // One short round on a box that just ran the test suite says little either way.
    const caveat = smoke ? " in this smoke run (one 2 s round: it checks the harness; measure without --smoke)" : "";
    console.log(`goal (kit fast path with all interceptors >= grpc-js, by median calls/s and by median per-round ratio): ${goalMet ? "met" : "NOT met"}${caveat}`);
  }

  const date = new Date().toISOString();
  const resultsDir = join(root, "bench", "results");
  mkdirSync(resultsDir, { recursive: true });
  const file = join(resultsDir, `rpc-${date.replace(/:/g, "-")}.json`);
  const report = {
    date,
    node: process.version,
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model,
    loadAverage: { before: loadBefore, after: loadavg()[0] },
    h2load: h2loadVersion,
    config: { ...config, smoke },
    goalMet,
    pairedRatios,
    results: rows,
    rounds: config.rounds > 1 ? Object.fromEntries(rounds) : undefined,
  };
  writeFileSync(file, JSON.stringify(report, null, 2) + "\n");
  console.log(`results: ${file}`);
  if (config.cpuProf.length > 0) console.log(`CPU profiles: ${profileDir}`);

  const failed = rows.filter((r) => r.failed > 0);
  if (failed.length > 0) {
    console.error(`failed calls under load: ${failed.map((r) => `${r.label} (${r.failed})`).join(", ")}`);
    return 1;
  }
  return 0;
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    console.error(error instanceof Error ? error.stack ?? error.message : error);
    process.exit(1);
  },
);
