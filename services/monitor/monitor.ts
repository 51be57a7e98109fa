import { randomUUID } from "node:crypto";
import { EventEmitter } from "node:events";
import type { JsonObject } from "@bufbuild/protobuf";
import { sql, type Kysely, type Transaction } from "kysely";
import type { Database } from "../kit/db/database.js";
import { AlreadyExistsError, FailedPreconditionError, NotFoundError, ResourceExhaustedError } from "../kit/errors.js";
import type { Logger } from "../kit/telemetry/logger.js";
import type { MonitorConfig } from "./config.js";
import { alertJson, type AlertRow, type DeliveryRow, type HealthView, type SilenceRow, type TargetRow } from "./messages.js";
import { TargetProber, type ProbeResult, type ProbeSpec } from "./probes.js";
import { recoveryKey, type RecoveryStarter } from "./recovery.js";
import {
  alertLabels,
  backoffMs,
  evaluateCondition,
  groupKey,
  ruleSelects,
  silenceMatches,
  step,
  Status,
  StatusName,
  type Matcher,
  type RuleRecord,
  type TargetView,
} from "./rules.js";
import type { MonitorTables } from "./schema.js";
import type { SecretSource } from "./secrets.js";
import { DELIVERY_HEADER, EVENT_HEADER, signatureHeader } from "./signing.js";
import { emptyStats, foldProbe, type EwmaSettings, type TargetStats } from "./stats.js";

/**
 * The Monitor's engine: targets and their probers, per-target statistics, rule evaluation,
 * alerts, silences, webhook deliveries and recovery starts. Plain module (no connect): the
 * handlers validate and map; this owns state and background work.
 *
 * Design (why):
 * - Every replica loads all targets and rules and probes every target. Probing is cheap and
 *   this keeps failover trivial. What must happen once is guarded in Postgres: at most one
 *   FIRING alert per (rule, target) (a partial unique index; the replica whose insert loses
 *   adopts the winner's alert and sends nothing), deliveries are claimed with
 *   FOR UPDATE SKIP LOCKED and a lease before sending, recovery starts are claimed with a
 *   conditional UPDATE and carry the Orchestrator idempotency key `orca-alert/<alert id>`.
 *   Changes made through one replica reach the others with NOTIFY orca_monitor.
 * - Per-target work (fold a probe, change status, evaluate rules) runs on one promise chain per
 *   target, so a target's state changes are totally ordered without holding a transaction
 *   while probing (PGlite serializes transactions; we never wait inside one).
 * - Statistics live in memory and are written to the target row with each sample, so a restart
 *   keeps its warmed-up baselines.
 * - Probe samples and statistics are measurements, not state changes: they are written without
 *   an events row. Status changes, alerts, silences, acks, rules, targets and delivery outcomes
 *   each write an events row in the same transaction.
 */
type Db = Kysely<MonitorTables>;
type Tx = Transaction<MonitorTables>;

export interface TargetInput {
  tenant: string;
  name: string;
  probe: ProbeSpec;
  labels: Record<string, string>;
  builtin?: boolean;
}

export interface WatchEvent {
  tenant: string;
  targetId: string;
  change: { previousStatus: number; status: number; changedAt: Date; detail: string };
  health: HealthView;
  deregistered: boolean;
}

interface RuntimeTarget {
  row: TargetRow;
  stats: TargetStats;
  statusSince: Date;
  detail: string;
  lastProbeAt: Date | null;
  prober?: TargetProber;
  /** rule id -> when the condition started holding (ms). */
  pending: Map<string, number>;
  chain: Promise<void>;
  removed: boolean;
}

export interface Access {
  /** Set when the caller may only see this tenant's objects (by-id calls answer NOT_FOUND for others). */
  tenant?: string;
}

export interface Page<T> {
  items: T[];
  nextPageToken: string;
}

const CHANNEL = "orca_monitor";

function visible(access: Access, tenant: string): boolean {
  return access.tenant === undefined || access.tenant === "*" || access.tenant === tenant;
}

export function encodeToken(value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString("base64url");
}

export function decodeToken<T>(token: string, check: (v: unknown) => v is T): T | undefined {
  if (token === "") return undefined;
  try {
    const value: unknown = JSON.parse(Buffer.from(token, "base64url").toString("utf8"));
    return check(value) ? value : undefined;
  } catch {
    return undefined;
  }
}

export class PageTokenError extends Error {}

export class MonitorEngine {
  private readonly db: Db;
  private readonly targets = new Map<string, RuntimeTarget>();
  private readonly rules = new Map<string, RuleRecord>();
  /** `${ruleId}/${targetId}` -> FIRING alert id. */
  private readonly firing = new Map<string, string>();
  private readonly events = new EventEmitter({ captureRejections: false });
  private readonly recoveryInFlight = new Set<string>();
  private tickTimer?: NodeJS.Timeout;
  private ticking = false;
  private tickAgain = false;
  private tickCount = 0;
  private closed = false;
  private unlisten?: () => Promise<void>;
  private readonly sends = new Set<Promise<void>>();
  readonly settings: { latency: EwmaSettings; errorRate: EwmaSettings };

  constructor(
    private readonly deps: {
      database: Database;
      config: MonitorConfig;
      logger: Logger;
      recovery: RecoveryStarter;
      secrets: SecretSource;
      random?: () => number;
    },
  ) {
    this.db = deps.database.db.withSchema("orca_monitor") as Db;
    this.events.setMaxListeners(0);
    const c = deps.config;
    this.settings = {
      latency: { fastAlpha: c.fastAlpha, slowAlpha: c.slowAlpha, warmupSamples: c.warmupSamples, stddevFloor: c.latencyStddevFloorMs },
      errorRate: { fastAlpha: c.fastAlpha, slowAlpha: c.slowAlpha, warmupSamples: c.warmupSamples, stddevFloor: c.errorRateStddevFloor },
    };
  }

  get config(): MonitorConfig {
    return this.deps.config;
  }

  // ---------------------------------------------------------------- lifecycle

  async start(builtins: TargetInput[]): Promise<void> {
    for (const builtin of builtins) await this.ensureBuiltin(builtin);
    await this.reload();
    this.unlisten = await this.deps.database.listen(CHANNEL, (payload) => {
      if (!this.closed) void this.reload().catch((error: unknown) => this.deps.logger.warn({ err: error, payload }, "monitor reload failed"));
    });
    this.tickTimer = setInterval(() => this.requestTick(), this.deps.config.tickMs);
    this.tickTimer.unref?.();
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.tickTimer);
    for (const t of this.targets.values()) t.prober?.stop();
    await this.unlisten?.();
    await Promise.allSettled([...this.targets.values()].map((t) => t.chain));
    await Promise.allSettled([...this.sends]);
  }

  private async ensureBuiltin(input: TargetInput): Promise<void> {
    // Builtins follow the configuration: the address of an existing builtin is updated in place.
    const row = this.targetRow(input, randomUUID());
    await this.db.transaction().execute(async (tx) => {
      const existing = await tx.selectFrom("targets").select(["id", "builtin"]).where("tenant", "=", input.tenant).where("name", "=", input.name).executeTakeFirst();
      if (existing && !existing.builtin) {
        this.deps.logger.warn({ target: input.name }, "a registered target already uses a builtin target's name; builtin not registered");
        return;
      }
      if (existing) {
        await tx
          .updateTable("targets")
          .set({ address: row.address, tls: row.tls, service: row.service, interval_ms: row.interval_ms, timeout_ms: row.timeout_ms, labels: JSON.stringify(row.labels) as never })
          .where("id", "=", existing.id)
          .execute();
        return;
      }
      await tx.insertInto("targets").values(this.insertable(row)).onConflict((oc) => oc.columns(["tenant", "name"]).doNothing()).execute();
      await this.event(tx, "target.registered", row.id, row.tenant, { name: row.name, builtin: true });
    });
  }

  /** Loads targets and rules from the database and reconciles probers (start, and NOTIFY from any replica). */
  private async reload(): Promise<void> {
    const [targetRows, ruleRows, firingRows] = await Promise.all([
      this.db.selectFrom("targets").selectAll().execute(),
      this.db.selectFrom("rules").selectAll().execute(),
      this.db.selectFrom("alerts").select(["id", "rule_id", "target_id"]).where("state", "=", 1).execute(),
    ]);
    this.rules.clear();
    for (const r of ruleRows) this.rules.set(r.id, ruleFromRow(r));
    for (const a of firingRows) this.firing.set(`${a.rule_id}/${a.target_id}`, a.id);
    const seen = new Set<string>();
    for (const row of targetRows) {
      seen.add(row.id);
      if (!this.targets.has(row.id)) this.addRuntime(row as TargetRow);
    }
    for (const [id, t] of this.targets) {
      if (!seen.has(id)) this.dropRuntime(t);
    }
  }

  private addRuntime(row: TargetRow): RuntimeTarget {
    const stored = row.stats as Partial<TargetStats> | null;
    const runtime: RuntimeTarget = {
      row,
      stats: stored && stored.latency ? (stored as TargetStats) : emptyStats(),
      statusSince: row.status_since,
      detail: row.detail,
      lastProbeAt: row.last_probe_at,
      pending: new Map(),
      chain: Promise.resolve(),
      removed: false,
    };
    this.targets.set(row.id, runtime);
    if (!this.closed) {
      runtime.prober = new TargetProber(
        {
          kind: row.kind === 1 ? "grpc" : "http",
          address: row.address,
          service: row.service,
          tls: row.tls,
          url: row.url,
          expectedStatus: row.expected_status,
          intervalMs: row.interval_ms,
          timeoutMs: row.timeout_ms,
        },
        {
          onSample: (sample, effective) => this.enqueue(runtime, () => this.onSample(runtime, sample, effective)),
          onWatchStatus: (status, detail) => this.enqueue(runtime, () => this.onStatus(runtime, status, detail, new Date())),
        },
      );
      runtime.prober.start();
    }
    return runtime;
  }

  private dropRuntime(t: RuntimeTarget): void {
    t.removed = true;
    t.prober?.stop();
    this.targets.delete(t.row.id);
  }

  private enqueue(t: RuntimeTarget, work: () => Promise<void>): void {
    t.chain = t.chain
      .then(() => (t.removed || this.closed ? undefined : work()))
      .catch((error: unknown) => this.deps.logger.warn({ err: error, target: t.row.name }, "monitor: probe handling failed"));
  }

  private async notifyPeers(tx: Tx, what: string): Promise<void> {
    await sql`select pg_notify(${CHANNEL}, ${what})`.execute(tx);
  }

  private async event(tx: Tx, kind: string, subject: string, tenant: string, payload: Record<string, unknown>): Promise<void> {
    await tx.insertInto("events").values({ kind, subject, tenant, payload: JSON.stringify(payload) }).execute();
  }

  // ---------------------------------------------------------------- probe results

  private view(t: RuntimeTarget): TargetView {
    return { id: t.row.id, tenant: t.row.tenant, name: t.row.name, labels: t.row.labels, status: t.row.status, stats: t.stats };
  }

  healthView(t: RuntimeTarget): HealthView {
    return { targetId: t.row.id, status: t.row.status, statusSince: t.statusSince, detail: t.detail, lastProbeAt: t.lastProbeAt, stats: t.stats };
  }

  private async onSample(t: RuntimeTarget, sample: ProbeResult, effective: { status: number; detail: string }): Promise<void> {
    t.stats = foldProbe(t.stats, { latencyMs: sample.latencyMs, ok: sample.status === Status.SERVING }, this.settings.latency, this.settings.errorRate);
    t.lastProbeAt = sample.at;
    t.detail = sample.detail;
    await this.db
      .insertInto("probe_samples")
      .values({ target_id: t.row.id, probed_at: sample.at, latency_ms: sample.latencyMs, status: sample.status, detail: sample.detail })
      .execute();
    await this.db
      .updateTable("targets")
      .set({ stats: JSON.stringify(t.stats) as never, last_probe_at: sample.at, detail: sample.detail })
      .where("id", "=", t.row.id)
      .execute();
    await this.onStatus(t, effective.status, effective.detail, sample.at);
  }

  private async onStatus(t: RuntimeTarget, status: number, detail: string, at: Date): Promise<void> {
    if (status !== t.row.status) {
      const previous = t.row.status;
      // Stored first, then shown: a reader that sees the new status also finds it in the history.
      await this.db.transaction().execute(async (tx) => {
        await tx.updateTable("targets").set({ status, status_since: at, detail }).where("id", "=", t.row.id).execute();
        await tx.insertInto("status_changes").values({ target_id: t.row.id, previous_status: previous, status, changed_at: at, detail }).execute();
        await this.event(tx, "target.status_changed", t.row.id, t.row.tenant, { from: StatusName[previous], to: StatusName[status], detail });
      });
      t.row.status = status;
      t.statusSince = at;
      t.detail = detail;
      this.deps.logger.info({ target: t.row.name, from: StatusName[previous], to: StatusName[status], detail }, "monitor: status changed");
      this.emitWatch(t, { previousStatus: previous, status, changedAt: at, detail }, false);
    }
    await this.evaluate(t);
  }

  private emitWatch(t: RuntimeTarget, change: WatchEvent["change"], deregistered: boolean): void {
    const event: WatchEvent = { tenant: t.row.tenant, targetId: t.row.id, change, health: this.healthView(t), deregistered };
    this.events.emit("watch", event);
  }

  // ---------------------------------------------------------------- rule evaluation

  private async evaluate(t: RuntimeTarget): Promise<void> {
    const view = this.view(t);
    const now = Date.now();
    for (const rule of this.rules.values()) {
      if (!ruleSelects(rule, view)) continue;
      const key = `${rule.id}/${t.row.id}`;
      const result = evaluateCondition(rule.condition, view, this.settings);
      const decision = step({ holds: result.holds, firing: this.firing.has(key), pendingSince: t.pending.get(rule.id) ?? null, forMs: rule.forMs, now });
      if (decision.pendingSince === null) t.pending.delete(rule.id);
      else t.pending.set(rule.id, decision.pendingSince);
      if (decision.action === "fire") {
        const forText = rule.forMs > 0 ? ` for ${formatMs(rule.forMs)}` : "";
        await this.fire(rule, t, `${result.description}${forText}`);
      } else if (decision.action === "resolve") {
        await this.resolve(this.firing.get(key)!, rule);
      }
    }
  }

  private async activeSilences(tenant: string, exec: Db | Tx = this.db): Promise<Array<{ id: string; matchers: Matcher[] }>> {
    const rows = await exec.selectFrom("silences").select(["id", "matchers"]).where("tenant", "=", tenant).where("ends_at", ">", sql<Date>`now()`).execute();
    return rows.map((r) => ({ id: r.id, matchers: r.matchers as Matcher[] }));
  }

  private async fire(rule: RuleRecord, t: RuntimeTarget, summary: string): Promise<void> {
    const key = `${rule.id}/${t.row.id}`;
    const labels = alertLabels(rule, t.row);
    const id = randomUUID();
    const fullSummary = rule.description ? `${summary}: ${rule.description}` : summary;
    let winner: string | undefined;
    await this.db.transaction().execute(async (tx) => {
      const silences = (await this.activeSilences(rule.tenant, tx)).filter((s) => silenceMatches(s.matchers, labels)).map((s) => s.id);
      const inserted = await tx
        .insertInto("alerts")
        .values({
          id,
          tenant: rule.tenant,
          rule_id: rule.id,
          target_id: t.row.id,
          state: 1,
          severity: rule.severity,
          labels: JSON.stringify(labels) as never,
          group_key: groupKey(rule.groupBy, labels),
          summary: fullSummary,
          acked_by: "",
          ack_comment: "",
          silenced: silences.length > 0,
          silence_ids: JSON.stringify(silences) as never,
          notified: false,
          resolved_at: null,
          acked_at: null,
          last_notified_at: null,
          recovery_run_id: "",
          recovery_error: "",
          recovery_attempts: 0,
          recovery_next_at: null,
        })
        .onConflict((oc) => oc.columns(["rule_id", "target_id"]).where("state", "=", 1).doNothing())
        .returningAll()
        .executeTakeFirst();
      if (!inserted) {
        // Another replica fired first: adopt its alert, send nothing.
        winner = (await tx.selectFrom("alerts").select("id").where("rule_id", "=", rule.id).where("target_id", "=", t.row.id).where("state", "=", 1).executeTakeFirst())?.id;
        return;
      }
      winner = id;
      await this.event(tx, "alert.firing", id, rule.tenant, { rule: rule.name, target: t.row.name, summary: fullSummary, silenced: silences.length > 0 });
      await this.notify(tx, inserted as AlertRow, rule, 1);
    });
    if (winner) this.firing.set(key, winner);
    this.deps.logger.info({ alert: winner, rule: rule.name, target: t.row.name, summary }, "monitor: alert firing");
    this.requestTick();
  }

  /**
   * Writes the deliveries of one notification (one per destination) in the caller's
   * transaction: SUPPRESSED while the alert is silenced, else PENDING and due now. A FIRING or
   * REPEAT notification that goes out unsilenced marks the alert notified (and due for its
   * recovery action).
   */
  private async notify(tx: Tx, alert: AlertRow, rule: RuleRecord, event: 1 | 2 | 3): Promise<void> {
    const destinations = rule.destinations.filter((d) => !(event === 2 && d.skipResolved));
    const suppressed = alert.silenced;
    const body = (deliveryId: string) => JSON.stringify({ deliveryId, event: EVENT_NAMES[event], alert: alertJson(alert) });
    for (const d of destinations) {
      const deliveryId = randomUUID();
      await tx
        .insertInto("deliveries")
        .values({
          id: deliveryId,
          tenant: alert.tenant,
          alert_id: alert.id,
          rule_id: rule.id,
          url: d.url,
          secret_ref: d.secretRef,
          event,
          status: suppressed ? 5 : 1,
          attempt_count: 0,
          last_http_status: 0,
          error: "",
          body: body(deliveryId),
          last_attempt_at: null,
          next_attempt_at: suppressed ? null : sql<Date>`clock_timestamp()` as never,
          completed_at: suppressed ? (sql<Date>`clock_timestamp()` as never) : null,
          lease_until: null,
        })
        .execute();
      await this.event(tx, suppressed ? "delivery.suppressed" : "delivery.queued", deliveryId, alert.tenant, { alert: alert.id, event: EVENT_NAMES[event], url: d.url });
    }
    if (!suppressed && event !== 2) {
      await tx
        .updateTable("alerts")
        .set({ notified: true, last_notified_at: sql<Date>`now()` as never, ...(event === 1 && rule.recovery ? { recovery_next_at: sql<Date>`now()` as never } : {}) })
        .where("id", "=", alert.id)
        .execute();
    }
  }

  private async resolve(alertId: string, rule: RuleRecord): Promise<void> {
    await this.db.transaction().execute(async (tx) => {
      const row = await tx
        .updateTable("alerts")
        .set({ state: 2, resolved_at: sql<Date>`now()` as never, recovery_next_at: null })
        .where("id", "=", alertId)
        .where("state", "=", 1)
        .returningAll()
        .executeTakeFirst();
      if (!row) return; // another replica resolved it
      await this.event(tx, "alert.resolved", alertId, row.tenant, { rule: rule.name });
      await this.notify(tx, row as AlertRow, rule, 2);
    });
    for (const [key, id] of this.firing) if (id === alertId) this.firing.delete(key);
    this.deps.logger.info({ alert: alertId, rule: rule.name }, "monitor: alert resolved");
    this.requestTick();
  }

  // ---------------------------------------------------------------- targets API

  private targetRow(input: TargetInput, id: string): TargetRow {
    return {
      id,
      tenant: input.tenant,
      name: input.name,
      kind: input.probe.kind === "grpc" ? 1 : 2,
      address: input.probe.address,
      service: input.probe.service,
      tls: input.probe.tls,
      url: input.probe.url,
      expected_status: input.probe.expectedStatus,
      interval_ms: input.probe.intervalMs,
      timeout_ms: input.probe.timeoutMs,
      labels: input.labels,
      builtin: input.builtin ?? false,
      created_at: new Date(),
      status: Status.UNKNOWN,
      status_since: new Date(),
      detail: "",
      last_probe_at: null,
      stats: emptyStats(),
    };
  }

  private insertable(row: TargetRow) {
    const { created_at: _c, status_since: _s, ...rest } = row;
    return { ...rest, labels: JSON.stringify(row.labels) as never, stats: JSON.stringify(row.stats) };
  }

  async registerTarget(input: TargetInput): Promise<TargetRow> {
    const id = randomUUID();
    const row = this.targetRow(input, id);
    const stored = await this.db.transaction().execute(async (tx) => {
      const count = await tx.selectFrom("targets").select(sql<string>`count(*)`.as("n")).where("tenant", "=", input.tenant).executeTakeFirstOrThrow();
      if (Number(count.n) >= this.deps.config.maxTargetsPerTenant) {
        throw new ResourceExhaustedError(`tenant "${input.tenant}" has reached its limit of ${this.deps.config.maxTargetsPerTenant} targets`);
      }
      const inserted = await tx.insertInto("targets").values(this.insertable(row)).onConflict((oc) => oc.columns(["tenant", "name"]).doNothing()).returningAll().executeTakeFirst();
      if (!inserted) throw new AlreadyExistsError(`tenant "${input.tenant}" already has a target named "${input.name}"`);
      await this.event(tx, "target.registered", id, input.tenant, { name: input.name, kind: input.probe.kind });
      await this.notifyPeers(tx, "targets");
      return inserted as TargetRow;
    });
    if (!this.targets.has(id)) this.addRuntime(stored);
    return stored;
  }

  async deregisterTarget(id: string, access: Access): Promise<void> {
    const t = await this.db.selectFrom("targets").selectAll().where("id", "=", id).executeTakeFirst();
    if (!t || !visible(access, t.tenant)) throw new NotFoundError(`no target has id "${id}"`);
    if (t.builtin) throw new FailedPreconditionError(`target "${t.name}" is one of the mesh's builtin targets and cannot be deregistered`);
    const runtime = this.targets.get(id);
    if (runtime) {
      // Stop probing first, and let in-flight handling finish, so nothing writes after the delete.
      runtime.prober?.stop();
      runtime.removed = true;
      await runtime.chain;
    }
    const firing = await this.db.selectFrom("alerts").select(["id", "rule_id"]).where("target_id", "=", id).where("state", "=", 1).execute();
    for (const a of firing) {
      const rule = this.rules.get(a.rule_id);
      if (rule) await this.resolve(a.id, rule);
    }
    const deleted = await this.db.transaction().execute(async (tx) => {
      const gone = await tx.deleteFrom("targets").where("id", "=", id).returning("id").executeTakeFirst();
      if (!gone) return false;
      await tx.deleteFrom("status_changes").where("target_id", "=", id).execute();
      await tx.deleteFrom("probe_samples").where("target_id", "=", id).execute();
      await this.event(tx, "target.deregistered", id, t.tenant, { name: t.name });
      await this.notifyPeers(tx, "targets");
      return true;
    });
    if (!deleted) throw new NotFoundError(`no target has id "${id}"`);
    if (runtime) {
      this.targets.delete(id);
      this.emitWatch(runtime, { previousStatus: runtime.row.status, status: runtime.row.status, changedAt: new Date(), detail: "deregistered" }, true);
    }
  }

  async listTargets(filter: { tenant: string; kind: number; status: number; labels: Record<string, string>; pageSize: number; pageToken: string }): Promise<Page<TargetRow>> {
    const after = decodeToken(filter.pageToken, (v): v is { n: string } => typeof (v as { n?: unknown })?.n === "string");
    if (filter.pageToken !== "" && !after) throw new PageTokenError();
    let q = this.db.selectFrom("targets").selectAll().where("tenant", "=", filter.tenant);
    if (filter.kind) q = q.where("kind", "=", filter.kind);
    if (filter.status) q = q.where("status", "=", filter.status);
    if (Object.keys(filter.labels).length > 0) q = q.where(sql<boolean>`labels @> ${JSON.stringify(filter.labels)}::jsonb`);
    if (after) q = q.where(sql<boolean>`name collate "C" > ${after.n} collate "C"`);
    const rows = (await q.orderBy(sql`name collate "C"`).limit(filter.pageSize + 1).execute()) as TargetRow[];
    const items = rows.slice(0, filter.pageSize).map((r) => this.fresh(r));
    return { items, nextPageToken: rows.length > filter.pageSize ? encodeToken({ n: items[items.length - 1].name }) : "" };
  }

  /** The row with this replica's in-memory status when it has one (the freshest). */
  private fresh(row: TargetRow): TargetRow {
    const t = this.targets.get(row.id);
    return t ? { ...row, status: t.row.status } : row;
  }

  async getTarget(id: string, access: Access): Promise<TargetRow> {
    const row = await this.db.selectFrom("targets").selectAll().where("id", "=", id).executeTakeFirst();
    if (!row || !visible(access, row.tenant)) throw new NotFoundError(`no target has id "${id}"`);
    return this.fresh(row as TargetRow);
  }

  async getHealth(id: string, access: Access, historyLimit: number, sampleLimit: number, since: Date | undefined) {
    const row = await this.getTarget(id, access);
    const t = this.targets.get(id);
    const health: HealthView = t
      ? this.healthView(t)
      : { targetId: id, status: row.status, statusSince: row.status_since, detail: row.detail, lastProbeAt: row.last_probe_at, stats: (row.stats as TargetStats)?.latency ? (row.stats as TargetStats) : emptyStats() };
    let hq = this.db.selectFrom("status_changes").selectAll().where("target_id", "=", id);
    if (since) hq = hq.where("changed_at", ">=", since);
    const history = await hq.orderBy("changed_at", "desc").orderBy("seq", "desc").limit(historyLimit).execute();
    let samples: Awaited<ReturnType<typeof this.samples>> = [];
    if (sampleLimit > 0) samples = await this.samples(id, sampleLimit, since);
    return { health, history, samples };
  }

  private async samples(id: string, limit: number, since: Date | undefined) {
    let q = this.db.selectFrom("probe_samples").selectAll().where("target_id", "=", id);
    if (since) q = q.where("probed_at", ">=", since);
    return q.orderBy("probed_at", "desc").orderBy("seq", "desc").limit(limit).execute();
  }

  /** Checks that every id names a visible target; returns their rows. */
  async resolveTargets(ids: string[], access: Access): Promise<TargetRow[]> {
    const rows: TargetRow[] = [];
    for (const id of ids) rows.push(await this.getTarget(id, access));
    return rows;
  }

  /**
   * Health events for a tenant or a set of targets, until the signal aborts or the maximum
   * stream duration passes (then the generator returns: the stream ends with OK). Subscribes
   * before the initial events are built, so no change between the two is lost. A slow reader
   * whose buffer overflows gets ResourceExhausted.
   */
  async *watch(options: { tenant: string; targetIds: string[]; sendInitial: boolean; signal: AbortSignal }): AsyncGenerator<WatchEvent & { initial: boolean }> {
    const ids = new Set(options.targetIds);
    const wanted = (e: WatchEvent) => (ids.size > 0 ? ids.has(e.targetId) : e.tenant === options.tenant);
    const queue: WatchEvent[] = [];
    let wake: (() => void) | undefined;
    let overflow = false;
    const listener = (e: WatchEvent) => {
      if (!wanted(e)) return;
      if (queue.length >= this.deps.config.watchBuffer) overflow = true;
      else queue.push(e);
      wake?.();
    };
    this.events.on("watch", listener);
    const deadline = AbortSignal.any([options.signal, AbortSignal.timeout(this.deps.config.watchMaxMs)]);
    const onAbort = () => wake?.();
    deadline.addEventListener("abort", onAbort);
    try {
      if (options.sendInitial) {
        const rows = ids.size > 0 ? [...ids].map((id) => this.targets.get(id)).filter((t): t is RuntimeTarget => t !== undefined) : [...this.targets.values()].filter((t) => t.row.tenant === options.tenant);
        for (const t of rows.sort((a, b) => (a.row.name < b.row.name ? -1 : 1))) {
          const h = this.healthView(t);
          yield { tenant: t.row.tenant, targetId: t.row.id, change: { previousStatus: h.status, status: h.status, changedAt: h.statusSince, detail: h.detail }, health: h, deregistered: false, initial: true };
        }
      }
      while (!deadline.aborted) {
        if (overflow) throw new ResourceExhaustedError(`WatchHealth: the client read too slowly and the buffer of ${this.deps.config.watchBuffer} events overflowed; reconnect with send_initial`);
        const next = queue.shift();
        if (next) {
          yield { ...next, initial: false };
          if (next.deregistered && ids.size > 0) {
            ids.delete(next.targetId);
            if (ids.size === 0) return;
          }
          continue;
        }
        await new Promise<void>((resolve) => (wake = resolve));
        wake = undefined;
      }
    } finally {
      this.events.off("watch", listener);
      deadline.removeEventListener("abort", onAbort);
    }
  }

  // ---------------------------------------------------------------- rules API

  async createRule(rule: Omit<RuleRecord, "id" | "createdAt">): Promise<RuleRecord> {
    const id = randomUUID();
    if (rule.targetId) {
      const target = await this.db.selectFrom("targets").select(["tenant"]).where("id", "=", rule.targetId).executeTakeFirst();
      if (!target || target.tenant !== rule.tenant) throw new NotFoundError(`rule.target_id: no target has id "${rule.targetId}" in tenant "${rule.tenant}"`);
    }
    const stored = await this.db.transaction().execute(async (tx) => {
      const count = await tx.selectFrom("rules").select(sql<string>`count(*)`.as("n")).where("tenant", "=", rule.tenant).executeTakeFirstOrThrow();
      if (Number(count.n) >= this.deps.config.maxRulesPerTenant) throw new ResourceExhaustedError(`tenant "${rule.tenant}" has reached its limit of ${this.deps.config.maxRulesPerTenant} rules`);
      const { tenant, name, targetId, ...spec } = rule;
      const inserted = await tx
        .insertInto("rules")
        .values({ id, tenant, name, target_id: targetId, spec: JSON.stringify(spec) })
        .onConflict((oc) => oc.columns(["tenant", "name"]).doNothing())
        .returningAll()
        .executeTakeFirst();
      if (!inserted) throw new AlreadyExistsError(`tenant "${rule.tenant}" already has a rule named "${rule.name}"`);
      await this.event(tx, "rule.created", id, tenant, { name });
      await this.notifyPeers(tx, "rules");
      return ruleFromRow(inserted);
    });
    this.rules.set(id, stored);
    return stored;
  }

  async deleteRule(id: string, access: Access): Promise<void> {
    const row = await this.db.selectFrom("rules").selectAll().where("id", "=", id).executeTakeFirst();
    if (!row || !visible(access, row.tenant)) throw new NotFoundError(`no rule has id "${id}"`);
    const rule = ruleFromRow(row);
    // Stop evaluating it here first, so it cannot fire again while its alerts resolve.
    this.rules.delete(id);
    const firing = await this.db.selectFrom("alerts").select("id").where("rule_id", "=", id).where("state", "=", 1).execute();
    for (const a of firing) await this.resolve(a.id, rule);
    const deleted = await this.db.transaction().execute(async (tx) => {
      const gone = await tx.deleteFrom("rules").where("id", "=", id).returning("id").executeTakeFirst();
      if (!gone) return false;
      await this.event(tx, "rule.deleted", id, row.tenant, { name: row.name });
      await this.notifyPeers(tx, "rules");
      return true;
    });
    if (!deleted) throw new NotFoundError(`no rule has id "${id}"`);
  }

  async listRules(filter: { tenant: string; targetId: string; pageSize: number; pageToken: string }): Promise<Page<RuleRecord>> {
    const after = decodeToken(filter.pageToken, (v): v is { n: string } => typeof (v as { n?: unknown })?.n === "string");
    if (filter.pageToken !== "" && !after) throw new PageTokenError();
    let q = this.db.selectFrom("rules").selectAll().where("tenant", "=", filter.tenant);
    if (filter.targetId) q = q.where("target_id", "=", filter.targetId);
    if (after) q = q.where(sql<boolean>`name collate "C" > ${after.n} collate "C"`);
    const rows = await q.orderBy(sql`name collate "C"`).limit(filter.pageSize + 1).execute();
    const items = rows.slice(0, filter.pageSize).map(ruleFromRow);
    return { items, nextPageToken: rows.length > filter.pageSize ? encodeToken({ n: items[items.length - 1].name }) : "" };
  }

  // ---------------------------------------------------------------- alerts, silences, deliveries API

  async listAlerts(filter: {
    tenant: string;
    state: number;
    ruleId: string;
    targetId: string;
    groupKey: string;
    minSeverity: number;
    silenced?: boolean;
    pageSize: number;
    pageToken: string;
  }): Promise<Page<AlertRow>> {
    const after = decodeTimeToken(filter.pageToken);
    let q = this.db.selectFrom("alerts").selectAll().select(sql<string>`(extract(epoch from started_at) * 1000000)::int8::text`.as("k")).where("tenant", "=", filter.tenant);
    if (filter.state) q = q.where("state", "=", filter.state);
    if (filter.ruleId) q = q.where("rule_id", "=", filter.ruleId);
    if (filter.targetId) q = q.where("target_id", "=", filter.targetId);
    if (filter.groupKey) q = q.where("group_key", "=", filter.groupKey);
    if (filter.minSeverity) q = q.where("severity", ">=", filter.minSeverity);
    if (filter.silenced !== undefined) q = q.where("silenced", "=", filter.silenced);
    if (after) q = q.where(sql<boolean>`(started_at, id) < (timestamptz 'epoch' + ${after.k}::int8 * interval '1 microsecond', ${after.id})`);
    const rows = await q.orderBy("started_at", "desc").orderBy("id", "desc").limit(filter.pageSize + 1).execute();
    return pageOf(rows, filter.pageSize) as Page<AlertRow>;
  }

  async getAlert(id: string, access: Access): Promise<AlertRow> {
    const row = await this.db.selectFrom("alerts").selectAll().where("id", "=", id).executeTakeFirst();
    if (!row || !visible(access, row.tenant)) throw new NotFoundError(`no alert has id "${id}"`);
    return row as AlertRow;
  }

  async ackAlert(id: string, access: Access, by: string, comment: string): Promise<AlertRow> {
    const existing = await this.getAlert(id, access);
    if (existing.acked_by !== "") return existing;
    return this.db.transaction().execute(async (tx) => {
      const row = await tx
        .updateTable("alerts")
        .set({ acked_by: by, acked_at: sql<Date>`now()` as never, ack_comment: comment })
        .where("id", "=", id)
        .where("acked_by", "=", "")
        .returningAll()
        .executeTakeFirst();
      if (!row) return (await tx.selectFrom("alerts").selectAll().where("id", "=", id).executeTakeFirstOrThrow()) as AlertRow;
      await this.event(tx, "alert.acked", id, row.tenant, { by, comment });
      return row as AlertRow;
    });
  }

  async createSilence(input: { tenant: string; matchers: Matcher[]; durationMs: number; createdBy: string; comment: string }): Promise<SilenceRow> {
    const id = randomUUID();
    const row = await this.db.transaction().execute(async (tx) => {
      const active = await tx.selectFrom("silences").select(sql<string>`count(*)`.as("n")).where("tenant", "=", input.tenant).where("ends_at", ">", sql<Date>`now()`).executeTakeFirstOrThrow();
      if (Number(active.n) >= this.deps.config.maxSilencesPerTenant) throw new ResourceExhaustedError(`tenant "${input.tenant}" has reached its limit of ${this.deps.config.maxSilencesPerTenant} active silences`);
      const inserted = await tx
        .insertInto("silences")
        .values({
          id,
          tenant: input.tenant,
          matchers: JSON.stringify(input.matchers),
          ends_at: sql<Date>`now() + ${input.durationMs}::int8 * interval '1 millisecond'` as never,
          created_by: input.createdBy,
          comment: input.comment,
        })
        .returningAll()
        .executeTakeFirstOrThrow();
      await this.event(tx, "silence.created", id, input.tenant, { matchers: input.matchers, duration_ms: input.durationMs, by: input.createdBy });
      // Mark the tenant's FIRING alerts that it matches.
      const firing = await tx.selectFrom("alerts").select(["id", "labels", "silence_ids"]).where("tenant", "=", input.tenant).where("state", "=", 1).execute();
      for (const a of firing) {
        if (!silenceMatches(input.matchers, a.labels)) continue;
        await tx.updateTable("alerts").set({ silenced: true, silence_ids: JSON.stringify([...a.silence_ids, id]) as never }).where("id", "=", a.id).execute();
      }
      return inserted as SilenceRow;
    });
    return row;
  }

  async listSilences(filter: { tenant: string; includeExpired: boolean; pageSize: number; pageToken: string }): Promise<Page<SilenceRow>> {
    const after = decodeTimeToken(filter.pageToken);
    let q = this.db.selectFrom("silences").selectAll().select(sql<string>`(extract(epoch from starts_at) * 1000000)::int8::text`.as("k")).where("tenant", "=", filter.tenant);
    if (!filter.includeExpired) q = q.where("ends_at", ">", sql<Date>`now()`);
    if (after) q = q.where(sql<boolean>`(starts_at, id) < (timestamptz 'epoch' + ${after.k}::int8 * interval '1 microsecond', ${after.id})`);
    const rows = await q.orderBy("starts_at", "desc").orderBy("id", "desc").limit(filter.pageSize + 1).execute();
    return pageOf(rows, filter.pageSize) as Page<SilenceRow>;
  }

  async listDeliveries(filter: { tenant: string; alertId: string; status: number; pageSize: number; pageToken: string }, access: Access): Promise<Page<DeliveryRow>> {
    const after = decodeTimeToken(filter.pageToken);
    let q = this.db.selectFrom("deliveries").selectAll().select(sql<string>`(extract(epoch from created_at) * 1000000)::int8::text`.as("k"));
    if (filter.alertId) {
      await this.getAlert(filter.alertId, access);
      q = q.where("alert_id", "=", filter.alertId);
    } else q = q.where("tenant", "=", filter.tenant);
    if (filter.status) q = q.where("status", "=", filter.status);
    if (after) q = q.where(sql<boolean>`(created_at, id) < (timestamptz 'epoch' + ${after.k}::int8 * interval '1 microsecond', ${after.id})`);
    const rows = await q.orderBy("created_at", "desc").orderBy("id", "desc").limit(filter.pageSize + 1).execute();
    return pageOf(rows, filter.pageSize) as Page<DeliveryRow>;
  }

  // ---------------------------------------------------------------- background work

  /** Runs the housekeeping pass now (coalesced: one at a time, one more if asked meanwhile). */
  requestTick(): void {
    if (this.closed) return;
    if (this.ticking) {
      this.tickAgain = true;
      return;
    }
    this.ticking = true;
    void (async () => {
      try {
        do {
          this.tickAgain = false;
          await this.tick();
        } while (this.tickAgain && !this.closed);
      } catch (error) {
        if (!this.closed) this.deps.logger.warn({ err: error }, "monitor: housekeeping failed");
      } finally {
        this.ticking = false;
      }
    })();
  }

  private async tick(): Promise<void> {
    this.tickCount++;
    await this.sweepSilences();
    await this.sendRepeats();
    await this.startRecoveries();
    await this.sendDueDeliveries();
    if (this.tickCount % 60 === 1) await this.applyRetention();
  }

  /** Recomputes `silenced` for alerts marked silenced; a FIRING alert whose last silence ended gets its notification now. */
  private async sweepSilences(): Promise<void> {
    const marked = await this.db.selectFrom("alerts").selectAll().where("silenced", "=", true).execute();
    for (const alert of marked as AlertRow[]) {
      const active = (await this.activeSilences(alert.tenant)).filter((s) => silenceMatches(s.matchers, alert.labels)).map((s) => s.id);
      if (active.length > 0) {
        if (active.join() !== alert.silence_ids.join()) await this.db.updateTable("alerts").set({ silence_ids: JSON.stringify(active) as never }).where("id", "=", alert.id).execute();
        continue;
      }
      await this.db.transaction().execute(async (tx) => {
        const row = await tx
          .updateTable("alerts")
          .set({ silenced: false, silence_ids: JSON.stringify([]) as never })
          .where("id", "=", alert.id)
          .where("silenced", "=", true)
          .returningAll()
          .executeTakeFirst();
        if (!row) return;
        await this.event(tx, "alert.unsilenced", alert.id, alert.tenant, {});
        const rule = this.rules.get(alert.rule_id);
        if (row.state === 1 && !row.notified && rule) await this.notify(tx, row as AlertRow, rule, 1);
      });
    }
  }

  private async sendRepeats(): Promise<void> {
    const due = await this.db
      .selectFrom("alerts")
      .selectAll()
      .select(sql<number>`extract(epoch from (now() - last_notified_at)) * 1000`.as("since_ms"))
      .where("state", "=", 1)
      .where("notified", "=", true)
      .where("silenced", "=", false)
      .where("acked_by", "=", "")
      .execute();
    for (const alert of due) {
      const rule = this.rules.get(alert.rule_id);
      if (!rule || rule.repeatIntervalMs <= 0 || Number(alert.since_ms) < rule.repeatIntervalMs) continue;
      await this.db.transaction().execute(async (tx) => {
        // Claim: only the replica that moves last_notified_at sends the reminder.
        const claimed = await tx
          .updateTable("alerts")
          .set({ last_notified_at: sql<Date>`now()` as never })
          .where("id", "=", alert.id)
          .where("last_notified_at", "=", alert.last_notified_at)
          .returningAll()
          .executeTakeFirst();
        if (claimed) await this.notify(tx, claimed as AlertRow, rule, 3);
      });
    }
  }

  private async startRecoveries(): Promise<void> {
    const due = await this.db
      .selectFrom("alerts")
      .selectAll()
      .where("state", "=", 1)
      .where("silenced", "=", false)
      .where("notified", "=", true)
      .where("recovery_run_id", "=", "")
      .where("recovery_next_at", "<=", sql<Date>`now()`)
      .execute();
    for (const alert of due as AlertRow[]) {
      const rule = this.rules.get(alert.rule_id);
      if (!rule?.recovery || this.recoveryInFlight.has(alert.id)) continue;
      // Claim across replicas: push recovery_next_at past the call's deadline.
      const claimed = await this.db
        .updateTable("alerts")
        .set({ recovery_next_at: sql<Date>`now() + interval '30 seconds'` as never })
        .where("id", "=", alert.id)
        .where("recovery_run_id", "=", "")
        .where("recovery_next_at", "<=", sql<Date>`now()`)
        .returning("id")
        .executeTakeFirst();
      if (!claimed) continue;
      this.recoveryInFlight.add(alert.id);
      const recovery = rule.recovery;
      const work = (async () => {
        try {
          const input: JsonObject = { ...(recovery.input as JsonObject), alert: alertJson(alert) };
          const runId = await this.deps.recovery.start({
            tenant: alert.tenant,
            workflowName: recovery.workflowName,
            workflowVersion: recovery.workflowVersion,
            input,
            idempotencyKey: recoveryKey(alert.id),
          });
          await this.db.transaction().execute(async (tx) => {
            await tx.updateTable("alerts").set({ recovery_run_id: runId, recovery_error: "", recovery_next_at: null }).where("id", "=", alert.id).execute();
            await this.event(tx, "alert.recovery_started", alert.id, alert.tenant, { run_id: runId, workflow: recovery.workflowName });
          });
        } catch (error) {
          const message = (error instanceof Error ? error.message : String(error)).slice(0, 1000);
          const attempts = alert.recovery_attempts + 1;
          const delay = Math.min(5 * 60_000, this.deps.config.recoveryBackoffMs * 2 ** (attempts - 1));
          await this.db
            .updateTable("alerts")
            .set({ recovery_error: message, recovery_attempts: attempts, recovery_next_at: sql<Date>`now() + ${delay}::int8 * interval '1 millisecond'` as never })
            .where("id", "=", alert.id)
            .execute();
          this.deps.logger.warn({ alert: alert.id, err: message }, "monitor: recovery start failed; will retry while FIRING");
        } finally {
          this.recoveryInFlight.delete(alert.id);
        }
      })();
      this.track(work);
    }
  }

  private track(work: Promise<void>): void {
    this.sends.add(work);
    void work.finally(() => this.sends.delete(work));
  }

  private async sendDueDeliveries(): Promise<void> {
    const leaseMs = this.deps.config.webhookTimeoutMs + 5000;
    const claimed = await this.db.transaction().execute(async (tx) => {
      const rows = await tx
        .selectFrom("deliveries")
        .selectAll()
        .where("status", "in", [1, 2])
        .where("next_attempt_at", "<=", sql<Date>`clock_timestamp()`)
        .where((eb) => eb.or([eb("lease_until", "is", null), eb("lease_until", "<", sql<Date>`clock_timestamp()`)]))
        .orderBy("next_attempt_at")
        .limit(50)
        .forUpdate()
        .skipLocked()
        .execute();
      if (rows.length === 0) return [];
      await tx
        .updateTable("deliveries")
        .set({ lease_until: sql<Date>`clock_timestamp() + ${leaseMs}::int8 * interval '1 millisecond'` as never })
        .where(
          "id",
          "in",
          rows.map((r) => r.id),
        )
        .execute();
      return rows as DeliveryRow[];
    });
    for (const delivery of claimed) this.track(this.attempt(delivery));
  }

  /** One HTTP attempt of one delivery, then its new state. Never inside a transaction. */
  private async attempt(d: DeliveryRow): Promise<void> {
    const attempt = d.attempt_count + 1;
    let httpStatus = 0;
    let error = "";
    let retryable = true;
    let retryAfterMs = 0;
    const secret = this.deps.secrets.resolve(d.secret_ref);
    if (secret === undefined) {
      error = `secret ${d.secret_ref} is not available`;
    } else {
      const t = Math.floor(Date.now() / 1000);
      try {
        const response = await fetch(d.url, {
          method: "POST",
          redirect: "manual",
          signal: AbortSignal.timeout(this.deps.config.webhookTimeoutMs),
          headers: {
            "content-type": "application/json",
            "user-agent": "orca-monitor",
            [DELIVERY_HEADER]: d.id,
            [EVENT_HEADER]: EVENT_NAMES[d.event as 1 | 2 | 3],
            "orca-signature": signatureHeader(secret, t, d.body),
          },
          body: d.body,
        });
        httpStatus = response.status;
        await response.body?.cancel().catch(() => undefined);
        if (httpStatus >= 200 && httpStatus < 300) retryable = false;
        else {
          error = `unexpected HTTP status ${httpStatus}`;
          retryable = httpStatus === 408 || httpStatus === 429 || httpStatus >= 500;
          retryAfterMs = parseRetryAfter(response.headers.get("retry-after"));
        }
      } catch (e) {
        const cause = e instanceof Error && e.cause instanceof Error ? `: ${e.cause.message}` : "";
        error = e instanceof Error && e.name === "TimeoutError" ? `timeout after ${this.deps.config.webhookTimeoutMs}ms` : `${e instanceof Error ? e.message : String(e)}${cause}`;
      }
    }
    const succeeded = error === "";
    const exhausted = attempt >= this.deps.config.webhookMaxAttempts;
    const status = succeeded ? 3 : !retryable || exhausted ? 4 : 2;
    const delay = status === 2 ? Math.min(this.deps.config.webhookBackoffMaxMs, Math.max(retryAfterMs, backoffMs(attempt, this.deps.config.webhookBackoffMs, this.deps.config.webhookBackoffMaxMs, this.deps.random))) : 0;
    await this.db.transaction().execute(async (tx) => {
      await tx
        .updateTable("deliveries")
        .set({
          status,
          attempt_count: attempt,
          last_http_status: httpStatus,
          error: error.slice(0, 1000),
          last_attempt_at: sql<Date>`clock_timestamp()` as never,
          next_attempt_at: status === 2 ? (sql<Date>`clock_timestamp() + ${delay}::int8 * interval '1 millisecond'` as never) : null,
          completed_at: status === 2 ? null : (sql<Date>`clock_timestamp()` as never),
          lease_until: null,
        })
        .where("id", "=", d.id)
        .execute();
      await this.event(tx, `delivery.${status === 3 ? "succeeded" : status === 4 ? "failed" : "retrying"}`, d.id, d.tenant, { attempt, http_status: httpStatus, error });
    });
    if (status === 2) {
      const timer = setTimeout(() => this.requestTick(), delay + 5);
      timer.unref?.();
    }
  }

  private async applyRetention(): Promise<void> {
    const c = this.deps.config;
    const older = (ms: number) => sql<Date>`now() - ${ms}::int8 * interval '1 millisecond'`;
    await this.db.deleteFrom("probe_samples").where("probed_at", "<", older(c.sampleRetentionMs)).execute();
    await this.db.deleteFrom("status_changes").where("changed_at", "<", older(c.historyRetentionMs)).execute();
    await this.db.deleteFrom("alerts").where("state", "=", 2).where("resolved_at", "<", older(c.historyRetentionMs)).execute();
    await this.db.deleteFrom("deliveries").where("completed_at", "<", older(c.historyRetentionMs)).execute();
    await this.db.deleteFrom("silences").where("ends_at", "<", older(c.historyRetentionMs)).execute();
  }

  /** For tests and GetHealth: the in-memory runtime of a target on this replica. */
  runtime(id: string): HealthView | undefined {
    const t = this.targets.get(id);
    return t ? this.healthView(t) : undefined;
  }
}

const EVENT_NAMES = { 1: "FIRING", 2: "RESOLVED", 3: "REPEAT" } as const;

function formatMs(ms: number): string {
  if (ms % 60_000 === 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}

function parseRetryAfter(value: string | null): number {
  if (!value) return 0;
  if (/^\d+$/.test(value.trim())) return Number(value.trim()) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? 0 : Math.max(0, at - Date.now());
}

function ruleFromRow(row: { id: string; tenant: string; name: string; target_id: string; spec: unknown; created_at: Date }): RuleRecord {
  const spec = row.spec as Omit<RuleRecord, "id" | "tenant" | "name" | "targetId" | "createdAt">;
  return { ...spec, id: row.id, tenant: row.tenant, name: row.name, targetId: row.target_id, createdAt: row.created_at };
}

function decodeTimeToken(token: string): { k: string; id: string } | undefined {
  const value = decodeToken(token, (v): v is { k: string; id: string } => {
    const o = v as { k?: unknown; id?: unknown };
    return typeof o?.k === "string" && /^-?\d{1,20}$/.test(o.k) && typeof o.id === "string";
  });
  if (token !== "" && !value) throw new PageTokenError();
  return value;
}

function pageOf<T extends { k: string; id: string }>(rows: T[], pageSize: number): Page<Omit<T, "k">> {
  const items = rows.slice(0, pageSize);
  const last = items[items.length - 1];
  return {
    items: items.map(({ k: _k, ...rest }) => rest),
    nextPageToken: rows.length > pageSize && last ? encodeToken({ k: last.k, id: last.id }) : "",
  };
}
