import { sql } from "kysely";
import { describe, expect, it } from "vitest";
import { openDatabase, type Database } from "../../services/kit/db/database.js";
import { migrate } from "../../services/kit/db/migrations.js";
import { createLogger } from "../../services/kit/telemetry/logger.js";
import { SERVICE_MODULES } from "../../services/modules.js";
import { postgresAvailable, withFreshPostgres, withPglite } from "../support/postgres.js";

const logger = createLogger({ level: "silent" });

async function checkAllMigrations(database: Database) {
  for (const module of Object.values(SERVICE_MODULES)) {
    const applied = await migrate(database.db, module);
    expect(applied).toEqual(Object.keys(module.migrations));
    // A second run applies nothing and fails nothing.
    expect(await migrate(database.db, module)).toEqual([]);
    // The event log lives in the service's own schema and takes rows.
    await sql`insert into ${sql.table(`${module.schema}.events`)} (kind, subject) values ('test', 'x')`.execute(database.db);
    const { rows } = await sql<{ seq: bigint }>`select seq from ${sql.table(`${module.schema}.events`)}`.execute(database.db);
    expect(rows).toHaveLength(1);
    expect(typeof rows[0].seq).toBe("bigint");
  }
  const { rows: schemas } = await sql<{ nspname: string }>`select nspname from pg_namespace where nspname like 'orca_%' order by 1`.execute(
    database.db,
  );
  expect(schemas.map((s) => s.nspname)).toEqual(Object.values(SERVICE_MODULES).map((m) => m.schema).sort());
}

describe("migrations", () => {
  it("run on embedded PGlite, once, each service in its own schema", () => withPglite(checkAllMigrations));

  describe.skipIf(!postgresAvailable)("on real Postgres (DATABASE_URL)", () => {
    it("run on Postgres, once, each service in its own schema", () => withFreshPostgres(checkAllMigrations));

    it("reports an unreachable Postgres clearly", async () => {
      await expect(
        openDatabase({ databaseUrl: "postgres://postgres@127.0.0.1:1/none", dataDir: "unused", logger }),
      ).rejects.toThrow(/cannot reach Postgres at postgres:\/\/postgres@127.0.0.1:1\/none/);
    });
  });
});
