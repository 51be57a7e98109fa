import { randomUUID } from "node:crypto";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Redis } from "ioredis";
import { afterAll, describe, expect, it } from "vitest";
import { EchoService } from "../../gen/orca/testing/v1/echo_pb.js";
import { createAuditLog } from "../../services/kit/auth/audit.js";
import { authInterceptor, rateLimitInterceptor } from "../../services/kit/auth/interceptor.js";
import { createJwtVerifier } from "../../services/kit/auth/jwt.js";
import { MemoryRateLimiter, RedisRateLimiter, type RateLimiter } from "../../services/kit/auth/rate-limit.js";
import { OrcaServer, registration } from "../../services/kit/server/server.js";
import { createLogger } from "../../services/kit/telemetry/logger.js";
import { echoHandlers } from "../../services/kit/testing/echo.js";
import { makeIssuer } from "../support/jwt.js";

const RATE = 20;
const BURST = 10;
const CLIENTS = 50;
const DURATION_MS = 1_500;

/**
 * 50 concurrent clients of one end user hammer Echo for 1.5 s: the number of calls let through
 * never exceeds the token bucket's bound (burst + rate x elapsed), and every refusal is
 * ResourceExhausted with a retry hint.
 */
async function hammer(urls: string[], token: string) {
  let ok = 0;
  let limited = 0;
  let otherErrors = 0;
  let retryHints = 0;
  const started = performance.now();
  const clients = Array.from({ length: CLIENTS }, (_, i) => createClient(EchoService, createGrpcTransport({ baseUrl: urls[i % urls.length] })));
  await Promise.all(
    clients.map(async (client) => {
      while (performance.now() - started < DURATION_MS) {
        try {
          await client.echo({}, { headers: { authorization: `Bearer ${token}` } });
          ok++;
        } catch (error) {
          const e = ConnectError.from(error);
          if (e.code === Code.ResourceExhausted) {
            limited++;
            if (Number(e.metadata.get("retry-after-ms")) > 0) retryHints++;
            await new Promise((resolve) => setTimeout(resolve, 5));
          } else otherErrors++;
        }
      }
    }),
  );
  const elapsedSeconds = (performance.now() - started) / 1000;
  return { ok, limited, otherErrors, retryHints, bound: BURST + RATE * elapsedSeconds };
}

async function startReplica(limiter: RateLimiter, issuer: Awaited<ReturnType<typeof makeIssuer>>) {
  const logger = createLogger({ level: "silent" });
  const audit = createAuditLog(logger);
  const verifyJwt = await createJwtVerifier({ issuer: issuer.issuer, audience: issuer.audience, algorithms: ["RS256"], clockToleranceSeconds: 5, jwks: issuer.jwks });
  const server = new OrcaServer({
    name: "rate-limit-test",
    host: "127.0.0.1",
    port: 0,
    adminPort: 0,
    services: [registration(EchoService, echoHandlers)],
    logger,
    interceptors: [authInterceptor({ enabled: true, verifyJwt, trustXfcc: false, audit }), rateLimitInterceptor({ limiter, audit })],
    shutdownGraceMs: 100,
    maxMessageBytes: 1 << 20,
    fastPath: true,
  });
  await server.start();
  return server;
}

describe("rate limits: token buckets per end user and method group", async () => {
  const issuer = await makeIssuer();
  const servers: OrcaServer[] = [];
  afterAll(async () => {
    for (const server of servers) await server.shutdown();
  });

  it("hold their bound with 50 concurrent clients (in-process buckets)", async () => {
    const server = await startReplica(new MemoryRateLimiter({ ratePerSecond: RATE, burst: BURST }), issuer);
    servers.push(server);
    const result = await hammer([server.url], await issuer.sign({ sub: "alice", roles: ["viewer"], tenant: "acme" }));
    expect(result.otherErrors).toBe(0);
    expect(result.ok).toBeGreaterThanOrEqual(BURST);
    expect(result.ok).toBeLessThanOrEqual(Math.ceil(result.bound));
    expect(result.limited).toBeGreaterThan(0);
    expect(result.retryHints).toBe(result.limited);
  });

  it("keep separate buckets for separate users", async () => {
    const limiter = new MemoryRateLimiter({ ratePerSecond: 1, burst: 1 });
    const server = await startReplica(limiter, issuer);
    servers.push(server);
    const client = createClient(EchoService, createGrpcTransport({ baseUrl: server.url }));
    const bob = await issuer.sign({ sub: "bob", roles: ["viewer"], tenant: "acme" });
    const carol = await issuer.sign({ sub: "carol", roles: ["viewer"], tenant: "acme" });
    await client.echo({}, { headers: { authorization: `Bearer ${bob}` } });
    await expect(client.echo({}, { headers: { authorization: `Bearer ${bob}` } })).rejects.toMatchObject({ code: Code.ResourceExhausted });
    await expect(client.echo({}, { headers: { authorization: `Bearer ${carol}` } })).resolves.toBeDefined();
  });

  describe.skipIf(!process.env.REDIS_URL)("shared through Redis (REDIS_URL)", () => {
    it("hold one bound across two replicas with 50 concurrent clients", async () => {
      const prefix = `orca:test:ratelimit:${randomUUID()}:`;
      const logger = createLogger({ level: "silent" });
      const redisA = new Redis(process.env.REDIS_URL!);
      const redisB = new Redis(process.env.REDIS_URL!);
      try {
        const a = await startReplica(new RedisRateLimiter(redisA, { ratePerSecond: RATE, burst: BURST }, logger, prefix), issuer);
        const b = await startReplica(new RedisRateLimiter(redisB, { ratePerSecond: RATE, burst: BURST }, logger, prefix), issuer);
        servers.push(a, b);
        const result = await hammer([a.url, b.url], await issuer.sign({ sub: "dave", roles: ["viewer"], tenant: "acme" }));
        expect(result.otherErrors).toBe(0);
        expect(result.ok).toBeGreaterThanOrEqual(BURST);
        expect(result.ok).toBeLessThanOrEqual(Math.ceil(result.bound));
        expect(result.limited).toBeGreaterThan(0);
      } finally {
        const keys = await redisA.keys(`${prefix}*`);
        if (keys.length > 0) await redisA.del(...keys);
        redisA.disconnect();
        redisB.disconnect();
      }
    });
  });
});
