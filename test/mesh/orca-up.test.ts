import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus } from "../../gen/health/v1/health_pb.js";
import { LockService } from "../../gen/orca/lock/v1/lock_pb.js";
import { SERVICE_NAMES } from "../../services/kit/catalog.js";
import { runBufCurl } from "../support/buf-curl.js";

/**
 * `orca up` as a user runs it: one process, all six services, embedded PGlite, no Redis, on
 * ephemeral ports (so the test never collides with a mesh already running on the defaults).
 */
describe("orca up", () => {
  let child: ChildProcess;
  let dataDir: string;
  const endpoints = new Map<string, { url: string; admin: string }>();

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), "orca-up-"));
    const env: Record<string, string> = { ...(process.env as Record<string, string>), ORCA_DATA_DIR: dataDir, LOG_LEVEL: "warn" };
    delete env.DATABASE_URL;
    delete env.REDIS_URL;
    for (const name of SERVICE_NAMES) {
      env[`ORCA_${name.toUpperCase()}_PORT`] = "0";
      env[`ORCA_${name.toUpperCase()}_ADMIN_PORT`] = "0";
    }
    child = spawn(process.execPath, ["--import", "tsx", "services/cli/orca.ts", "up"], { env, stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`orca up did not print its table in time:\n${output}`)), 60_000);
      const onData = (chunk: Buffer) => {
        output += chunk.toString();
        for (const match of output.matchAll(/^(\w+)\s+(http:\/\/127\.0\.0\.1:\d+)\s+(http:\/\/127\.0\.0\.1:\d+)\/metrics$/gm)) {
          endpoints.set(match[1], { url: match[2], admin: match[3] });
        }
        if (endpoints.size === SERVICE_NAMES.length) {
          clearTimeout(timer);
          resolve();
        }
      };
      child.stdout!.on("data", onData);
      child.stderr!.on("data", onData);
      child.once("exit", (code) => reject(new Error(`orca up exited with ${code}:\n${output}`)));
    });
  }, 90_000);

  afterAll(async () => {
    if (child && child.exitCode === null) {
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGTERM");
      await exited;
    }
    rmSync(dataDir, { recursive: true, force: true });
  });

  it("prints a table with all six services", () => {
    expect([...endpoints.keys()].sort()).toEqual([...SERVICE_NAMES].sort());
  });

  it.each(SERVICE_NAMES)("%s answers grpc.health.v1 Check with SERVING, overall and for its own service", async (name) => {
    const health = createClient(Health, createGrpcTransport({ baseUrl: endpoints.get(name)!.url }));
    expect((await health.check({ service: "" })).status).toBe(HealthCheckResponse_ServingStatus.SERVING);
    const typeName = `orca.${name}.v1.${name[0].toUpperCase()}${name.slice(1)}Service`;
    expect((await health.check({ service: typeName })).status).toBe(HealthCheckResponse_ServingStatus.SERVING);
  });

  it.each(SERVICE_NAMES)("%s lists its methods through reflection (buf curl)", async (name) => {
    const out = await runBufCurl(["--http2-prior-knowledge", "--reflect", "--list-methods", endpoints.get(name)!.url]);
    expect(out).toMatch(new RegExp(`^orca\\.${name}\\.v1\\.\\w+Service/\\w+$`, "m"));
    expect(out).toContain("grpc.health.v1.Health/Check");
  });

  it.each(SERVICE_NAMES)("%s is ready on its admin port", async (name) => {
    const res = await fetch(`${endpoints.get(name)!.admin}/readyz`);
    expect(res.status).toBe(200);
  });

  it("serves real calls across the mesh: a Lock lease round trip", async () => {
    const lock = createClient(LockService, createGrpcTransport({ baseUrl: endpoints.get("lock")!.url }));
    const { lease } = await lock.acquire({ resource: "orca-up/test", owner: "orca-up-test", ttl: { seconds: 10n } });
    expect(lease?.fencingToken).toBeGreaterThan(0n);
    const released = await lock.release({ leaseId: lease!.leaseId, fencingToken: lease!.fencingToken });
    expect(released.alreadyReleased).toBe(false);
  });
});
