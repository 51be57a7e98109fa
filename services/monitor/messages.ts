import { create, toJson, type JsonObject, type MessageInitShape } from "@bufbuild/protobuf";
import { create as createMessage } from "@bufbuild/protobuf";
import { DurationSchema, timestampFromDate, type Duration } from "@bufbuild/protobuf/wkt";
import {
  AlertSchema,
  AlertRuleSchema,
  DeliverySchema,
  SilenceSchema,
  TargetHealthSchema,
  TargetSchema,
  type Alert,
  type AlertRule,
  type Delivery,
  type Silence,
  type Target,
  type TargetHealth,
} from "../../gen/orca/monitor/v1/monitor_pb.js";
import type { RuleRecord } from "./rules.js";
import type { AlertsTable, DeliveriesTable, SilencesTable, TargetsTable } from "./schema.js";
import { anomalyScore, stddev, warmedUp, type EwmaSettings, type TargetStats } from "./stats.js";

/**
 * Records (rows and in-memory state) to protobuf messages. Used by the handlers for responses
 * and by the engine for webhook bodies and recovery inputs (proto JSON form of an Alert), so
 * both always show the same thing. No transport here: only protobuf-es message helpers.
 */
type Row<T> = { [K in keyof T]: T[K] extends import("kysely").Generated<infer U> ? U : T[K] };
export type TargetRow = Row<TargetsTable>;
export type AlertRow = Row<AlertsTable>;
export type SilenceRow = Row<SilencesTable>;
export type DeliveryRow = Row<DeliveriesTable>;

/** Milliseconds (fractional allowed) to a Duration with whole nanoseconds. */
export function msDuration(ms: number): Duration {
  const totalNanos = BigInt(Math.round(ms * 1e6));
  return createMessage(DurationSchema, { seconds: totalNanos / 1_000_000_000n, nanos: Number(totalNanos % 1_000_000_000n) });
}
const durationFromMs = msDuration;

const ts = (d: Date | null | undefined) => (d ? timestampFromDate(d) : undefined);

export function targetMessage(row: TargetRow): Target {
  return create(TargetSchema, {
    id: row.id,
    tenant: row.tenant,
    name: row.name,
    kind: row.kind,
    probe:
      row.kind === 1
        ? { case: "grpc", value: { address: row.address, service: row.service, tls: row.tls } }
        : { case: "http", value: { url: row.url, expectedStatus: row.expected_status } },
    interval: durationFromMs(row.interval_ms),
    timeout: durationFromMs(row.timeout_ms),
    labels: row.labels,
    builtin: row.builtin,
    createdAt: ts(row.created_at),
    status: row.status,
  });
}

export interface HealthView {
  targetId: string;
  status: number;
  statusSince: Date;
  detail: string;
  lastProbeAt: Date | null;
  stats: TargetStats;
}

export function healthMessage(view: HealthView, settings: { latency: EwmaSettings; errorRate: EwmaSettings }): TargetHealth {
  const { latency, errorRate } = view.stats;
  return create(TargetHealthSchema, {
    targetId: view.targetId,
    status: view.status,
    statusSince: ts(view.statusSince),
    detail: view.detail,
    lastProbeAt: ts(view.lastProbeAt),
    consecutiveFailures: view.stats.consecutiveFailures,
    latency: {
      last: view.stats.lastLatencyMs === null ? undefined : durationFromMs(view.stats.lastLatencyMs),
      current: latency.count > 0 ? durationFromMs(latency.current) : undefined,
      baseline: latency.count > 0 ? durationFromMs(latency.baseline) : undefined,
      baselineStddev: latency.count > 0 ? durationFromMs(stddev(latency)) : undefined,
      anomalyScore: anomalyScore(latency, settings.latency),
      sampleCount: BigInt(latency.count),
      warmedUp: warmedUp(latency, settings.latency),
    },
    errorRate: {
      current: errorRate.current,
      baseline: errorRate.baseline,
      baselineStddev: stddev(errorRate),
      anomalyScore: anomalyScore(errorRate, settings.errorRate),
      sampleCount: BigInt(errorRate.count),
      warmedUp: warmedUp(errorRate, settings.errorRate),
    },
  });
}

export function ruleMessage(rule: RuleRecord): AlertRule {
  const c = rule.condition;
  const condition: MessageInitShape<typeof AlertRuleSchema>["condition"] =
    c.kind === "status"
      ? { case: "status", value: { statuses: c.statuses } }
      : c.kind === "threshold"
        ? {
            case: "threshold",
            value: { threshold: c.metric === "latency" ? { case: "latencyAbove", value: durationFromMs(c.above) } : { case: "errorRateAbove", value: c.above } },
          }
        : { case: "anomaly", value: { metric: c.metric === "latency" ? 1 : 2, scoreAbove: c.scoreAbove } };
  return create(AlertRuleSchema, {
    id: rule.id,
    tenant: rule.tenant,
    name: rule.name,
    description: rule.description,
    targetId: rule.targetId,
    targetSelector: rule.targetSelector,
    condition,
    forDuration: durationFromMs(rule.forMs),
    severity: rule.severity,
    labels: rule.labels,
    groupBy: rule.groupBy,
    repeatInterval: rule.repeatIntervalMs > 0 ? durationFromMs(rule.repeatIntervalMs) : undefined,
    destinations: rule.destinations,
    recovery: rule.recovery
      ? { workflowName: rule.recovery.workflowName, workflowVersion: rule.recovery.workflowVersion, input: rule.recovery.input as JsonObject }
      : undefined,
    createdAt: ts(rule.createdAt),
  });
}

export function alertMessage(row: AlertRow): Alert {
  return create(AlertSchema, {
    id: row.id,
    tenant: row.tenant,
    ruleId: row.rule_id,
    targetId: row.target_id,
    state: row.state,
    severity: row.severity,
    labels: row.labels,
    groupKey: row.group_key,
    summary: row.summary,
    startedAt: ts(row.started_at),
    resolvedAt: ts(row.resolved_at),
    ackedBy: row.acked_by,
    ackedAt: ts(row.acked_at),
    ackComment: row.ack_comment,
    silenced: row.silenced,
    silenceIds: row.silence_ids,
    recoveryRunId: row.recovery_run_id,
    recoveryError: row.recovery_error,
  });
}

export function alertJson(row: AlertRow): JsonObject {
  return toJson(AlertSchema, alertMessage(row)) as JsonObject;
}

export function silenceMessage(row: SilenceRow): Silence {
  return create(SilenceSchema, {
    id: row.id,
    tenant: row.tenant,
    matchers: row.matchers as Silence["matchers"],
    startsAt: ts(row.starts_at),
    endsAt: ts(row.ends_at),
    createdBy: row.created_by,
    comment: row.comment,
  });
}

export function deliveryMessage(row: DeliveryRow): Delivery {
  return create(DeliverySchema, {
    id: row.id,
    alertId: row.alert_id,
    ruleId: row.rule_id,
    url: row.url,
    event: row.event,
    status: row.status,
    attemptCount: row.attempt_count,
    lastHttpStatus: row.last_http_status,
    error: row.error,
    createdAt: ts(row.created_at),
    lastAttemptAt: ts(row.last_attempt_at),
    nextAttemptAt: row.status === 1 || row.status === 2 ? ts(row.next_attempt_at) : undefined,
    completedAt: ts(row.completed_at),
  });
}
