import { sql, type Migration } from "kysely";
import { eventLogMigration } from "../kit/db/migrations.js";

/**
 * Schema orca_lock. Design (why):
 * - `fencing_tokens` is ONE global bigint sequence. Every grant takes nextval() while holding the
 *   resource row's lock, so per resource the tokens are strictly increasing in grant order, and
 *   they keep increasing across restarts (sequences are durable and never go backwards) and even
 *   if a `resources` row is deleted by hand (the sequence does not live in that row). Gaps are
 *   fine: the contract promises "strictly greater", not "consecutive".
 * - `resources` holds one row per (tenant, name) ever locked: capacity and the highest token
 *   granted (for GetLock). Rows are never deleted by the service (they are tiny); the row is the
 *   per-resource mutex (SELECT ... FOR UPDATE / upsert) that serializes grants across replicas.
 *   Names use the "C" collation so ordering and prefix pagination are bytewise.
 * - `leases`: every grant; live while ended_at is null and expires_at > now() (database clock).
 *   Ended rows are kept (at least 24 h) so Release/Extend can answer EXPIRED/RELEASED, not NOT_FOUND.
 * - `waiters`: the shared queue. All replicas enqueue here; a grant hands a lease to the head
 *   waiter by setting `lease_id` inside the granting transaction, then NOTIFYs the waiter's
 *   replica, which claims it. `wait_deadline` (database clock) and the replica heartbeat in
 *   `replicas` let any replica drop the waiters of a crashed replica.
 */
const S = "orca_lock";

export const lockMigrations: Record<string, Migration> = {
  "0001_events": eventLogMigration(),
  "0002_locks": {
    async up(db) {
      await sql.raw(`create sequence if not exists ${S}.fencing_tokens as bigint start with 1 minvalue 1 no cycle`).execute(db);
      await sql
        .raw(
          `create table if not exists ${S}.resources (
            tenant text collate "C" not null,
            name text collate "C" not null,
            capacity integer not null default 1 check (capacity between 1 and 10000),
            last_token bigint not null default 0,
            created_at timestamptz not null default now(),
            updated_at timestamptz not null default now(),
            primary key (tenant, name)
          )`,
        )
        .execute(db);
      await sql
        .raw(
          `create table if not exists ${S}.leases (
            id uuid primary key,
            tenant text collate "C" not null,
            resource text collate "C" not null,
            owner text not null,
            token bigint not null unique,
            capacity integer not null,
            ttl_ms integer not null,
            granted_at timestamptz not null,
            expires_at timestamptz not null,
            ended_at timestamptz,
            end_reason text
          )`,
        )
        .execute(db);
      await sql.raw(`create index if not exists leases_live on ${S}.leases (tenant, resource, token) where ended_at is null`).execute(db);
      await sql.raw(`create index if not exists leases_expiry on ${S}.leases (expires_at) where ended_at is null`).execute(db);
      await sql.raw(`create index if not exists leases_ended on ${S}.leases (ended_at) where ended_at is not null`).execute(db);
      await sql
        .raw(
          `create table if not exists ${S}.waiters (
            id uuid primary key,
            seq bigserial not null,
            tenant text collate "C" not null,
            resource text collate "C" not null,
            owner text not null,
            priority integer not null,
            ttl_ms integer not null,
            replica text not null,
            enqueued_at timestamptz not null,
            sort_key timestamptz not null,
            wait_deadline timestamptz not null,
            lease_id uuid
          )`,
        )
        .execute(db);
      await sql.raw(`create index if not exists waiters_queue on ${S}.waiters (tenant, resource, sort_key, seq) where lease_id is null`).execute(db);
      await sql.raw(`create index if not exists waiters_replica on ${S}.waiters (replica)`).execute(db);
      await sql
        .raw(`create table if not exists ${S}.replicas (id text primary key, heartbeat_at timestamptz not null default now())`)
        .execute(db);
    },
  },
};
