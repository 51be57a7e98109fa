import type { Generated } from "kysely";

/** Tables of schema orca_scheduler (see migrations.ts). int8 is bigint, timestamptz is Date. */
export interface SchedulesTable {
  id: string;
  tenant: string;
  name: string;
  cron: string;
  timezone: string;
  dst_skipped: number;
  dst_repeated: number;
  start_at: Date | null;
  end_at: Date | null;
  jitter_ms: Generated<number>;
  overlap: number;
  catchup_ms: bigint | number;
  paused: Generated<boolean>;
  pause_note: Generated<string>;
  paused_at: Generated<Date | null>;
  workflow_name: string;
  workflow_version: Generated<number>;
  input: Generated<unknown>;
  /** Next nominal FIRED time (output field). */
  next_fire_at: Date | null;
  /** Next occurrence of any kind (fired or a SKIPPED_DST record): what the firer waits for. */
  next_check_at: Date | null;
  /** Every occurrence at or before this instant has been materialized (or deliberately passed). */
  cursor_at: Date;
  created_at: Generated<Date>;
  updated_at: Generated<Date>;
  revision: bigint | number;
}

export interface FiringsTable {
  id: string;
  schedule_id: string;
  tenant: string;
  /** Unique per schedule: the instant in Unix ms, `dst-skip/<wall>`, or `manual/<id>`. */
  fire_key: string;
  scheduled_time: Date;
  /** When it may start (scheduled time + jitter, or the next retry). */
  due_at: Date;
  actual_time: Generated<Date | null>;
  run_id: Generated<string>;
  outcome: number;
  kind: number;
  error: Generated<string>;
  cancelled_run_ids: Generated<unknown>;
  /** 0 = the schedule's policy. */
  overlap: Generated<number>;
  /** The started run reached a final state (so it no longer counts for the overlap policy). */
  run_final: Generated<boolean>;
  /** A PENDING firing still failing at this time becomes FAILED. */
  give_up_at: Date;
  created_at: Generated<Date>;
}

export interface TriggersTable {
  id: string;
  tenant: string;
  name: string;
  event_type: string;
  filter: string;
  workflow_name: string;
  workflow_version: number;
  input_mapping: unknown;
  enabled: boolean;
  created_at: Generated<Date>;
}

export interface PublishedEventsTable {
  id: string;
  tenant: string;
  type: string;
  payload: unknown;
  idempotency_key: string;
  published_at: Generated<Date>;
}

export interface DispatchesTable {
  event_id: string;
  trigger_id: string;
  tenant: string;
  state: number;
  run_id: string;
  error: string;
  input: unknown;
  workflow_name: string;
  workflow_version: number;
  next_attempt_at: Date;
  created_at: Generated<Date>;
}

export interface FenceTable {
  id: number;
  token: bigint | number;
}

export interface EventLogTable {
  seq: Generated<bigint>;
  occurred_at: Generated<Date>;
  kind: string;
  subject: string;
  tenant: string;
  payload: unknown;
}

export interface SchedulerTables {
  schedules: SchedulesTable;
  firings: FiringsTable;
  triggers: TriggersTable;
  published_events: PublishedEventsTable;
  trigger_dispatches: DispatchesTable;
  fence: FenceTable;
  events: EventLogTable;
}
