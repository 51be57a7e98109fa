import { sql, type Migration } from "kysely";
import { eventLogMigration } from "../kit/db/migrations.js";

const monitorTables: Migration = {
  async up(db) {
    await sql`
      create table if not exists orca_monitor.targets (
        id text primary key,
        tenant text not null,
        name text not null,
        kind int not null,
        address text not null default '',
        service text not null default '',
        tls boolean not null default false,
        url text not null default '',
        expected_status int not null default 0,
        interval_ms int not null,
        timeout_ms int not null,
        labels jsonb not null default '{}'::jsonb,
        builtin boolean not null default false,
        created_at timestamptz not null default now(),
        status int not null default 1,
        status_since timestamptz not null default now(),
        detail text not null default '',
        last_probe_at timestamptz,
        stats jsonb not null default '{}'::jsonb,
        unique (tenant, name)
      )`.execute(db);
    await sql`
      create table if not exists orca_monitor.status_changes (
        seq bigserial primary key,
        target_id text not null,
        previous_status int not null,
        status int not null,
        changed_at timestamptz not null default now(),
        detail text not null default ''
      )`.execute(db);
    await sql`create index if not exists status_changes_target on orca_monitor.status_changes (target_id, changed_at desc)`.execute(db);
    await sql`
      create table if not exists orca_monitor.probe_samples (
        seq bigserial primary key,
        target_id text not null,
        probed_at timestamptz not null default now(),
        latency_ms double precision,
        status int not null,
        detail text not null default ''
      )`.execute(db);
    await sql`create index if not exists probe_samples_target on orca_monitor.probe_samples (target_id, probed_at desc)`.execute(db);
    await sql`create index if not exists probe_samples_age on orca_monitor.probe_samples (probed_at)`.execute(db);
    await sql`
      create table if not exists orca_monitor.rules (
        id text primary key,
        tenant text not null,
        name text not null,
        target_id text not null default '',
        spec jsonb not null,
        created_at timestamptz not null default now(),
        unique (tenant, name)
      )`.execute(db);
    await sql`
      create table if not exists orca_monitor.alerts (
        id text primary key,
        tenant text not null,
        rule_id text not null,
        target_id text not null,
        state int not null,
        severity int not null,
        labels jsonb not null,
        group_key text not null,
        summary text not null,
        started_at timestamptz not null default now(),
        resolved_at timestamptz,
        acked_by text not null default '',
        acked_at timestamptz,
        ack_comment text not null default '',
        silenced boolean not null default false,
        silence_ids jsonb not null default '[]'::jsonb,
        notified boolean not null default false,
        last_notified_at timestamptz,
        recovery_run_id text not null default '',
        recovery_error text not null default '',
        recovery_attempts int not null default 0,
        recovery_next_at timestamptz
      )`.execute(db);
    // At most one FIRING alert per (rule, target), even with several replicas evaluating.
    await sql`create unique index if not exists alerts_one_firing on orca_monitor.alerts (rule_id, target_id) where state = 1`.execute(db);
    await sql`create index if not exists alerts_tenant_started on orca_monitor.alerts (tenant, started_at desc, id desc)`.execute(db);
    await sql`
      create table if not exists orca_monitor.silences (
        id text primary key,
        tenant text not null,
        matchers jsonb not null,
        starts_at timestamptz not null default now(),
        ends_at timestamptz not null,
        created_by text not null default '',
        comment text not null default ''
      )`.execute(db);
    await sql`create index if not exists silences_tenant on orca_monitor.silences (tenant, starts_at desc, id desc)`.execute(db);
    await sql`
      create table if not exists orca_monitor.deliveries (
        id text primary key,
        tenant text not null,
        alert_id text not null,
        rule_id text not null,
        url text not null,
        secret_ref text not null,
        event int not null,
        status int not null,
        attempt_count int not null default 0,
        last_http_status int not null default 0,
        error text not null default '',
        body text not null,
        created_at timestamptz not null default clock_timestamp(),
        last_attempt_at timestamptz,
        next_attempt_at timestamptz,
        completed_at timestamptz,
        lease_until timestamptz
      )`.execute(db);
    await sql`create index if not exists deliveries_due on orca_monitor.deliveries (next_attempt_at) where status in (1, 2)`.execute(db);
    await sql`create index if not exists deliveries_tenant on orca_monitor.deliveries (tenant, created_at desc, id desc)`.execute(db);
    await sql`create index if not exists deliveries_alert on orca_monitor.deliveries (alert_id, created_at desc, id desc)`.execute(db);
  },
};

export const monitorMigrations: Record<string, Migration> = {
  "0001_events": eventLogMigration(),
  "0002_monitor": monitorTables,
};
