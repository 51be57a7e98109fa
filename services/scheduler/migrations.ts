import { sql, type Migration } from "kysely";
import { eventLogMigration } from "../kit/db/migrations.js";

/** Migrations of schema orca_scheduler, in order. */
export const schedulerMigrations: Record<string, Migration> = {
  "0001_events": eventLogMigration(),
  "0002_scheduler": {
    async up(db) {
      await db.schema
        .createTable("schedules")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("tenant", "text", (c) => c.notNull())
        .addColumn("name", "text", (c) => c.notNull())
        .addColumn("cron", "text", (c) => c.notNull())
        .addColumn("timezone", "text", (c) => c.notNull())
        .addColumn("dst_skipped", "integer", (c) => c.notNull())
        .addColumn("dst_repeated", "integer", (c) => c.notNull())
        .addColumn("start_at", "timestamptz")
        .addColumn("end_at", "timestamptz")
        .addColumn("jitter_ms", "integer", (c) => c.notNull().defaultTo(0))
        .addColumn("overlap", "integer", (c) => c.notNull())
        .addColumn("catchup_ms", "bigint", (c) => c.notNull())
        .addColumn("paused", "boolean", (c) => c.notNull().defaultTo(false))
        .addColumn("pause_note", "text", (c) => c.notNull().defaultTo(""))
        .addColumn("paused_at", "timestamptz")
        .addColumn("workflow_name", "text", (c) => c.notNull())
        .addColumn("workflow_version", "integer", (c) => c.notNull().defaultTo(0))
        .addColumn("input", "jsonb", (c) => c.notNull().defaultTo(sql`'{}'::jsonb`))
        .addColumn("next_fire_at", "timestamptz")
        .addColumn("next_check_at", "timestamptz")
        .addColumn("cursor_at", "timestamptz", (c) => c.notNull())
        .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
        .addColumn("updated_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
        .addColumn("revision", "bigint", (c) => c.notNull().defaultTo(1))
        .addUniqueConstraint("schedules_tenant_name", ["tenant", "name"])
        .execute();
      await sql`create index schedules_due on orca_scheduler.schedules (next_check_at) where not paused and next_check_at is not null`.execute(db);

      await db.schema
        .createTable("firings")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("schedule_id", "text", (c) => c.notNull().references("orca_scheduler.schedules.id").onDelete("cascade"))
        .addColumn("tenant", "text", (c) => c.notNull())
        .addColumn("fire_key", "text", (c) => c.notNull())
        .addColumn("scheduled_time", "timestamptz", (c) => c.notNull())
        .addColumn("due_at", "timestamptz", (c) => c.notNull())
        .addColumn("actual_time", "timestamptz")
        .addColumn("run_id", "text", (c) => c.notNull().defaultTo(""))
        .addColumn("outcome", "integer", (c) => c.notNull())
        .addColumn("kind", "integer", (c) => c.notNull())
        .addColumn("error", "text", (c) => c.notNull().defaultTo(""))
        .addColumn("cancelled_run_ids", "jsonb", (c) => c.notNull().defaultTo(sql`'[]'::jsonb`))
        .addColumn("overlap", "integer", (c) => c.notNull().defaultTo(0))
        .addColumn("run_final", "boolean", (c) => c.notNull().defaultTo(false))
        .addColumn("give_up_at", "timestamptz", (c) => c.notNull())
        .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
        // Exactly once per (schedule, scheduled time): the firer inserts with ON CONFLICT DO NOTHING.
        .addUniqueConstraint("firings_schedule_key", ["schedule_id", "fire_key"])
        .execute();
      await sql`create index firings_pending on orca_scheduler.firings (due_at) where outcome = 1`.execute(db);
      await sql`create index firings_buffered on orca_scheduler.firings (schedule_id, scheduled_time) where outcome = 3`.execute(db);
      await sql`create index firings_active on orca_scheduler.firings (schedule_id) where run_id <> '' and not run_final`.execute(db);
      await db.schema.createIndex("firings_schedule_time").on("firings").columns(["schedule_id", "scheduled_time desc", "id desc"]).execute();
      await db.schema.createIndex("firings_tenant_time").on("firings").columns(["tenant", "scheduled_time desc", "id desc"]).execute();

      await db.schema
        .createTable("triggers")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("tenant", "text", (c) => c.notNull())
        .addColumn("name", "text", (c) => c.notNull().defaultTo(""))
        .addColumn("event_type", "text", (c) => c.notNull())
        .addColumn("filter", "text", (c) => c.notNull().defaultTo(""))
        .addColumn("workflow_name", "text", (c) => c.notNull())
        .addColumn("workflow_version", "integer", (c) => c.notNull().defaultTo(0))
        .addColumn("input_mapping", "jsonb")
        .addColumn("enabled", "boolean", (c) => c.notNull())
        .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`clock_timestamp()`))
        .execute();
      await db.schema.createIndex("triggers_match").on("triggers").columns(["tenant", "event_type"]).execute();

      await db.schema
        .createTable("published_events")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("tenant", "text", (c) => c.notNull())
        .addColumn("type", "text", (c) => c.notNull())
        .addColumn("payload", "jsonb", (c) => c.notNull())
        .addColumn("idempotency_key", "text", (c) => c.notNull())
        .addColumn("published_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
        .addUniqueConstraint("published_events_key", ["tenant", "idempotency_key"])
        .execute();

      await db.schema
        .createTable("trigger_dispatches")
        .addColumn("event_id", "text", (c) => c.notNull().references("orca_scheduler.published_events.id").onDelete("cascade"))
        .addColumn("trigger_id", "text", (c) => c.notNull())
        .addColumn("tenant", "text", (c) => c.notNull())
        .addColumn("state", "integer", (c) => c.notNull())
        .addColumn("run_id", "text", (c) => c.notNull().defaultTo(""))
        .addColumn("error", "text", (c) => c.notNull().defaultTo(""))
        .addColumn("input", "jsonb")
        .addColumn("workflow_name", "text", (c) => c.notNull())
        .addColumn("workflow_version", "integer", (c) => c.notNull())
        .addColumn("next_attempt_at", "timestamptz", (c) => c.notNull())
        .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
        .addPrimaryKeyConstraint("trigger_dispatches_pk", ["event_id", "trigger_id"])
        .execute();
      await sql`create index trigger_dispatches_pending on orca_scheduler.trigger_dispatches (next_attempt_at) where state = 1`.execute(db);

      // Highest fencing token of the firer lease seen so far: a stale firer's writes are refused.
      await db.schema
        .createTable("fence")
        .addColumn("id", "integer", (c) => c.primaryKey())
        .addColumn("token", "bigint", (c) => c.notNull())
        .execute();
      await db.insertInto("fence").values({ id: 1, token: 0 }).execute();
    },
  },
};
