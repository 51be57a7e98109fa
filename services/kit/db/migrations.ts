import { Migrator, sql, type Kysely, type Migration } from "kysely";

/**
 * Each service owns one schema and a numbered list of migrations ("0001_events", ...), run at
 * start in order and recorded in that schema's own migration table, so services can be deployed
 * and migrated independently.
 */
export interface ServiceMigrations {
  schema: string;
  migrations: Record<string, Migration>;
}

export async function migrate(
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  db: Kysely<any>,
  service: ServiceMigrations,
): Promise<string[]> {
  await sql`create schema if not exists ${sql.id(service.schema)}`.execute(db);
  const migrator = new Migrator({
    db: db.withSchema(service.schema),
    provider: { getMigrations: async () => service.migrations },
    migrationTableSchema: service.schema,
    migrationTableName: "orca_migrations",
    migrationLockTableName: "orca_migrations_lock",
  });
  const { error, results } = await migrator.migrateToLatest();
  if (error) {
    const failed = results?.find((r) => r.status === "Error")?.migrationName ?? "unknown";
    throw new Error(`migration ${service.schema}/${failed} failed: ${error instanceof Error ? error.message : String(error)}`);
  }
  return (results ?? []).filter((r) => r.status === "Success").map((r) => r.migrationName);
}

/**
 * The first migration of every service: its event log. Every state change writes a row here in
 * the same transaction as the change itself (DESIGN.md, State), so the log can be trusted.
 */
export function eventLogMigration(): Migration {
  return {
    async up(db) {
      await db.schema
        .createTable("events")
        .ifNotExists()
        .addColumn("seq", "bigserial", (c) => c.primaryKey())
        .addColumn("occurred_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
        .addColumn("kind", "text", (c) => c.notNull())
        .addColumn("subject", "text", (c) => c.notNull())
        .addColumn("tenant", "text", (c) => c.notNull().defaultTo(""))
        .addColumn("payload", "jsonb", (c) => c.notNull().defaultTo(sql`'{}'::jsonb`))
        .execute();
      await db.schema.createIndex("events_subject_seq").ifNotExists().on("events").columns(["subject", "seq"]).execute();
    },
  };
}
