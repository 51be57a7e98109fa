import { rmSync } from "node:fs";
import { connect as tlsConnect } from "node:tls";
import { readFileSync } from "node:fs";
import { ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EchoService } from "../../gen/orca/testing/v1/echo_pb.js";
import { createOrcaClient } from "../../services/kit/clients/factory.js";
import { OrcaServer, registration } from "../../services/kit/server/server.js";
import { createLogger } from "../../services/kit/telemetry/logger.js";
import { echoHandlers } from "../../services/kit/testing/echo.js";
import { makeCertificates } from "../support/certs.js";

const ALLOWED = "URI:spiffe://cluster.local/ns/orca/sa/orchestrator";
const OTHER = "URI:spiffe://cluster.local/ns/orca/sa/intruder";

describe("TLS 1.3 with client certificates and a SAN allowlist", () => {
  const certs = makeCertificates([ALLOWED, OTHER]);
  let server: OrcaServer;
  let port: number;

  beforeAll(async () => {
    server = new OrcaServer({
      name: "tls-test",
      host: "127.0.0.1",
      port: 0,
      adminPort: 0,
      services: [registration(EchoService, echoHandlers)],
      logger: createLogger({ level: "silent" }),
      tls: { certFile: certs.serverCert, keyFile: certs.serverKey, clientCaFile: certs.caFile, allowedSans: ["spiffe://cluster.local/ns/orca/sa/orchestrator"] },
      shutdownGraceMs: 100,
      maxMessageBytes: 1 << 20,
      fastPath: true,
    });
    port = (await server.start()).port;
  });

  afterAll(async () => {
    await server.shutdown();
    rmSync(certs.dir, { recursive: true, force: true });
  });

  const client = (index?: number) =>
    createClient(
      EchoService,
      createGrpcTransport({
        baseUrl: `https://127.0.0.1:${port}`,
        nodeOptions: {
          ca: readFileSync(certs.caFile),
          ...(index === undefined ? {} : { cert: readFileSync(certs.clients[index].cert), key: readFileSync(certs.clients[index].key) }),
        },
      }),
    );

  it("serves a client whose certificate SAN is on the allowlist, over TLS 1.3", async () => {
    const res = await client(0).echo({ payload: new Uint8Array([1, 2]) });
    expect(res.payload).toEqual(new Uint8Array([1, 2]));
    const protocol = await new Promise<string | null>((resolve, reject) => {
      const socket = tlsConnect(
        { host: "127.0.0.1", port, ca: readFileSync(certs.caFile), cert: readFileSync(certs.clients[0].cert), key: readFileSync(certs.clients[0].key), ALPNProtocols: ["h2"] },
        () => {
          resolve(socket.getProtocol());
          socket.destroy();
        },
      );
      socket.once("error", reject);
    });
    expect(protocol).toBe("TLSv1.3");
  });

  it("refuses a verified client whose SAN is not on the allowlist", async () => {
    // The server drops the connection after the handshake; the client sees a cancelled stream.
    await expect(client(1).echo({})).rejects.toBeInstanceOf(ConnectError);
  });

  it("refuses a client without a certificate", async () => {
    // The TLS handshake fails (certificate required); the client reports it as an error.
    await expect(client().echo({})).rejects.toBeInstanceOf(ConnectError);
  });

  it("serves the kit's own client, on its unary path and through connect-node for streams, with its certificate", async () => {
    const kitClient = (index?: number) =>
      createOrcaClient(EchoService, {
        baseUrl: `https://127.0.0.1:${port}`,
        target: "tls-test",
        breakerThreshold: 0,
        maxAttempts: 1,
        tls: { caFile: certs.caFile, ...(index === undefined ? {} : { certFile: certs.clients[index].cert, keyFile: certs.clients[index].key }) },
      });
    const allowed = kitClient(0);
    expect((await allowed.echo({ payload: new Uint8Array([3]) })).payload).toEqual(new Uint8Array([3]));
    const indexes: number[] = [];
    for await (const message of allowed.echoStream({ payload: new Uint8Array([4]), repeat: 2 })) indexes.push(message.index);
    expect(indexes).toEqual([0, 1]);
    await expect(kitClient(1).echo({})).rejects.toBeInstanceOf(ConnectError);
    await expect(kitClient().echo({})).rejects.toBeInstanceOf(ConnectError);
  });

  it("refuses TLS 1.2", async () => {
    const error = await new Promise<Error>((resolve) => {
      const socket = tlsConnect({ host: "127.0.0.1", port, ca: readFileSync(certs.caFile), maxVersion: "TLSv1.2" }, () => resolve(new Error("connected")));
      socket.once("error", resolve);
    });
    expect(error.message).not.toBe("connected");
  });
});
