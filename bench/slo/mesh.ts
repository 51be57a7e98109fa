import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { SERVICE_NAMES } from "../../services/kit/catalog.js";
import { repoRoot } from "../rpc/common.js";

/**
 * The whole mesh as a user runs it: `node --import tsx services/cli/orca.ts up` in a child process
 * (its own CPU time, not the load generator's), every port ephemeral (ORCA_<SVC>_PORT=0), the
 * endpoints read from the table it prints (as test/mesh/orca-up.test.ts does). With DATABASE_URL
 * the mesh runs on a fresh database created next to it (dropped afterwards; when the role may not
 * create databases, on DATABASE_URL itself); without, on PGlite in a temporary folder. REDIS_URL
 * is passed through. LOG_LEVEL is BENCH_LOG_LEVEL (default warn: one info line per call would
 * measure the log pipe).
 */
export interface Mesh {
  endpoints: Map<string, string>;
  /** "postgres (fresh database orca_bench_...)", "pglite", ...; and redis on/off. */
  database: string;
  redis: boolean;
  /** The last lines the mesh printed (for error messages). */
  tail(): string;
  stop(): Promise<void>;
}

async function freshDatabase(base: string, log: (line: string) => void): Promise<{ url: string; drop: () => Promise<void>; label: string }> {
  const name = `orca_bench_slo_${randomBytes(4).toString("hex")}`;
  try {
    const admin = new pg.Client({ connectionString: base });
    await admin.connect();
    try {
      await admin.query(`create database ${name}`);
    } finally {
      await admin.end();
    }
  } catch (error) {
    log(`cannot create a fresh database (${(error as Error).message}): the mesh runs on DATABASE_URL itself`);
    return { url: base, drop: async () => undefined, label: "postgres (DATABASE_URL)" };
  }
  const url = new URL(base);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    label: `postgres (fresh database ${name})`,
    drop: async () => {
      const admin = new pg.Client({ connectionString: base });
      await admin.connect();
      try {
        await admin.query(`drop database if exists ${name} with (force)`);
      } finally {
        await admin.end();
      }
    },
  };
}

export async function startMesh(log: (line: string) => void, timeoutMs = 120_000): Promise<Mesh> {
  const env: Record<string, string> = { ...(process.env as Record<string, string>), LOG_LEVEL: process.env.BENCH_LOG_LEVEL ?? "warn" };
  for (const name of SERVICE_NAMES) {
    env[`ORCA_${name.toUpperCase()}_PORT`] = "0";
    env[`ORCA_${name.toUpperCase()}_ADMIN_PORT`] = "0";
    delete env[`ORCA_${name.toUpperCase()}_URL`];
  }
  let cleanupData = async () => undefined as void;
  let database: string;
  if (process.env.DATABASE_URL) {
    const fresh = await freshDatabase(process.env.DATABASE_URL, log);
    env.DATABASE_URL = fresh.url;
    database = fresh.label;
    cleanupData = fresh.drop;
  } else {
    const dataDir = mkdtempSync(join(tmpdir(), "orca-bench-slo-"));
    env.ORCA_DATA_DIR = dataDir;
    database = "pglite (embedded)";
    cleanupData = async () => rmSync(dataDir, { recursive: true, force: true });
  }
  const child = spawn(process.execPath, ["--import", "tsx", "services/cli/orca.ts", "up"], { cwd: repoRoot(), env, stdio: ["ignore", "pipe", "pipe"] });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  let output = "";
  const keep = (chunk: Buffer) => {
    output = (output + chunk.toString()).slice(-20_000);
  };
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  const endpoints = new Map<string, string>();
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      const killer = setTimeout(() => child.kill("SIGKILL"), 15_000);
      await exited;
      clearTimeout(killer);
    }
    await cleanupData().catch((error: unknown) => log(`cleanup: ${(error as Error).message}`));
  };
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`orca up did not print its table within ${timeoutMs / 1000} s:\n${output}`)), timeoutMs);
      const onData = () => {
        for (const match of output.matchAll(/^(\w+)\s+(http:\/\/127\.0\.0\.1:\d+)\s+http:\/\/127\.0\.0\.1:\d+\/metrics$/gm)) endpoints.set(match[1], match[2]);
        if (endpoints.size === SERVICE_NAMES.length && /^database: /m.test(output)) {
          clearTimeout(timer);
          child.stdout.off("data", onData);
          child.stderr.off("data", onData);
          child.off("exit", onExit);
          resolve();
        }
      };
      const onExit = (code: number | null) => {
        clearTimeout(timer);
        reject(new Error(`orca up exited with ${code}:\n${output}`));
      };
      child.stdout.on("data", onData);
      child.stderr.on("data", onData);
      child.once("exit", onExit);
    });
  } catch (error) {
    await stop();
    throw error;
  }
  const redis = /redis: on/.test(output);
  return { endpoints, database, redis, tail: () => output.split("\n").slice(-30).join("\n"), stop };
}
