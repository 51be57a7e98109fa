import type { ColumnType, Generated } from "kysely";

/** Table types of schema orca_policy (see migrations.ts). int8 is bigint, timestamptz is Date on both backends. */

export type BundleStatusText = "validating" | "rejected" | "ready" | "active" | "retired";

export interface BundlesTable {
  tenant: string;
  name: string;
  version: bigint;
  engine: "cedar" | "opa_wasm";
  status: BundleStatusText;
  content: Uint8Array;
  cedar_schema: string;
  entrypoint: string;
  /** TestCase[] as stored JSON ({name,input,expected_decision,expected_divert_target}). */
  tests: ColumnType<unknown, string, string>;
  /** BundleFailure[] as stored JSON. */
  failures: ColumnType<unknown, string, string>;
  digest: string;
  created_at: ColumnType<Date, never, never>;
  activated_at: ColumnType<Date | null, never, never>;
  created_by: string;
}

/** The activation history Rollback pops: one row per activation still on the stack. */
export interface ActivationsTable {
  tenant: string;
  name: string;
  position: number;
  version: bigint;
  activated_at: ColumnType<Date, never, never>;
}

/** The shadow setting of a bundle and the merged counters of its current report. */
export interface ShadowsTable {
  tenant: string;
  name: string;
  /** 0 = cleared. */
  version: bigint;
  sample_rate: number;
  report_id: string;
  active_version: bigint;
  started_at: ColumnType<Date, never, never>;
  evaluated: ColumnType<bigint, never, never>;
  agreements: ColumnType<bigint, never, never>;
  disagreements: ColumnType<bigint, never, never>;
  shadow_errors: ColumnType<bigint, never, never>;
}

export interface ShadowPairsTable {
  report_id: string;
  active: string;
  shadow: string;
  count: bigint;
}

export interface ShadowExamplesTable {
  id: Generated<bigint>;
  report_id: string;
  agreed: boolean;
  decided_at: Date;
  input: ColumnType<unknown, string, string>;
  active: ColumnType<unknown, string, string>;
  shadow: ColumnType<unknown, string, string>;
}

export interface EventsTable {
  seq: Generated<bigint>;
  occurred_at: ColumnType<Date, never, never>;
  kind: string;
  subject: string;
  tenant: string;
  payload: ColumnType<unknown, string, string>;
}

export interface PolicyTables {
  bundles: BundlesTable;
  activations: ActivationsTable;
  shadows: ShadowsTable;
  shadow_pairs: ShadowPairsTable;
  shadow_examples: ShadowExamplesTable;
  events: EventsTable;
}
