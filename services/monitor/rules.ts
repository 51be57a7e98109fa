import { anomalyScore, type EwmaSettings, type TargetStats } from "./stats.js";

/**
 * Alert rule evaluation: plain data in, decisions out (no transport, no DB, no clock of its own).
 * Statuses use the proto enum numbers (HealthStatus) so records map 1:1 to messages.
 */
export const Status = { UNKNOWN: 1, SERVING: 2, NOT_SERVING: 3, UNREACHABLE: 4 } as const;
export const StatusName: Record<number, string> = { 1: "UNKNOWN", 2: "SERVING", 3: "NOT_SERVING", 4: "UNREACHABLE" };

export type RuleCondition =
  | { kind: "status"; statuses: number[] }
  | { kind: "threshold"; metric: "latency"; above: number /* ms */ }
  | { kind: "threshold"; metric: "error_rate"; above: number }
  | { kind: "anomaly"; metric: "latency" | "error_rate"; scoreAbove: number };

export interface RuleRecord {
  id: string;
  tenant: string;
  name: string;
  description: string;
  targetId: string;
  targetSelector: Record<string, string>;
  condition: RuleCondition;
  forMs: number;
  severity: number;
  labels: Record<string, string>;
  groupBy: string[];
  repeatIntervalMs: number;
  destinations: Array<{ url: string; secretRef: string; skipResolved: boolean }>;
  recovery: { workflowName: string; workflowVersion: number; input: Record<string, unknown> } | null;
  createdAt: Date;
}

export interface TargetView {
  id: string;
  tenant: string;
  name: string;
  labels: Record<string, string>;
  status: number;
  stats: TargetStats;
}

export const SEVERITY_NAMES: Record<number, string> = { 1: "info", 2: "warning", 3: "critical" };

/** Does the rule look at this target? */
export function ruleSelects(rule: RuleRecord, target: TargetView): boolean {
  if (rule.tenant !== target.tenant) return false;
  if (rule.targetId) return rule.targetId === target.id;
  return Object.entries(rule.targetSelector).every(([k, v]) => target.labels[k] === v);
}

export interface ConditionResult {
  holds: boolean;
  /** What held (or the current value), for the alert summary. */
  description: string;
}

const ms = (n: number) => `${Math.round(n * 10) / 10}ms`;

export function evaluateCondition(
  condition: RuleCondition,
  target: TargetView,
  settings: { latency: EwmaSettings; errorRate: EwmaSettings },
): ConditionResult {
  switch (condition.kind) {
    case "status": {
      const statuses = condition.statuses.length > 0 ? condition.statuses : [Status.NOT_SERVING, Status.UNREACHABLE];
      return { holds: statuses.includes(target.status), description: `status ${StatusName[target.status] ?? target.status}` };
    }
    case "threshold": {
      if (condition.metric === "latency") {
        const current = target.stats.latency.current;
        return { holds: target.stats.latency.count > 0 && current > condition.above, description: `latency ${ms(current)} > ${ms(condition.above)}` };
      }
      const current = target.stats.errorRate.current;
      return { holds: target.stats.errorRate.count > 0 && current > condition.above, description: `error rate ${current.toFixed(3)} > ${condition.above}` };
    }
    case "anomaly": {
      const state = condition.metric === "latency" ? target.stats.latency : target.stats.errorRate;
      const s = condition.metric === "latency" ? settings.latency : settings.errorRate;
      // anomalyScore is 0 before warm-up, and scoreAbove is positive, so a cold baseline never holds.
      const score = anomalyScore(state, s);
      return { holds: score > condition.scoreAbove, description: `${condition.metric === "latency" ? "latency" : "error rate"} anomaly score ${score.toFixed(2)} > ${condition.scoreAbove}` };
    }
  }
}

/**
 * One evaluation step of a (rule, target) pair, Prometheus-style:
 *  - the condition does not hold: pending is cleared; a FIRING alert resolves;
 *  - it holds and there is a FIRING alert: nothing changes;
 *  - it holds, no alert: pending starts now (if not yet); once it has held for `forMs`, fire.
 */
export type Step = { action: "none" | "fire" | "resolve"; pendingSince: number | null };

export function step(input: { holds: boolean; firing: boolean; pendingSince: number | null; forMs: number; now: number }): Step {
  if (!input.holds) return { action: input.firing ? "resolve" : "none", pendingSince: null };
  if (input.firing) return { action: "none", pendingSince: input.pendingSince ?? input.now };
  const since = input.pendingSince ?? input.now;
  return { action: input.now - since >= input.forMs ? "fire" : "none", pendingSince: since };
}

/** Target labels, then rule labels, then the reserved ones the server sets. */
export function alertLabels(rule: RuleRecord, target: { name: string; labels: Record<string, string> }): Record<string, string> {
  return {
    ...target.labels,
    ...rule.labels,
    alertname: rule.name,
    target: target.name,
    severity: SEVERITY_NAMES[rule.severity] ?? "unknown",
  };
}

/** Canonical `name=value` list of the group_by labels, sorted by name. */
export function groupKey(groupBy: string[], labels: Record<string, string>): string {
  const names = [...new Set(groupBy.length > 0 ? groupBy : ["alertname"])].sort();
  return names.map((n) => `${n}=${labels[n] ?? ""}`).join(",");
}

export interface Matcher {
  name: string;
  value: string;
  /** MatchOperator enum: 1 EQUAL, 2 NOT_EQUAL, 3 REGEX, 4 NOT_REGEX. */
  operator: number;
}

/**
 * JS RegExp stands in for RE2 (no RE2 binding is installed): patterns are anchored, and the
 * constructs RE2 does not have (lookaround, backreferences) are rejected at validation so a
 * silence means the same thing it would in Alertmanager.
 */
export function compileMatcherRegex(value: string): RegExp {
  if (/\(\?<?[=!]|\\[1-9]|\\k</.test(value)) throw new SyntaxError("lookaround and backreferences are not RE2");
  return new RegExp(`^(?:${value})$`, "u");
}

export function matcherMatches(matcher: Matcher, labels: Record<string, string>): boolean {
  const actual = labels[matcher.name] ?? "";
  switch (matcher.operator) {
    case 1:
      return actual === matcher.value;
    case 2:
      return actual !== matcher.value;
    case 3:
      return compileMatcherRegex(matcher.value).test(actual);
    case 4:
      return !compileMatcherRegex(matcher.value).test(actual);
    default:
      return false;
  }
}

export function silenceMatches(matchers: Matcher[], labels: Record<string, string>): boolean {
  return matchers.length > 0 && matchers.every((m) => matcherMatches(m, labels));
}

/** Full-jitter exponential backoff: random in [0, min(cap, base * 2^(attempt-1))]. */
export function backoffMs(attempt: number, baseMs: number, capMs: number, random: () => number = Math.random): number {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.max(0, attempt - 1));
  return Math.floor(random() * ceiling);
}
