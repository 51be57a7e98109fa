import { execFileSync, spawn, spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";

/**
 * Running h2load (Debian package nghttp2-client) and reading its results. Shared by every bench
 * (bench/rpc, bench/slo, the per-service benches).
 */

export function hasH2load(): boolean {
  return spawnSync("h2load", ["--version"], { stdio: "ignore" }).status === 0;
}

/**
 * Makes sure h2load is on PATH: installs nghttp2-client with apt-get when running as root,
 * otherwise explains how to install it and returns false.
 */
export function ensureH2load(log: (line: string) => void): boolean {
  if (hasH2load()) return true;
  const root = process.getuid?.() === 0;
  const hasApt = spawnSync("apt-get", ["--version"], { stdio: "ignore" }).status === 0;
  if (!root || !hasApt) {
    log("h2load is not installed. Install it with: sudo apt-get install -y nghttp2-client (Debian/Ubuntu),");
    log("brew install nghttp2 (macOS), or build nghttp2 with --enable-app; then run the bench again.");
    return false;
  }
  log("h2load not found: apt-get install -y nghttp2-client");
  const install = () => spawnSync("apt-get", ["install", "-y", "nghttp2-client"], { stdio: "inherit", env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" } });
  if (install().status !== 0) {
    // A fresh container often has no package lists yet.
    execFileSync("apt-get", ["update"], { stdio: "inherit" });
    install();
  }
  return hasH2load();
}

export interface LoadOptions {
  url: string;
  bodyFile: string;
  connections: number;
  streams: number;
  /** Timing-based run of this many seconds (h2load -D). */
  durationS?: number;
  /** Timing-based run of an h2load duration such as "500ms" or "10s" (h2load -D); wins over durationS. */
  duration?: string;
  /** Count-based run: this many requests in all (h2load -n), when no duration is given. */
  requests?: number;
  /** Extra request headers, "name: value" (h2load -H), e.g. gRPC metadata. */
  headers?: string[];
  /** Per-request log (start time, status, duration in microseconds) for percentiles. */
  logFile?: string;
}

export interface LoadResult {
  requestsPerSecond: number;
  /** Wall time of the measured part ("finished in ..."). */
  elapsedMs: number;
  succeeded: number;
  failed: number;
  errored: number;
  timedOut: number;
  meanMs: number;
  maxMs: number;
  raw: string;
}

export function h2loadArgs(options: LoadOptions): string[] {
  return [
    "-d", options.bodyFile,
    "-H", "content-type: application/grpc",
    "-H", "te: trailers",
    ...(options.headers ?? []).flatMap((header) => ["-H", header]),
    "-c", String(options.connections),
    "-m", String(options.streams),
    ...(options.duration !== undefined || options.durationS !== undefined
      ? ["-D", options.duration ?? String(options.durationS)]
      : ["-n", String(options.requests ?? 1000)]),
    ...(options.logFile ? ["--log-file", options.logFile] : []),
    options.url,
  ];
}

export function runH2load(options: LoadOptions): Promise<LoadResult> {
  return new Promise((resolve, reject) => {
    const child = spawn("h2load", h2loadArgs(options), { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (chunk: Buffer) => (out += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (out += chunk.toString()));
    child.once("error", reject);
    child.once("exit", (code) => {
      if (code !== 0) return reject(new Error(`h2load exited with ${code}:\n${out}`));
      try {
        resolve(parseH2load(out));
      } catch (error) {
        reject(error);
      }
    });
  });
}

/** h2load prints durations as "123us", "1.23ms" or "1.02s". */
function toMs(value: string): number {
  const match = /^([\d.]+)(us|ms|s)$/.exec(value);
  if (!match) throw new Error(`unexpected h2load duration ${JSON.stringify(value)}`);
  const n = Number(match[1]);
  return match[2] === "us" ? n / 1000 : match[2] === "ms" ? n : n * 1000;
}

export function parseH2load(out: string): LoadResult {
  const finished = /finished in ([\d.]+\w+), ([\d.]+) req\/s/.exec(out);
  const requests = /requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout/.exec(out);
  const time = /time for request:\s+(\S+)\s+(\S+)\s+(\S+)/.exec(out);
  if (!finished || !requests || !time) throw new Error(`cannot parse h2load output:\n${out}`);
  return {
    requestsPerSecond: Number(finished[2]),
    elapsedMs: toMs(finished[1]),
    succeeded: Number(requests[1]),
    failed: Number(requests[2]),
    errored: Number(requests[3]),
    timedOut: Number(requests[4]),
    meanMs: toMs(time[3]),
    maxMs: toMs(time[2]),
    raw: out,
  };
}

/** Request durations in milliseconds from an h2load --log-file (third column, microseconds). */
export function readDurations(logFile: string): Float64Array {
  const lines = readFileSync(logFile, "latin1").split("\n");
  const out = new Float64Array(lines.length);
  let n = 0;
  for (const line of lines) {
    const columns = line.split("\t");
    if (columns.length < 3) continue;
    out[n++] = Number(columns[2]) / 1000;
  }
  return out.subarray(0, n).sort();
}

/** Nearest-rank percentile of sorted values. */
export function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1];
}
