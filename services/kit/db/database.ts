import { mkdirSync } from "node:fs";
import { resolve } from "node:path";
import { PGlite } from "@electric-sql/pglite";
import { Kysely, PostgresDialect, sql } from "kysely";
import pg from "pg";
import type { Logger } from "../telemetry/logger.js";
import { PglitePool } from "./pglite-pool.js";

/**
 * The mesh's database: kysely on node-postgres when DATABASE_URL is set, else on an embedded
 * PGlite in ORCA_DATA_DIR. Each service works in its own schema (orca_lock, orca_cache, ...);
 * the handle is shared by every service in a process.
 *
 * Both backends return int8 as bigint (fencing tokens and sequence numbers are 64-bit) and
 * timestamptz as Date, so domain code sees the same types on either.
 */
export interface Database {
  // Each service declares its own table types; the shared handle is schema-agnostic.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  db: Kysely<any>;
  kind: "postgres" | "pglite";
  /** Where the data lives, for logs: a redacted URL or the data folder. */
  location: string;
  /** Throws when the database does not answer. */
  ping(): Promise<void>;
  /**
   * LISTEN on a channel; `onPayload` gets each NOTIFY payload (sent with `pg_notify` inside the
   * writer's transaction, so listeners only hear committed changes). On Postgres this holds one
   * dedicated connection per channel, reconnecting after errors (with backoff, until it is back);
   * on PGlite it uses the instance's own listener. Notifications sent while the connection was
   * down are lost, so `onReconnect` runs once LISTEN is back after a loss: callers that keep
   * state derived from notifications (the Cache's L1) drop it there. Returns the function that
   * stops listening.
   */
  listen(channel: string, onPayload: (payload: string) => void, options?: ListenOptions): Promise<() => Promise<void>>;
  close(): Promise<void>;
}

export interface ListenOptions {
  /** Runs after LISTEN is re-established following a lost connection (not on the first connect). */
  onReconnect?: () => void;
}

const INT8_OID = 20;

export async function openDatabase(options: { databaseUrl?: string; dataDir: string; logger: Logger; poolSize?: number }): Promise<Database> {
  if (options.databaseUrl) {
    const pool = new pg.Pool({
      connectionString: options.databaseUrl,
      max: options.poolSize ?? 10,
      types: {
        getTypeParser: ((oid: number, format?: string) =>
          oid === INT8_OID ? (value: string) => BigInt(value) : pg.types.getTypeParser(oid, format as "text")) as typeof pg.types.getTypeParser,
      },
    });
    pool.on("error", (error) => options.logger.warn({ err: error }, "idle postgres client error"));
    const db = new Kysely({ dialect: new PostgresDialect({ pool }) });
    const location = redactUrl(options.databaseUrl);
    await sql`select 1`.execute(db).catch((error: unknown) => {
      throw new Error(`cannot reach Postgres at ${location}: ${error instanceof Error ? error.message : String(error)}`);
    });
    return {
      db,
      kind: "postgres",
      location,
      ping: async () => void (await sql`select 1`.execute(db)),
      listen: (channel, onPayload, listenOptions) => listenPostgres(options.databaseUrl!, channel, onPayload, options.logger, listenOptions),
      close: () => db.destroy(),
    };
  }
  const dataDir = resolve(options.dataDir, "pglite");
  mkdirSync(dataDir, { recursive: true });
  const pglite = await PGlite.create(dataDir, {
    parsers: { [INT8_OID]: (value: string) => BigInt(value) },
  });
  return pgliteDatabase(pglite, dataDir);
}

function pgliteDatabase(pglite: PGlite, location: string): Database {
  const db = new Kysely({ dialect: new PostgresDialect({ pool: new PglitePool(pglite) as unknown as pg.Pool }) });
  return {
    db,
    kind: "pglite",
    location,
    ping: async () => void (await sql`select 1`.execute(db)),
    listen: async (channel, onPayload) => {
      const unsubscribe = await pglite.listen(channel, onPayload);
      return () => unsubscribe();
    },
    close: () => db.destroy(),
  };
}

async function listenPostgres(
  url: string,
  channel: string,
  onPayload: (payload: string) => void,
  logger: Logger,
  options: ListenOptions = {},
): Promise<() => Promise<void>> {
  let client: pg.Client | undefined;
  let stopped = false;
  let retryTimer: NodeJS.Timeout | undefined;
  let failures = 0;
  const connect = async (): Promise<void> => {
    const next = new pg.Client({ connectionString: url });
    next.on("notification", (message) => {
      if (message.channel === channel) onPayload(message.payload ?? "");
    });
    let lost = false;
    next.on("error", (error) => {
      if (lost) return;
      lost = true;
      logger.warn({ err: error, channel }, "LISTEN connection lost; reconnecting");
      void next.end().catch(() => undefined);
      if (client === next) client = undefined;
      scheduleReconnect();
    });
    try {
      await next.connect();
      await next.query(`LISTEN ${pg.escapeIdentifier(channel)}`);
    } catch (error) {
      void next.end().catch(() => undefined);
      throw error;
    }
    if (stopped) {
      await next.end().catch(() => undefined);
      return;
    }
    client = next;
  };
  // Retries until LISTEN is back (the database may be down for a while), 0.5 s doubling to 10 s.
  const scheduleReconnect = () => {
    if (stopped) return;
    const delayMs = Math.min(10_000, 500 * 2 ** Math.min(failures, 5));
    retryTimer = setTimeout(() => {
      connect().then(
        () => {
          if (stopped) return;
          failures = 0;
          logger.info({ channel }, "LISTEN connection re-established");
          options.onReconnect?.();
        },
        (error: unknown) => {
          failures++;
          logger.warn({ err: error, channel, attempt: failures }, "LISTEN reconnect failed; retrying");
          scheduleReconnect();
        },
      );
    }, delayMs);
  };
  await connect();
  return async () => {
    stopped = true;
    clearTimeout(retryTimer);
    await client?.end().catch(() => undefined);
  };
}

/** An in-memory PGlite database, for tests that must not touch disk. */
export async function openMemoryDatabase(): Promise<Database> {
  const pglite = await PGlite.create({ parsers: { [INT8_OID]: (value: string) => BigInt(value) } });
  return pgliteDatabase(pglite, "memory");
}

function redactUrl(url: string): string {
  const parsed = new URL(url);
  if (parsed.password) parsed.password = "***";
  return parsed.toString();
}
