import { sql } from "kysely";
import { describe, expect, it } from "vitest";
import { readConfig } from "../../services/kit/config.js";
import type { Database } from "../../services/kit/db/database.js";
import { EVENT_PRUNE_BATCH, pruneEventLog } from "../../services/kit/db/event-log.js";
import { migrate } from "../../services/kit/db/migrations.js";
import { SERVICE_MODULES } from "../../services/modules.js";
import { postgresAvailable, withFreshPostgres, withPglite } from "../support/postgres.js";

const HOUR = 3_600_000;
const lock = SERVICE_MODULES.lock;

/** Old rows across more than one batch, then rows inside the retention window. */
async function checkPruning(database: Database) {
  await migrate(database.db, lock);
  const events = sql.table(`${lock.schema}.events`);
  const old = EVENT_PRUNE_BATCH + 1234;
  await sql`insert into ${events} (kind, subject, occurred_at)
    select 'lock.acquired', 'r' || g, now() - interval '2 hours' from generate_series(1, ${old}) g`.execute(database.db);
  await sql`insert into ${events} (kind, subject, occurred_at)
    select 'lock.acquired', 'fresh' || g, now() - interval '5 minutes' from generate_series(1, 3) g`.execute(database.db);
  const count = async () => Number((await sql<{ n: string }>`select count(*) as n from ${events}`.execute(database.db)).rows[0].n);

  expect(await pruneEventLog(database.db, lock.schema, 0)).toBe(0); // 0 keeps everything
  expect(await count()).toBe(old + 3);
  expect(await pruneEventLog(database.db, lock.schema, HOUR)).toBe(old);
  const left = await sql<{ subject: string }>`select subject from ${events} order by seq`.execute(database.db);
  expect(left.rows.map((r) => r.subject)).toEqual(["fresh1", "fresh2", "fresh3"]);
  expect(await pruneEventLog(database.db, lock.schema, HOUR)).toBe(0);
}

describe("event log retention", () => {
  it("deletes rows older than ORCA_EVENT_RETENTION_MS in batches and keeps the rest (PGlite)", () => withPglite(checkPruning));

  it.skipIf(!postgresAvailable)("deletes rows older than the retention in batches and keeps the rest (real Postgres)", () => withFreshPostgres(checkPruning));

  it("reads ORCA_EVENT_RETENTION_MS: default 30 days, 0 keeps forever, under an hour is an error naming it", () => {
    expect(readConfig({}).eventRetentionMs).toBe(30 * 24 * HOUR);
    expect(readConfig({ ORCA_EVENT_RETENTION_MS: "0" }).eventRetentionMs).toBe(0);
    expect(() => readConfig({ ORCA_EVENT_RETENTION_MS: "5000" })).toThrow(/ORCA_EVENT_RETENTION_MS/);
    expect(() => readConfig({ ORCA_EVENT_RETENTION_MS: "a week" })).toThrow(/ORCA_EVENT_RETENTION_MS/);
  });
});
