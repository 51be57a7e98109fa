import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  AlertState,
  DeliveryEvent,
  DeliveryStatus,
  HealthStatus,
  MatchOperator,
  MonitorService,
  Severity,
  AlertMetric,
} from "../../gen/orca/monitor/v1/monitor_pb.js";
import { EchoService } from "../../gen/orca/testing/v1/echo_pb.js";
import { createMonitorModule } from "../../services/monitor/index.js";
import type { RecoveryRequest, RecoveryStarter } from "../../services/monitor/recovery.js";
import { WebhookVerifier } from "../../services/monitor/verify-webhook.js";
import { startServiceHarness, type ServiceHarness } from "../support/service-harness.js";
import { FAST_ENV, expectCode, openTestDatabase, setEnv, startReceiver, startSlowHttpTarget, startTargetServer, waitFor } from "./support.js";

/** In-memory fake of the Orchestrator's StartRun: fails the first call, then dedupes by key like the real one. */
class FakeRecoveryStarter implements RecoveryStarter {
  readonly calls: RecoveryRequest[] = [];
  readonly runs = new Map<string, string>();
  failNext = 1;
  async start(request: RecoveryRequest): Promise<string> {
    this.calls.push(request);
    if (this.failNext > 0) {
      this.failNext--;
      throw new Error("orchestrator StartRun: Unavailable: fake outage");
    }
    const existing = this.runs.get(request.idempotencyKey);
    if (existing) return existing;
    const id = `run-${this.runs.size + 1}`;
    this.runs.set(request.idempotencyKey, id);
    return id;
  }
}

describe("Monitor service (real gRPC, real targets)", () => {
  let db: Awaited<ReturnType<typeof openTestDatabase>>;
  let harness: ServiceHarness;
  let client: Client<typeof MonitorService>;
  let restoreEnv: () => void;
  const fake = new FakeRecoveryStarter();

  beforeAll(async () => {
    restoreEnv = setEnv(FAST_ENV);
    db = await openTestDatabase();
    harness = await startServiceHarness(createMonitorModule({ recovery: fake }), { database: db.database });
    client = harness.client(MonitorService);
  });

  afterAll(async () => {
    await harness?.stop();
    await db?.cleanup();
    restoreEnv?.();
  });

  const destination = (url: string) => ({ url, secretRef: "env:ORCA_WEBHOOK_SECRET_TEST" });

  it("a gRPC target that goes down and comes back: FIRING then RESOLVED, signed deliveries, history, WatchHealth", async () => {
    const receiver = await startReceiver();
    let target = await startTargetServer();
    const { target: registered } = await client.registerTarget({
      target: { name: "echo-updown", probe: { case: "grpc", value: { address: `127.0.0.1:${target.port}` } }, labels: { team: "core" } },
    });
    expect(registered!.kind).toBe(1);
    const { rule } = await client.createAlertRule({
      rule: {
        name: "echo-down",
        targetId: registered!.id,
        condition: { case: "status", value: {} },
        forDuration: durationFromMs(100),
        severity: Severity.CRITICAL,
        labels: { page: "yes" },
        groupBy: ["team"],
        destinations: [destination(receiver.url)],
      },
    });
    await waitFor("SERVING", async () => (await client.getHealth({ targetId: registered!.id })).health?.status === HealthStatus.SERVING);

    // Watch from here on.
    const watchAbort = new AbortController();
    const seen: HealthStatus[] = [];
    const watching = (async () => {
      try {
        for await (const e of createClient(MonitorService, createGrpcTransport({ baseUrl: harness.url })).watchHealth(
          { targetIds: [registered!.id], sendInitial: true },
          { signal: watchAbort.signal },
        )) {
          seen.push(e.change!.status);
        }
      } catch {
        // aborted
      }
    })();

    await waitFor("initial watch event", () => seen.length >= 1);
    expect(seen[0]).toBe(HealthStatus.SERVING);
    await target.server.shutdown();
    const firing = await waitFor("FIRING", async () => (await client.listAlerts({ ruleId: rule!.id, state: AlertState.FIRING })).alerts[0]);
    expect(firing.labels).toMatchObject({ alertname: "echo-down", target: "echo-updown", severity: "critical", team: "core", page: "yes" });
    expect(firing.groupKey).toBe("team=core");

    target = await startTargetServer(target.port);
    const resolved = await waitFor("RESOLVED", async () => {
      const a = (await client.listAlerts({ ruleId: rule!.id })).alerts.find((x) => x.id === firing.id);
      return a?.state === AlertState.RESOLVED ? a : undefined;
    });
    expect(resolved.resolvedAt).toBeDefined();

    const deliveries = await waitFor("two succeeded deliveries", async () => {
      const d = (await client.listDeliveries({ alertId: firing.id })).deliveries;
      return d.length === 2 && d.every((x) => x.status === DeliveryStatus.SUCCEEDED) ? d : undefined;
    });
    expect(deliveries.map((d) => d.event).sort()).toEqual([DeliveryEvent.FIRING, DeliveryEvent.RESOLVED]);
    // What the receiver got verifies with the exported helper, in order FIRING then RESOLVED.
    const verifier = new WebhookVerifier({ secrets: ["s3cret-current"] });
    const events = receiver.received.map((r) => {
      const v = verifier.verify({ headers: r.headers, body: r.body });
      expect(v.ok).toBe(true);
      return JSON.parse(r.body.toString()) as { event: string; alert: { id: string; state: string } };
    });
    expect(events.map((e) => e.event)).toEqual(["FIRING", "RESOLVED"]);
    expect(events[0].alert.id).toBe(firing.id);
    expect(events[1].alert.state).toBe("ALERT_STATE_RESOLVED");

    await waitFor("watch saw SERVING again", () => seen.filter((s) => s === HealthStatus.SERVING).length >= 2);
    expect(seen).toContain(HealthStatus.UNREACHABLE);
    watchAbort.abort();
    await watching;

    const health = await client.getHealth({ targetId: registered!.id, sampleLimit: 5 });
    expect(health.history.map((h) => h.status)).toContain(HealthStatus.UNREACHABLE);
    expect(health.samples.length).toBe(5);
    expect(health.health!.errorRate!.sampleCount).toBeGreaterThan(0n);

    await client.deleteAlertRule({ id: rule!.id });
    await client.deregisterTarget({ id: registered!.id });
    await target.server.shutdown();
    await receiver.close();
  });

  it("a draining server (shutdown started, in-flight call held) is seen as NOT_SERVING", async () => {
    const target = await startTargetServer(0, 5_000);
    const { target: registered } = await client.registerTarget({ target: { name: "echo-drain", probe: { case: "grpc", value: { address: `127.0.0.1:${target.port}` } } } });
    await waitFor("SERVING", async () => (await client.getHealth({ targetId: registered!.id })).health?.status === HealthStatus.SERVING);
    const echo = createClient(EchoService, createGrpcTransport({ baseUrl: target.url }));
    const inFlight = echo.echo({ delayMs: 1500 }).catch(() => undefined);
    await new Promise((r) => setTimeout(r, 50));
    const shuttingDown = target.server.shutdown();
    const drained = await waitFor("NOT_SERVING while draining", async () => {
      const h = await client.getHealth({ targetId: registered!.id });
      return h.health?.status === HealthStatus.NOT_SERVING ? h : undefined;
    });
    expect(drained.history[0].status).toBe(HealthStatus.NOT_SERVING);
    expect(drained.history[0].detail).toContain("NOT_SERVING");
    await inFlight;
    await shuttingDown;
    await client.deregisterTarget({ id: registered!.id });
  });

  it("injected latency raises the anomaly score and fires its anomaly rule", async () => {
    const slow = await startSlowHttpTarget();
    const receiver = await startReceiver();
    const { target: registered } = await client.registerTarget({
      // The timeout must exceed the injected delay: a probe that times out has no latency (it is UNREACHABLE).
      target: { name: "http-slow", probe: { case: "http", value: { url: slow.url } }, interval: durationFromMs(150), timeout: durationFromMs(140) },
    });
    const { rule } = await client.createAlertRule({
      rule: {
        name: "slow-anomaly",
        targetId: registered!.id,
        condition: { case: "anomaly", value: { metric: AlertMetric.LATENCY, scoreAbove: 4 } },
        severity: Severity.WARNING,
        destinations: [destination(receiver.url)],
      },
    });
    // Warmed up and settled (the first probes of a fresh connection are slow; wait for the spread to shrink).
    await waitFor(
      "warmed up and settled",
      async () => {
        const l = (await client.getHealth({ targetId: registered!.id })).health?.latency;
        return l?.warmedUp && Math.abs(l.anomalyScore) < 2 && Number(l.baselineStddev?.nanos ?? 0) < 10_000_000;
      },
      20_000,
    );
    const before = (await client.getHealth({ targetId: registered!.id })).health!.latency!;
    expect((await client.listAlerts({ ruleId: rule!.id })).alerts).toHaveLength(0);
    slow.state.delayMs = 100;
    const alert = await waitFor("anomaly alert FIRING", async () => (await client.listAlerts({ ruleId: rule!.id, state: AlertState.FIRING })).alerts[0], 15_000);
    const after = (await client.getHealth({ targetId: registered!.id })).health!.latency!;
    expect(after.anomalyScore).toBeGreaterThan(before.anomalyScore);
    expect(after.anomalyScore).toBeGreaterThan(4);
    expect(alert.summary).toContain("anomaly score");
    await waitFor("FIRING delivered", () => receiver.received.length >= 1);
    await client.deleteAlertRule({ id: rule!.id });
    await client.deregisterTarget({ id: registered!.id });
    await slow.close();
    await receiver.close();
  });

  it("a silence suppresses delivery (recorded SUPPRESSED, nothing sent)", async () => {
    const receiver = await startReceiver();
    const { silence } = await client.silenceAlert({
      matchers: [{ name: "alertname", value: "silenced-.*", operator: MatchOperator.REGEX }],
      duration: durationFromMs(60_000),
      comment: "maintenance",
    });
    expect(silence!.endsAt).toBeDefined();
    const { target: registered } = await client.registerTarget({ target: { name: "dead-silenced", probe: { case: "grpc", value: { address: "127.0.0.1:1" } } } });
    const { rule } = await client.createAlertRule({
      rule: { name: "silenced-down", targetId: registered!.id, condition: { case: "status", value: {} }, severity: Severity.INFO, destinations: [destination(receiver.url)] },
    });
    const alert = await waitFor("silenced alert", async () => (await client.listAlerts({ ruleId: rule!.id, state: AlertState.FIRING })).alerts[0]);
    expect(alert.silenced).toBe(true);
    expect(alert.silenceIds).toEqual([silence!.id]);
    const deliveries = await waitFor("suppressed delivery", async () => (await client.listDeliveries({ alertId: alert.id })).deliveries[0]);
    expect(deliveries.status).toBe(DeliveryStatus.SUPPRESSED);
    await new Promise((r) => setTimeout(r, 300));
    expect(receiver.received).toHaveLength(0);
    expect((await client.listAlerts({ silenced: true, ruleId: rule!.id })).alerts).toHaveLength(1);
    await client.deleteAlertRule({ id: rule!.id });
    await client.deregisterTarget({ id: registered!.id });
    await receiver.close();
  });

  it("a webhook receiver that is down gets retries, then a recorded failure", async () => {
    const receiver = await startReceiver(() => 503);
    const { target: registered } = await client.registerTarget({ target: { name: "dead-retry", probe: { case: "grpc", value: { address: "127.0.0.1:1" } } } });
    const { rule } = await client.createAlertRule({
      rule: { name: "retry-down", targetId: registered!.id, condition: { case: "status", value: {} }, severity: Severity.WARNING, destinations: [destination(receiver.url)] },
    });
    const alert = await waitFor("alert", async () => (await client.listAlerts({ ruleId: rule!.id })).alerts[0]);
    const failed = await waitFor("FAILED delivery", async () => {
      const d = (await client.listDeliveries({ alertId: alert.id })).deliveries[0];
      return d?.status === DeliveryStatus.FAILED ? d : undefined;
    });
    expect(failed.attemptCount).toBe(3);
    expect(failed.lastHttpStatus).toBe(503);
    expect(failed.error).toContain("503");
    expect(failed.completedAt).toBeDefined();
    expect(receiver.received).toHaveLength(3);
    // Every attempt carries the same delivery id, signed anew.
    expect(new Set(receiver.received.map((r) => r.headers["orca-delivery"]))).toEqual(new Set([failed.id]));
    // A receiver that is not listening at all: network errors are retried too.
    await receiver.close();
    await client.deleteAlertRule({ id: rule!.id });
    const resolved = await waitFor("RESOLVED delivery failed", async () => {
      const d = (await client.listDeliveries({ alertId: alert.id })).deliveries.find((x) => x.event === DeliveryEvent.RESOLVED);
      return d?.status === DeliveryStatus.FAILED ? d : undefined;
    });
    expect(resolved.attemptCount).toBe(3);
    expect(resolved.lastHttpStatus).toBe(0);
    await client.deregisterTarget({ id: registered!.id });
  });

  it("a recovery workflow is started exactly once per firing (fake orchestrator, first call fails)", async () => {
    const { target: registered } = await client.registerTarget({ target: { name: "dead-recovery", probe: { case: "grpc", value: { address: "127.0.0.1:1" } } } });
    const { rule } = await client.createAlertRule({
      rule: {
        name: "recover-down",
        targetId: registered!.id,
        condition: { case: "status", value: {} },
        severity: Severity.CRITICAL,
        recovery: { workflowName: "restart-service", input: { reason: "probe", alert: "replaced" } },
      },
    });
    const alert = await waitFor("recovery run id", async () => {
      const a = (await client.listAlerts({ ruleId: rule!.id })).alerts[0];
      return a?.recoveryRunId ? a : undefined;
    });
    // Keep probing for a while: still exactly one run for this firing.
    await new Promise((r) => setTimeout(r, 500));
    const calls = fake.calls.filter((c) => c.workflowName === "restart-service");
    expect(calls.length).toBe(2); // the failed first attempt, then the successful retry
    expect(new Set(calls.map((c) => c.idempotencyKey))).toEqual(new Set([`orca-alert/${alert.id}`]));
    expect(fake.runs.size).toBe(1);
    expect(calls[1].input).toMatchObject({ reason: "probe", alert: { id: alert.id, state: "ALERT_STATE_FIRING" } });
    expect(alert.recoveryRunId).toBe("run-1");
    expect((await client.listAlerts({ ruleId: rule!.id })).alerts).toHaveLength(1);
    await client.deleteAlertRule({ id: rule!.id });
    await client.deregisterTarget({ id: registered!.id });
  });

  it("acks keep the first acknowledgement", async () => {
    const alerts = (await client.listAlerts({})).alerts;
    expect(alerts.length).toBeGreaterThan(0);
    const first = await client.ackAlert({ alertId: alerts[0].id, comment: "on it" });
    expect(first.alert!.ackedBy).not.toBe("");
    const again = await client.ackAlert({ alertId: alerts[0].id, comment: "second" });
    expect(again.alert!.ackComment).toBe("on it");
  });

  it("bad input: INVALID_ARGUMENT naming the field, NOT_FOUND, ALREADY_EXISTS; stored state unchanged", async () => {
    const before = (await client.listTargets({})).targets.length;
    const rulesBefore = (await client.listAlertRules({})).rules.length;
    const grpc = (address: string) => ({ case: "grpc" as const, value: { address } });
    await expectCode(client.registerTarget({ target: { name: "", probe: grpc("a:1") } }), Code.InvalidArgument, "target.name");
    await expectCode(client.registerTarget({ target: { name: "x" } }), Code.InvalidArgument, "target.probe");
    await expectCode(client.registerTarget({ target: { name: "x", probe: grpc("nohost") } }), Code.InvalidArgument, "target.grpc.address");
    await expectCode(client.registerTarget({ target: { name: "x", probe: { case: "http", value: { url: "ftp://x" } } } }), Code.InvalidArgument, "target.http.url");
    await expectCode(client.registerTarget({ target: { name: "x", probe: { case: "http", value: { url: "http://x", expectedStatus: 700 } } } }), Code.InvalidArgument, "target.http.expected_status");
    await expectCode(client.registerTarget({ target: { name: "x", probe: grpc("a:1"), interval: durationFromMs(2 * 3_600_000) } }), Code.InvalidArgument, "target.interval");
    await expectCode(client.registerTarget({ target: { name: "x", probe: grpc("a:1"), interval: durationFromMs(100), timeout: durationFromMs(200) } }), Code.InvalidArgument, "target.timeout");
    await expectCode(client.registerTarget({ target: { name: "x", probe: grpc("a:1"), labels: { k: "" } } }), Code.InvalidArgument, "target.labels");
    const { target } = await client.registerTarget({ target: { name: "dup", probe: grpc("127.0.0.1:1") } });
    await expectCode(client.registerTarget({ target: { name: "dup", probe: grpc("127.0.0.1:1") } }), Code.AlreadyExists);

    const base = { name: "r", condition: { case: "status" as const, value: {} }, severity: Severity.INFO };
    await expectCode(client.createAlertRule({ rule: { ...base, name: "" } }), Code.InvalidArgument, "rule.name");
    await expectCode(client.createAlertRule({ rule: { ...base, condition: { case: undefined } } }), Code.InvalidArgument, "rule.condition");
    await expectCode(client.createAlertRule({ rule: { ...base, condition: { case: "status", value: { statuses: [0] } } } }), Code.InvalidArgument, "rule.status.statuses");
    await expectCode(client.createAlertRule({ rule: { ...base, condition: { case: "threshold", value: { threshold: { case: "errorRateAbove", value: 1 } } } } }), Code.InvalidArgument, "rule.threshold.error_rate_above");
    await expectCode(client.createAlertRule({ rule: { ...base, condition: { case: "anomaly", value: { metric: 0, scoreAbove: 3 } } } }), Code.InvalidArgument, "rule.anomaly.metric");
    await expectCode(client.createAlertRule({ rule: { ...base, severity: 0 } }), Code.InvalidArgument, "rule.severity");
    await expectCode(client.createAlertRule({ rule: { ...base, forDuration: durationFromMs(25 * 3_600_000) } }), Code.InvalidArgument, "rule.for_duration");
    await expectCode(client.createAlertRule({ rule: { ...base, repeatInterval: durationFromMs(1000) } }), Code.InvalidArgument, "rule.repeat_interval");
    await expectCode(client.createAlertRule({ rule: { ...base, destinations: [{ url: "http://x", secretRef: "env:ORCA_NOT_SET_ANYWHERE" }] } }), Code.InvalidArgument, "rule.destinations[0].secret_ref");
    await expectCode(client.createAlertRule({ rule: { ...base, destinations: [{ url: "nope", secretRef: "env:ORCA_WEBHOOK_SECRET_TEST" }] } }), Code.InvalidArgument, "rule.destinations[0].url");
    await expectCode(client.createAlertRule({ rule: { ...base, recovery: { workflowName: "" } } }), Code.InvalidArgument, "rule.recovery.workflow_name");
    await expectCode(client.createAlertRule({ rule: { ...base, targetId: "00000000-0000-0000-0000-000000000000" } }), Code.NotFound);

    await expectCode(client.silenceAlert({ matchers: [], duration: durationFromMs(1000) }), Code.InvalidArgument, "matchers");
    await expectCode(client.silenceAlert({ matchers: [{ name: "a", value: "(", operator: MatchOperator.REGEX }], duration: durationFromMs(1000) }), Code.InvalidArgument, "matchers[0].value");
    await expectCode(client.silenceAlert({ matchers: [{ name: "a", value: "x", operator: 0 }], duration: durationFromMs(1000) }), Code.InvalidArgument, "matchers[0].operator");
    await expectCode(client.silenceAlert({ matchers: [{ name: "a", value: "x", operator: 1 }] }), Code.InvalidArgument, "duration");

    await expectCode(client.getHealth({ targetId: "" }), Code.InvalidArgument, "target_id");
    await expectCode(client.getHealth({ targetId: target!.id, historyLimit: -1 }), Code.InvalidArgument, "history_limit");
    await expectCode(client.getHealth({ targetId: "nope" }), Code.NotFound);
    await expectCode(client.listTargets({ pageSize: -1 }), Code.InvalidArgument, "page_size");
    await expectCode(client.listAlerts({ pageToken: "garbage" }), Code.InvalidArgument, "page_token");
    await expectCode(client.ackAlert({ alertId: "" }), Code.InvalidArgument, "alert_id");
    await expectCode(client.ackAlert({ alertId: "nope" }), Code.NotFound);
    await expectCode(client.listDeliveries({ alertId: "nope" }), Code.NotFound);
    await expectCode(client.deregisterTarget({ id: "" }), Code.InvalidArgument, "id");
    await expectCode(client.deleteAlertRule({ id: "nope" }), Code.NotFound);

    expect((await client.listTargets({})).targets.length).toBe(before + 1);
    expect((await client.listAlertRules({})).rules.length).toBe(rulesBefore);
    await client.deregisterTarget({ id: target!.id });
    await expectCode(client.deregisterTarget({ id: target!.id }), Code.NotFound);
    expect((await client.listTargets({})).targets.length).toBe(before);
  });
});

describe("Monitor builtin targets", () => {
  it("registers the mesh's six services at start; they cannot be deregistered; pagination by name", async () => {
    const restore = setEnv({ ...FAST_ENV, ORCA_MONITOR_BUILTIN_TARGETS: "1", ORCA_MONITOR_PROBE_INTERVAL_MS: "1000" });
    const db = await openTestDatabase();
    const harness = await startServiceHarness(createMonitorModule({ recovery: new FakeRecoveryStarter() }), { database: db.database });
    try {
      const client = harness.client(MonitorService);
      const first = await client.listTargets({ pageSize: 4 });
      const second = await client.listTargets({ pageSize: 4, pageToken: first.nextPageToken });
      const names = [...first.targets, ...second.targets].map((t) => t.name);
      expect(names).toEqual(["orca-cache", "orca-lock", "orca-monitor", "orca-orchestrator", "orca-policy", "orca-scheduler"]);
      expect(second.nextPageToken).toBe("");
      expect(first.targets.every((t) => t.builtin)).toBe(true);
      await expectCode(client.deregisterTarget({ id: first.targets[0].id }), Code.FailedPrecondition);
    } finally {
      await harness.stop();
      await db.cleanup();
      restore();
    }
  });
});
