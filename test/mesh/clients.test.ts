import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { LockService } from "../../gen/orca/lock/v1/lock_pb.js";
import { EchoService } from "../../gen/orca/testing/v1/echo_pb.js";
import { callScope } from "../../services/kit/call-scope.js";
import { createOrcaClient } from "../../services/kit/clients/factory.js";
import { OrcaServer, registration } from "../../services/kit/server/server.js";
import { createLogger } from "../../services/kit/telemetry/logger.js";
import { echoHandlers } from "../../services/kit/testing/echo.js";

/**
 * The client factory against a real server: retries only for idempotent methods, a breaker per
 * target, a deadline on every call, and the correlation id carried from the served call.
 */
describe("typed client factory", () => {
  let server: OrcaServer;
  let url: string;
  const attempts = { echoUnavailable: 0, acquire: 0 };
  let failEchoTimes = 0;

  beforeAll(async () => {
    server = new OrcaServer({
      name: "clients-test",
      host: "127.0.0.1",
      port: 0,
      adminPort: 0,
      services: [
        registration(EchoService, {
          ...echoHandlers,
          async echo(req, ctx) {
            if (req.failWithMessage === "flaky") {
              attempts.echoUnavailable++;
              if (attempts.echoUnavailable <= failEchoTimes) throw new ConnectError("try again", Code.Unavailable);
            }
            return echoHandlers.echo(req, ctx);
          },
        }),
        // Acquire is not marked idempotent in the contract: it must never be retried.
        registration(LockService, {
          acquire() {
            attempts.acquire++;
            throw new ConnectError("lock backend down", Code.Unavailable);
          },
        }),
      ],
      logger: createLogger({ level: "silent" }),
      shutdownGraceMs: 100,
      maxMessageBytes: 1 << 20,
      fastPath: true,
    });
    url = (await server.start()).url;
  });

  afterAll(() => server.shutdown());

  it("retries an idempotent (NO_SIDE_EFFECTS) method on Unavailable until it succeeds", async () => {
    attempts.echoUnavailable = 0;
    failEchoTimes = 2;
    const client = createOrcaClient(EchoService, { baseUrl: url, maxAttempts: 3, breakerThreshold: 0 });
    const res = await client.echo({ payload: new Uint8Array([7]), failWithMessage: "flaky" });
    expect(res.payload).toEqual(new Uint8Array([7]));
    expect(attempts.echoUnavailable).toBe(3);
  });

  it("gives up after maxAttempts and returns the last error", async () => {
    attempts.echoUnavailable = 0;
    failEchoTimes = 100;
    const client = createOrcaClient(EchoService, { baseUrl: url, maxAttempts: 2, breakerThreshold: 0 });
    await expect(client.echo({ failWithMessage: "flaky" })).rejects.toMatchObject({ code: Code.Unavailable });
    expect(attempts.echoUnavailable).toBe(2);
  });

  it("never retries a method the contract does not mark idempotent", async () => {
    attempts.acquire = 0;
    const client = createOrcaClient(LockService, { baseUrl: url, maxAttempts: 5, breakerThreshold: 0 });
    await expect(client.acquire({ resource: "r" })).rejects.toMatchObject({ code: Code.Unavailable });
    expect(attempts.acquire).toBe(1);
  });

  it("opens the circuit after consecutive failures and then fails fast without calling", async () => {
    attempts.acquire = 0;
    const client = createOrcaClient(LockService, { baseUrl: url, target: "lock", breakerThreshold: 3, breakerHalfOpenAfterMs: 60_000 });
    for (let i = 0; i < 3; i++) await expect(client.acquire({ resource: "r" })).rejects.toMatchObject({ code: Code.Unavailable });
    expect(attempts.acquire).toBe(3);
    const error = await client.acquire({ resource: "r" }).catch((e: unknown) => ConnectError.from(e));
    expect(error).toMatchObject({ code: Code.Unavailable });
    expect(String(error)).toMatch(/circuit open for lock/);
    expect(attempts.acquire).toBe(3);
  });

  it("puts a deadline on every call", async () => {
    const client = createOrcaClient(EchoService, { baseUrl: url, defaultTimeoutMs: 100, breakerThreshold: 0, maxAttempts: 1 });
    await expect(client.echo({ delayMs: 2_000 })).rejects.toMatchObject({ code: Code.DeadlineExceeded });
  });

  it("carries the served call's correlation id to the next service", async () => {
    const client = createOrcaClient(EchoService, { baseUrl: url });
    const res = await callScope.run({ correlationId: "corr-123" }, () => client.echo({}));
    expect(res.correlationId).toBe("corr-123");
  });
});
