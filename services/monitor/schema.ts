import type { Generated } from "kysely";

/** Tables of schema orca_monitor (see migrations.ts). int8 is bigint, timestamptz is Date. */
export interface TargetsTable {
  id: string;
  tenant: string;
  name: string;
  kind: number;
  address: string;
  service: string;
  tls: boolean;
  url: string;
  expected_status: number;
  interval_ms: number;
  timeout_ms: number;
  labels: Record<string, string>;
  builtin: boolean;
  created_at: Generated<Date>;
  status: number;
  status_since: Generated<Date>;
  detail: string;
  last_probe_at: Date | null;
  /** TargetStats (stats.ts) as JSON. */
  stats: unknown;
}

export interface StatusChangesTable {
  seq: Generated<bigint>;
  target_id: string;
  previous_status: number;
  status: number;
  changed_at: Generated<Date>;
  detail: string;
}

export interface ProbeSamplesTable {
  seq: Generated<bigint>;
  target_id: string;
  probed_at: Generated<Date>;
  latency_ms: number | null;
  status: number;
  detail: string;
}

export interface RulesTable {
  id: string;
  tenant: string;
  name: string;
  target_id: string;
  /** The rest of RuleRecord (rules.ts) as JSON. */
  spec: unknown;
  created_at: Generated<Date>;
}

export interface AlertsTable {
  id: string;
  tenant: string;
  rule_id: string;
  target_id: string;
  state: number;
  severity: number;
  labels: Record<string, string>;
  group_key: string;
  summary: string;
  started_at: Generated<Date>;
  resolved_at: Date | null;
  acked_by: string;
  acked_at: Date | null;
  ack_comment: string;
  silenced: boolean;
  silence_ids: string[];
  /** True once the FIRING notification (deliveries + recovery) went out unsilenced. */
  notified: boolean;
  last_notified_at: Date | null;
  recovery_run_id: string;
  recovery_error: string;
  recovery_attempts: number;
  recovery_next_at: Date | null;
}

export interface SilencesTable {
  id: string;
  tenant: string;
  matchers: unknown;
  starts_at: Generated<Date>;
  ends_at: Date;
  created_by: string;
  comment: string;
}

export interface DeliveriesTable {
  id: string;
  tenant: string;
  alert_id: string;
  rule_id: string;
  url: string;
  secret_ref: string;
  event: number;
  status: number;
  attempt_count: number;
  last_http_status: number;
  error: string;
  body: string;
  created_at: Generated<Date>;
  last_attempt_at: Date | null;
  next_attempt_at: Date | null;
  completed_at: Date | null;
  /** A sender owns the delivery until then (another replica may take it after a crash). */
  lease_until: Date | null;
}

export interface EventsTable {
  seq: Generated<bigint>;
  occurred_at: Generated<Date>;
  kind: string;
  subject: string;
  tenant: string;
  payload: unknown;
}

export interface MonitorTables {
  targets: TargetsTable;
  status_changes: StatusChangesTable;
  probe_samples: ProbeSamplesTable;
  rules: RulesTable;
  alerts: AlertsTable;
  silences: SilencesTable;
  deliveries: DeliveriesTable;
  events: EventsTable;
}
