/**
 * Lock benchmark: Acquire+Release pairs per second and p50/p99 latency of a pair, at concurrency
 * 1, 16 and 64, on distinct resources (each worker its own) and on one hot resource, against
 *  - the Lock service (own process, real Postgres from DATABASE_URL, a fresh database), and
 *  - etcd 3.4 (/usr/bin/etcd, temp data dir, free 127.0.0.1 ports) through the npm etcd3 lock API,
 * in the same run, then the ratio Lock/etcd per cell.
 *
 * Caveat on the hot resource: etcd3's `lock(name).acquire()` is a try-lock (it throws
 * EtcdLockFailedError when the key is held), so etcd workers retry after a 1-5 ms random pause;
 * the Lock service's workers wait in its fair queue (wait_timeout 30 s). Both use 30 s leases.
 *
 *   DATABASE_URL=postgres://... npx tsx bench/lock/run.ts [--smoke] [--seconds N]
 * Writes bench/results/lock-<iso>.json. Not a test: CPU is shared, so run it alone, once.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Etcd3, EtcdLockFailedError } from "etcd3";
import { LockService } from "../../gen/orca/lock/v1/lock_pb.js";
import { createFreshDatabase } from "../../test/support/postgres.js";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..", "..");
const args = process.argv.slice(2);
const smoke = args.includes("--smoke");
const secondsArg = args.indexOf("--seconds");
const cellSeconds = secondsArg >= 0 ? Number(args[secondsArg + 1]) : smoke ? 0.5 : 8;
const warmupSeconds = smoke ? 0.2 : 1;
const CONCURRENCY = [1, 16, 64];
const PATTERNS = ["distinct", "hot"] as const;
type Pattern = (typeof PATTERNS)[number];

interface Cell {
  system: "lock" | "etcd";
  pattern: Pattern;
  concurrency: number;
  pairs: number;
  errors: number;
  retries: number;
  seconds: number;
  pairsPerSecond: number;
  p50Ms: number;
  p99Ms: number;
}

const log = (line: string) => process.stdout.write(`${line}\n`);

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** Runs `workers` loops of `pair(worker)` for `seconds` (after a warm-up), timing each pair. */
async function runCell(concurrency: number, seconds: number, pair: (worker: number) => Promise<number>) {
  const latencies: number[] = [];
  let errors = 0;
  let retries = 0;
  let measuring = false;
  let stop = false;
  const workers = Array.from({ length: concurrency }, async (_, worker) => {
    while (!stop) {
      const start = performance.now();
      try {
        retries += await pair(worker);
        if (measuring) latencies.push(performance.now() - start);
      } catch (error) {
        if (measuring) errors++;
        if (errors === 1 && measuring) log(`  first error: ${error instanceof Error ? error.message : String(error)}`);
      }
    }
  });
  await new Promise((r) => setTimeout(r, warmupSeconds * 1000));
  measuring = true;
  retries = 0;
  const started = performance.now();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  measuring = false;
  const elapsed = (performance.now() - started) / 1000;
  stop = true;
  await Promise.all(workers);
  latencies.sort((a, b) => a - b);
  return { pairs: latencies.length, errors, retries, seconds: elapsed, pairsPerSecond: latencies.length / elapsed, p50Ms: percentile(latencies, 50), p99Ms: percentile(latencies, 99) };
}

async function startLockServer(url: string): Promise<{ url: string; child: ChildProcess }> {
  const child = spawn(process.execPath, ["--import", "tsx", join(here, "server.ts")], {
    cwd: root,
    env: { ...process.env, DATABASE_URL: url, LOG_LEVEL: "silent" },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const serverUrl = await new Promise<string>((resolve, reject) => {
    let buffer = "";
    child.stdout!.on("data", (chunk: Buffer) => {
      buffer += chunk.toString();
      const line = buffer.split("\n").find((l) => l.startsWith("{"));
      if (line) resolve((JSON.parse(line) as { url: string }).url);
    });
    child.once("exit", (code) => reject(new Error(`lock server exited with ${code}`)));
  });
  return { url: serverUrl, child };
}

async function startEtcd(): Promise<{ endpoint: string; child: ChildProcess; dataDir: string }> {
  const dataDir = mkdtempSync(join(tmpdir(), "orca-bench-etcd-"));
  const clientPort = await freePort();
  const peerPort = await freePort();
  const endpoint = `http://127.0.0.1:${clientPort}`;
  const peer = `http://127.0.0.1:${peerPort}`;
  const child = spawn(
    "/usr/bin/etcd",
    [
      "--name", "bench",
      "--data-dir", dataDir,
      "--listen-client-urls", endpoint,
      "--advertise-client-urls", endpoint,
      "--listen-peer-urls", peer,
      "--initial-advertise-peer-urls", peer,
      "--initial-cluster", `bench=${peer}`,
      "--log-level", "error",
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  let stderr = "";
  child.stderr!.on("data", (c: Buffer) => (stderr = (stderr + c.toString()).slice(-4000)));
  const probe = new Etcd3({ hosts: endpoint });
  const until = Date.now() + 20_000;
  for (;;) {
    try {
      await probe.put("orca-bench-probe").value("1");
      break;
    } catch (error) {
      if (Date.now() > until || child.exitCode !== null) throw new Error(`etcd did not start: ${String(error)}\n${stderr}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  probe.close();
  return { endpoint, child, dataDir };
}

async function main(): Promise<void> {
  if (!process.env.DATABASE_URL) throw new Error("set DATABASE_URL (real Postgres) to benchmark the Lock service");
  log(`lock bench: ${smoke ? "smoke" : "full"} run, ${cellSeconds}s per cell after ${warmupSeconds}s warm-up`);
  const fresh = await createFreshDatabase();
  const lockServer = await startLockServer(fresh.url);
  const etcd = await startEtcd();
  log(`lock service at ${lockServer.url} (Postgres ${fresh.url.replace(/\/\/[^@]*@/, "//***@")}), etcd at ${etcd.endpoint}`);
  const cells: Cell[] = [];
  try {
    const transport = createGrpcTransport({ baseUrl: lockServer.url, defaultTimeoutMs: 60_000 });
    const lock = createClient(LockService, transport);
    const etcdClient = new Etcd3({ hosts: etcd.endpoint });
    let round = 0;
    for (const pattern of PATTERNS) {
      for (const concurrency of CONCURRENCY) {
        round++;
        const name = (worker: number) => (pattern === "hot" ? `bench/hot/${round}` : `bench/distinct/${round}/${worker}`);
        const lockCell = await runCell(concurrency, cellSeconds, async (worker) => {
          const { lease } = await lock.acquire({ resource: name(worker), ttl: durationFromMs(30_000), waitTimeout: durationFromMs(30_000) });
          await lock.release({ leaseId: lease!.leaseId, fencingToken: lease!.fencingToken });
          return 0;
        });
        cells.push({ system: "lock", pattern, concurrency, ...lockCell });
        log(`  lock  ${pattern.padEnd(8)} c=${String(concurrency).padStart(2)}: ${lockCell.pairsPerSecond.toFixed(0).padStart(6)} pairs/s  p50 ${lockCell.p50Ms.toFixed(1)} ms  p99 ${lockCell.p99Ms.toFixed(1)} ms  errors ${lockCell.errors}`);
        const etcdCell = await runCell(concurrency, cellSeconds, async (worker) => {
          let retries = 0;
          for (;;) {
            const mutex = etcdClient.lock(name(worker)).ttl(30);
            try {
              await mutex.acquire();
            } catch (error) {
              if (!(error instanceof EtcdLockFailedError)) throw error;
              retries++;
              await new Promise((r) => setTimeout(r, 1 + Math.random() * 4));
              continue;
            }
            await mutex.release();
            return retries;
          }
        });
        cells.push({ system: "etcd", pattern, concurrency, ...etcdCell });
        log(`  etcd  ${pattern.padEnd(8)} c=${String(concurrency).padStart(2)}: ${etcdCell.pairsPerSecond.toFixed(0).padStart(6)} pairs/s  p50 ${etcdCell.p50Ms.toFixed(1)} ms  p99 ${etcdCell.p99Ms.toFixed(1)} ms  errors ${etcdCell.errors}  try-lock retries ${etcdCell.retries}`);
      }
    }
    etcdClient.close();
  } finally {
    lockServer.child.kill("SIGTERM");
    etcd.child.kill("SIGTERM");
    await new Promise((r) => setTimeout(r, 500));
    rmSync(etcd.dataDir, { recursive: true, force: true });
    await fresh.drop().catch(() => undefined);
  }

  log("");
  log("| pattern  | conc | lock pairs/s | lock p50 ms | lock p99 ms | etcd pairs/s | etcd p50 ms | etcd p99 ms | lock/etcd |");
  log("|----------|-----:|-------------:|------------:|------------:|-------------:|------------:|------------:|----------:|");
  const ratios = [];
  for (const pattern of PATTERNS) {
    for (const concurrency of CONCURRENCY) {
      const l = cells.find((c) => c.system === "lock" && c.pattern === pattern && c.concurrency === concurrency)!;
      const e = cells.find((c) => c.system === "etcd" && c.pattern === pattern && c.concurrency === concurrency)!;
      const ratio = l.pairsPerSecond / e.pairsPerSecond;
      ratios.push({ pattern, concurrency, ratio });
      log(`| ${pattern.padEnd(8)} | ${String(concurrency).padStart(4)} | ${l.pairsPerSecond.toFixed(0).padStart(12)} | ${l.p50Ms.toFixed(1).padStart(11)} | ${l.p99Ms.toFixed(1).padStart(11)} | ${e.pairsPerSecond.toFixed(0).padStart(12)} | ${e.p50Ms.toFixed(1).padStart(11)} | ${e.p99Ms.toFixed(1).padStart(11)} | ${ratio.toFixed(2).padStart(9)} |`);
    }
  }
  const resultsDir = join(root, "bench", "results");
  mkdirSync(resultsDir, { recursive: true });
  const file = join(resultsDir, `lock-${new Date().toISOString().replace(/:/g, "-")}.json`);
  writeFileSync(file, JSON.stringify({ smoke, cellSeconds, warmupSeconds, cells, ratios, note: "etcd3 npm lock is a try-lock: hot-resource etcd workers retry after 1-5 ms" }, null, 2));
  log(`\nresults: ${file}`);
}

await main();
