import * as net from "node:net";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import pg from "pg";
import { openDatabase, type Database } from "../../services/kit/db/database.js";
import { createLogger } from "../../services/kit/telemetry/logger.js";
import { createFreshDatabase, postgresAvailable } from "../support/postgres.js";
import { waitFor } from "../support/wait.js";

/**
 * A TCP proxy in front of the real Postgres that the test can take down and bring back on the
 * same port: the database "goes away" for the LISTEN connection without stopping the shared
 * Postgres that other suites use.
 */
class Outage {
  private server?: net.Server;
  private readonly sockets = new Set<net.Socket>();
  port = 0;
  constructor(private readonly upstream: { host: string; port: number }) {}

  async up(): Promise<void> {
    this.server = net.createServer((client) => {
      const upstream = net.connect(this.upstream.port, this.upstream.host);
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on("close", () => this.sockets.delete(s));
        s.on("error", () => undefined);
      }
      client.pipe(upstream).pipe(client);
    });
    await new Promise<void>((resolve) => this.server!.listen(this.port, "127.0.0.1", resolve));
    this.port = (this.server.address() as AddressInfo).port;
  }

  async down(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server!.close(() => resolve()));
  }
}

describe.skipIf(!postgresAvailable)("kit database.listen across a database outage (real Postgres behind a proxy)", () => {
  let drop: () => Promise<void>;
  let url: URL;
  let outage: Outage;
  let database: Database;

  beforeAll(async () => {
    const fresh = await createFreshDatabase();
    drop = fresh.drop;
    url = new URL(fresh.url);
    outage = new Outage({ host: url.hostname, port: Number(url.port || 5432) });
    await outage.up();
    const viaProxy = new URL(url);
    viaProxy.port = String(outage.port);
    database = await openDatabase({ databaseUrl: viaProxy.toString(), dataDir: "unused", logger: createLogger({ level: "silent" }) });
  });
  afterAll(async () => {
    await database?.close().catch(() => undefined);
    await outage?.down().catch(() => undefined);
    await drop?.();
  });

  it("keeps retrying while the database is unreachable, then LISTENs again and reports the reconnect once", async () => {
    const payloads: string[] = [];
    let reconnects = 0;
    const stop = await database.listen("orca_test_channel", (p) => payloads.push(p), { onReconnect: () => reconnects++ });
    const notify = async (payload: string) => {
      const direct = new pg.Client({ connectionString: url.toString() });
      await direct.connect();
      await direct.query("select pg_notify('orca_test_channel', $1)", [payload]);
      await direct.end();
    };
    try {
      await notify("before");
      await waitFor("the first notification", () => payloads.includes("before"));

      // Down for long enough that several reconnect attempts fail (0.5 s, then 1 s, 2 s apart).
      await outage.down();
      await notify("lost"); // sent while this listener cannot hear it
      await new Promise((r) => setTimeout(r, 2_000));
      expect(reconnects).toBe(0);
      await outage.up();

      await waitFor("onReconnect after the outage", () => reconnects === 1, 15_000);
      await notify("after");
      await waitFor("a notification over the new connection", () => payloads.includes("after"));
      expect(payloads).toEqual(["before", "after"]);
      expect(reconnects).toBe(1);
    } finally {
      await stop();
    }
  }, 30_000);
});
