import { randomBytes } from "node:crypto";
import pg from "pg";
import { openDatabase, openMemoryDatabase, type Database } from "../../services/kit/db/database.js";
import { createLogger } from "../../services/kit/telemetry/logger.js";

/**
 * Real Postgres for integration tests, from DATABASE_URL. Each caller gets a fresh database
 * (created here, dropped by `drop`), so test files never see each other's schemas.
 * Without DATABASE_URL, `postgresAvailable` is false and suites skip with a printed reason.
 */
export const postgresUrl = process.env.DATABASE_URL;
export const postgresAvailable = Boolean(postgresUrl);

export async function createFreshDatabase(): Promise<{ url: string; drop: () => Promise<void> }> {
  if (!postgresUrl) throw new Error("DATABASE_URL is not set");
  const name = `orca_test_${randomBytes(6).toString("hex")}`;
  const admin = new pg.Client({ connectionString: postgresUrl });
  await admin.connect();
  await admin.query(`create database ${name}`);
  await admin.end();
  const url = new URL(postgresUrl);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    drop: async () => {
      const client = new pg.Client({ connectionString: postgresUrl });
      await client.connect();
      await client.query(`drop database if exists ${name} with (force)`);
      await client.end();
    },
  };
}

/** Runs `check` on a fresh in-memory PGlite database, closed afterwards. */
export async function withPglite(check: (database: Database) => Promise<void>): Promise<void> {
  const database = await openMemoryDatabase();
  try {
    await check(database);
  } finally {
    await database.close();
  }
}

/** Runs `check` on a fresh real Postgres database (DATABASE_URL), closed and dropped afterwards. */
export async function withFreshPostgres(check: (database: Database) => Promise<void>): Promise<void> {
  const fresh = await createFreshDatabase();
  try {
    const database = await openDatabase({ databaseUrl: fresh.url, dataDir: "unused", logger: createLogger({ level: "silent" }) });
    try {
      await check(database);
    } finally {
      await database.close();
    }
  } finally {
    await fresh.drop();
  }
}
