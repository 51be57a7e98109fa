import { create, type JsonObject } from "@bufbuild/protobuf";
import { DurationSchema, timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  AttemptStatus,
  PolicyDecisionSummarySchema,
  PolicyEffect,
  RunEventSchema,
  RunEventType,
  RunSchema,
  RunStatus,
  TaskAttemptSchema,
  TaskRunSchema,
  TaskStatus,
  WorkflowDefinitionSchema,
  type PolicyDecisionSummary,
  type Run,
  type RetryPolicy,
  type TaskTimeouts,
  type CachePolicy,
  type WorkflowDefinition,
} from "../../gen/orca/orchestrator/v1/orchestrator_pb.js";
import { msDuration, type StoredCache, type StoredRetry, type StoredTimeouts } from "./definition.js";
import type { AttemptRow, EventRow, RunRow, TaskRow, WorkflowRow } from "./store.js";

/** Rows -> response messages. */
const ts = (d: Date | null | undefined) => (d ? timestampFromDate(d) : undefined);
const dur = (ms: number | undefined) => (ms === undefined ? undefined : create(DurationSchema, msDuration(ms)));

function retryProto(r: StoredRetry | undefined): RetryPolicy | undefined {
  if (!r) return undefined;
  return {
    $typeName: "orca.orchestrator.v1.RetryPolicy",
    maxAttempts: r.maxAttempts,
    initialBackoff: dur(r.initialBackoffMs),
    multiplier: r.multiplier,
    maxBackoff: dur(r.maxBackoffMs),
    jitter: r.jitter,
    nonRetryableErrorKinds: r.nonRetryable,
  };
}
function timeoutsProto(t: StoredTimeouts | undefined): TaskTimeouts | undefined {
  if (!t) return undefined;
  return { $typeName: "orca.orchestrator.v1.TaskTimeouts", scheduleToStart: dur(t.scheduleToStartMs), startToClose: dur(t.startToCloseMs), heartbeat: dur(t.heartbeatMs) };
}
function cacheProto(c: StoredCache | undefined): CachePolicy | undefined {
  if (!c) return undefined;
  return { $typeName: "orca.orchestrator.v1.CachePolicy", enabled: c.enabled, ttl: dur(c.ttlMs) };
}

export function workflowProto(row: WorkflowRow): WorkflowDefinition {
  const d = row.definition;
  return create(WorkflowDefinitionSchema, {
    name: row.name,
    version: row.version,
    tenant: row.tenant,
    description: d.description,
    tasks: d.tasks.map((t) => ({
      id: t.id,
      plugin: t.plugin,
      config: t.config,
      dependsOn: t.dependsOn,
      condition: t.condition,
      retry: retryProto(t.retry),
      timeouts: timeoutsProto(t.timeouts),
      cache: cacheProto(t.cache),
      lockKey: t.lockKey,
      priority: t.priority,
      queue: t.queue,
    })),
    defaults: d.defaults ? { retry: retryProto(d.defaults.retry), timeouts: timeoutsProto(d.defaults.timeouts), cache: cacheProto(d.defaults.cache) } : undefined,
    runTimeout: dur(d.runTimeoutMs),
    maxParallelism: d.maxParallelism,
    createdAt: ts(row.created_at),
  });
}

export function policyProto(p: JsonObject | null | undefined): PolicyDecisionSummary | undefined {
  if (!p || !p.effect) return undefined;
  return create(PolicyDecisionSummarySchema, {
    effect: PolicyEffect[p.effect as keyof typeof PolicyEffect] ?? PolicyEffect.UNSPECIFIED,
    reasons: (p.reasons as string[]) ?? [],
    bundleName: String(p.bundle_name ?? ""),
    bundleVersion: String(p.bundle_version ?? ""),
    decisionId: String(p.decision_id ?? ""),
    cached: Boolean(p.cached),
    tarpitDelay: typeof p.tarpit_delay_ms === "number" && p.effect === "TARPIT" ? dur(p.tarpit_delay_ms) : undefined,
    divertTarget: String(p.divert_target ?? ""),
    decidedAt: typeof p.decided_at === "string" ? timestampFromDate(new Date(p.decided_at)) : undefined,
  });
}

const taskStatus = (s: string) => (s === "STARTING" ? TaskStatus.READY : (TaskStatus[s as keyof typeof TaskStatus] ?? TaskStatus.UNSPECIFIED));

export function runProto(run: RunRow, tasks?: TaskRow[], attempts?: AttemptRow[]): Run {
  const byTask = new Map<string, AttemptRow[]>();
  for (const a of attempts ?? []) {
    const list = byTask.get(a.task_id) ?? [];
    list.push(a);
    byTask.set(a.task_id, list);
  }
  return create(RunSchema, {
    id: run.id,
    workflowName: run.workflow_name,
    workflowVersion: run.workflow_version,
    tenant: run.tenant,
    status: RunStatus[run.status as keyof typeof RunStatus] ?? RunStatus.UNSPECIFIED,
    input: run.input,
    output: run.output ?? undefined,
    idempotencyKey: run.idempotency_key ?? "",
    priority: run.priority,
    createdAt: ts(run.created_at),
    startedAt: ts(run.started_at),
    finishedAt: ts(run.finished_at),
    error: run.error && run.status !== "SUCCEEDED" ? { kind: run.error.kind, message: run.error.message } : undefined,
    policyDecision: policyProto(run.policy),
    lastEventSequence: BigInt(run.last_seq),
    tasks: (tasks ?? []).map((t) =>
      create(TaskRunSchema, {
        taskId: t.task_id,
        status: taskStatus(t.status),
        attempts: (byTask.get(t.task_id) ?? []).map((a) =>
          create(TaskAttemptSchema, {
            number: a.number,
            status: AttemptStatus[a.status as keyof typeof AttemptStatus] ?? AttemptStatus.UNSPECIFIED,
            workerId: a.worker_id,
            startedAt: ts(a.started_at),
            finishedAt: ts(a.finished_at),
            error: a.error ? { kind: a.error.kind, message: a.error.message } : undefined,
            output: a.output ?? undefined,
            fencingToken: BigInt(a.fencing_token ?? 0),
            lastHeartbeatAt: ts(a.last_heartbeat_at),
            heartbeatDetails: a.heartbeat_details ?? undefined,
          }),
        ),
        output: t.status === "SUCCEEDED" || t.status === "CACHED" ? (t.output ?? {}) : undefined,
        error: t.error && t.status !== "SUCCEEDED" && t.status !== "CACHED" ? { kind: t.error.kind, message: t.error.message } : undefined,
        readyAt: ts(t.ready_at),
        finishedAt: ts(t.finished_at),
        nextAttemptAt: t.status === "READY" && t.available_at && t.attempt_count > 0 && t.available_at.getTime() > Date.now() ? ts(t.available_at) : undefined,
        cacheKey: t.cache_key ?? "",
        lockResource: t.lock_resource ?? "",
        skipReason: t.skip_reason ?? "",
      }),
    ),
  });
}

export function eventProto(e: EventRow) {
  return create(RunEventSchema, {
    sequence: BigInt(e.seq),
    runId: e.run_id,
    time: ts(e.time),
    type: RunEventType[e.type as keyof typeof RunEventType] ?? RunEventType.UNSPECIFIED,
    taskId: e.task_id,
    attempt: e.attempt,
    message: e.message,
    details: e.details,
  });
}

export const FINAL_EVENTS = new Set(["RUN_SUCCEEDED", "RUN_FAILED", "RUN_CANCELLED", "RUN_TIMED_OUT"]);
