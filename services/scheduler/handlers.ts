import { create, type JsonObject } from "@bufbuild/protobuf";
import { durationMs, timestampDate, timestampFromDate, timestampFromMs, type Duration, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import {
  DstAdjustment,
  DstRepeatedPolicy,
  DstSkippedPolicy,
  EventSchema,
  FiringOutcome,
  FiringSchema,
  OverlapPolicy,
  PreviewFireTimeSchema,
  ScheduleSchema,
  TriggerDispatchSchema,
  TriggerSchema,
  type Schedule,
  type SchedulerService,
} from "../../gen/orca/scheduler/v1/scheduler_pb.js";
import { callerTenant } from "../kit/call-scope.js";
import { InvalidArgumentError, PermissionDeniedError } from "../kit/errors.js";
import { CelCompileError, compileFilter, compileMapping, MappingCompileError } from "./cel.js";
import type { SchedulerConfig } from "./config.js";
import { CompiledCron, CronSyntaxError, isKnownZone, localIso, minimumGapMs, parseCron, utcIso } from "./cron.js";
import { canonicalJson, type DispatchRow, type FiringRow, type ScheduleFields, type ScheduleRow, type Scheduler, type TriggerRow } from "./scheduler.js";

/** Thin handlers: validate (naming the proto field), call the domain, map rows to messages. */

const bytes = (s: string) => Buffer.byteLength(s, "utf8");
const EVENT_TYPE = /^[A-Za-z0-9._/-]+$/;
const MAX_CATCHUP_MS = 7 * 86_400_000;
const DEFAULT_CATCHUP_MS = 60_000;
const MAX_JITTER_MS = 3_600_000;

/**
 * The tenant the caller is confined to (an end user's token tenant, whatever its roles: an admin
 * of tenant "acme" is still confined to "acme"), or undefined (no auth, a mesh service, an admin
 * of "*"). Schedules and triggers of another tenant addressed by id are NotFound.
 */
function confinedTenant(ctx: HandlerContext): string | undefined {
  return callerTenant(ctx.values);
}

/** Tenant of a new object named inside a nested message (the kit only checks top-level `tenant`). */
function ownTenant(requested: string, ctx: HandlerContext, field: string): string {
  const confined = confinedTenant(ctx);
  if (confined !== undefined && requested !== "" && requested !== confined) throw new PermissionDeniedError(`${field}: the caller acts for tenant "${confined}", not "${requested}"`);
  return confined ?? requested;
}

function requireId(id: string, field = "id"): string {
  if (id === "") throw new InvalidArgumentError(field, "is required");
  return id;
}

function pageSize(size: number): number {
  if (size < 0) throw new InvalidArgumentError("page_size", "must not be negative");
  return size === 0 ? 50 : Math.min(size, 1000);
}

function encodeToken(filters: unknown, position: unknown): string {
  return Buffer.from(JSON.stringify({ f: canonicalJson(filters), p: position })).toString("base64url");
}

function decodeToken<T>(token: string, filters: unknown): T | undefined {
  if (token === "") return undefined;
  try {
    const parsed = JSON.parse(Buffer.from(token, "base64url").toString("utf8")) as { f: string; p: T };
    if (parsed.f !== canonicalJson(filters) || parsed.p === undefined) throw new Error("other filters");
    return parsed.p;
  } catch {
    throw new InvalidArgumentError("page_token", "is not a token this RPC returned for the same filters");
  }
}

function ms(ts: Timestamp | undefined): number | undefined {
  return ts ? timestampDate(ts).getTime() : undefined;
}

function durationField(d: Duration | undefined, field: string, max: number): number | undefined {
  if (!d) return undefined;
  const value = durationMs(d);
  if (value < 0 || value > max) throw new InvalidArgumentError(field, `must be from 0 to ${max / 1000} s`);
  return value;
}

/** Validates the cron/zone/DST/bounds part of a schedule (shared by Create, Update and Preview). */
function validateTiming(s: Schedule, prefix: string, config: SchedulerConfig, checkInterval: boolean) {
  let pattern;
  try {
    pattern = parseCron(s.cron);
  } catch (error) {
    throw new InvalidArgumentError(`${prefix}.cron`, error instanceof CronSyntaxError ? error.message : String(error));
  }
  if (checkInterval) {
    const gap = minimumGapMs(pattern, s.cron);
    if (gap < config.minIntervalMs) {
      throw new InvalidArgumentError(`${prefix}.cron`, `fires every ${gap / 1000} s at its most frequent, more often than the minimum interval of ${config.minIntervalMs / 1000} s`);
    }
  }
  const timezone = s.timezone === "" ? "UTC" : s.timezone;
  if (!isKnownZone(timezone)) throw new InvalidArgumentError(`${prefix}.timezone`, `"${s.timezone}" is not a known IANA timezone`);
  if (!(s.dstSkippedPolicy in DstSkippedPolicy)) throw new InvalidArgumentError(`${prefix}.dst_skipped_policy`, "unknown value");
  if (!(s.dstRepeatedPolicy in DstRepeatedPolicy)) throw new InvalidArgumentError(`${prefix}.dst_repeated_policy`, "unknown value");
  const startAt = ms(s.startAt);
  const endAt = ms(s.endAt);
  if (startAt !== undefined && endAt !== undefined && endAt <= startAt) throw new InvalidArgumentError(`${prefix}.end_at`, "must be after start_at");
  return {
    cron: s.cron.trim(),
    timezone,
    dstSkipped: s.dstSkippedPolicy || DstSkippedPolicy.RUN_AT_NEXT_VALID_TIME,
    dstRepeated: s.dstRepeatedPolicy || DstRepeatedPolicy.RUN_ONCE_FIRST,
    startAt,
    endAt,
  };
}

function validateSchedule(s: Schedule | undefined, config: SchedulerConfig): ScheduleFields {
  if (!s) throw new InvalidArgumentError("schedule", "is required");
  if (s.name === "" || bytes(s.name) > 200) throw new InvalidArgumentError("schedule.name", "must be 1-200 bytes");
  const timing = validateTiming(s, "schedule", config, true);
  const jitterMs = durationField(s.jitter, "schedule.jitter", MAX_JITTER_MS) ?? 0;
  const catchupMs = durationField(s.catchupWindow, "schedule.catchup_window", MAX_CATCHUP_MS) ?? DEFAULT_CATCHUP_MS;
  if (!(s.overlapPolicy in OverlapPolicy)) throw new InvalidArgumentError("schedule.overlap_policy", "unknown value");
  if (s.workflowName === "") throw new InvalidArgumentError("schedule.workflow_name", "is required");
  if (s.workflowVersion < 0) throw new InvalidArgumentError("schedule.workflow_version", "must not be negative");
  const input = (s.input ?? {}) as JsonObject;
  if (bytes(JSON.stringify(input)) > config.maxPayloadBytes) throw new InvalidArgumentError("schedule.input", `is larger than ${config.maxPayloadBytes} bytes`);
  return {
    name: s.name,
    ...timing,
    jitterMs,
    overlap: s.overlapPolicy || OverlapPolicy.SKIP,
    catchupMs,
    workflowName: s.workflowName,
    workflowVersion: s.workflowVersion,
    input,
  };
}

const UPDATABLE = new Set(["name", "cron", "timezone", "dst_skipped_policy", "dst_repeated_policy", "start_at", "end_at", "jitter", "overlap_policy", "catchup_window", "workflow_name", "workflow_version", "input"]);
const CAMEL: Record<string, keyof Schedule> = {
  name: "name",
  cron: "cron",
  timezone: "timezone",
  dst_skipped_policy: "dstSkippedPolicy",
  dst_repeated_policy: "dstRepeatedPolicy",
  start_at: "startAt",
  end_at: "endAt",
  jitter: "jitter",
  overlap_policy: "overlapPolicy",
  catchup_window: "catchupWindow",
  workflow_name: "workflowName",
  workflow_version: "workflowVersion",
  input: "input",
};

function scheduleMessage(row: ScheduleRow): Schedule {
  return create(ScheduleSchema, {
    id: row.id,
    tenant: row.tenant,
    name: row.name,
    cron: row.cron,
    timezone: row.timezone,
    dstSkippedPolicy: row.dst_skipped,
    dstRepeatedPolicy: row.dst_repeated,
    startAt: row.start_at ? timestampFromDate(row.start_at) : undefined,
    endAt: row.end_at ? timestampFromDate(row.end_at) : undefined,
    jitter: row.jitter_ms ? durationFromMsExact(row.jitter_ms) : undefined,
    overlapPolicy: row.overlap,
    catchupWindow: durationFromMsExact(Number(row.catchup_ms)),
    paused: row.paused,
    pauseNote: row.pause_note,
    pausedAt: row.paused_at ? timestampFromDate(row.paused_at) : undefined,
    workflowName: row.workflow_name,
    workflowVersion: row.workflow_version,
    input: row.input as JsonObject,
    nextFireAt: row.next_fire_at && !row.paused ? timestampFromDate(row.next_fire_at) : undefined,
    createdAt: timestampFromDate(row.created_at),
    updatedAt: timestampFromDate(row.updated_at),
    revision: BigInt(row.revision),
  });
}

function durationFromMsExact(value: number): Duration {
  return { $typeName: "google.protobuf.Duration", seconds: BigInt(Math.floor(value / 1000)), nanos: (value % 1000) * 1_000_000 } as Duration;
}

function firingMessage(row: FiringRow) {
  return create(FiringSchema, {
    id: row.id,
    scheduleId: row.schedule_id,
    scheduledTime: timestampFromDate(row.scheduled_time),
    actualTime: row.actual_time ? timestampFromDate(row.actual_time) : undefined,
    runId: row.run_id,
    outcome: row.outcome,
    kind: row.kind,
    error: row.error,
    cancelledRunIds: (typeof row.cancelled_run_ids === "string" ? JSON.parse(row.cancelled_run_ids) : row.cancelled_run_ids) as string[],
  });
}

function triggerMessage(row: TriggerRow) {
  return create(TriggerSchema, {
    id: row.id,
    tenant: row.tenant,
    name: row.name,
    eventType: row.event_type,
    filter: row.filter,
    workflowName: row.workflow_name,
    workflowVersion: row.workflow_version,
    inputMapping: (row.input_mapping ?? undefined) as JsonObject | undefined,
    enabled: row.enabled,
    createdAt: timestampFromDate(row.created_at),
  });
}

function dispatchMessage(row: DispatchRow) {
  return create(TriggerDispatchSchema, { triggerId: row.trigger_id, state: row.state, runId: row.run_id, error: row.error });
}

function checkEventType(value: string, field: string): string {
  if (value === "" || bytes(value) > 200 || !EVENT_TYPE.test(value)) throw new InvalidArgumentError(field, "must be 1-200 bytes of [A-Za-z0-9._/-]");
  return value;
}

export function schedulerHandlers(scheduler: Scheduler, config: SchedulerConfig): Partial<ServiceImpl<typeof SchedulerService>> {
  return {
    async createSchedule(req, ctx) {
      const fields = validateSchedule(req.schedule, config);
      const tenant = ownTenant(req.schedule!.tenant, ctx, "schedule.tenant");
      return { schedule: scheduleMessage(await scheduler.createSchedule(tenant, fields)) };
    },

    async updateSchedule(req, ctx) {
      const s = req.schedule;
      if (!s) throw new InvalidArgumentError("schedule", "is required");
      requireId(s.id, "schedule.id");
      const paths = req.updateMask?.paths ?? [];
      if (paths.length === 0) throw new InvalidArgumentError("update_mask", "must name at least one field");
      for (const p of paths) if (!UPDATABLE.has(p)) throw new InvalidArgumentError("update_mask", `"${p}" is not an updatable field`);
      const row = await scheduler.updateSchedule(
        s.id,
        confinedTenant(ctx),
        (current) => {
          // Merge the masked fields onto the stored schedule, then validate the result as a whole.
          const merged = create(ScheduleSchema, {
            name: current.name,
            cron: current.cron,
            timezone: current.timezone,
            dstSkippedPolicy: current.dstSkipped,
            dstRepeatedPolicy: current.dstRepeated,
            startAt: current.startAt === undefined ? undefined : timestampFromMs(current.startAt),
            endAt: current.endAt === undefined ? undefined : timestampFromMs(current.endAt),
            jitter: current.jitterMs ? durationFromMsExact(current.jitterMs) : undefined,
            overlapPolicy: current.overlap,
            catchupWindow: durationFromMsExact(current.catchupMs),
            workflowName: current.workflowName,
            workflowVersion: current.workflowVersion,
            input: current.input,
          });
          const target = merged as unknown as Record<string, unknown>;
          for (const p of paths) target[CAMEL[p]] = (s as unknown as Record<string, unknown>)[CAMEL[p]];
          return validateSchedule(merged, config);
        },
        req.expectedRevision,
      );
      return { schedule: scheduleMessage(row) };
    },

    async deleteSchedule(req, ctx) {
      await scheduler.deleteSchedule(requireId(req.id), confinedTenant(ctx));
      return {};
    },

    async pauseSchedule(req, ctx) {
      requireId(req.id);
      if (bytes(req.note) > 1000) throw new InvalidArgumentError("note", "must be at most 1000 bytes");
      return { schedule: scheduleMessage(await scheduler.pauseSchedule(req.id, confinedTenant(ctx), req.note)) };
    },

    async resumeSchedule(req, ctx) {
      return { schedule: scheduleMessage(await scheduler.resumeSchedule(requireId(req.id), confinedTenant(ctx))) };
    },

    async getSchedule(req, ctx) {
      return { schedule: scheduleMessage(await scheduler.getSchedule(requireId(req.id), confinedTenant(ctx))) };
    },

    async listSchedules(req) {
      const size = pageSize(req.pageSize);
      const filters = { tenant: req.tenant, workflow: req.workflowName, paused: req.paused ?? null };
      const after = decodeToken<string>(req.pageToken, filters);
      const page = await scheduler.listSchedules(req.tenant, { workflowName: req.workflowName, paused: req.paused }, size, after);
      return { schedules: page.items.map(scheduleMessage), nextPageToken: page.next === undefined ? "" : encodeToken(filters, page.next) };
    },

    async previewSchedule(req, ctx) {
      if (req.count < 0 || req.count > 1000) throw new InvalidArgumentError("count", "must be from 0 to 1000");
      const count = req.count === 0 ? 10 : req.count;
      let timing;
      if (req.target.case === "scheduleId") {
        const row = await scheduler.getSchedule(requireId(req.target.value, "schedule_id"), confinedTenant(ctx));
        timing = { cron: row.cron, timezone: row.timezone, dstSkipped: row.dst_skipped, dstRepeated: row.dst_repeated, startAt: row.start_at?.getTime(), endAt: row.end_at?.getTime() };
      } else if (req.target.case === "spec") {
        timing = validateTiming(req.target.value, "spec", config, true);
      } else {
        throw new InvalidArgumentError("target", "set schedule_id or spec");
      }
      const after = ms(req.after) ?? Date.now();
      // Preview shows fire times; SKIPPED_DST records are not fire times.
      const compiled = new CompiledCron(timing);
      const fireTimes = [];
      let cursor = after;
      while (fireTimes.length < count) {
        const group = compiled.nextGroup(cursor);
        if (group.length === 0) break;
        cursor = group[0].instant;
        for (const o of group) {
          if (!o.fire) continue;
          fireTimes.push(create(PreviewFireTimeSchema, { fireTime: timestampFromMs(o.instant), utcTime: utcIso(o.instant), localTime: localIso(timing.timezone, o.instant), dstAdjustment: o.adjustment || DstAdjustment.NONE }));
        }
      }
      return { timezone: timing.timezone, fireTimes: fireTimes.slice(0, count) };
    },

    async triggerSchedule(req, ctx) {
      requireId(req.id);
      if (!(req.overlapPolicy in OverlapPolicy)) throw new InvalidArgumentError("overlap_policy", "unknown value");
      return { firing: firingMessage(await scheduler.triggerSchedule(req.id, confinedTenant(ctx), req.overlapPolicy)) };
    },

    async backfillSchedule(req, ctx) {
      requireId(req.id);
      const from = ms(req.from);
      const to = ms(req.to);
      if (from === undefined) throw new InvalidArgumentError("from", "is required");
      if (to === undefined) throw new InvalidArgumentError("to", "is required");
      if (from >= to) throw new InvalidArgumentError("from", "must be before to");
      if (to > Date.now()) throw new InvalidArgumentError("to", "must not be in the future");
      if (!(req.overlapPolicy in OverlapPolicy)) throw new InvalidArgumentError("overlap_policy", "unknown value");
      const result = await scheduler.backfill(req.id, confinedTenant(ctx), from, to, req.overlapPolicy);
      return { enqueuedCount: result.enqueued, alreadyFiredCount: result.already };
    },

    async listFirings(req, ctx) {
      const size = pageSize(req.pageSize);
      const after = ms(req.scheduledAfter);
      const before = ms(req.scheduledBefore);
      if (after !== undefined && before !== undefined && after >= before) throw new InvalidArgumentError("scheduled_after", "must be before scheduled_before");
      for (const o of req.outcomes) if (!(o in FiringOutcome) || o === FiringOutcome.UNSPECIFIED) throw new InvalidArgumentError("outcomes", `unknown outcome ${o}`);
      const filters = { s: req.scheduleId, t: req.tenant, a: after ?? null, b: before ?? null, o: [...req.outcomes].sort() };
      const cursor = decodeToken<{ t: number; id: string }>(req.pageToken, filters);
      const tenant = req.scheduleId ? req.tenant : ownTenant(req.tenant, ctx, "tenant");
      const page = await scheduler.listFirings({ scheduleId: req.scheduleId || undefined, tenant, after, before, outcomes: req.outcomes }, confinedTenant(ctx), size, cursor);
      return { firings: page.items.map(firingMessage), nextPageToken: page.next === undefined ? "" : encodeToken(filters, JSON.parse(page.next)) };
    },

    async publishEvent(req) {
      checkEventType(req.type, "type");
      if (req.idempotencyKey === "" || bytes(req.idempotencyKey) > 200) throw new InvalidArgumentError("idempotency_key", "must be 1-200 bytes");
      const payload = (req.payload ?? {}) as JsonObject;
      const size = bytes(JSON.stringify(payload));
      if (size > config.maxPayloadBytes) throw new InvalidArgumentError("payload", `is ${size} bytes, larger than the limit of ${config.maxPayloadBytes}`);
      const result = await scheduler.publishEvent(req.tenant, req.type, payload, req.idempotencyKey);
      return {
        event: create(EventSchema, {
          id: result.event.id,
          tenant: result.event.tenant,
          type: result.event.type,
          payload: result.event.payload as JsonObject,
          idempotencyKey: req.idempotencyKey,
          publishedAt: timestampFromDate(result.event.published_at),
        }),
        duplicate: result.duplicate,
        dispatches: result.dispatches.map(dispatchMessage),
      };
    },

    async createTrigger(req, ctx) {
      const t = req.trigger;
      if (!t) throw new InvalidArgumentError("trigger", "is required");
      checkEventType(t.eventType, "trigger.event_type");
      if (bytes(t.name) > 200) throw new InvalidArgumentError("trigger.name", "must be at most 200 bytes");
      if (t.workflowName === "") throw new InvalidArgumentError("trigger.workflow_name", "is required");
      if (t.workflowVersion < 0) throw new InvalidArgumentError("trigger.workflow_version", "must not be negative");
      try {
        compileFilter(t.filter);
      } catch (error) {
        throw new InvalidArgumentError("trigger.filter", error instanceof CelCompileError ? error.message : String(error));
      }
      const mapping = t.inputMapping as JsonObject | undefined;
      try {
        compileMapping(mapping);
      } catch (error) {
        if (error instanceof MappingCompileError) throw new InvalidArgumentError(`trigger.input_mapping.${error.path}`, error.message);
        throw error;
      }
      const tenant = ownTenant(t.tenant, ctx, "trigger.tenant");
      const row = await scheduler.createTrigger(tenant, { name: t.name, eventType: t.eventType, filter: t.filter, workflowName: t.workflowName, workflowVersion: t.workflowVersion, inputMapping: mapping, enabled: t.enabled });
      return { trigger: triggerMessage(row) };
    },

    async getTrigger(req, ctx) {
      return { trigger: triggerMessage(await scheduler.getTrigger(requireId(req.id), confinedTenant(ctx))) };
    },

    async listTriggers(req) {
      const size = pageSize(req.pageSize);
      if (req.eventType !== "") checkEventType(req.eventType, "event_type");
      const filters = { t: req.tenant, e: req.eventType };
      const cursor = decodeToken<{ t: number; id: string }>(req.pageToken, filters);
      const page = await scheduler.listTriggers(req.tenant, req.eventType, size, cursor);
      return { triggers: page.items.map(triggerMessage), nextPageToken: page.next === undefined ? "" : encodeToken(filters, JSON.parse(page.next)) };
    },

    async deleteTrigger(req, ctx) {
      await scheduler.deleteTrigger(requireId(req.id), confinedTenant(ctx));
      return {};
    },
  };
}
