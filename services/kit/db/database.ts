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
  close(): Promise<void>;
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
      close: () => db.destroy(),
    };
  }
  const dataDir = resolve(options.dataDir, "pglite");
  mkdirSync(dataDir, { recursive: true });
  const pglite = await PGlite.create(dataDir, {
    parsers: { [INT8_OID]: (value: string) => BigInt(value) },
  });
  const db = new Kysely({ dialect: new PostgresDialect({ pool: new PglitePool(pglite) as unknown as pg.Pool }) });
  return {
    db,
    kind: "pglite",
    location: dataDir,
    ping: async () => void (await sql`select 1`.execute(db)),
    close: () => db.destroy(),
  };
}

/** An in-memory PGlite database, for tests that must not touch disk. */
export async function openMemoryDatabase(): Promise<Database> {
  const pglite = await PGlite.create({ parsers: { [INT8_OID]: (value: string) => BigInt(value) } });
  const db = new Kysely({ dialect: new PostgresDialect({ pool: new PglitePool(pglite) as unknown as pg.Pool }) });
  return { db, kind: "pglite", location: "memory", ping: async () => void (await sql`select 1`.execute(db)), close: () => db.destroy() };
}

function redactUrl(url: string): string {
  const parsed = new URL(url);
  if (parsed.password) parsed.password = "***";
  return parsed.toString();
}
