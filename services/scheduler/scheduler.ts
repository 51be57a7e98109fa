import { randomUUID } from "node:crypto";
import type { JsonObject } from "@bufbuild/protobuf";
import { sql, type Kysely, type RawBuilder, type Selectable, type Transaction } from "kysely";
import {
  DstRepeatedPolicy,
  DstSkippedPolicy,
  FiringKind,
  FiringOutcome,
  OverlapPolicy,
  TriggerDispatchState,
} from "../../gen/orca/scheduler/v1/scheduler_pb.js";
import type { Database } from "../kit/db/database.js";
import { AbortedError, AlreadyExistsError, NotFoundError, ResourceExhaustedError, UnavailableError } from "../kit/errors.js";
import type { Logger } from "../kit/telemetry/logger.js";
import { sleep } from "./adapters.js";
import { compileFilter, compileMapping, type EventVars, type Filter, type Mapping } from "./cel.js";
import type { SchedulerConfig } from "./config.js";
import { CompiledCron, jitterFor, type CronSpec, type Occurrence } from "./cron.js";
import type { SchedulerMetrics } from "./metrics.js";
import { RunStartError, type Leadership, type LeaderElector, type RunStarter } from "./ports.js";
import type { DispatchesTable, FiringsTable, SchedulerTables, SchedulesTable, TriggersTable } from "./schema.js";

/**
 * The Scheduler's domain: schedules, the firer (elected leader), firings, events and triggers.
 * No transport here: the Orchestrator and the Lock service come in through the ports.
 *
 * Exactly once per (schedule, scheduled time), in two steps:
 *  1. MATERIALIZE (firer only, fenced): in one transaction, every occurrence at or before now is
 *     written as a firings row with a unique (schedule_id, fire_key), ON CONFLICT DO NOTHING, and
 *     the schedule's cursor moves past it. A second firer (or a retry) cannot create a second row.
 *  2. DISPATCH: a PENDING row goes through the overlap policy and StartRun with the idempotency
 *     key `orca-schedule/<id>/<unix ms>`. If the firer dies between StartRun and recording the run,
 *     the next firer finds the row still PENDING and calls StartRun again with the same key: the
 *     Orchestrator returns the same run (`existing`). So a row never yields two runs.
 * Fencing: every firer transaction first raises `fence.token` to its lease's fencing token and
 * fails if a higher token was already seen, so a paused ex-leader cannot write after takeover.
 *
 * Clock: fire times are wall-clock instants, so the firer uses its own clock (Date.now) to decide
 * what is due; the Lock lease (database clock) decides WHO fires. Replicas need NTP-synced clocks.
 */

export const WAKE_CHANNEL = "orca_scheduler_wake";

export type ScheduleRow = Selectable<SchedulesTable>;
export type FiringRow = Selectable<FiringsTable>;
export type TriggerRow = Selectable<TriggersTable>;
export type DispatchRow = Selectable<DispatchesTable>;

export interface ScheduleFields {
  name: string;
  cron: string;
  timezone: string;
  dstSkipped: DstSkippedPolicy;
  dstRepeated: DstRepeatedPolicy;
  startAt?: number;
  endAt?: number;
  jitterMs: number;
  overlap: OverlapPolicy;
  catchupMs: number;
  workflowName: string;
  workflowVersion: number;
  input: JsonObject;
}

export type ScheduleField = keyof ScheduleFields;

export class StaleFirerError extends AbortedError {
  constructor() {
    super("a newer firer holds the lease (fencing token superseded)");
  }
}

function isUniqueViolation(error: unknown): boolean {
  return (error as { code?: string })?.code === "23505";
}

export function specOf(row: Pick<ScheduleRow, "cron" | "timezone" | "dst_skipped" | "dst_repeated" | "start_at" | "end_at">): CronSpec {
  return {
    cron: row.cron,
    timezone: row.timezone,
    dstSkipped: row.dst_skipped,
    dstRepeated: row.dst_repeated,
    startAt: row.start_at?.getTime(),
    endAt: row.end_at?.getTime(),
  };
}

/** Next fired instant after `after` and next occurrence of any kind (fired or a skipped record). */
function nextTimes(compiled: CompiledCron, after: number): { nextFire?: number; nextCheck?: number } {
  let cursor = after;
  let nextCheck: number | undefined;
  for (let i = 0; i < 1000; i++) {
    const group = compiled.nextGroup(cursor);
    if (group.length === 0) return { nextCheck };
    nextCheck ??= group[0].instant;
    if (group.some((o) => o.fire)) return { nextFire: group[0].instant, nextCheck };
    cursor = group[0].instant;
  }
  return { nextCheck };
}

interface Page<T> {
  items: T[];
  next?: string;
}

export class Scheduler {
  private readonly db: Kysely<SchedulerTables>;
  private readonly compiledCache = new Map<string, CompiledCron>();
  private readonly triggerCache = new Map<string, { filter: Filter; mapping: Mapping }>();
  private readonly scheduleLocks = new Map<string, Promise<void>>();
  private wakeResolvers: Array<() => void> = [];
  private unlisten?: () => Promise<void>;
  private readonly stopController = new AbortController();
  private loop?: Promise<void>;
  private leader = false;

  constructor(
    private readonly database: Database,
    private readonly config: SchedulerConfig,
    private readonly runs: RunStarter,
    private readonly logger: Logger,
    private readonly metrics: SchedulerMetrics,
    private readonly now: () => number = Date.now,
  ) {
    this.db = database.db.withSchema("orca_scheduler") as Kysely<SchedulerTables>;
  }

  /** Starts the election and, while leader, the firing loop. */
  async start(elector: LeaderElector): Promise<void> {
    this.unlisten = await this.database.listen(WAKE_CHANNEL, () => this.wake());
    this.loop = elector.run((leadership) => this.lead(leadership), this.stopController.signal).catch((error) => {
      this.logger.error({ err: error }, "scheduler: election loop ended with an error");
    });
  }

  async close(): Promise<void> {
    this.stopController.abort();
    this.wake();
    await this.loop;
    await this.unlisten?.();
  }

  isLeader(): boolean {
    return this.leader;
  }

  private wake(): void {
    const resolvers = this.wakeResolvers;
    this.wakeResolvers = [];
    for (const r of resolvers) r();
  }

  private compiled(row: ScheduleRow): CompiledCron {
    const key = `${row.id}|${row.revision}`;
    let c = this.compiledCache.get(key);
    if (!c) {
      c = new CompiledCron(specOf(row));
      if (this.compiledCache.size > 50_000) this.compiledCache.clear();
      this.compiledCache.set(key, c);
    }
    return c;
  }

  // ---------------------------------------------------------------------------------------------
  // Schedules

  private async checkWorkflow(tenant: string, name: string, version: number): Promise<void> {
    try {
      await this.runs.checkWorkflow(tenant, name, version);
    } catch (error) {
      if (error instanceof RunStartError && error.notFound) {
        throw new NotFoundError(`workflow "${name}"${version ? ` version ${version}` : ""} is not registered in the Orchestrator (tenant "${tenant}")`);
      }
      if (error instanceof RunStartError && error.retryable) throw new UnavailableError(`the Orchestrator cannot be reached: ${error.message}`);
      throw error;
    }
  }

  async createSchedule(tenant: string, fields: ScheduleFields): Promise<ScheduleRow> {
    await this.checkWorkflow(tenant, fields.workflowName, fields.workflowVersion);
    const now = this.now();
    const id = randomUUID();
    const spec: CronSpec = { cron: fields.cron, timezone: fields.timezone, dstSkipped: fields.dstSkipped, dstRepeated: fields.dstRepeated, startAt: fields.startAt, endAt: fields.endAt };
    const { nextFire, nextCheck } = nextTimes(new CompiledCron(spec), now);
    try {
      return await this.db.transaction().execute(async (trx) => {
        const { count } = await trx.selectFrom("schedules").select(sql<string>`count(*)`.as("count")).where("tenant", "=", tenant).executeTakeFirstOrThrow();
        if (Number(count) >= this.config.maxSchedulesPerTenant) throw new ResourceExhaustedError(`tenant "${tenant}" has reached its limit of ${this.config.maxSchedulesPerTenant} schedules`);
        const row = await trx
          .insertInto("schedules")
          .values({
            id,
            tenant,
            ...this.columns(fields),
            next_fire_at: nextFire === undefined ? null : new Date(nextFire),
            next_check_at: nextCheck === undefined ? null : new Date(nextCheck),
            cursor_at: new Date(now),
            revision: 1,
          })
          .returningAll()
          .executeTakeFirstOrThrow();
        await this.log(trx, "schedule.created", id, tenant, { name: fields.name, cron: fields.cron, timezone: fields.timezone });
        await this.notify(trx);
        return row;
      });
    } catch (error) {
      if (isUniqueViolation(error)) throw new AlreadyExistsError(`schedule.name: tenant "${tenant}" already has a schedule named "${fields.name}"`);
      throw error;
    }
  }

  private columns(fields: ScheduleFields) {
    return {
      name: fields.name,
      cron: fields.cron,
      timezone: fields.timezone,
      dst_skipped: fields.dstSkipped,
      dst_repeated: fields.dstRepeated,
      start_at: fields.startAt === undefined ? null : new Date(fields.startAt),
      end_at: fields.endAt === undefined ? null : new Date(fields.endAt),
      jitter_ms: fields.jitterMs,
      overlap: fields.overlap,
      catchup_ms: fields.catchupMs,
      workflow_name: fields.workflowName,
      workflow_version: fields.workflowVersion,
      input: JSON.stringify(fields.input),
    };
  }

  fieldsOf(row: ScheduleRow): ScheduleFields {
    return {
      name: row.name,
      cron: row.cron,
      timezone: row.timezone,
      dstSkipped: row.dst_skipped,
      dstRepeated: row.dst_repeated,
      startAt: row.start_at?.getTime(),
      endAt: row.end_at?.getTime(),
      jitterMs: row.jitter_ms,
      overlap: row.overlap,
      catchupMs: Number(row.catchup_ms),
      workflowName: row.workflow_name,
      workflowVersion: row.workflow_version,
      input: row.input as JsonObject,
    };
  }

  async getSchedule(id: string, visibleTenant?: string): Promise<ScheduleRow> {
    const row = await this.db.selectFrom("schedules").selectAll().where("id", "=", id).executeTakeFirst();
    if (!row || (visibleTenant !== undefined && row.tenant !== visibleTenant)) throw new NotFoundError(`no schedule has id "${id}"`);
    return row;
  }

  /**
   * Applies `patch` (already validated, merged by the handler from the mask) with optimistic
   * concurrency, and recomputes next_fire_at from now.
   */
  async updateSchedule(id: string, visibleTenant: string | undefined, build: (current: ScheduleFields) => ScheduleFields, expectedRevision: bigint): Promise<ScheduleRow> {
    const current = await this.getSchedule(id, visibleTenant);
    const fields = build(this.fieldsOf(current));
    if (fields.workflowName !== current.workflow_name || fields.workflowVersion !== current.workflow_version) {
      await this.checkWorkflow(current.tenant, fields.workflowName, fields.workflowVersion);
    }
    const now = this.now();
    const spec: CronSpec = { cron: fields.cron, timezone: fields.timezone, dstSkipped: fields.dstSkipped, dstRepeated: fields.dstRepeated, startAt: fields.startAt, endAt: fields.endAt };
    const { nextFire, nextCheck } = nextTimes(new CompiledCron(spec), now);
    try {
      return await this.db.transaction().execute(async (trx) => {
        const locked = await trx.selectFrom("schedules").select(["revision", "paused"]).where("id", "=", id).forUpdate().executeTakeFirst();
        if (!locked) throw new NotFoundError(`no schedule has id "${id}"`);
        if (expectedRevision !== 0n && BigInt(locked.revision) !== expectedRevision) {
          throw new AbortedError(`schedule "${id}" is at revision ${locked.revision}, not ${expectedRevision}: re-read and retry`);
        }
        const row = await trx
          .updateTable("schedules")
          .set({
            ...this.columns(fields),
            next_fire_at: locked.paused || nextFire === undefined ? null : new Date(nextFire),
            next_check_at: nextCheck === undefined ? null : new Date(nextCheck),
            cursor_at: new Date(now),
            updated_at: sql`now()`,
            revision: sql`revision + 1`,
          })
          .where("id", "=", id)
          .returningAll()
          .executeTakeFirstOrThrow();
        await this.log(trx, "schedule.updated", id, row.tenant, { revision: String(row.revision) });
        await this.notify(trx);
        return row;
      });
    } catch (error) {
      if (isUniqueViolation(error)) throw new AlreadyExistsError(`schedule.name: tenant "${current.tenant}" already has a schedule named "${fields.name}"`);
      throw error;
    }
  }

  async deleteSchedule(id: string, visibleTenant?: string): Promise<void> {
    const row = await this.getSchedule(id, visibleTenant);
    await this.db.transaction().execute(async (trx) => {
      const deleted = await trx.deleteFrom("schedules").where("id", "=", id).executeTakeFirst();
      if (Number(deleted.numDeletedRows) === 0) throw new NotFoundError(`no schedule has id "${id}"`);
      await this.log(trx, "schedule.deleted", id, row.tenant, { name: row.name });
    });
  }

  async pauseSchedule(id: string, visibleTenant: string | undefined, note: string): Promise<ScheduleRow> {
    await this.getSchedule(id, visibleTenant);
    return this.db.transaction().execute(async (trx) => {
      const row = await trx
        .updateTable("schedules")
        .set({ paused: true, pause_note: note, paused_at: sql`coalesce(paused_at, now())`, next_fire_at: null, updated_at: sql`now()`, revision: sql`revision + 1` })
        .where("id", "=", id)
        .returningAll()
        .executeTakeFirst();
      if (!row) throw new NotFoundError(`no schedule has id "${id}"`);
      await this.log(trx, "schedule.paused", id, row.tenant, { note });
      return row;
    });
  }

  async resumeSchedule(id: string, visibleTenant?: string): Promise<ScheduleRow> {
    const current = await this.getSchedule(id, visibleTenant);
    if (!current.paused) return current;
    // Fire times that passed while paused are neither fired nor recorded: the cursor jumps to now.
    const now = this.now();
    const { nextFire, nextCheck } = nextTimes(this.compiled(current), now);
    return this.db.transaction().execute(async (trx) => {
      const row = await trx
        .updateTable("schedules")
        .set({
          paused: false,
          pause_note: "",
          paused_at: null,
          cursor_at: new Date(now),
          next_fire_at: nextFire === undefined ? null : new Date(nextFire),
          next_check_at: nextCheck === undefined ? null : new Date(nextCheck),
          updated_at: sql`now()`,
          revision: sql`revision + 1`,
        })
        .where("id", "=", id)
        .where("paused", "=", true)
        .returningAll()
        .executeTakeFirst();
      if (!row) return this.getSchedule(id, visibleTenant);
      await this.log(trx, "schedule.resumed", id, row.tenant, {});
      await this.notify(trx);
      return row;
    });
  }

  async listSchedules(tenant: string, filter: { workflowName: string; paused?: boolean }, pageSize: number, after?: string): Promise<Page<ScheduleRow>> {
    let q = this.db.selectFrom("schedules").selectAll().where("tenant", "=", tenant);
    if (filter.workflowName) q = q.where("workflow_name", "=", filter.workflowName);
    if (filter.paused !== undefined) q = q.where("paused", "=", filter.paused);
    if (after !== undefined) q = q.where("name", ">", after);
    const rows = await q.orderBy("name").limit(pageSize + 1).execute();
    const items = rows.slice(0, pageSize);
    return { items, next: rows.length > pageSize ? items[items.length - 1].name : undefined };
  }

  // ---------------------------------------------------------------------------------------------
  // Firings: manual, backfill, listing

  async triggerSchedule(id: string, visibleTenant: string | undefined, overlap: OverlapPolicy): Promise<FiringRow> {
    const schedule = await this.getSchedule(id, visibleTenant);
    const now = this.now();
    const firingId = randomUUID();
    return this.withScheduleLock(id, async () => {
      const firing: FiringRow = {
        id: firingId,
        schedule_id: id,
        tenant: schedule.tenant,
        fire_key: `manual/${firingId}`,
        scheduled_time: new Date(now),
        due_at: new Date(now),
        actual_time: null,
        run_id: "",
        outcome: FiringOutcome.PENDING,
        kind: FiringKind.MANUAL,
        error: "",
        cancelled_run_ids: [],
        overlap,
        run_final: false,
        give_up_at: new Date(now),
        created_at: new Date(now),
      };
      // Decide first, record after: an unreachable Orchestrator records nothing (contract).
      const decision = await this.decide(schedule, firing, undefined, { manual: true });
      return decision;
    });
  }

  async backfill(id: string, visibleTenant: string | undefined, from: number, to: number, overlap: OverlapPolicy): Promise<{ enqueued: number; already: number }> {
    const schedule = await this.getSchedule(id, visibleTenant);
    // Bounds, pause and jitter do not apply; DST policies do.
    const compiled = new CompiledCron({ ...specOf(schedule), startAt: undefined, endAt: undefined });
    const { occurrences, truncated } = compiled.between(from, to, 10_000);
    if (truncated) throw new ResourceExhaustedError(`the range holds more than 10,000 fire times`);
    if (occurrences.length === 0) return { enqueued: 0, already: 0 };
    const now = this.now();
    return this.db.transaction().execute(async (trx) => {
      let enqueued = 0;
      for (let i = 0; i < occurrences.length; i += 1000) {
        const chunk = occurrences.slice(i, i + 1000);
        const inserted = await trx
          .insertInto("firings")
          .values(
            chunk.map((o) => ({
              ...this.firingValues(schedule, o, now, o.fire ? FiringOutcome.PENDING : FiringOutcome.SKIPPED_DST, FiringKind.BACKFILL, now),
              overlap,
              give_up_at: new Date(now + Math.max(Number(schedule.catchup_ms), 5 * 60_000)),
            })),
          )
          .onConflict((oc) => oc.columns(["schedule_id", "fire_key"]).doNothing())
          .returning("id")
          .execute();
        enqueued += inserted.length;
      }
      await this.log(trx, "schedule.backfilled", id, schedule.tenant, { from: new Date(from).toISOString(), to: new Date(to).toISOString(), enqueued });
      await this.notify(trx);
      return { enqueued, already: occurrences.length - enqueued };
    });
  }

  async listFirings(
    filter: { scheduleId?: string; tenant: string; after?: number; before?: number; outcomes: FiringOutcome[] },
    visibleTenant: string | undefined,
    pageSize: number,
    cursor?: { t: number; id: string },
  ): Promise<Page<FiringRow>> {
    let q = this.db.selectFrom("firings").selectAll();
    if (filter.scheduleId) {
      await this.getSchedule(filter.scheduleId, visibleTenant);
      q = q.where("schedule_id", "=", filter.scheduleId);
    } else {
      q = q.where("tenant", "=", filter.tenant);
    }
    if (filter.after !== undefined) q = q.where("scheduled_time", ">=", new Date(filter.after));
    if (filter.before !== undefined) q = q.where("scheduled_time", "<", new Date(filter.before));
    if (filter.outcomes.length > 0) q = q.where("outcome", "in", filter.outcomes);
    if (cursor) {
      const t = new Date(cursor.t);
      q = q.where((eb) => eb.or([eb("scheduled_time", "<", t), eb.and([eb("scheduled_time", "=", t), eb("id", "<", cursor.id)])]));
    }
    const rows = await q.orderBy("scheduled_time", "desc").orderBy("id", "desc").limit(pageSize + 1).execute();
    const items = rows.slice(0, pageSize);
    const last = items[items.length - 1];
    return { items, next: rows.length > pageSize ? JSON.stringify({ t: last.scheduled_time.getTime(), id: last.id }) : undefined };
  }

  private firingValues(schedule: ScheduleRow, o: Occurrence, now: number, outcome: FiringOutcome, kind: FiringKind, due: number) {
    return {
      id: randomUUID(),
      schedule_id: schedule.id,
      tenant: schedule.tenant,
      fire_key: o.key,
      scheduled_time: new Date(o.instant),
      due_at: new Date(due),
      outcome,
      kind,
      give_up_at: new Date(Math.max(now, o.instant + Number(schedule.catchup_ms))),
    };
  }

  // ---------------------------------------------------------------------------------------------
  // The firer

  private async lead(leadership: Leadership): Promise<void> {
    this.leader = true;
    this.metrics.leader.set(1);
    let lastHousekeeping = 0;
    try {
      while (!leadership.signal.aborted) {
        try {
          await this.tick(leadership.fencingToken);
          if (this.now() - lastHousekeeping > 60_000) {
            lastHousekeeping = this.now();
            await this.housekeeping();
          }
        } catch (error) {
          if (error instanceof StaleFirerError) {
            this.logger.warn("scheduler: fenced off by a newer firer; stepping down");
            return;
          }
          this.logger.error({ err: error }, "scheduler: firer tick failed");
          await sleep(Math.min(1000, this.config.pollMs), leadership.signal);
        }
        await this.waitForWork(leadership.signal);
      }
    } finally {
      this.leader = false;
      this.metrics.leader.set(0);
    }
  }

  /** Sleeps until the next due instant (schedule, pending firing or dispatch), a NOTIFY, or pollMs. */
  private async waitForWork(signal: AbortSignal): Promise<void> {
    const wakeUp = new Promise<void>((resolve) => this.wakeResolvers.push(resolve));
    // One round trip: the next due instants and whether anything is buffered.
    const { rows } = await sql<{ s: Date | null; f: Date | null; d: Date | null; b: boolean }>`select
        (select min(next_check_at) from orca_scheduler.schedules where not paused and next_check_at is not null) as s,
        (select min(due_at) from orca_scheduler.firings where outcome = ${FiringOutcome.PENDING}) as f,
        (select min(next_attempt_at) from orca_scheduler.trigger_dispatches where state = ${TriggerDispatchState.PENDING}) as d,
        exists (select 1 from orca_scheduler.firings where outcome = ${FiringOutcome.BUFFERED}) as b`.execute(this.db);
    const row = rows[0];
    const now = this.now();
    let until = now + (row?.b ? Math.min(this.config.pollMs, 250) : this.config.pollMs);
    for (const t of [row?.s, row?.f, row?.d]) if (t) until = Math.min(until, new Date(t).getTime());
    if (until <= now) return;
    const timer = new AbortController();
    const onAbort = () => timer.abort();
    signal.addEventListener("abort", onAbort, { once: true });
    await Promise.race([sleep(until - now, timer.signal), wakeUp]);
    timer.abort();
    signal.removeEventListener("abort", onAbort);
  }

  /** One pass of the firer: materialize due occurrences, dispatch due firings, release buffers, retry dispatches. */
  async tick(token: bigint): Promise<void> {
    const now = this.now();
    await this.materialize(token, now);
    await this.dispatchDue(token);
    await this.releaseBuffered(token);
    await this.retryDispatches();
  }

  private async fence(trx: Transaction<SchedulerTables>, token: bigint): Promise<void> {
    const row = await trx
      .updateTable("fence")
      .set({ token: sql`greatest(token, ${token.toString()}::bigint)` })
      .where("id", "=", 1)
      .where("token", "<=", token.toString() as never)
      .returning("token")
      .executeTakeFirst();
    if (!row) throw new StaleFirerError();
  }

  private async materialize(token: bigint, now: number): Promise<void> {
    for (;;) {
      const done = await this.db.transaction().execute(async (trx) => {
        await this.fence(trx, token);
        const due = await trx
          .selectFrom("schedules")
          .selectAll()
          .where("paused", "=", false)
          .where("next_check_at", "<=", new Date(now))
          .orderBy("next_check_at")
          .limit(500)
          .forUpdate()
          .skipLocked()
          .execute();
        if (due.length === 0) return true;
        const firings: Array<ReturnType<Scheduler["firingValues"]> & { error?: string }> = [];
        const cursors: RawBuilder<unknown>[] = [];
        for (const schedule of due) {
          const compiled = this.compiled(schedule);
          const catchup = Number(schedule.catchup_ms);
          let cursor = schedule.cursor_at.getTime();
          let missed = 0;
          for (;;) {
            const group = compiled.nextGroup(cursor);
            if (group.length === 0 || group[0].instant > now) break;
            for (const o of group) {
              const lateness = now - o.instant;
              if (!o.fire) firings.push(this.firingValues(schedule, o, now, FiringOutcome.SKIPPED_DST, FiringKind.SCHEDULED, now));
              else if (lateness <= this.config.lateThresholdMs) {
                firings.push(this.firingValues(schedule, o, now, FiringOutcome.PENDING, FiringKind.SCHEDULED, o.instant + jitterFor(schedule.id, o.instant, schedule.jitter_ms)));
              } else if (lateness <= catchup) {
                firings.push(this.firingValues(schedule, o, now, FiringOutcome.PENDING, FiringKind.CATCHUP, o.instant + jitterFor(schedule.id, o.instant, schedule.jitter_ms)));
              } else {
                missed++;
                firings.push({ ...this.firingValues(schedule, o, now, FiringOutcome.MISSED, FiringKind.CATCHUP, now), error: `missed by ${lateness} ms, beyond the catch-up window` });
              }
            }
            cursor = group[0].instant;
            if (missed >= this.config.maxMissedRecords) {
              // A very long downtime: stop writing MISSED rows and skip to the catch-up window.
              cursor = Math.max(cursor, now - Math.max(catchup, this.config.lateThresholdMs) - 1);
              missed = 0;
            }
          }
          const { nextFire, nextCheck } = nextTimes(compiled, cursor);
          cursors.push(sql`(${schedule.id}, ${new Date(cursor).toISOString()}::timestamptz, ${nextFire === undefined ? null : new Date(nextFire).toISOString()}::timestamptz, ${nextCheck === undefined ? null : new Date(nextCheck).toISOString()}::timestamptz)`);
        }
        // One statement for the whole batch (100s of schedules per second under load).
        await sql`update orca_scheduler.schedules as s set cursor_at = v.cursor_at, next_fire_at = v.next_fire_at, next_check_at = v.next_check_at
          from (values ${sql.join(cursors)}) as v(id, cursor_at, next_fire_at, next_check_at) where s.id = v.id`.execute(trx);
        for (let i = 0; i < firings.length; i += 1000) {
          const chunk = firings.slice(i, i + 1000);
          const inserted = await trx
            .insertInto("firings")
            .values(chunk.map((f) => ({ ...f, error: f.error ?? "" })))
            .onConflict((oc) => oc.columns(["schedule_id", "fire_key"]).doNothing())
            .returning(["id", "schedule_id", "tenant", "outcome", "kind", "scheduled_time"])
            .execute();
          if (inserted.length > 0) {
            await trx
              .insertInto("events")
              .values(inserted.map((f) => ({ kind: "firing.recorded", subject: f.schedule_id, tenant: f.tenant, payload: JSON.stringify({ firing: f.id, outcome: FiringOutcome[f.outcome], kind: FiringKind[f.kind], scheduled: f.scheduled_time.toISOString() }) })))
              .execute();
            for (const f of inserted) if (f.outcome !== FiringOutcome.PENDING) this.metrics.firings.inc({ outcome: FiringOutcome[f.outcome], kind: FiringKind[f.kind] });
          }
        }
        return due.length < 500;
      });
      if (done) return;
    }
  }

  private async dispatchDue(token: bigint): Promise<void> {
    for (;;) {
      const now = this.now();
      const pending = await this.db
        .selectFrom("firings")
        .selectAll()
        .where("outcome", "=", FiringOutcome.PENDING)
        .where("due_at", "<=", new Date(now))
        .orderBy("due_at")
        .limit(1000)
        .execute();
      if (pending.length === 0) return;
      const bySchedule = new Map<string, FiringRow[]>();
      for (const f of pending) {
        const list = bySchedule.get(f.schedule_id) ?? [];
        list.push(f);
        bySchedule.set(f.schedule_id, list);
      }
      const ids = [...bySchedule.keys()];
      const schedules = new Map((await this.db.selectFrom("schedules").selectAll().where("id", "in", ids).execute()).map((s) => [s.id, s]));
      // ALLOW_ALL firings need no per-schedule ordering or state: start them concurrently and
      // record the results in one fenced transaction. The others go one by one per schedule.
      const fast: Array<{ schedule: ScheduleRow; firing: FiringRow }> = [];
      const slow: string[] = [];
      for (const id of ids) {
        const schedule = schedules.get(id);
        if (!schedule) continue; // deleted meanwhile: its firings went with it
        const list = bySchedule.get(id) ?? [];
        if (list.every((f) => (f.overlap || schedule.overlap) === OverlapPolicy.ALLOW_ALL)) for (const firing of list) fast.push({ schedule, firing });
        else slow.push(id);
      }
      await this.startBatch(fast, token);
      await this.forEachLimited(slow, async (id) => {
        const schedule = schedules.get(id)!;
        await this.withScheduleLock(id, async () => {
          for (const f of (bySchedule.get(id) ?? []).sort((a, b) => a.scheduled_time.getTime() - b.scheduled_time.getTime())) {
            await this.decide(schedule, f, token);
          }
        });
      });
      // Rows whose StartRun failed retryably got a later due_at, so the next query moves on.
      if (pending.length < 1000) return;
    }
  }

  /** Starts ALLOW_ALL firings concurrently; successes are recorded in one fenced transaction. */
  private async startBatch(items: Array<{ schedule: ScheduleRow; firing: FiringRow }>, token: bigint): Promise<void> {
    if (items.length === 0) return;
    const started: Array<{ firing: FiringRow; runId: string; actual: number }> = [];
    await this.forEachLimited(items, async ({ schedule, firing }) => {
      const actual = this.now();
      try {
        const { runId } = await this.runs.startRun({
          tenant: schedule.tenant,
          workflowName: schedule.workflow_name,
          workflowVersion: schedule.workflow_version,
          input: schedule.input as JsonObject,
          idempotencyKey: this.idempotencyKey(firing),
        });
        started.push({ firing, runId, actual });
        if (firing.kind !== FiringKind.MANUAL && firing.kind !== FiringKind.BACKFILL) this.metrics.lateness.observe({ kind: FiringKind[firing.kind] }, (actual - firing.scheduled_time.getTime()) / 1000);
      } catch (error) {
        if (!(error instanceof RunStartError)) throw error;
        if (error.retryable) await this.retryLater(firing, token, error);
        else await this.finish(firing, token, { outcome: FiringOutcome.FAILED, error: error.message });
      }
    });
    if (started.length === 0) return;
    await this.db.transaction().execute(async (trx) => {
      await this.fence(trx, token);
      const values = started.map((s) => sql`(${s.firing.id}, ${s.runId}, ${new Date(s.actual).toISOString()}::timestamptz)`);
      await sql`update orca_scheduler.firings as f set outcome = ${FiringOutcome.STARTED}, run_id = v.run_id, actual_time = v.actual_time, error = ''
        from (values ${sql.join(values)}) as v(id, run_id, actual_time) where f.id = v.id and f.outcome = ${FiringOutcome.PENDING}`.execute(trx);
      await trx
        .insertInto("events")
        .values(started.map((s) => ({ kind: "firing.updated", subject: s.firing.schedule_id, tenant: s.firing.tenant, payload: JSON.stringify({ firing: s.firing.id, outcome: "STARTED", run: s.runId }) })))
        .execute();
    });
    for (const s of started) this.metrics.firings.inc({ outcome: "STARTED", kind: FiringKind[s.firing.kind] });
  }

  private async releaseBuffered(token: bigint): Promise<void> {
    const rows = await this.db.selectFrom("firings").select("schedule_id").distinct().where("outcome", "=", FiringOutcome.BUFFERED).limit(1000).execute();
    if (rows.length === 0) return;
    const schedules = await this.db.selectFrom("schedules").selectAll().where("id", "in", rows.map((r) => r.schedule_id)).execute();
    await this.forEachLimited(schedules, (schedule) =>
      this.withScheduleLock(schedule.id, async () => {
        await this.startOldestBufferedIfIdle(schedule, token);
      }),
    );
  }

  private async forEachLimited<T>(items: T[], fn: (item: T) => Promise<void>): Promise<void> {
    let next = 0;
    const worker = async () => {
      while (next < items.length) {
        const item = items[next++];
        try {
          await fn(item);
        } catch (error) {
          if (error instanceof StaleFirerError) throw error;
          this.logger.error({ err: error }, "scheduler: dispatch failed");
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.config.dispatchConcurrency, items.length) }, worker));
  }

  /** Serializes overlap decisions per schedule within this process. */
  private async withScheduleLock<T>(id: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.scheduleLocks.get(id) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((resolve) => (release = resolve));
    const chained = previous.then(() => mine);
    this.scheduleLocks.set(id, chained);
    await previous;
    try {
      return await fn();
    } finally {
      release();
      if (this.scheduleLocks.get(id) === chained) this.scheduleLocks.delete(id);
    }
  }

  /** Runs of this schedule that have not reached a final state (asks the Orchestrator, remembers finals). */
  private async activeRuns(schedule: ScheduleRow): Promise<string[]> {
    const rows = await this.db.selectFrom("firings").select(["id", "run_id"]).where("schedule_id", "=", schedule.id).where("run_id", "<>", "").where("run_final", "=", false).execute();
    const active: string[] = [];
    for (const row of rows) {
      if (await this.runs.isRunFinal(schedule.tenant, row.run_id)) {
        await this.db.updateTable("firings").set({ run_final: true }).where("id", "=", row.id).execute();
      } else {
        active.push(row.run_id);
      }
    }
    return active;
  }

  private async startOldestBufferedIfIdle(schedule: ScheduleRow, token: bigint | undefined): Promise<boolean> {
    const oldest = await this.db.selectFrom("firings").selectAll().where("schedule_id", "=", schedule.id).where("outcome", "=", FiringOutcome.BUFFERED).orderBy("scheduled_time").orderBy("created_at").limit(1).executeTakeFirst();
    if (!oldest) return false;
    if ((await this.activeRuns(schedule)).length > 0) return false;
    await this.startFiring(schedule, oldest, token, [], FiringOutcome.BUFFERED);
    return true;
  }

  /**
   * Applies the overlap policy to one firing and starts it, buffers it or skips it. For manual
   * firings (`manual`), the row is inserted here, after the decision, and an unreachable
   * Orchestrator throws UNAVAILABLE with nothing recorded.
   */
  private async decide(schedule: ScheduleRow, firing: FiringRow, token: bigint | undefined, options: { manual?: boolean } = {}): Promise<FiringRow> {
    const policy: OverlapPolicy = firing.overlap || schedule.overlap;
    const record = async (outcome: FiringOutcome, error = ""): Promise<FiringRow> => {
      if (options.manual) {
        const row = await this.db.transaction().execute(async (trx) => {
          const inserted = await trx
            .insertInto("firings")
            .values({ ...firing, cancelled_run_ids: JSON.stringify(firing.cancelled_run_ids), outcome, error })
            .returningAll()
            .executeTakeFirstOrThrow();
          await this.log(trx, "firing.recorded", schedule.id, schedule.tenant, { firing: firing.id, outcome: FiringOutcome[outcome], kind: "MANUAL" });
          return inserted;
        });
        this.metrics.firings.inc({ outcome: FiringOutcome[outcome], kind: FiringKind[firing.kind] });
        return row;
      }
      return this.finish(firing, token, { outcome, error });
    };
    let cancelled: string[] = [];
    if (policy !== OverlapPolicy.ALLOW_ALL) {
      let active: string[];
      try {
        active = await this.activeRuns(schedule);
        // Older buffered firings go first (oldest first), if nothing is running.
        if (active.length === 0 && policy !== OverlapPolicy.CANCEL_OTHER && (await this.startOldestBufferedIfIdle(schedule, token))) {
          active = await this.activeRuns(schedule);
        }
      } catch (error) {
        if (error instanceof RunStartError && error.retryable) return this.retryLater(firing, token, error, options.manual);
        throw error;
      }
      if (active.length > 0) {
        if (policy === OverlapPolicy.SKIP) return record(FiringOutcome.SKIPPED_OVERLAP, `run ${active[0]} of this schedule is still running`);
        if (policy === OverlapPolicy.BUFFER_ONE || policy === OverlapPolicy.BUFFER_ALL) {
          const { count } = await this.db.selectFrom("firings").select(sql<string>`count(*)`.as("count")).where("schedule_id", "=", schedule.id).where("outcome", "=", FiringOutcome.BUFFERED).executeTakeFirstOrThrow();
          const limit = policy === OverlapPolicy.BUFFER_ONE ? 1 : this.config.maxBuffered;
          if (Number(count) >= limit) {
            return record(FiringOutcome.SKIPPED_OVERLAP, policy === OverlapPolicy.BUFFER_ALL ? `the buffer is full (${limit} firings)` : "a firing is already buffered");
          }
          return record(FiringOutcome.BUFFERED);
        }
        if (policy === OverlapPolicy.CANCEL_OTHER) {
          for (const runId of active) {
            try {
              await this.runs.cancelRun(schedule.tenant, runId, `cancelled by schedule ${schedule.name} (overlap policy CANCEL_OTHER)`);
            } catch (error) {
              if (error instanceof RunStartError && error.retryable) return this.retryLater(firing, token, error, options.manual);
              throw error;
            }
            await this.db.updateTable("firings").set({ run_final: true }).where("schedule_id", "=", schedule.id).where("run_id", "=", runId).execute();
          }
          cancelled = active;
        }
      }
    }
    return this.startFiring(schedule, firing, token, cancelled, FiringOutcome.PENDING, options.manual);
  }

  private idempotencyKey(firing: Pick<FiringRow, "schedule_id" | "fire_key" | "kind" | "id">): string {
    return firing.kind === FiringKind.MANUAL ? `orca-schedule/${firing.schedule_id}/manual/${firing.id}` : `orca-schedule/${firing.schedule_id}/${firing.fire_key}`;
  }

  private async startFiring(schedule: ScheduleRow, firing: FiringRow, token: bigint | undefined, cancelled: string[], from: FiringOutcome, manual = false): Promise<FiringRow> {
    const actual = this.now();
    try {
      const { runId } = await this.runs.startRun({
        tenant: schedule.tenant,
        workflowName: schedule.workflow_name,
        workflowVersion: schedule.workflow_version,
        input: schedule.input as JsonObject,
        idempotencyKey: this.idempotencyKey(firing),
      });
      if (firing.kind !== FiringKind.MANUAL && firing.kind !== FiringKind.BACKFILL) this.metrics.lateness.observe({ kind: FiringKind[firing.kind] }, (actual - firing.scheduled_time.getTime()) / 1000);
      const update = { outcome: FiringOutcome.STARTED, run_id: runId, actual_time: new Date(actual), error: "", cancelled_run_ids: cancelled };
      if (manual) {
        const row = await this.db.transaction().execute(async (trx) => {
          const inserted = await trx
            .insertInto("firings")
            .values({ ...firing, ...update, cancelled_run_ids: JSON.stringify(cancelled) })
            .returningAll()
            .executeTakeFirstOrThrow();
          await this.log(trx, "firing.recorded", schedule.id, schedule.tenant, { firing: firing.id, outcome: "STARTED", kind: "MANUAL", run: runId });
          return inserted;
        });
        this.metrics.firings.inc({ outcome: "STARTED", kind: FiringKind[firing.kind] });
        return row;
      }
      return await this.finish(firing, token, update, from);
    } catch (error) {
      if (!(error instanceof RunStartError)) throw error;
      if (error.retryable) return this.retryLater(firing, token, error, manual);
      if (manual) {
        // Refused for good: record the manual firing as FAILED so the caller sees why.
        return this.recordManualFailed(firing, error.message);
      }
      return this.finish(firing, token, { outcome: FiringOutcome.FAILED, error: error.message }, from);
    }
  }

  private async recordManualFailed(firing: FiringRow, message: string): Promise<FiringRow> {
    const row = await this.db.transaction().execute(async (trx) => {
      const inserted = await trx.insertInto("firings").values({ ...firing, cancelled_run_ids: JSON.stringify([]), outcome: FiringOutcome.FAILED, error: message }).returningAll().executeTakeFirstOrThrow();
      await this.log(trx, "firing.recorded", firing.schedule_id, firing.tenant, { firing: firing.id, outcome: "FAILED", kind: "MANUAL" });
      return inserted;
    });
    this.metrics.firings.inc({ outcome: "FAILED", kind: "MANUAL" });
    return row;
  }

  private async retryLater(firing: FiringRow, token: bigint | undefined, error: RunStartError, manual?: boolean): Promise<FiringRow> {
    if (manual) throw new UnavailableError(`the Orchestrator cannot be reached: ${error.message}`);
    const now = this.now();
    if (now >= firing.give_up_at.getTime()) {
      return this.finish(firing, token, { outcome: FiringOutcome.FAILED, error: `StartRun kept failing until the catch-up window passed: ${error.message}` });
    }
    return this.finish(firing, token, { outcome: FiringOutcome.PENDING, error: error.message, due_at: new Date(now + this.config.retryMs) });
  }

  /** Records a firing's new state, fenced by the firer's token, only if it is still in state `from`. */
  private async finish(
    firing: FiringRow,
    token: bigint | undefined,
    update: { outcome: FiringOutcome; error?: string; run_id?: string; actual_time?: Date; cancelled_run_ids?: string[]; due_at?: Date },
    from: FiringOutcome = FiringOutcome.PENDING,
  ): Promise<FiringRow> {
    const row = await this.db.transaction().execute(async (trx) => {
      if (token !== undefined) await this.fence(trx, token);
      const { cancelled_run_ids, ...rest } = update;
      const updated = await trx
        .updateTable("firings")
        .set({ ...rest, ...(cancelled_run_ids ? { cancelled_run_ids: JSON.stringify(cancelled_run_ids) } : {}) })
        .where("id", "=", firing.id)
        .where("outcome", "=", from)
        .returningAll()
        .executeTakeFirst();
      if (updated && update.outcome !== FiringOutcome.PENDING) {
        await this.log(trx, "firing.updated", firing.schedule_id, firing.tenant, { firing: firing.id, outcome: FiringOutcome[update.outcome], run: update.run_id ?? "" });
      }
      return updated;
    });
    if (row && update.outcome !== FiringOutcome.PENDING) this.metrics.firings.inc({ outcome: FiringOutcome[update.outcome], kind: FiringKind[firing.kind] });
    return row ?? firing;
  }

  private async housekeeping(): Promise<void> {
    const cutoff = new Date(this.now() - this.config.firingRetentionMs);
    await this.db.deleteFrom("firings").where("scheduled_time", "<", cutoff).where("outcome", "not in", [FiringOutcome.PENDING, FiringOutcome.BUFFERED]).execute();
    const eventCutoff = new Date(this.now() - Math.max(this.config.eventDedupMs, this.config.firingRetentionMs));
    await this.db.deleteFrom("published_events").where("published_at", "<", eventCutoff).execute();
  }

  // ---------------------------------------------------------------------------------------------
  // Triggers and events

  private compiledTrigger(row: TriggerRow): { filter: Filter; mapping: Mapping } {
    let c = this.triggerCache.get(row.id);
    if (!c) {
      c = { filter: compileFilter(row.filter), mapping: compileMapping((row.input_mapping ?? undefined) as JsonObject | undefined) };
      this.triggerCache.set(row.id, c);
    }
    return c;
  }

  async createTrigger(
    tenant: string,
    fields: { name: string; eventType: string; filter: string; workflowName: string; workflowVersion: number; inputMapping?: JsonObject; enabled: boolean },
  ): Promise<TriggerRow> {
    await this.checkWorkflow(tenant, fields.workflowName, fields.workflowVersion);
    return this.db.transaction().execute(async (trx) => {
      const { count } = await trx.selectFrom("triggers").select(sql<string>`count(*)`.as("count")).where("tenant", "=", tenant).executeTakeFirstOrThrow();
      if (Number(count) >= this.config.maxTriggersPerTenant) throw new ResourceExhaustedError(`tenant "${tenant}" has reached its limit of ${this.config.maxTriggersPerTenant} triggers`);
      const row = await trx
        .insertInto("triggers")
        .values({
          id: randomUUID(),
          tenant,
          name: fields.name,
          event_type: fields.eventType,
          filter: fields.filter,
          workflow_name: fields.workflowName,
          workflow_version: fields.workflowVersion,
          input_mapping: fields.inputMapping === undefined ? null : JSON.stringify(fields.inputMapping),
          enabled: fields.enabled,
        })
        .returningAll()
        .executeTakeFirstOrThrow();
      await this.log(trx, "trigger.created", row.id, tenant, { eventType: fields.eventType, workflow: fields.workflowName });
      return row;
    });
  }

  async getTrigger(id: string, visibleTenant?: string): Promise<TriggerRow> {
    const row = await this.db.selectFrom("triggers").selectAll().where("id", "=", id).executeTakeFirst();
    if (!row || (visibleTenant !== undefined && row.tenant !== visibleTenant)) throw new NotFoundError(`no trigger has id "${id}"`);
    return row;
  }

  async listTriggers(tenant: string, eventType: string, pageSize: number, cursor?: { t: number; id: string }): Promise<Page<TriggerRow>> {
    let q = this.db.selectFrom("triggers").selectAll().where("tenant", "=", tenant);
    if (eventType) q = q.where("event_type", "=", eventType);
    if (cursor) {
      const t = new Date(cursor.t);
      q = q.where((eb) => eb.or([eb("created_at", ">", t), eb.and([eb("created_at", "=", t), eb("id", ">", cursor.id)])]));
    }
    const rows = await q.orderBy("created_at").orderBy("id").limit(pageSize + 1).execute();
    const items = rows.slice(0, pageSize);
    const last = items[items.length - 1];
    return { items, next: rows.length > pageSize ? JSON.stringify({ t: last.created_at.getTime(), id: last.id }) : undefined };
  }

  async deleteTrigger(id: string, visibleTenant?: string): Promise<void> {
    const row = await this.getTrigger(id, visibleTenant);
    await this.db.transaction().execute(async (trx) => {
      const deleted = await trx.deleteFrom("triggers").where("id", "=", id).executeTakeFirst();
      if (Number(deleted.numDeletedRows) === 0) throw new NotFoundError(`no trigger has id "${id}"`);
      await this.log(trx, "trigger.deleted", id, row.tenant, {});
    });
    this.triggerCache.delete(id);
  }

  /**
   * Stores the event (deduplicated by (tenant, idempotency key) within the window), evaluates the
   * matching triggers and records their dispatches in the SAME transaction, then starts the runs
   * (key `orca-event/<event>/<trigger>`). A retryable failure leaves the dispatch PENDING for the
   * firer's background retry.
   */
  async publishEvent(tenant: string, type: string, payload: JsonObject, idempotencyKey: string): Promise<{ event: Selectable<SchedulerTables["published_events"]>; duplicate: boolean; dispatches: DispatchRow[] }> {
    const payloadJson = canonicalJson(payload);
    const stored = await this.db.transaction().execute(async (trx) => {
      const existing = await trx.selectFrom("published_events").selectAll().where("tenant", "=", tenant).where("idempotency_key", "=", idempotencyKey).forUpdate().executeTakeFirst();
      if (existing) {
        const fresh = this.now() - existing.published_at.getTime() < this.config.eventDedupMs;
        if (fresh) {
          if (existing.type !== type || canonicalJson(existing.payload as JsonObject) !== payloadJson) {
            throw new AlreadyExistsError(`idempotency_key: "${idempotencyKey}" was already used within the dedup window with a different type or payload`);
          }
          const dispatches = await trx.selectFrom("trigger_dispatches").selectAll().where("event_id", "=", existing.id).orderBy("created_at").orderBy("trigger_id").execute();
          return { event: existing, duplicate: true, dispatches };
        }
        // Outside the window: the key is free again; the old event stays in history under a retired key.
        await trx.updateTable("published_events").set({ idempotency_key: `${idempotencyKey}#retired/${existing.id}` }).where("id", "=", existing.id).execute();
      }
      const inserted = await trx
        .insertInto("published_events")
        .values({ id: randomUUID(), tenant, type, payload: payloadJson, idempotency_key: idempotencyKey })
        .onConflict((oc) => oc.columns(["tenant", "idempotency_key"]).doNothing())
        .returningAll()
        .executeTakeFirst();
      if (!inserted) {
        // A concurrent publication with the same key won: answer as a duplicate.
        const winner = await trx.selectFrom("published_events").selectAll().where("tenant", "=", tenant).where("idempotency_key", "=", idempotencyKey).executeTakeFirstOrThrow();
        const dispatches = await trx.selectFrom("trigger_dispatches").selectAll().where("event_id", "=", winner.id).execute();
        return { event: winner, duplicate: true, dispatches };
      }
      const triggers = await trx.selectFrom("triggers").selectAll().where("tenant", "=", tenant).where("event_type", "=", type).where("enabled", "=", true).orderBy("created_at").orderBy("id").execute();
      const vars: EventVars = { id: inserted.id, tenant, type, payload, idempotencyKey, publishedAtMs: inserted.published_at.getTime() };
      const rows: Array<Omit<DispatchRow, "created_at">> = [];
      for (const trigger of triggers) {
        const { filter, mapping } = this.compiledTrigger(trigger);
        const result = filter(vars);
        const base = { event_id: inserted.id, trigger_id: trigger.id, tenant, run_id: "", workflow_name: trigger.workflow_name, workflow_version: trigger.workflow_version, next_attempt_at: new Date(this.now()) };
        if ("error" in result) {
          rows.push({ ...base, state: TriggerDispatchState.FILTER_ERROR, error: result.error, input: null });
          continue;
        }
        if (!result.match) continue;
        try {
          rows.push({ ...base, state: TriggerDispatchState.PENDING, error: "", input: JSON.stringify(mapping(vars)) });
        } catch (error) {
          rows.push({ ...base, state: TriggerDispatchState.FAILED, error: (error as Error).message, input: null });
        }
      }
      const dispatches = rows.length > 0 ? await trx.insertInto("trigger_dispatches").values(rows).returningAll().execute() : [];
      await this.log(trx, "event.published", inserted.id, tenant, { type, key: idempotencyKey, matched: dispatches.length });
      return { event: inserted, duplicate: false, dispatches };
    });
    if (stored.duplicate) return stored;
    const dispatches = await Promise.all(stored.dispatches.map((d) => (d.state === TriggerDispatchState.PENDING ? this.dispatchEvent(d) : d)));
    return { ...stored, dispatches };
  }

  private async dispatchEvent(d: DispatchRow): Promise<DispatchRow> {
    let update: Partial<DispatchRow>;
    try {
      const { runId } = await this.runs.startRun({
        tenant: d.tenant,
        workflowName: d.workflow_name,
        workflowVersion: d.workflow_version,
        input: (d.input ?? {}) as JsonObject,
        idempotencyKey: `orca-event/${d.event_id}/${d.trigger_id}`,
      });
      update = { state: TriggerDispatchState.STARTED, run_id: runId, error: "" };
    } catch (error) {
      if (!(error instanceof RunStartError)) throw error;
      update = error.retryable ? { error: error.message, next_attempt_at: new Date(this.now() + this.config.retryMs) } : { state: TriggerDispatchState.FAILED, error: error.message };
    }
    const row = await this.db.transaction().execute(async (trx) => {
      const updated = await trx
        .updateTable("trigger_dispatches")
        .set(update)
        .where("event_id", "=", d.event_id)
        .where("trigger_id", "=", d.trigger_id)
        .where("state", "=", TriggerDispatchState.PENDING)
        .returningAll()
        .executeTakeFirst();
      if (updated && update.state !== undefined) await this.log(trx, "dispatch.updated", d.event_id, d.tenant, { trigger: d.trigger_id, state: TriggerDispatchState[update.state], run: update.run_id ?? "" });
      return updated;
    });
    if (update.state !== undefined) this.metrics.dispatches.inc({ state: TriggerDispatchState[update.state] });
    return row ?? { ...d, ...update };
  }

  private async retryDispatches(): Promise<void> {
    const due = await this.db.selectFrom("trigger_dispatches").selectAll().where("state", "=", TriggerDispatchState.PENDING).where("next_attempt_at", "<=", new Date(this.now())).limit(500).execute();
    await this.forEachLimited(due, async (d) => void (await this.dispatchEvent(d)));
  }

  // ---------------------------------------------------------------------------------------------

  private async log(trx: Transaction<SchedulerTables>, kind: string, subject: string, tenant: string, payload: Record<string, unknown>): Promise<void> {
    await trx.insertInto("events").values({ kind, subject, tenant, payload: JSON.stringify(payload) }).execute();
  }

  private async notify(trx: Transaction<SchedulerTables>): Promise<void> {
    await sql`select pg_notify(${WAKE_CHANNEL}, '')`.execute(trx);
  }
}

/** JSON with object keys sorted, so equal payloads compare equal whatever their key order. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(sortKeys(value));
}

function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(
      Object.keys(value as Record<string, unknown>)
        .sort()
        .map((k) => [k, sortKeys((value as Record<string, unknown>)[k])]),
    );
  }
  return value;
}
