import type { ColumnType, Generated } from "kysely";

/**
 * Tables of schema orca_lock (see migrations.ts for the why of each column). int8 columns come
 * back as bigint and timestamptz as Date on both Postgres and PGlite.
 */
export interface ResourcesTable {
  tenant: string;
  name: string;
  capacity: number;
  /** Highest fencing token granted on this resource (informational; tokens come from the global sequence). */
  last_token: ColumnType<bigint, bigint | number | undefined, bigint | number>;
  created_at: ColumnType<Date, never, never>;
  updated_at: ColumnType<Date, never, Date>;
}

export interface LeasesTable {
  id: string;
  tenant: string;
  resource: string;
  owner: string;
  token: bigint;
  capacity: number;
  ttl_ms: number;
  granted_at: Date;
  expires_at: Date;
  ended_at: Date | null;
  /** 'released' | 'expired' | 'rolled_back' once ended. */
  end_reason: string | null;
}

export interface WaitersTable {
  id: string;
  seq: Generated<bigint>;
  tenant: string;
  resource: string;
  owner: string;
  priority: number;
  ttl_ms: number;
  replica: string;
  enqueued_at: Date;
  /** enqueued_at - priority * aging_interval: the queue order (earliest first, then seq). */
  sort_key: Date;
  wait_deadline: Date;
  /** Set (in the granting transaction) when a lease was handed to this waiter. */
  lease_id: string | null;
}

export interface ReplicasTable {
  id: string;
  heartbeat_at: Date;
}

export interface EventsTable {
  seq: Generated<bigint>;
  occurred_at: Generated<Date>;
  kind: string;
  subject: string;
  tenant: string;
  payload: unknown;
}

export interface LockTables {
  resources: ResourcesTable;
  leases: LeasesTable;
  waiters: WaitersTable;
  replicas: ReplicasTable;
  events: EventsTable;
}
