import { create, type JsonObject } from "@bufbuild/protobuf";
import { timestampDate, timestampFromDate, type Duration, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import {
  ProbeSampleSchema,
  StatusChangeSchema,
  type AlertRule,
  type MonitorService,
  type Target,
} from "../../gen/orca/monitor/v1/monitor_pb.js";
import { callInfoKey, callerTenant } from "../kit/call-scope.js";
import { InvalidArgumentError } from "../kit/errors.js";
import type { MonitorConfig } from "./config.js";
import { msDuration, alertMessage, deliveryMessage, healthMessage, ruleMessage, silenceMessage, targetMessage } from "./messages.js";
import { PageTokenError, type Access, type MonitorEngine } from "./monitor.js";
import { compileMatcherRegex, type Matcher, type RuleCondition, type RuleRecord } from "./rules.js";
import type { SecretSource } from "./secrets.js";

/** Thin handlers: validate (naming the proto field), call the engine, map records to messages. */

const bytes = (s: string) => Buffer.byteLength(s, "utf8");
const HOUR = 3_600_000;
const DAY = 24 * HOUR;

function tenantOf(tenant: string): string {
  if (bytes(tenant) > 200) throw new InvalidArgumentError("tenant", "must be at most 200 bytes");
  return tenant === "" ? "default" : tenant;
}

/**
 * Objects addressed by id (targets, rules, alerts) are confined to an end user's token tenant,
 * whatever the roles (an admin of "acme" is still confined to "acme"); others are NotFound.
 * Mesh services and admins of "*" see every tenant.
 */
function access(ctx: HandlerContext): Access {
  const tenant = callerTenant(ctx.values);
  return tenant === undefined ? {} : { tenant: tenantOf(tenant) };
}

function caller(ctx: HandlerContext): string {
  return ctx.values.get(callInfoKey)?.principal?.subject ?? "anonymous";
}

function durationMs(field: string, d: Duration | undefined): number | undefined {
  if (!d) return undefined;
  if (d.seconds < 0n || d.nanos < 0) throw new InvalidArgumentError(field, "must not be negative");
  if (d.nanos > 999_999_999) throw new InvalidArgumentError(field, "nanos must be below 1e9");
  if (d.seconds > 100_000_000n) throw new InvalidArgumentError(field, "is far too large");
  return Number(d.seconds) * 1000 + d.nanos / 1_000_000;
}

function pageSize(value: number): number {
  if (value < 0) throw new InvalidArgumentError("page_size", "must not be negative");
  return value === 0 ? 50 : Math.min(value, 1000);
}

function labelsOf(field: string, labels: Record<string, string>): Record<string, string> {
  const entries = Object.entries(labels);
  if (entries.length > 32) throw new InvalidArgumentError(field, "at most 32 labels");
  for (const [k, v] of entries) {
    if (k === "" || bytes(k) > 200) throw new InvalidArgumentError(field, `label key "${k.slice(0, 40)}" must be 1-200 bytes`);
    if (v === "" || bytes(v) > 200) throw new InvalidArgumentError(field, `value of label "${k}" must be 1-200 bytes`);
  }
  return { ...labels };
}

function httpUrl(field: string, value: string): string {
  if (value === "") throw new InvalidArgumentError(field, "is required: an absolute http(s) URL");
  if (bytes(value) > 2048) throw new InvalidArgumentError(field, "must be at most 2048 bytes");
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new InvalidArgumentError(field, "must be an absolute http(s) URL");
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") throw new InvalidArgumentError(field, "must use http or https");
  return value;
}

const HOST_PORT = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?):(\d{1,5})$/;

export function validateTarget(target: Target | undefined, config: MonitorConfig) {
  if (!target) throw new InvalidArgumentError("target", "is required");
  if (target.name === "" || bytes(target.name) > 200) throw new InvalidArgumentError("target.name", "must be 1-200 bytes");
  const intervalMs = durationMs("target.interval", target.interval) ?? config.defaultIntervalMs;
  if (intervalMs < config.minIntervalMs || intervalMs > HOUR) {
    throw new InvalidArgumentError("target.interval", `must be from ${config.minIntervalMs / 1000} s to 1 h`);
  }
  const timeoutMs = durationMs("target.timeout", target.timeout) ?? Math.min(config.defaultTimeoutMs, intervalMs);
  if (timeoutMs <= 0) throw new InvalidArgumentError("target.timeout", "must be positive");
  if (timeoutMs > intervalMs) throw new InvalidArgumentError("target.timeout", "must not be longer than the interval");
  const probe = target.probe;
  const base = { address: "", service: "", tls: false, url: "", expectedStatus: 0, intervalMs: Math.round(intervalMs), timeoutMs: Math.max(1, Math.round(timeoutMs)) };
  let spec;
  if (probe.case === "grpc") {
    const m = HOST_PORT.exec(probe.value.address);
    if (!m || Number(m[3]) < 1 || Number(m[3]) > 65535) throw new InvalidArgumentError("target.grpc.address", "must be host:port");
    if (bytes(probe.value.service) > 200) throw new InvalidArgumentError("target.grpc.service", "must be at most 200 bytes");
    spec = { ...base, kind: "grpc" as const, address: probe.value.address, service: probe.value.service, tls: probe.value.tls };
  } else if (probe.case === "http") {
    httpUrl("target.http.url", probe.value.url);
    const expected = probe.value.expectedStatus;
    if (expected !== 0 && (expected < 100 || expected > 599)) throw new InvalidArgumentError("target.http.expected_status", "must be 100-599 (0 means 200)");
    spec = { ...base, kind: "http" as const, url: probe.value.url, expectedStatus: expected || 200 };
  } else {
    throw new InvalidArgumentError("target.probe", "is required: set grpc or http");
  }
  return { tenant: tenantOf(target.tenant), name: target.name, probe: spec, labels: labelsOf("target.labels", target.labels) };
}

export function validateRule(rule: AlertRule | undefined, secrets: SecretSource): Omit<RuleRecord, "id" | "createdAt"> {
  if (!rule) throw new InvalidArgumentError("rule", "is required");
  if (rule.name === "" || bytes(rule.name) > 200) throw new InvalidArgumentError("rule.name", "must be 1-200 bytes");
  if (bytes(rule.description) > 1000) throw new InvalidArgumentError("rule.description", "must be at most 1000 bytes");
  let condition: RuleCondition;
  const c = rule.condition;
  if (c.case === "status") {
    if (c.value.statuses.some((s) => s === 0)) throw new InvalidArgumentError("rule.status.statuses", "must not contain HEALTH_STATUS_UNSPECIFIED");
    if (c.value.statuses.some((s) => s < 0 || s > 4)) throw new InvalidArgumentError("rule.status.statuses", "contains an unknown status");
    condition = { kind: "status", statuses: [...new Set(c.value.statuses)] };
  } else if (c.case === "threshold") {
    const t = c.value.threshold;
    if (t.case === "latencyAbove") {
      const ms = durationMs("rule.threshold.latency_above", t.value)!;
      if (ms <= 0) throw new InvalidArgumentError("rule.threshold.latency_above", "must be positive");
      condition = { kind: "threshold", metric: "latency", above: ms };
    } else if (t.case === "errorRateAbove") {
      if (!(t.value > 0 && t.value < 1)) throw new InvalidArgumentError("rule.threshold.error_rate_above", "must be strictly between 0 and 1");
      condition = { kind: "threshold", metric: "error_rate", above: t.value };
    } else throw new InvalidArgumentError("rule.threshold", "is required: set latency_above or error_rate_above");
  } else if (c.case === "anomaly") {
    if (c.value.metric !== 1 && c.value.metric !== 2) throw new InvalidArgumentError("rule.anomaly.metric", "must be LATENCY or ERROR_RATE");
    if (!(c.value.scoreAbove > 0) || !Number.isFinite(c.value.scoreAbove)) throw new InvalidArgumentError("rule.anomaly.score_above", "must be positive");
    condition = { kind: "anomaly", metric: c.value.metric === 1 ? "latency" : "error_rate", scoreAbove: c.value.scoreAbove };
  } else throw new InvalidArgumentError("rule.condition", "is required: set status, threshold or anomaly");
  const forMs = durationMs("rule.for_duration", rule.forDuration) ?? 0;
  if (forMs > DAY) throw new InvalidArgumentError("rule.for_duration", "must be at most 24 h");
  if (rule.severity < 1 || rule.severity > 3) throw new InvalidArgumentError("rule.severity", "is required: INFO, WARNING or CRITICAL");
  const repeatMs = durationMs("rule.repeat_interval", rule.repeatInterval) ?? 0;
  if (rule.repeatInterval && repeatMs < 60_000) throw new InvalidArgumentError("rule.repeat_interval", "must be at least 1 min");
  if (rule.destinations.length > 10) throw new InvalidArgumentError("rule.destinations", "at most 10 destinations");
  const destinations = rule.destinations.map((d, i) => {
    httpUrl(`rule.destinations[${i}].url`, d.url);
    if (d.secretRef === "") throw new InvalidArgumentError(`rule.destinations[${i}].secret_ref`, "is required, e.g. env:ORCA_WEBHOOK_SECRET_OPS");
    if (secrets.resolve(d.secretRef) === undefined) throw new InvalidArgumentError(`rule.destinations[${i}].secret_ref`, `"${d.secretRef}" is unknown to the server's secret source (env:NAME or file:/path)`);
    return { url: d.url, secretRef: d.secretRef, skipResolved: d.skipResolved };
  });
  let recovery: RuleRecord["recovery"] = null;
  if (rule.recovery) {
    if (rule.recovery.workflowName === "") throw new InvalidArgumentError("rule.recovery.workflow_name", "is required");
    if (rule.recovery.workflowVersion < 0) throw new InvalidArgumentError("rule.recovery.workflow_version", "must not be negative");
    recovery = { workflowName: rule.recovery.workflowName, workflowVersion: rule.recovery.workflowVersion, input: (rule.recovery.input ?? {}) as JsonObject };
  }
  if (bytes(rule.targetId) > 200) throw new InvalidArgumentError("rule.target_id", "must be at most 200 bytes");
  for (const g of rule.groupBy) if (g === "" || bytes(g) > 200) throw new InvalidArgumentError("rule.group_by", "entries must be 1-200 bytes");
  return {
    tenant: tenantOf(rule.tenant),
    name: rule.name,
    description: rule.description,
    targetId: rule.targetId,
    targetSelector: labelsOf("rule.target_selector", rule.targetSelector),
    condition,
    forMs,
    severity: rule.severity,
    labels: labelsOf("rule.labels", rule.labels),
    groupBy: rule.groupBy.length > 0 ? [...rule.groupBy] : ["alertname"],
    repeatIntervalMs: repeatMs,
    destinations,
    recovery,
  };
}

function validateMatchers(matchers: Array<{ name: string; value: string; operator: number }>): Matcher[] {
  if (matchers.length === 0 || matchers.length > 20) throw new InvalidArgumentError("matchers", "must have 1 to 20 entries");
  return matchers.map((m, i) => {
    if (m.name === "") throw new InvalidArgumentError(`matchers[${i}].name`, "is required");
    if (m.operator < 1 || m.operator > 4) throw new InvalidArgumentError(`matchers[${i}].operator`, "is required: EQUAL, NOT_EQUAL, REGEX or NOT_REGEX");
    if (bytes(m.value) > 1000) throw new InvalidArgumentError(`matchers[${i}].value`, "must be at most 1000 bytes");
    if (m.operator >= 3) {
      try {
        compileMatcherRegex(m.value);
      } catch (e) {
        throw new InvalidArgumentError(`matchers[${i}].value`, `is not a valid RE2 regular expression: ${e instanceof Error ? e.message : String(e)}`);
      }
    }
    return { name: m.name, value: m.value, operator: m.operator };
  });
}

function required(field: string, value: string): string {
  if (value === "") throw new InvalidArgumentError(field, "is required");
  return value;
}

async function pageTokens<T>(work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (error) {
    if (error instanceof PageTokenError) throw new InvalidArgumentError("page_token", "is invalid (use next_page_token of a previous response)");
    throw error;
  }
}

const sinceOf = (t: Timestamp | undefined) => (t ? timestampDate(t) : undefined);

export function monitorHandlers(engine: MonitorEngine, config: MonitorConfig, secrets: SecretSource): ServiceImpl<typeof MonitorService> {
  const health = (view: Parameters<typeof healthMessage>[0]) => healthMessage(view, engine.settings);
  return {
    async registerTarget(req) {
      const input = validateTarget(req.target, config);
      return { target: targetMessage(await engine.registerTarget(input)) };
    },
    async deregisterTarget(req, ctx) {
      await engine.deregisterTarget(required("id", req.id), access(ctx));
      return {};
    },
    async listTargets(req) {
      const size = pageSize(req.pageSize);
      const page = await pageTokens(() =>
        engine.listTargets({ tenant: tenantOf(req.tenant), kind: req.kind, status: req.status, labels: req.labelSelector, pageSize: size, pageToken: req.pageToken }),
      );
      return { targets: page.items.map(targetMessage), nextPageToken: page.nextPageToken };
    },
    async getHealth(req, ctx) {
      required("target_id", req.targetId);
      if (req.historyLimit < 0) throw new InvalidArgumentError("history_limit", "must not be negative");
      if (req.sampleLimit < 0) throw new InvalidArgumentError("sample_limit", "must not be negative");
      const result = await engine.getHealth(req.targetId, access(ctx), req.historyLimit === 0 ? 50 : Math.min(req.historyLimit, 1000), Math.min(req.sampleLimit, 1000), sinceOf(req.since));
      return {
        health: health(result.health),
        history: result.history.map((h) =>
          create(StatusChangeSchema, { targetId: h.target_id, previousStatus: h.previous_status, status: h.status, changedAt: timestampFromDate(h.changed_at), detail: h.detail }),
        ),
        samples: result.samples.map((s) =>
          create(ProbeSampleSchema, {
            probedAt: timestampFromDate(s.probed_at),
            latency: s.latency_ms === null ? undefined : msDuration(s.latency_ms),
            status: s.status,
            detail: s.detail,
          }),
        ),
      };
    },
    async *watchHealth(req, ctx) {
      req.targetIds.forEach((id, i) => required(`target_ids[${i}]`, id));
      await engine.resolveTargets(req.targetIds, access(ctx));
      for await (const e of engine.watch({ tenant: tenantOf(req.tenant), targetIds: req.targetIds, sendInitial: req.sendInitial, signal: ctx.signal })) {
        yield {
          change: { targetId: e.targetId, previousStatus: e.change.previousStatus, status: e.change.status, changedAt: timestampFromDate(e.change.changedAt), detail: e.change.detail },
          health: health(e.health),
          initial: e.initial,
          deregistered: e.deregistered,
        };
      }
    },
    async createAlertRule(req) {
      const rule = validateRule(req.rule, secrets);
      return { rule: ruleMessage(await engine.createRule(rule)) };
    },
    async deleteAlertRule(req, ctx) {
      await engine.deleteRule(required("id", req.id), access(ctx));
      return {};
    },
    async listAlertRules(req) {
      const size = pageSize(req.pageSize);
      const page = await pageTokens(() => engine.listRules({ tenant: tenantOf(req.tenant), targetId: req.targetId, pageSize: size, pageToken: req.pageToken }));
      return { rules: page.items.map(ruleMessage), nextPageToken: page.nextPageToken };
    },
    async listAlerts(req) {
      const size = pageSize(req.pageSize);
      const page = await pageTokens(() =>
        engine.listAlerts({
          tenant: tenantOf(req.tenant),
          state: req.state,
          ruleId: req.ruleId,
          targetId: req.targetId,
          groupKey: req.groupKey,
          minSeverity: req.minSeverity,
          silenced: req.silenced,
          pageSize: size,
          pageToken: req.pageToken,
        }),
      );
      return { alerts: page.items.map(alertMessage), nextPageToken: page.nextPageToken };
    },
    async silenceAlert(req, ctx) {
      const matchers = validateMatchers(req.matchers);
      const ms = durationMs("duration", req.duration);
      if (ms === undefined || ms <= 0 || ms > 30 * DAY) throw new InvalidArgumentError("duration", "must be more than 0 and at most 30 days");
      if (bytes(req.comment) > 1000) throw new InvalidArgumentError("comment", "must be at most 1000 bytes");
      const row = await engine.createSilence({ tenant: tenantOf(req.tenant), matchers, durationMs: Math.ceil(ms), createdBy: caller(ctx), comment: req.comment });
      return { silence: silenceMessage(row) };
    },
    async listSilences(req) {
      const size = pageSize(req.pageSize);
      const page = await pageTokens(() => engine.listSilences({ tenant: tenantOf(req.tenant), includeExpired: req.includeExpired, pageSize: size, pageToken: req.pageToken }));
      return { silences: page.items.map(silenceMessage), nextPageToken: page.nextPageToken };
    },
    async ackAlert(req, ctx) {
      required("alert_id", req.alertId);
      if (bytes(req.comment) > 1000) throw new InvalidArgumentError("comment", "must be at most 1000 bytes");
      return { alert: alertMessage(await engine.ackAlert(req.alertId, access(ctx), caller(ctx), req.comment)) };
    },
    async listDeliveries(req, ctx) {
      const size = pageSize(req.pageSize);
      const page = await pageTokens(() =>
        engine.listDeliveries({ tenant: tenantOf(req.tenant), alertId: req.alertId, status: req.status, pageSize: size, pageToken: req.pageToken }, access(ctx)),
      );
      return { deliveries: page.items.map(deliveryMessage), nextPageToken: page.nextPageToken };
    },
  };
}
