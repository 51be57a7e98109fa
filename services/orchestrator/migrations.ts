import { sql, type Migration } from "kysely";
import { eventLogMigration } from "../kit/db/migrations.js";

/**
 * Schema orca_orchestrator. Design (why):
 * - `workflows`: immutable versions; (tenant, name, version) is the key and `digest` (SHA-256 of
 *   the canonical definition) makes a repeated RegisterWorkflow return the latest version.
 * - `runs`: one row per run. The run row is the run's mutex: every transaction that changes a
 *   run or one of its tasks locks it first (`FOR UPDATE`, or `SKIP LOCKED` for claims), which
 *   gives one lock order (run -> tasks) and gap-free event sequences (`last_seq`). Counters
 *   `remaining` (tasks not final) and `active` (tasks claimed or running) make "is the run
 *   done" and "is the run at max_parallelism" O(1), also for 10,000-task fan-outs.
 *   Idempotency keys: a partial UNIQUE index on (tenant, idempotency_key), so two concurrent
 *   StartRuns with one key cannot both insert (the loser reads the winner's run).
 * - `task_runs`: one row per (run, task): status, lease (lease_id/owner/expiry on the DB clock),
 *   dependency counters (`pending_deps`, `deps_ok`) so a task is considered when its last
 *   dependency ends without rescanning its siblings, and the Lock lease it holds.
 *   Internal status STARTING (claimed, not yet attempting: cache probe or Lock wait) is shown
 *   as READY in the API.
 * - `attempts`: one row per try; `lease_id` is the worker's bearer handle; `ended_by` tells a
 *   repeated CompleteTask/FailTask from a lost lease.
 * - `completions`: PRIMARY KEY (run_id, task_id). Recording a success inserts here in the same
 *   transaction as the status change; a second success for the same task (a duplicate delivery,
 *   a zombie executor whose lease lapsed) violates the key and is refused. This is the
 *   exactly-once guarantee, enforced by the database rather than by a check-then-insert.
 * - `run_events`: the run's event log, (run_id, seq) primary key, written in the same
 *   transaction as each change. (The kit's `events` table records workflow registrations;
 *   run and task changes go here only, because this is the sequenced log WatchRun serves and a
 *   second copy would double the write volume of the hot path.)
 */
const S = "orca_orchestrator";

export const orchestratorMigrations: Record<string, Migration> = {
  "0001_events": eventLogMigration(),
  "0002_orchestrator": {
    async up(db) {
      const stmts = [
        `create table if not exists ${S}.workflows (
          tenant text collate "C" not null,
          name text collate "C" not null,
          version integer not null,
          digest text not null,
          definition jsonb not null,
          created_at timestamptz not null default now(),
          primary key (tenant, name, version)
        )`,
        `create table if not exists ${S}.runs (
          id uuid primary key,
          tenant text collate "C" not null,
          workflow_name text collate "C" not null,
          workflow_version integer not null,
          status text not null,
          input jsonb not null,
          input_digest text not null,
          output jsonb,
          idempotency_key text,
          priority integer not null default 0,
          policy jsonb not null default '{}'::jsonb,
          error jsonb,
          max_parallelism integer not null,
          created_at timestamptz not null default now(),
          started_at timestamptz,
          finished_at timestamptz,
          deadline_at timestamptz,
          ending text,
          abort_deadline timestamptz,
          last_seq bigint not null default 0,
          remaining integer not null default 0,
          active integer not null default 0
        )`,
        `create unique index if not exists runs_idempotency on ${S}.runs (tenant, idempotency_key) where idempotency_key is not null`,
        `create index if not exists runs_list on ${S}.runs (tenant, created_at desc, id desc)`,
        `create index if not exists runs_pending on ${S}.runs (created_at) where status = 'PENDING'`,
        `create index if not exists runs_deadline on ${S}.runs (deadline_at) where status in ('RUNNING', 'CANCELLING')`,
        `create index if not exists runs_ending on ${S}.runs (abort_deadline) where ending is not null and status in ('RUNNING', 'CANCELLING')`,
        `create table if not exists ${S}.task_runs (
          run_id uuid not null references ${S}.runs (id) on delete cascade,
          task_id text collate "C" not null,
          idx integer not null,
          tenant text collate "C" not null,
          plugin text not null,
          queue text not null default '',
          status text not null,
          priority integer not null default 0,
          pending_deps integer not null,
          deps_ok integer not null default 0,
          needs_prep boolean not null default false,
          ready_at timestamptz,
          available_at timestamptz,
          s2s_deadline timestamptz,
          attempt_count integer not null default 0,
          lease_id uuid,
          lease_owner text,
          lease_expires_at timestamptz,
          attempt_deadline timestamptz,
          cancel_requested boolean not null default false,
          output jsonb,
          error jsonb,
          finished_at timestamptz,
          cache_key text,
          lock_resource text,
          lock_lease_id text,
          lock_token bigint,
          lock_renew_at timestamptz,
          skip_reason text,
          primary key (run_id, task_id)
        )`,
        `create index if not exists task_runs_ready on ${S}.task_runs (priority desc, available_at) where status = 'READY' and plugin <> 'worker'`,
        `create index if not exists task_runs_queue on ${S}.task_runs (tenant, queue, priority desc, available_at) where status = 'READY' and plugin = 'worker'`,
        `create index if not exists task_runs_prep on ${S}.task_runs (available_at) where status = 'READY' and plugin = 'worker' and needs_prep`,
        `create index if not exists task_runs_leased on ${S}.task_runs (lease_expires_at) where status in ('RUNNING', 'STARTING')`,
        `create index if not exists task_runs_deadline on ${S}.task_runs (attempt_deadline) where status = 'RUNNING'`,
        `create index if not exists task_runs_s2s on ${S}.task_runs (s2s_deadline) where status in ('READY', 'STARTING') and s2s_deadline is not null`,
        `create index if not exists task_runs_running_queue on ${S}.task_runs (tenant, queue) where status = 'RUNNING' and plugin = 'worker'`,
        `create index if not exists task_runs_locks on ${S}.task_runs (lock_renew_at) where lock_lease_id is not null`,
        `create unique index if not exists task_runs_lease on ${S}.task_runs (lease_id) where lease_id is not null`,
        `create table if not exists ${S}.attempts (
          run_id uuid not null,
          task_id text collate "C" not null,
          number integer not null,
          status text not null,
          worker_id text not null default '',
          lease_id uuid unique,
          started_at timestamptz,
          finished_at timestamptz,
          ended_by text,
          error jsonb,
          output jsonb,
          fencing_token bigint not null default 0,
          last_heartbeat_at timestamptz,
          heartbeat_details jsonb,
          primary key (run_id, task_id, number),
          foreign key (run_id, task_id) references ${S}.task_runs (run_id, task_id) on delete cascade
        )`,
        `create table if not exists ${S}.completions (
          run_id uuid not null,
          task_id text collate "C" not null,
          attempt integer not null,
          lease_id uuid,
          recorded_at timestamptz not null default now(),
          primary key (run_id, task_id),
          foreign key (run_id, task_id) references ${S}.task_runs (run_id, task_id) on delete cascade
        )`,
        `create table if not exists ${S}.run_events (
          run_id uuid not null references ${S}.runs (id) on delete cascade,
          seq bigint not null,
          time timestamptz not null default now(),
          type text not null,
          task_id text not null default '',
          attempt integer not null default 0,
          message text not null default '',
          details jsonb not null default '{}'::jsonb,
          primary key (run_id, seq)
        )`,
      ];
      for (const stmt of stmts) await sql.raw(stmt).execute(db);
    },
  },
};
