import type { ColumnType, Generated } from "kysely";

/** Tables of schema orca_cache (see migrations.ts). */
export interface EntriesTable {
  tenant: string;
  namespace: string;
  key: string;
  value: Uint8Array;
  content_type: string;
  tags: string[];
  /** Bumped from a sequence on every write and delete: orders writes across replicas (L1/L2 keep the newest). */
  version: ColumnType<bigint, bigint | undefined, bigint>;
  stored_at: ColumnType<Date, Date | string | undefined, Date | string>;
  /** End of the TTL: fresh before, stale (servable within the namespace's windows) after. */
  expires_at: ColumnType<Date, Date | string, Date | string>;
  /** expires_at + the namespace's largest stale window at write time; the purge deletes rows past it. */
  stale_until: ColumnType<Date, Date | string, Date | string>;
  created_at: ColumnType<Date, Date | string | undefined, never>;
  updated_at: ColumnType<Date, Date | string | undefined, Date | string>;
}

export interface EventsTable {
  seq: Generated<bigint>;
  occurred_at: ColumnType<Date, Date | string | undefined, never>;
  kind: string;
  subject: string;
  tenant: string;
  payload: unknown;
}

export interface CacheTables {
  entries: EntriesTable;
  events: EventsTable;
}
