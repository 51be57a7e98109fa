import { fork, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { create, toBinary } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import pg from "pg";
import { Registry } from "prom-client";
import { CacheService, GetRequestSchema, Tier } from "../../gen/orca/cache/v1/cache_pb.js";
import { TieredCache } from "../../services/cache/cache.js";
import { readCacheConfig } from "../../services/cache/config.js";
import { cacheMigrations } from "../../services/cache/migrations.js";
import { openDatabase, openMemoryDatabase, type Database } from "../../services/kit/db/database.js";
import { migrate } from "../../services/kit/db/migrations.js";
import { openRedis } from "../../services/kit/redis.js";
import { createLogger } from "../../services/kit/telemetry/logger.js";
import { ECHO_PATH, echoRequestFrame, grpcFrame, repoRoot } from "../rpc/common.js";
import { ensureH2load, percentile, readDurations, runH2load } from "../rpc/h2load.js";
import { verifyServer } from "../rpc/verify.js";

/**
 * Cache benchmark: `npx tsx bench/cache/run.ts [--smoke]`.
 *
 * Part 1, throughput: Get answered from L1, from L2 and from L3, at concurrency 64 (h2load,
 * 8 connections x 8 streams, one prebuilt gRPC frame per target), in the same run as the two RPC
 * baselines of bench/rpc (its server.ts: the bare node:http2 responder and the @grpc/grpc-js
 * echo server, reused as they are). Each server runs alone in its own child process (2 shared
 * cores: the load generator needs the other one), and results are reported as ratios of the
 * baselines. h2load only sees HTTP status, so every target is verified before the load (a real
 * client call, tier checked) and the cache's own counters are compared with h2load's after it.
 *
 * Part 2, invalidation propagation: two TieredCache replicas in this process on one database;
 * replica B holds a key in L1, replica A Sets it, and we time until B's L1 no longer has it.
 * With Redis (pub/sub + NOTIFY, whichever arrives first) and with Postgres NOTIFY only.
 *
 * Env: BENCH_DURATION_S (default 10), BENCH_PAYLOAD_BYTES (64), BENCH_PROPAGATION_ROUNDS (300),
 * DATABASE_URL (else PGlite in memory), REDIS_URL (else no L2 row).
 */
const smoke = process.argv.includes("--smoke");
const durationS = smoke ? 2 : Number(process.env.BENCH_DURATION_S ?? "10");
const warmupS = smoke ? 1 : 2;
const payloadBytes = Number(process.env.BENCH_PAYLOAD_BYTES ?? "64");
const rounds = smoke ? 30 : Number(process.env.BENCH_PROPAGATION_ROUNDS ?? "300");
const CONNECTIONS = 8;
const STREAMS = 8;
const progress = (line: string) => console.log(`· ${line}`);
const root = repoRoot();

interface Row {
  target: string;
  callsPerSecond: number;
  p50Ms: number;
  p99Ms: number;
  calls: number;
  failed: number;
  serverCpuUsPerCall: number;
  vsBare?: number;
  vsGrpcJs?: number;
}

interface Child {
  process: ChildProcess;
  port: number;
  info: Record<string, unknown>;
  cpu(): Promise<NodeJS.CpuUsage>;
  stop(): Promise<void>;
}

function startChild(script: string, args: string[]): Promise<Child> {
  const child = fork(script, args, {
    execArgv: ["--import", "tsx"],
    env: { ...process.env, BENCH_PAYLOAD_BYTES: String(payloadBytes) },
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${script}: not ready within 60 s`)), 60_000);
    child.once("exit", (code) => reject(new Error(`${script} exited (code ${code}) before it was ready`)));
    child.once("message", (message: { type: string; port: number }) => {
      clearTimeout(timer);
      resolve({
        process: child,
        port: message.port,
        info: message as unknown as Record<string, unknown>,
        cpu: () =>
          new Promise((resolveCpu) => {
            const onMessage = (reply: { type: string; usage: NodeJS.CpuUsage }) => {
              if (reply.type !== "cpu") return;
              child.off("message", onMessage);
              resolveCpu(reply.usage);
            };
            child.on("message", onMessage);
            child.send({ type: "cpu" });
          }),
        stop: async () => {
          child.kill("SIGTERM");
          const killer = setTimeout(() => child.kill("SIGKILL"), 8000);
          await exited;
          clearTimeout(killer);
        },
      });
    });
  });
}

const work = mkdtempSync(join(tmpdir(), "orca-bench-cache-"));

async function load(target: string, url: string, frame: Buffer, child: Child): Promise<Row> {
  const slug = target.replace(/[^A-Za-z0-9]+/g, "-");
  const bodyFile = join(work, `${slug}.bin`);
  writeFileSync(bodyFile, frame);
  const options = { url, bodyFile, connections: CONNECTIONS, streams: STREAMS };
  if (warmupS > 0) await runH2load({ ...options, durationS: warmupS });
  const cpuBefore = await child.cpu();
  const logFile = join(work, `${slug}.log`);
  const result = await runH2load({ ...options, durationS, logFile });
  const cpuAfter = await child.cpu();
  const durations = readDurations(logFile);
  const cpuUs = cpuAfter.user - cpuBefore.user + (cpuAfter.system - cpuBefore.system);
  const row: Row = {
    target,
    callsPerSecond: result.requestsPerSecond,
    p50Ms: percentile(durations, 50),
    p99Ms: percentile(durations, 99),
    calls: result.succeeded,
    failed: result.failed + result.errored + result.timedOut,
    serverCpuUsPerCall: result.succeeded > 0 ? cpuUs / result.succeeded : NaN,
  };
  progress(`${target}: ${row.callsPerSecond.toFixed(0)} calls/s, p50 ${row.p50Ms.toFixed(2)} ms, p99 ${row.p99Ms.toFixed(2)} ms, ${row.failed} failed`);
  return row;
}

async function baseline(kind: "bare" | "grpc-js"): Promise<Row> {
  progress(`starting ${kind} (bench/rpc/server.ts)`);
  const child = await startChild(join(root, "bench/rpc/server.ts"), [kind]);
  try {
    const frame = echoRequestFrame(payloadBytes);
    const url = `http://127.0.0.1:${child.port}`;
    await verifyServer(url, frame, payloadBytes);
    return await load(kind === "bare" ? "bare node:http2" : "@grpc/grpc-js", `${url}${ECHO_PATH}`, frame, child);
  } finally {
    await child.stop();
  }
}

async function cacheRows(): Promise<{ rows: Row[]; backend: string }> {
  progress("starting the cache (bench/cache/server.ts)");
  const child = await startChild(fileURLToPath(new URL("./server.ts", import.meta.url)), []);
  const rows: Row[] = [];
  try {
    const url = `http://127.0.0.1:${child.port}`;
    const client = createClient(CacheService, createGrpcTransport({ baseUrl: url }));
    const tiers = [
      { name: "l1", tier: Tier.L1_MEMORY, index: 0 },
      { name: "l2", tier: Tier.L2_REDIS, index: 1 },
      { name: "l3", tier: Tier.L3_POSTGRES, index: 2 },
    ].filter((t) => t.name !== "l2" || child.info.l2);
    for (const t of tiers) {
      const namespace = `bench-${t.name}`;
      const check = await client.get({ namespace, key: "k" });
      if (!check.result?.found || check.result.tier !== t.tier || check.result.entry?.value.length !== payloadBytes) {
        throw new Error(`${namespace}: expected a ${Tier[t.tier]} hit of ${payloadBytes} bytes, got ${JSON.stringify(check.result?.tier)}`);
      }
      const hits = async () => (await client.getStats({ namespace })).namespaces[0].tiers[t.index].hits;
      const before = await hits();
      const frame = grpcFrame(toBinary(GetRequestSchema, create(GetRequestSchema, { namespace, key: "k" })));
      const row = await load(`cache Get, ${t.name.toUpperCase()} hit`, `${url}/orca.cache.v1.CacheService/Get`, frame, child);
      const answered = Number((await hits()) - before);
      // Warmup calls count too: the tier must have answered at least every measured call.
      if (answered < row.calls) throw new Error(`${namespace}: h2load saw ${row.calls} successes but the ${t.name} tier answered only ${answered}`);
      rows.push(row);
    }
    return { rows, backend: `${String(child.info.backend)}${child.info.l2 ? " + redis" : ""}` };
  } finally {
    await child.stop();
  }
}

interface Propagation {
  transport: string;
  rounds: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
}

async function propagation(withRedis: boolean): Promise<Propagation | undefined> {
  if (withRedis && !process.env.REDIS_URL) return undefined;
  const logger = createLogger({ level: "silent" });
  let database: Database;
  let drop: (() => Promise<void>) | undefined;
  if (process.env.DATABASE_URL) {
    const name = `orca_bench_${randomBytes(5).toString("hex")}`;
    const admin = new pg.Client({ connectionString: process.env.DATABASE_URL });
    await admin.connect();
    await admin.query(`create database ${name}`);
    await admin.end();
    const url = new URL(process.env.DATABASE_URL);
    url.pathname = `/${name}`;
    database = await openDatabase({ databaseUrl: url.toString(), dataDir: "/nonexistent", logger });
    drop = async () => {
      const c = new pg.Client({ connectionString: process.env.DATABASE_URL });
      await c.connect();
      await c.query(`drop database if exists ${name} with (force)`);
      await c.end();
    };
  } else {
    database = await openMemoryDatabase();
  }
  await migrate(database.db, { schema: "orca_cache", migrations: cacheMigrations });
  const prefix = `orca-bench:${randomBytes(5).toString("hex")}:`;
  const config = readCacheConfig({ ORCA_CACHE_REDIS_PREFIX: prefix });
  const connections: Array<ReturnType<typeof openRedis>> = [];
  const make = (id: string) =>
    new TieredCache({
      database,
      redis: withRedis ? (connections[connections.length] = openRedis(process.env.REDIS_URL!, logger)) : undefined,
      config,
      logger,
      registry: new Registry(),
      maxResponseBytes: 4 << 20,
      replicaId: id,
    });
  const a = make("a");
  const b = make("b");
  await a.start();
  await b.start();
  await new Promise((r) => setTimeout(r, 300));
  const samples: number[] = [];
  const value = new Uint8Array(64);
  try {
    for (let i = 0; i < rounds; i++) {
      await a.set({ tenant: "", namespace: "prop", key: "k", value, contentType: "", tags: [] });
      // B reads it into L1 (a read that overlaps the arrival of that Set's own event is not
      // promoted, by design, so read again until it is held).
      for (let attempt = 0; !b.l1.get("", "prop", "k"); attempt++) {
        if (attempt > 200) throw new Error("B did not cache the key");
        await b.get("", "prop", "k");
        if (!b.l1.get("", "prop", "k")) await new Promise((r) => setTimeout(r, 2));
      }
      const start = performance.now();
      const done = a.set({ tenant: "", namespace: "prop", key: "k", value, contentType: "", tags: [] });
      while (b.l1.get("", "prop", "k")) await new Promise((r) => setImmediate(r));
      samples.push(performance.now() - start);
      await done;
    }
  } finally {
    await a.close();
    await b.close();
    for (const c of connections) c.disconnect();
    await database.close();
    await drop?.();
    if (withRedis) {
      const redis = openRedis(process.env.REDIS_URL!, logger);
      await new Promise<void>((resolve) => (redis.status === "ready" ? resolve() : redis.once("ready", () => resolve())));
      let cursor = "0";
      do {
        const [next, keys] = await redis.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 1000);
        cursor = next;
        if (keys.length > 0) await redis.unlink(...keys);
      } while (cursor !== "0");
      redis.disconnect();
    }
  }
  const sorted = Float64Array.from(samples).sort();
  const result = {
    transport: withRedis ? "Redis pub/sub + Postgres NOTIFY" : "Postgres NOTIFY only",
    rounds,
    p50Ms: percentile(sorted, 50),
    p99Ms: percentile(sorted, 99),
    maxMs: sorted[sorted.length - 1],
  };
  progress(`propagation (${result.transport}, ${database.kind}): p50 ${result.p50Ms.toFixed(2)} ms, p99 ${result.p99Ms.toFixed(2)} ms, max ${result.maxMs.toFixed(2)} ms`);
  return result;
}

async function main(): Promise<void> {
  if (!ensureH2load(progress)) process.exit(1);
  progress(`${smoke ? "smoke run" : "full run"}: ${durationS} s per target after ${warmupS} s warmup, concurrency ${CONNECTIONS * STREAMS} (${CONNECTIONS} connections x ${STREAMS} streams), ${payloadBytes}-byte values`);
  const bare = await baseline("bare");
  const grpcJs = await baseline("grpc-js");
  const { rows: cache, backend } = await cacheRows();
  const rows = [bare, grpcJs, ...cache];
  for (const row of rows) {
    row.vsBare = row.callsPerSecond / bare.callsPerSecond;
    row.vsGrpcJs = row.callsPerSecond / grpcJs.callsPerSecond;
  }
  const prop = [await propagation(true), await propagation(false)].filter((p): p is Propagation => p !== undefined);

  console.log("");
  console.log(`Cache Get vs RPC baselines (h2load, c=${CONNECTIONS * STREAMS}, cache on ${backend})`);
  console.log(["target".padEnd(22), "calls/s".padStart(9), "p50 ms".padStart(8), "p99 ms".padStart(8), "cpu us/call".padStart(12), "x bare".padStart(7), "x grpc-js".padStart(10), "failed".padStart(7)].join(" "));
  for (const r of rows) {
    console.log(
      [
        r.target.padEnd(22),
        r.callsPerSecond.toFixed(0).padStart(9),
        r.p50Ms.toFixed(2).padStart(8),
        r.p99Ms.toFixed(2).padStart(8),
        r.serverCpuUsPerCall.toFixed(0).padStart(12),
        r.vsBare!.toFixed(2).padStart(7),
        r.vsGrpcJs!.toFixed(2).padStart(10),
        String(r.failed).padStart(7),
      ].join(" "),
    );
  }
  console.log("");
  console.log("Invalidation propagation (Set on replica A until replica B's L1 dropped the key)");
  for (const p of prop) console.log(`${p.transport.padEnd(34)} p50 ${p.p50Ms.toFixed(2)} ms  p99 ${p.p99Ms.toFixed(2)} ms  max ${p.maxMs.toFixed(2)} ms  (${p.rounds} rounds)`);

  const date = new Date().toISOString();
  const dir = join(root, "bench", "results");
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `cache-${date.replace(/:/g, "-")}.json`);
  writeFileSync(
    file,
    JSON.stringify({ date, smoke, durationS, warmupS, concurrency: CONNECTIONS * STREAMS, load: "h2load, prebuilt gRPC frame", payloadBytes, backend, rows, propagation: prop }, null, 2) + "\n",
  );
  console.log(`results: ${file}`);
}

try {
  await main();
} finally {
  rmSync(work, { recursive: true, force: true });
}
