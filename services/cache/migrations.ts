import { sql, type Migration } from "kysely";
import { eventLogMigration } from "../kit/db/migrations.js";

/** Migrations of schema orca_cache (run by the kit's Migrator inside that schema). */
export const cacheMigrations: Record<string, Migration> = {
  "0001_events": eventLogMigration(),
  "0002_entries": {
    async up(db) {
      // Raw SQL is not rewritten by withSchema(), so it names the schema itself.
      await sql`create sequence if not exists orca_cache.entry_version`.execute(db);
      await db.schema
        .createTable("entries")
        .ifNotExists()
        .addColumn("tenant", "text", (c) => c.notNull())
        .addColumn("namespace", "text", (c) => c.notNull())
        .addColumn("key", "text", (c) => c.notNull())
        .addColumn("value", "bytea", (c) => c.notNull())
        .addColumn("content_type", "text", (c) => c.notNull().defaultTo(""))
        .addColumn("tags", sql`text[]`, (c) => c.notNull().defaultTo(sql`'{}'::text[]`))
        .addColumn("version", "bigint", (c) => c.notNull())
        .addColumn("stored_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
        .addColumn("expires_at", "timestamptz", (c) => c.notNull())
        .addColumn("stale_until", "timestamptz", (c) => c.notNull())
        .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
        .addColumn("updated_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
        .addPrimaryKeyConstraint("entries_pkey", ["tenant", "namespace", "key"])
        .execute();
      await db.schema.createIndex("entries_stale_until").ifNotExists().on("entries").column("stale_until").execute();
      await sql`create index if not exists entries_tags on orca_cache.entries using gin (tags)`.execute(db);
    },
  },
};
