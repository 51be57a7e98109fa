import { execFileSync, spawn, spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { cpus, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fromJson, toJson, type JsonObject, type JsonValue } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import type { DescService } from "@bufbuild/protobuf";
import { ensureH2load, readDurations, runH2load } from "../lib/h2load.js";
import { startServerChild } from "../lib/server-child.js";
import { ECHO_PATH, echoRequestFrame, repoRoot } from "../rpc/common.js";
import { verifyServer } from "../rpc/verify.js";
import { durationMs, extract, loadConfigs, substitute, type LoadedConfig } from "./config.js";
import { registry, requestFrame, resolveCall, type ResolvedCall } from "./descriptors.js";
import { startMesh, type Mesh } from "./mesh.js";
import { PERCENTAGES, checkSlo, ghzReport, latencyMs, latencySvg, type ChartRow, type GhzReport, type SloCheck } from "./report.js";

/**
 * `npm run bench -- <name|all> [--smoke]`: load tests of the mesh's hot RPCs against their SLOs.
 *
 * <name> is "all", a service ("lock") or one config ("lock/GetLock"); configs live in
 * bench/slo/<service>/<rpc>.json (ghz's config format plus `slo` and `setup`; see config.ts).
 * The runner starts the foundation baselines (bench/rpc/server.ts: bare node:http2 and
 * @grpc/grpc-js echo) and loads them with the same h2load settings, then starts the whole mesh
 * (`orca up` in a child process, ephemeral ports, PGlite or DATABASE_URL/REDIS_URL), runs each
 * config's setup calls, checks one call with a real client (Unimplemented: the config is reported
 * "skipped: Unimplemented"), and loads it: with ghz when it is on PATH, else with h2load (the
 * request is the config's `data` encoded with protobuf-es; metadata becomes -H headers). h2load
 * cannot see grpc-status, so a generated Connect gRPC client calls the same RPC with the same
 * request in a steady trickle during the load and counts status codes; the error rate is the
 * larger of that sample's and h2load's transport failures'.
 *
 * Writes bench/results/slo-<date>.json (one ghz-shaped report per RPC and baseline) and
 * bench/results/slo-<date>.svg (latency distributions).
 *
 * Exit status: full run: 1 on any SLO miss or error. --smoke (CI; 1 s per config): 1 only on
 * errors (a non-OK status in the sample, an h2load transport failure, a setup or first call that
 * fails); SLO misses are reported but do not fail it, because a loaded CI machine misses them.
 *
 * Environment: BENCH_TOOL (ghz|h2load; default ghz when on PATH), BENCH_SMOKE_DURATION (1s),
 * BENCH_BASELINE_DURATION (5s; smoke: the smoke duration), BENCH_WARMUP (1s before each full-run
 * load; 0 for none), BENCH_SAMPLE_INTERVAL_MS (10: pause between sampled calls), BENCH_SAMPLERS (2: sampling loops, one call
 * in flight each), BENCH_LOG_LEVEL
 * (the mesh's LOG_LEVEL, default warn).
 */

const args = process.argv.slice(2);
const smoke = args.includes("--smoke");
const unknownFlags = args.filter((a) => a.startsWith("--") && a !== "--smoke");
const positionals = args.filter((a) => !a.startsWith("--"));
const selector = positionals[0] ?? "all";
const smokeDuration = process.env.BENCH_SMOKE_DURATION ?? "1s";
const baselineDuration = smoke ? smokeDuration : (process.env.BENCH_BASELINE_DURATION ?? "5s");
const warmup = smoke ? "0s" : (process.env.BENCH_WARMUP ?? "1s");
const sampleIntervalMs = Number(process.env.BENCH_SAMPLE_INTERVAL_MS ?? "10");
const samplers = Math.max(1, Number(process.env.BENCH_SAMPLERS ?? "2"));

const progress = (line: string) => console.log(`· ${line}`);

type Tool = "ghz" | "h2load";

function chooseTool(): Tool {
  const wanted = process.env.BENCH_TOOL;
  const hasGhz = spawnSync("ghz", ["--version"], { stdio: "ignore" }).status === 0;
  if (wanted === "ghz" && !hasGhz) throw new Error("BENCH_TOOL=ghz but ghz is not on PATH");
  if (wanted !== undefined && wanted !== "ghz" && wanted !== "h2load") throw new Error(`BENCH_TOOL=${wanted}: expected ghz or h2load`);
  return wanted === "h2load" ? "h2load" : hasGhz ? "ghz" : "h2load";
}

/** The load of one run: ghz's concurrency spread over its connections = h2load's -c and -m. */
interface Load {
  connections: number;
  streams: number;
  /** h2load/ghz duration ("1s") or a request count. */
  duration?: string;
  total?: number;
}

function loadOf(c: LoadedConfig): Load {
  const { config } = c;
  const streams = Math.ceil(config.concurrency / config.connections);
  if (smoke) return { connections: config.connections, streams, duration: smokeDuration };
  return config.duration !== undefined ? { connections: config.connections, streams, duration: config.duration } : { connections: config.connections, streams, total: config.total };
}

const describeLoad = (l: Load) => `${l.duration ?? `${l.total} calls`}, ${l.connections} connections x ${l.streams} streams`;

/** What a sampling client saw. */
interface Sample {
  calls: number;
  codes: Record<string, number>;
  errors: Record<string, number>;
  latenciesMs: number[];
}

const codeName = (code: Code) => Code[code];
const ghzError = (error: ConnectError) => `rpc error: code = ${Code[error.code]} desc = ${error.rawMessage}`;

type AnyClient = Record<string, (request: unknown, options?: { timeoutMs?: number; headers?: Record<string, string> }) => Promise<unknown>>;

class Clients {
  private transports = new Map<string, Transport>();
  constructor(private readonly mesh: Mesh) {}
  url(call: ResolvedCall): string {
    const url = this.mesh.endpoints.get(call.meshService);
    if (!url) throw new Error(`${call.path}: the mesh has no service "${call.meshService}"`);
    return url;
  }
  client(call: ResolvedCall): AnyClient {
    const url = this.url(call);
    let transport = this.transports.get(url);
    if (!transport) this.transports.set(url, (transport = createGrpcTransport({ baseUrl: url })));
    return createClient(call.service as DescService, transport) as unknown as AnyClient;
  }
  /** One unary call from proto JSON; the response as proto JSON. */
  async call(call: ResolvedCall, data: JsonValue, headers?: Record<string, string>): Promise<JsonValue> {
    const request = fromJson(call.method.input, data, { registry });
    const response = await this.client(call)[call.method.localName](request, { timeoutMs: 10_000, headers });
    return toJson(call.method.output, response as never, { registry });
  }
}

/**
 * Calls the RPC in a steady trickle until stopped: BENCH_SAMPLERS (2) loops, each with one call in
 * flight and BENCH_SAMPLE_INTERVAL_MS between calls, so the sample grows with the run's length.
 */
function startSampler(clients: Clients, call: ResolvedCall, data: JsonValue, headers: Record<string, string> | undefined): { stop(): Promise<Sample>; sample: Sample } {
  const sample: Sample = { calls: 0, codes: {}, errors: {}, latenciesMs: [] };
  const request = fromJson(call.method.input, data, { registry });
  const method = clients.client(call)[call.method.localName];
  let stopped = false;
  const loop = async () => {
    while (!stopped) {
      const start = performance.now();
      let code = "OK";
      try {
        await method(request, { timeoutMs: 10_000, headers });
      } catch (error) {
        const e = ConnectError.from(error);
        code = codeName(e.code);
        const key = ghzError(e);
        sample.errors[key] = (sample.errors[key] ?? 0) + 1;
      }
      sample.latenciesMs.push(performance.now() - start);
      sample.calls++;
      sample.codes[code] = (sample.codes[code] ?? 0) + 1;
      if (sampleIntervalMs > 0) await sleep(sampleIntervalMs);
    }
  };
  const loops = Array.from({ length: samplers }, loop);
  return {
    sample,
    stop: async () => {
      stopped = true;
      await Promise.all(loops);
      return sample;
    },
  };
}

interface Measured {
  report: GhzReport;
  p50Ms: number;
  p99Ms: number;
  transportFailures: number;
  sample?: { calls: number; statusCodeDistribution: Record<string, number>; errors: number; p99Ms: number };
  errorRate: number;
}

/** One h2load run (after an unmeasured warm-up in the full run), latencies from its per-request log. */
async function measureH2load(label: string, url: string, frame: Buffer, headers: string[], load: Load, workDir: string, sampler?: () => ReturnType<typeof startSampler>): Promise<Measured> {
  const bodyFile = join(workDir, "request.bin");
  writeFileSync(bodyFile, frame);
  const options = { url, bodyFile, headers, connections: load.connections, streams: load.streams };
  if (durationMs(warmup) > 0) await runH2load({ ...options, duration: warmup });
  const logFile = join(workDir, "h2load.log");
  const running = sampler?.();
  const started = Date.now();
  const ticker = smoke
    ? undefined
    : setInterval(() => {
        const s = running?.sample;
        progress(`${label}: ${((Date.now() - started) / 1000).toFixed(0)} s${s ? `, sampled ${s.calls} calls, ${s.calls - (s.codes.OK ?? 0)} not OK` : ""}`);
      }, 3000);
  let result;
  let sample: Sample | undefined;
  try {
    result = await runH2load({ ...options, duration: load.duration, requests: load.total, logFile });
  } finally {
    if (ticker) clearInterval(ticker);
    sample = await running?.stop();
  }
  const sorted = readDurations(logFile);
  rmSync(logFile, { force: true });
  const transportFailures = result.failed + result.errored + result.timedOut;
  const errorDistribution: Record<string, number> = { ...(sample?.errors ?? {}) };
  if (result.failed) errorDistribution["h2load: failed (HTTP status not 2xx)"] = result.failed;
  if (result.errored) errorDistribution["h2load: errored (stream or connection error)"] = result.errored;
  if (result.timedOut) errorDistribution["h2load: timed out"] = result.timedOut;
  const report = ghzReport({
    date: new Date().toISOString(),
    sortedMs: sorted,
    elapsedMs: result.elapsedMs,
    rps: result.requestsPerSecond,
    // h2load cannot see grpc-status: these are the sampled calls' codes (see `sample`).
    statusCodeDistribution: sample ? { ...sample.codes } : { OK: result.succeeded },
    errorDistribution,
  });
  const total = result.succeeded + transportFailures;
  const sampleErrors = sample ? sample.calls - (sample.codes.OK ?? 0) : 0;
  const sampleRate = sample && sample.calls > 0 ? sampleErrors / sample.calls : 0;
  // With a timed run, calls still in flight at the end are neither done nor failed (h2load -D).
  const transportRate = total > 0 ? transportFailures / total : 0;
  const sampleSorted = Float64Array.from(sample?.latenciesMs ?? []).sort();
  return {
    report,
    p50Ms: latencyMs(report, 50),
    p99Ms: latencyMs(report, 99),
    transportFailures,
    sample: sample && {
      calls: sample.calls,
      statusCodeDistribution: sample.codes,
      errors: sampleErrors,
      p99Ms: sampleSorted.length ? sampleSorted[Math.min(sampleSorted.length, Math.ceil(0.99 * sampleSorted.length)) - 1] : NaN,
    },
    errorRate: Math.max(sampleRate, transportRate),
  };
}

/** One ghz run (ghz sees every status itself, so no sampling). */
async function measureGhz(c: LoadedConfig, host: string, data: JsonValue, load: Load, workDir: string): Promise<Measured> {
  const output = join(workDir, "ghz.json");
  const configFile = join(workDir, "ghz-config.json");
  const { slo: _slo, setup: _setup, total: _total, duration: _duration, ...ghzKeys } = c.config;
  writeFileSync(
    configFile,
    JSON.stringify({ ...ghzKeys, name: c.name, host, data, ...(load.duration ? { duration: load.duration } : { total: load.total }), format: "json", output }, null, 2),
  );
  await new Promise<void>((resolve, reject) => {
    const child = spawn("ghz", ["--config", configFile], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (out += d.toString()));
    child.once("error", reject);
    child.once("exit", (code) => (code === 0 ? resolve() : reject(new Error(`ghz exited with ${code}:\n${out}`))));
  });
  const report = JSON.parse(readFileSync(output, "utf8")) as GhzReport & { details?: unknown };
  delete report.details;
  const ok = report.statusCodeDistribution?.OK ?? 0;
  return {
    report,
    p50Ms: latencyMs(report, 50),
    p99Ms: latencyMs(report, 99),
    transportFailures: 0,
    errorRate: report.count > 0 ? (report.count - ok) / report.count : 1,
  };
}

interface Baseline {
  kind: "bare" | "grpc-js";
  label: string;
  load: Load;
  measured?: Measured;
  error?: string;
}

interface Result {
  name: string;
  call: string;
  tool: Tool;
  load: Load;
  status: "ok" | "miss" | "error" | "skipped";
  skipped?: string;
  error?: string;
  measured?: Measured;
  slo: LoadedConfig["config"]["slo"];
  sloCheck?: SloCheck;
  /** Figures as ratios of the baselines under the same load: calls/s (x of baseline) and p99 (x of baseline). */
  vs?: Record<string, { rps: number; p99: number }>;
}

const sameLoad = (a: Load, b: Load) => a.connections === b.connections && a.streams === b.streams;

async function runBaselines(loads: Load[], workDir: string): Promise<Baseline[]> {
  const out: Baseline[] = [];
  for (const kind of ["bare", "grpc-js"] as const) {
    const label = kind === "bare" ? "baseline: bare node:http2 echo" : "baseline: @grpc/grpc-js echo";
    progress(`${label}: starting (bench/rpc/server.ts)`);
    let child;
    try {
      child = await startServerChild(kind, { env: { ...process.env, BENCH_PAYLOAD_BYTES: "64" } });
      const url = `http://127.0.0.1:${child.port}`;
      await verifyServer(url, echoRequestFrame(64), 64);
      for (const base of loads) {
        const load = { ...base, duration: baselineDuration, total: undefined };
        progress(`${label}: measuring ${describeLoad(load)}`);
        const measured = await measureH2load(label, url + ECHO_PATH, echoRequestFrame(64), [], load, workDir);
        progress(`${label}: ${Math.round(measured.report.rps)} calls/s, p50 ${measured.p50Ms.toFixed(2)} ms, p99 ${measured.p99Ms.toFixed(2)} ms`);
        out.push({ kind, label, load, measured });
      }
    } catch (error) {
      progress(`${label}: FAILED: ${(error as Error).message}`);
      for (const load of loads) out.push({ kind, label, load, error: (error as Error).message });
    } finally {
      await child?.stop();
    }
  }
  return out;
}

async function runConfig(c: LoadedConfig, tool: Tool, clients: Clients, benchRun: string, workDir: string): Promise<Result> {
  const load = loadOf(c);
  const result: Result = { name: c.name, call: c.config.call, tool, load, status: "error", slo: c.config.slo };
  const vars: Record<string, JsonValue> = { benchRun };
  const headers = c.config.metadata;
  try {
    for (const [i, step] of (c.config.setup ?? []).entries()) {
      const stepCall = resolveCall(step.call);
      progress(`${c.name}: setup ${i + 1}/${c.config.setup!.length}: ${stepCall.method.name}`);
      const response = await clients.call(stepCall, substitute(step.data ?? {}, vars), headers);
      for (const [name, path] of Object.entries(step.save ?? {})) vars[name] = extract(response, path);
    }
    const data = substitute(c.config.data, vars) as JsonObject;
    try {
      await clients.call(c.call, data, headers);
    } catch (error) {
      const e = ConnectError.from(error);
      if (e.code === Code.Unimplemented) {
        result.status = "skipped";
        result.skipped = "skipped: Unimplemented";
        result.error = e.rawMessage;
        progress(`${c.name}: skipped: Unimplemented (${e.rawMessage})`);
        return result;
      }
      throw new Error(`the first call failed: ${ghzError(e)}`);
    }
    const url = clients.url(c.call);
    progress(`${c.name}: measuring with ${tool}, ${describeLoad(load)}${tool === "h2load" ? `, sampling with ${samplers} Connect gRPC client loop(s), ${sampleIntervalMs} ms apart` : ""}`);
    result.measured =
      tool === "ghz"
        ? await measureGhz(c, new URL(url).host, data, load, workDir)
        : await measureH2load(
            c.name,
            url + c.call.path,
            requestFrame(c.call.method.input, data),
            Object.entries(headers ?? {}).map(([k, v]) => `${k}: ${v}`),
            load,
            workDir,
            () => startSampler(clients, c.call, data, headers),
          );
    const m = result.measured;
    result.sloCheck = checkSlo(c.config.slo, m.p99Ms, m.errorRate, m.report.rps);
    const nothingDone = m.report.count === 0 && (m.sample === undefined || m.sample.calls === 0);
    if (nothingDone) result.error = "no call completed during the run";
    else if (m.report.count === 0) result.error = `h2load completed no call within ${load.duration} (all still in flight); the ${m.sample?.calls} sampled calls were OK`;
    const hasErrors = m.errorRate > 0 || nothingDone;
    result.status = hasErrors && (smoke || nothingDone) ? "error" : result.sloCheck.ok ? "ok" : "miss";
    progress(
      `${c.name}: ${Math.round(m.report.rps)} calls/s, p50 ${m.p50Ms.toFixed(2)} ms, p99 ${m.p99Ms.toFixed(2)} ms, ` +
        `error rate ${(m.errorRate * 100).toFixed(2)}%${m.sample ? ` (${m.sample.errors}/${m.sample.calls} sampled not OK, ${m.transportFailures} transport failures)` : ""} -> ${result.status.toUpperCase()}`,
    );
  } catch (error) {
    result.status = "error";
    result.error = (error as Error).message;
    progress(`${c.name}: ERROR: ${result.error}`);
  }
  return result;
}

function attachRatios(results: Result[], baselines: Baseline[]): void {
  for (const r of results) {
    if (!r.measured) continue;
    r.vs = {};
    for (const b of baselines) {
      if (!b.measured || !sameLoad(b.load, r.load)) continue;
      r.vs[b.kind] = { rps: r.measured.report.rps / b.measured.report.rps, p99: r.measured.p99Ms / b.measured.p99Ms };
    }
  }
}

function printTable(results: Result[], baselines: Baseline[]): void {
  const fmt = (v: number | undefined, digits = 2) => (v === undefined || !Number.isFinite(v) ? "-" : v.toFixed(digits));
  const header = ["rpc", "calls/s", "p50 ms", "p99 ms", "errors", "SLO p99/err/rps", "result", "rps x grpc-js", "rps x bare", "p99 x grpc-js"];
  const rows: string[][] = [];
  for (const b of baselines) {
    const m = b.measured;
    rows.push([b.label, m ? String(Math.round(m.report.rps)) : "-", fmt(m?.p50Ms), fmt(m?.p99Ms), m ? String(m.transportFailures) : "-", `(${b.load.connections}x${b.load.streams})`, m ? "baseline" : "ERROR", "", "", ""]);
  }
  for (const r of results) {
    const m = r.measured;
    const errors = m ? (m.sample ? `${m.sample.errors}/${m.sample.calls}+${m.transportFailures}` : `${(m.errorRate * 100).toFixed(2)}%`) : "-";
    const verdict = r.status === "skipped" ? "skipped: Unimplemented" : r.status === "ok" ? "ok" : r.status === "miss" ? `MISS (${missing(r)})` : "ERROR";
    rows.push([
      r.name,
      m ? String(Math.round(m.report.rps)) : "-",
      fmt(m?.p50Ms),
      fmt(m?.p99Ms),
      errors,
      `${r.slo.p99Ms}ms/${(r.slo.maxErrorRate * 100).toFixed(1)}%/${r.slo.minRps}`,
      smoke && r.status === "miss" ? `ok (SLO miss: ${missing(r)})` : verdict,
      fmt(r.vs?.["grpc-js"]?.rps, 3),
      fmt(r.vs?.bare?.rps, 3),
      fmt(r.vs?.["grpc-js"]?.p99, 1),
    ]);
  }
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 || i === 6 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ");
  console.log("");
  console.log(line(header));
  console.log(widths.map((w) => "-".repeat(w)).join("  "));
  for (const row of rows) console.log(line(row));
  console.log("errors = sampled calls not OK / sampled calls + h2load transport failures (ghz: error rate)");
  console.log("");
}

function missing(r: Result): string {
  const s = r.sloCheck;
  if (!s) return r.error ?? "";
  return [!s.p99Ms.ok && "p99", !s.errorRate.ok && "errors", !s.rps.ok && "rps"].filter(Boolean).join(", ");
}

function chartRows(results: Result[], baselines: Baseline[]): ChartRow[] {
  const row = (label: string, m: Measured | undefined, status: ChartRow["status"], sloP99Ms?: number, note?: string): ChartRow => ({
    label,
    percentilesMs: Object.fromEntries(PERCENTAGES.map((p) => [p, m ? latencyMs(m.report, p) : NaN])),
    fastestMs: m ? m.report.fastest / 1e6 : NaN,
    slowestMs: m ? m.report.slowest / 1e6 : NaN,
    rps: m?.report.rps ?? 0,
    sloP99Ms,
    status,
    note,
  });
  return [
    ...baselines.map((b) => row(`${b.label} (${b.load.connections}x${b.load.streams})`, b.measured, b.measured ? "baseline" : "error", undefined, b.error)),
    ...results.map((r) => row(r.name, r.measured, r.status, r.slo.p99Ms, r.status === "skipped" ? r.skipped : r.status === "error" ? `ERROR ${r.error ?? ""}`.slice(0, 80) : r.status === "miss" ? `SLO miss: ${missing(r)}` : undefined)),
  ];
}

async function main(): Promise<number> {
  if (unknownFlags.length > 0 || positionals.length > 1) {
    console.error(`usage: npm run bench -- <all|service|service/rpc> [--smoke]`);
    return 2;
  }
  let configs: LoadedConfig[];
  try {
    configs = loadConfigs(selector);
  } catch (error) {
    console.error((error as Error).message);
    return 2;
  }
  const tool = chooseTool();
  // The baselines always use h2load (they are the foundation's figures); so does the h2load path.
  if (!ensureH2load(progress)) return 1;
  const h2loadVersion = execFileSync("h2load", ["--version"]).toString().trim();
  const date = new Date().toISOString();
  const benchRun = date.replace(/[^0-9]/g, "");
  progress(
    `${smoke ? "smoke" : "full"} run of ${configs.length} config(s) (${configs.map((c) => c.name).join(", ")}) with ${tool}; ` +
      `${cpus().length} CPUs, load average ${loadavg()[0].toFixed(1)}`,
  );
  if (loadavg()[0] > cpus().length * 0.5) progress(`warning: load average ${loadavg()[0].toFixed(1)} on ${cpus().length} CPUs: other work is running, figures will be noisy`);

  const workDir = mkdtempSync(join(tmpdir(), "orca-bench-slo-"));
  const loads: Load[] = [];
  for (const c of configs) if (!loads.some((l) => sameLoad(l, loadOf(c)))) loads.push(loadOf(c));
  let baselines: Baseline[] = [];
  let results: Result[] = [];
  let mesh: Mesh | undefined;
  try {
    baselines = await runBaselines(loads, workDir);
    progress("mesh: starting orca up (all six services, ephemeral ports)");
    const started = Date.now();
    mesh = await startMesh(progress);
    progress(`mesh: up in ${((Date.now() - started) / 1000).toFixed(1)} s; database ${mesh.database}; redis ${mesh.redis ? "on" : "off"}`);
    const clients = new Clients(mesh);
    for (const c of configs) results.push(await runConfig(c, tool, clients, benchRun, workDir));
  } finally {
    await mesh?.stop();
    rmSync(workDir, { recursive: true, force: true });
  }
  attachRatios(results, baselines);
  printTable(results, baselines);

  const resultsDir = join(repoRoot(), "bench", "results");
  mkdirSync(resultsDir, { recursive: true });
  const stem = join(resultsDir, `slo-${date.replace(/:/g, "-")}`);
  const failures = results.filter((r) => r.status === "error" || (!smoke && r.status === "miss"));
  const baselineErrors = baselines.filter((b) => b.error || (b.measured && b.measured.transportFailures > 0));
  const ok = failures.length === 0 && baselineErrors.length === 0;
  const report = {
    date,
    smoke,
    ok,
    tool,
    h2load: h2loadVersion,
    node: process.version,
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model,
    loadAverageAfter: loadavg()[0],
    mesh: mesh ? { database: mesh.database, redis: mesh.redis } : undefined,
    notes: [
      "Each report has ghz's JSON report shape; durations are nanoseconds.",
      tool === "h2load"
        ? "h2load cannot see grpc-status: statusCodeDistribution counts the calls of a Connect gRPC client that sampled the same RPC during the load (see sample); errorRate is the larger of the sampled error rate and h2load's transport failure rate."
        : "ghz reported every call's status.",
      "vs: calls/s and p99 as multiples of the baselines (bare node:http2 and @grpc/grpc-js echo) under the same connections x streams.",
    ],
    baselines: baselines.map((b) => ({ name: b.label, load: b.load, error: b.error, ...b.measured?.report })),
    results: results.map((r) => ({
      name: r.name,
      call: r.call,
      tool: r.tool,
      load: r.load,
      status: r.status,
      skipped: r.skipped,
      error: r.error,
      ...r.measured?.report,
      statusCodeSource: r.measured ? (r.measured.sample ? "sample" : "all calls") : undefined,
      sample: r.measured?.sample,
      transportFailures: r.measured?.transportFailures,
      errorRate: r.measured?.errorRate,
      slo: r.slo,
      sloCheck: r.sloCheck,
      vs: r.vs,
    })),
  };
  writeFileSync(`${stem}.json`, JSON.stringify(report, null, 2) + "\n");
  writeFileSync(`${stem}.svg`, latencySvg(`Orca SLO ${smoke ? "smoke " : ""}run ${date} (${tool}, ${cpus().length} CPUs)`, chartRows(results, baselines)));
  console.log(`results: ${stem}.json`);
  console.log(`chart:   ${stem}.svg`);
  const misses = results.filter((r) => r.status === "miss");
  if (smoke && misses.length > 0) console.log(`smoke run: ${misses.length} SLO miss(es) reported, not failed (${misses.map((r) => `${r.name}: ${missing(r)}`).join("; ")})`);
  if (!ok) {
    console.error(
      `FAILED: ${[...failures.map((r) => `${r.name} (${r.status === "miss" ? `SLO miss: ${missing(r)}` : r.error ?? "errors under load"})`), ...baselineErrors.map((b) => `${b.label} (${b.error ?? "transport failures"})`)].join(", ")}`,
    );
    return 1;
  }
  return 0;
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    console.error(error instanceof Error ? (error.stack ?? error.message) : error);
    process.exit(1);
  },
);
