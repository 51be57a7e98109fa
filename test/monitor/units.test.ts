import { describe, expect, it } from "vitest";
import { readMonitorConfig } from "../../services/monitor/config.js";
import { alertLabels, backoffMs, evaluateCondition, groupKey, matcherMatches, silenceMatches, step, type RuleRecord } from "../../services/monitor/rules.js";
import { signatureHeader } from "../../services/monitor/signing.js";
import { anomalyScore, emptyEwma, emptyStats, foldProbe, foldSample, warmedUp, type EwmaSettings } from "../../services/monitor/stats.js";
import { WebhookVerifier } from "../../services/monitor/verify-webhook.js";

const settings: EwmaSettings = { fastAlpha: 0.3, slowAlpha: 0.05, warmupSamples: 10, stddevFloor: 1 };

describe("EWMA baselines and anomaly score", () => {
  it("scores 0 before warm-up, about 0 on a steady signal, and high after a latency jump", () => {
    let s = emptyEwma();
    for (let i = 0; i < 9; i++) s = foldSample(s, 10 + (i % 2), settings);
    expect(warmedUp(s, settings)).toBe(false);
    expect(anomalyScore(s, settings)).toBe(0);
    for (let i = 0; i < 40; i++) s = foldSample(s, 10 + (i % 2), settings);
    expect(warmedUp(s, settings)).toBe(true);
    expect(Math.abs(anomalyScore(s, settings))).toBeLessThan(1.5);
    for (let i = 0; i < 5; i++) s = foldSample(s, 200, settings);
    expect(anomalyScore(s, settings)).toBeGreaterThan(5);
    expect(s.current).toBeGreaterThan(s.baseline);
  });

  it("keeps the score high while an anomaly lasts (outliers do not widen the spread), then adapts", () => {
    let s = emptyEwma();
    for (let i = 0; i < 50; i++) s = foldSample(s, 10 + (i % 3), settings);
    const spread = Math.sqrt(s.variance);
    const scores: number[] = [];
    for (let i = 0; i < 20; i++) {
      s = foldSample(s, 110, settings);
      scores.push(anomalyScore(s, settings));
    }
    expect(Math.sqrt(s.variance)).toBeCloseTo(spread, 6);
    expect(Math.min(...scores.slice(3))).toBeGreaterThan(10);
    for (let i = 0; i < 5000; i++) s = foldSample(s, 110, settings);
    expect(Math.abs(anomalyScore(s, settings))).toBeLessThan(1);
  });

  it("counts probes without an answer as errors and leaves latency alone", () => {
    let stats = emptyStats();
    stats = foldProbe(stats, { latencyMs: 5, ok: true }, settings, settings);
    stats = foldProbe(stats, { latencyMs: null, ok: false }, settings, settings);
    expect(stats.latency.count).toBe(1);
    expect(stats.errorRate.count).toBe(2);
    expect(stats.consecutiveFailures).toBe(1);
    expect(stats.errorRate.current).toBeGreaterThan(0);
  });
});

describe("rule evaluation", () => {
  it("holds for for_duration before firing, resolves on the first evaluation that does not hold", () => {
    expect(step({ holds: true, firing: false, pendingSince: null, forMs: 1000, now: 0 })).toEqual({ action: "none", pendingSince: 0 });
    expect(step({ holds: true, firing: false, pendingSince: 0, forMs: 1000, now: 999 }).action).toBe("none");
    expect(step({ holds: true, firing: false, pendingSince: 0, forMs: 1000, now: 1000 }).action).toBe("fire");
    expect(step({ holds: false, firing: false, pendingSince: 0, forMs: 1000, now: 500 })).toEqual({ action: "none", pendingSince: null });
    expect(step({ holds: false, firing: true, pendingSince: 0, forMs: 1000, now: 2000 }).action).toBe("resolve");
    expect(step({ holds: true, firing: true, pendingSince: 0, forMs: 0, now: 2000 }).action).toBe("none");
  });

  it("status conditions default to NOT_SERVING and UNREACHABLE; anomaly conditions never hold when cold", () => {
    const view = { id: "t", tenant: "default", name: "a", labels: {}, status: 4, stats: emptyStats() };
    const s = { latency: settings, errorRate: settings };
    expect(evaluateCondition({ kind: "status", statuses: [] }, view, s).holds).toBe(true);
    expect(evaluateCondition({ kind: "status", statuses: [3] }, view, s).holds).toBe(false);
    expect(evaluateCondition({ kind: "anomaly", metric: "error_rate", scoreAbove: 0.1 }, { ...view, stats: foldProbe(emptyStats(), { latencyMs: null, ok: false }, settings, settings) }, s).holds).toBe(false);
  });

  it("builds labels (rule wins, reserved last) and canonical group keys", () => {
    const rule = { name: "down", severity: 3, labels: { team: "ops", target: "spoof" } } as unknown as RuleRecord;
    const labels = alertLabels(rule, { name: "api", labels: { team: "web", zone: "a" } });
    expect(labels).toEqual({ team: "ops", zone: "a", alertname: "down", target: "api", severity: "critical" });
    expect(groupKey(["zone", "alertname"], labels)).toBe("alertname=down,zone=a");
    expect(groupKey([], labels)).toBe("alertname=down");
  });

  it("matches silences with all four operators (regex anchored)", () => {
    const labels = { alertname: "down", target: "api-1" };
    expect(matcherMatches({ name: "target", value: "api-1", operator: 1 }, labels)).toBe(true);
    expect(matcherMatches({ name: "target", value: "api-1", operator: 2 }, labels)).toBe(false);
    expect(matcherMatches({ name: "target", value: "api", operator: 3 }, labels)).toBe(false);
    expect(matcherMatches({ name: "target", value: "api-.*", operator: 3 }, labels)).toBe(true);
    expect(matcherMatches({ name: "target", value: "db-.*", operator: 4 }, labels)).toBe(true);
    expect(matcherMatches({ name: "missing", value: "", operator: 1 }, labels)).toBe(true);
    expect(silenceMatches([{ name: "alertname", value: "down", operator: 1 }, { name: "target", value: "x", operator: 1 }], labels)).toBe(false);
  });

  it("backs off exponentially with full jitter under a cap", () => {
    expect(backoffMs(1, 1000, 300_000, () => 0.999)).toBe(999);
    expect(backoffMs(4, 1000, 300_000, () => 0.5)).toBe(4000);
    expect(backoffMs(30, 1000, 300_000, () => 0.5)).toBe(150_000);
    expect(backoffMs(3, 1000, 300_000, () => 0)).toBe(0);
  });
});

describe("verify helper (WebhookVerifier)", () => {
  const body = JSON.stringify({ deliveryId: "d-1", event: "FIRING", alert: { id: "a" } });
  const now = 1_700_000_000_000;
  const t = Math.floor(now / 1000);
  const headers = (secret: string, id = "d-1", ts = t, b = body) => ({ "orca-signature": signatureHeader(secret, ts, b), "orca-delivery": id, "orca-event": "FIRING" });
  const verifier = () => new WebhookVerifier({ secrets: ["new-secret", "old-secret"], now: () => now });

  const table: Array<{ name: string; run: (v: WebhookVerifier) => ReturnType<WebhookVerifier["verify"]>; ok: boolean; reason?: string }> = [
    { name: "current secret accepted", run: (v) => v.verify({ headers: headers("new-secret"), body }), ok: true },
    { name: "rotated (old) secret accepted", run: (v) => v.verify({ headers: headers("old-secret"), body }), ok: true },
    { name: "wrong secret rejected", run: (v) => v.verify({ headers: headers("wrong"), body }), ok: false, reason: "bad_signature" },
    { name: "old timestamp rejected", run: (v) => v.verify({ headers: headers("new-secret", "d-1", t - 301), body }), ok: false, reason: "stale_timestamp" },
    { name: "future timestamp rejected", run: (v) => v.verify({ headers: headers("new-secret", "d-1", t + 301), body }), ok: false, reason: "stale_timestamp" },
    { name: "tampered body rejected", run: (v) => v.verify({ headers: headers("new-secret"), body: body.replace("FIRING", "RESOLVED") }), ok: false, reason: "bad_signature" },
    {
      name: "replayed delivery rejected",
      run: (v) => {
        expect(v.verify({ headers: headers("new-secret"), body }).ok).toBe(true);
        return v.verify({ headers: headers("new-secret"), body });
      },
      ok: false,
      reason: "replayed",
    },
    { name: "missing signature rejected", run: (v) => v.verify({ headers: { "orca-delivery": "d-1" }, body }), ok: false, reason: "missing_signature" },
    { name: "malformed signature rejected", run: (v) => v.verify({ headers: { "orca-signature": "t=abc,v1=zz", "orca-delivery": "d-1" }, body }), ok: false, reason: "malformed_signature" },
    { name: "missing delivery id rejected", run: (v) => v.verify({ headers: { "orca-signature": signatureHeader("new-secret", t, body) }, body }), ok: false, reason: "missing_delivery_id" },
  ];
  for (const row of table) {
    it(row.name, () => {
      const result = row.run(verifier());
      expect(result.ok).toBe(row.ok);
      if (!result.ok) expect(result.reason).toBe(row.reason);
    });
  }

  it("does not remember ids of rejected requests, and bounds its memory", () => {
    const v = new WebhookVerifier({ secrets: ["new-secret"], now: () => now, maxRemembered: 2 });
    expect(v.verify({ headers: headers("wrong", "x"), body }).ok).toBe(false);
    expect(v.verify({ headers: headers("new-secret", "x"), body }).ok).toBe(true);
    expect(v.verify({ headers: headers("new-secret", "y"), body }).ok).toBe(true);
    const full = v.verify({ headers: headers("new-secret", "z"), body });
    expect(full).toEqual({ ok: false, reason: "replay_cache_full" });
    expect(v.remembered).toBe(2);
  });

  it("forgets ids once their timestamp leaves the window", () => {
    let clock = now;
    const v = new WebhookVerifier({ secrets: ["new-secret"], now: () => clock, maxRemembered: 1 });
    expect(v.verify({ headers: headers("new-secret", "x"), body }).ok).toBe(true);
    clock = now + 302_000;
    expect(v.verify({ headers: headers("new-secret", "y", Math.floor(clock / 1000)), body }).ok).toBe(true);
    expect(v.remembered).toBe(1);
  });
});

describe("config", () => {
  it("names the variable in errors", () => {
    expect(() => readMonitorConfig({ ORCA_MONITOR_EWMA_FAST_ALPHA: "2" })).toThrow(/ORCA_MONITOR_EWMA_FAST_ALPHA/);
    expect(() => readMonitorConfig({ ORCA_MONITOR_MIN_INTERVAL_MS: "500", ORCA_MONITOR_PROBE_INTERVAL_MS: "100" })).toThrow(/ORCA_MONITOR_PROBE_INTERVAL_MS/);
    expect(readMonitorConfig({}).defaultIntervalMs).toBe(10_000);
  });
});
