import { sql, type Migration } from "kysely";
import { eventLogMigration } from "../kit/db/migrations.js";

/** Migrations of schema orca_policy (run by the kit's Migrator with db.withSchema("orca_policy")). */
export const policyMigrations: Record<string, Migration> = {
  "0001_events": eventLogMigration(),
  "0002_bundles": {
    async up(db) {
      await db.schema
        .createTable("bundles")
        .addColumn("tenant", "text", (c) => c.notNull())
        .addColumn("name", "text", (c) => c.notNull())
        .addColumn("version", "int8", (c) => c.notNull())
        .addColumn("engine", "text", (c) => c.notNull().check(sql`engine in ('cedar', 'opa_wasm')`))
        .addColumn("status", "text", (c) => c.notNull().check(sql`status in ('validating', 'rejected', 'ready', 'active', 'retired')`))
        .addColumn("content", "bytea", (c) => c.notNull())
        .addColumn("cedar_schema", "text", (c) => c.notNull().defaultTo(""))
        .addColumn("entrypoint", "text", (c) => c.notNull().defaultTo(""))
        .addColumn("tests", "jsonb", (c) => c.notNull().defaultTo(sql`'[]'::jsonb`))
        .addColumn("failures", "jsonb", (c) => c.notNull().defaultTo(sql`'[]'::jsonb`))
        .addColumn("digest", "text", (c) => c.notNull())
        .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
        .addColumn("activated_at", "timestamptz")
        .addColumn("created_by", "text", (c) => c.notNull().defaultTo(""))
        .addPrimaryKeyConstraint("bundles_pk", ["tenant", "name", "version"])
        .execute();
      // Identical content is one version (PutBundle is idempotent by digest).
      await db.schema.createIndex("bundles_digest").unique().on("bundles").columns(["tenant", "name", "digest"]).execute();
      // At most one ACTIVE version per bundle, enforced by the database, not only by code.
      await db.schema
        .createIndex("bundles_one_active")
        .unique()
        .on("bundles")
        .columns(["tenant", "name"])
        .where(sql.ref("status"), "=", "active")
        .execute();
      await db.schema
        .createTable("activations")
        .addColumn("tenant", "text", (c) => c.notNull())
        .addColumn("name", "text", (c) => c.notNull())
        .addColumn("position", "int4", (c) => c.notNull())
        .addColumn("version", "int8", (c) => c.notNull())
        .addColumn("activated_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
        .addPrimaryKeyConstraint("activations_pk", ["tenant", "name", "position"])
        .execute();
      await db.schema
        .createTable("shadows")
        .addColumn("tenant", "text", (c) => c.notNull())
        .addColumn("name", "text", (c) => c.notNull())
        .addColumn("version", "int8", (c) => c.notNull())
        .addColumn("sample_rate", "float8", (c) => c.notNull())
        .addColumn("report_id", "text", (c) => c.notNull())
        .addColumn("active_version", "int8", (c) => c.notNull())
        .addColumn("started_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
        .addColumn("evaluated", "int8", (c) => c.notNull().defaultTo(0))
        .addColumn("agreements", "int8", (c) => c.notNull().defaultTo(0))
        .addColumn("disagreements", "int8", (c) => c.notNull().defaultTo(0))
        .addColumn("shadow_errors", "int8", (c) => c.notNull().defaultTo(0))
        .addPrimaryKeyConstraint("shadows_pk", ["tenant", "name"])
        .execute();
      await db.schema
        .createTable("shadow_pairs")
        .addColumn("report_id", "text", (c) => c.notNull())
        .addColumn("active", "text", (c) => c.notNull())
        .addColumn("shadow", "text", (c) => c.notNull())
        .addColumn("count", "int8", (c) => c.notNull())
        .addPrimaryKeyConstraint("shadow_pairs_pk", ["report_id", "active", "shadow"])
        .execute();
      await db.schema
        .createTable("shadow_examples")
        .addColumn("id", "bigserial", (c) => c.primaryKey())
        .addColumn("report_id", "text", (c) => c.notNull())
        .addColumn("agreed", "boolean", (c) => c.notNull())
        .addColumn("decided_at", "timestamptz", (c) => c.notNull())
        .addColumn("input", "jsonb", (c) => c.notNull())
        .addColumn("active", "jsonb", (c) => c.notNull())
        .addColumn("shadow", "jsonb", (c) => c.notNull())
        .execute();
      await db.schema.createIndex("shadow_examples_report").on("shadow_examples").columns(["report_id", "agreed", "id"]).execute();
    },
  },
};
