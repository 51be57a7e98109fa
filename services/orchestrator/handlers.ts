import type { JsonObject } from "@bufbuild/protobuf";
import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { createHash } from "node:crypto";
import {
  LeasedTaskSchema,
  RunStatus,
  type OrchestratorService,
  type LeasedTask,
} from "../../gen/orca/orchestrator/v1/orchestrator_pb.js";
import { create } from "@bufbuild/protobuf";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import { callerTenant } from "../kit/call-scope.js";
import { InvalidArgumentError, NotFoundError, PermissionDeniedError } from "../kit/errors.js";
import { invalidArgument } from "./bad-request.js";
import { CelEvalError, resolveConfig } from "./cel.js";
import type { OrchestratorConfig } from "./config.js";
import { eventProto, FINAL_EVENTS, policyProto, runProto, workflowProto } from "./convert.js";
import { durationMs, isJsonObject, KIND_RE, msDuration, NAME_RE, QUEUE_RE, validateDefinition } from "./definition.js";
import type { PolicyGate } from "./deps.js";
import type { Engine } from "./engine.js";
import type { Plugin } from "./plugins/types.js";
import { FINAL_RUN, inputDigest, type ClaimedTask, type OrchestratorStore } from "./store.js";

/**
 * Thin handlers: validate the request (InvalidArgument naming the proto field), call the store
 * or engine, map rows to messages. Request `tenant` fields are checked at the door by the auth
 * interceptor; runs and task leases addressed by id alone are confined here to the caller's
 * tenant (`scopeOf`): another tenant's run or lease is NotFound, exactly like a missing one.
 */
export interface HandlerDeps {
  store: OrchestratorStore;
  engine: Engine;
  policy: PolicyGate;
  plugins: ReadonlyMap<string, Plugin>;
  config: OrchestratorConfig;
  events: RunEventHub;
}

/** Wakes WatchRun streams when a run's events commit (NOTIFY payload = run id). */
export class RunEventHub {
  private readonly waiters = new Map<string, Set<() => void>>();
  notify(runId: string): void {
    for (const w of [...(this.waiters.get(runId) ?? [])]) w();
  }
  wait(runId: string, ms: number, signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      let set = this.waiters.get(runId);
      if (!set) this.waiters.set(runId, (set = new Set()));
      const done = () => {
        clearTimeout(timer);
        signal.removeEventListener("abort", done);
        set!.delete(done);
        if (set!.size === 0) this.waiters.delete(runId);
        resolve();
      };
      const timer = setTimeout(done, ms);
      signal.addEventListener("abort", done, { once: true });
      set.add(done);
    });
  }
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const TENANT_RE = /^[A-Za-z0-9_.:-]{0,64}$/;
const MIB = 1024 * 1024;

/** "" and "default" are the default tenant, stored as "". */
function tenantOf(tenant: string, field = "tenant", allowAll = false): string {
  if (allowAll && tenant === "*") return "*";
  if (!TENANT_RE.test(tenant)) throw new InvalidArgumentError(field, "at most 64 bytes of letters, digits, '_', '.', ':' and '-'");
  return tenant === "default" ? "" : tenant;
}

/** The tenant (as stored: "" for the default) an end user is confined to; undefined = all tenants. */
function scopeOf(ctx: HandlerContext): string | undefined {
  const tenant = callerTenant(ctx.values);
  return tenant === undefined ? undefined : tenant === "default" ? "" : tenant;
}

/** A run the caller may see, or NotFound (the same answer as for a run that does not exist). */
function visibleRun<R extends { tenant: string }>(run: R | undefined, scope: string | undefined, id: string): R {
  if (!run || (scope !== undefined && run.tenant !== scope)) throw new NotFoundError(`no run "${id}"`);
  return run;
}

function runId(id: string, field = "run_id"): string {
  if (!UUID_RE.test(id)) throw new InvalidArgumentError(field, "must be a UUID");
  return id.toLowerCase();
}

function jsonSize(v: unknown): number {
  return Buffer.byteLength(JSON.stringify(v ?? {}));
}

function pageSize(n: number): number {
  if (n < 0 || n > 1000) throw new InvalidArgumentError("page_size", "must be between 0 and 1000");
  return n || 50;
}

function encodeToken(filters: unknown, cursor: unknown): string {
  const f = createHash("sha256").update(JSON.stringify(filters)).digest("hex").slice(0, 16);
  return Buffer.from(JSON.stringify({ f, c: cursor })).toString("base64url");
}

function decodeToken<T>(token: string, filters: unknown): T | undefined {
  if (!token) return undefined;
  const f = createHash("sha256").update(JSON.stringify(filters)).digest("hex").slice(0, 16);
  try {
    const parsed = JSON.parse(Buffer.from(token, "base64url").toString("utf8")) as { f: string; c: T };
    if (parsed.f !== f) throw new Error("filters");
    return parsed.c;
  } catch {
    throw new InvalidArgumentError("page_token", "invalid, or issued for other filters");
  }
}

async function sleep(ms: number, signal: AbortSignal): Promise<void> {
  await new Promise<void>((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}

export function orchestratorHandlers(deps: HandlerDeps): Partial<ServiceImpl<typeof OrchestratorService>> {
  const { store, engine, policy, plugins, config } = deps;

  function leasedTask(c: ClaimedTask, resolved: JsonObject): LeasedTask {
    const deps: JsonObject = {};
    for (const d of c.task.def.dependsOn) {
      const u = c.upstream[d];
      if (u && (u.status === "SUCCEEDED" || u.status === "CACHED")) deps[d] = u.output;
    }
    return create(LeasedTaskSchema, {
      leaseId: c.leaseId,
      leaseExpiresAt: timestampFromDate(c.leaseExpiresAt),
      runId: c.runId,
      taskId: c.taskId,
      attempt: c.attempt,
      tenant: c.tenant,
      workflowName: c.run.workflowName,
      workflowVersion: c.run.workflowVersion,
      queue: c.queue,
      config: resolved,
      input: c.run.input,
      dependencyOutputs: deps,
      fencingToken: c.fencingToken,
      lockResource: c.lockResource,
      heartbeatTimeout: create(DurationSchema, msDuration(c.task.heartbeatMs)),
      deadline: c.deadline ? timestampFromDate(c.deadline) : undefined,
      priority: c.priority,
    });
  }

  return {
    async registerWorkflow(req) {
      const tenant = tenantOf(req.tenant);
      const { def, violations } = validateDefinition(req, plugins, config);
      if (!def) throw invalidArgument(violations);
      const { row, created } = await store.registerWorkflow(tenant, req.name, def);
      return { workflow: workflowProto(row), created };
    },

    async getWorkflow(req) {
      const tenant = tenantOf(req.tenant);
      if (!NAME_RE.test(req.name)) throw new InvalidArgumentError("name", "must be 1 to 128 bytes of letters, digits, '_', '-' and '.', starting with a letter");
      if (req.version < 0) throw new InvalidArgumentError("version", "must not be negative");
      const row = await store.getWorkflow(tenant, req.name, req.version);
      if (!row) throw new NotFoundError(req.version ? `workflow "${req.name}" has no version ${req.version}` : `no workflow "${req.name}"`);
      return { workflow: workflowProto(row) };
    },

    async listWorkflows(req) {
      const tenant = tenantOf(req.tenant);
      if (req.name && !NAME_RE.test(req.name)) throw new InvalidArgumentError("name", "malformed workflow name");
      const limit = pageSize(req.pageSize);
      const filters = { tenant, name: req.name };
      const cursor = decodeToken<string | number>(req.pageToken, filters);
      const rows = await store.listWorkflows(tenant, {
        name: req.name || undefined,
        after: typeof cursor === "string" ? cursor : undefined,
        beforeVersion: typeof cursor === "number" ? cursor : undefined,
        limit: limit + 1,
      });
      const page = rows.slice(0, limit);
      const last = page[page.length - 1];
      return {
        workflows: page.map(workflowProto),
        nextPageToken: rows.length > limit && last ? encodeToken(filters, req.name ? last.version : last.name) : "",
      };
    },

    async startRun(req, ctx: HandlerContext) {
      const tenant = tenantOf(req.tenant);
      if (!NAME_RE.test(req.workflowName)) throw new InvalidArgumentError("workflow_name", "must be 1 to 128 bytes of letters, digits, '_', '-' and '.', starting with a letter");
      if (req.workflowVersion < 0) throw new InvalidArgumentError("workflow_version", "must not be negative");
      if (Buffer.byteLength(req.idempotencyKey) > 200) throw new InvalidArgumentError("idempotency_key", "at most 200 bytes");
      if (req.priority < -1000 || req.priority > 1000) throw new InvalidArgumentError("priority", "must be between -1000 and 1000");
      const input = (req.input ?? {}) as JsonObject;
      if (jsonSize(input) > MIB) throw new InvalidArgumentError("input", "larger than 1 MiB as JSON");

      // 1. Same key, same run: no new decision, nothing else happens.
      if (req.idempotencyKey) {
        const existing = await store.findRunByKey(tenant, req.idempotencyKey);
        if (existing) {
          store.checkSameRun(existing, req.workflowName, inputDigest(req.workflowName, input));
          return { run: runProto(existing), existing: true, policy: policyProto(existing.policy) };
        }
      }
      const wf = await store.compiledWorkflow(tenant, req.workflowName, req.workflowVersion).catch((error) => {
        if (error instanceof NotFoundError) {
          throw new NotFoundError(req.workflowVersion ? `workflow "${req.workflowName}" has no version ${req.workflowVersion}` : `no workflow "${req.workflowName}"`);
        }
        throw error;
      });
      // 2. Policy decides (fail closed).
      const decision = await policy.decide({ tenant, workflow: wf.name, version: wf.version, priority: req.priority });
      if (decision.effect === "DENY") {
        throw new PermissionDeniedError(`policy denied starting "${wf.name}": ${decision.reasons.join("; ") || "no reason given"}`);
      }
      if (decision.effect === "TARPIT" && decision.delayMs > 0) {
        await sleep(decision.delayMs, ctx.signal);
        if (ctx.signal.aborted) throw new ConnectError("deadline passed during the policy's tarpit delay; no run was started", Code.DeadlineExceeded);
      }
      const summary: JsonObject = {
        effect: decision.effect,
        reasons: decision.reasons,
        bundle_name: decision.bundleName,
        bundle_version: decision.bundleVersion,
        decision_id: decision.decisionId,
        cached: decision.cached,
        tarpit_delay_ms: decision.delayMs,
        divert_target: decision.divertTarget,
        decided_at: new Date().toISOString(),
      };
      // 3. Stored with RUN_CREATED in one transaction; execution is asynchronous.
      const { run, existing } = await store.createRun({ tenant, wf, input, idempotencyKey: req.idempotencyKey, priority: req.priority, policy: summary });
      return { run: runProto(run), existing, policy: policyProto(run.policy) };
    },

    async getRun(req, ctx: HandlerContext) {
      const detail = await store.getRunDetail(runId(req.runId));
      const run = visibleRun(detail?.run, scopeOf(ctx), req.runId);
      return { run: runProto(run, detail!.tasks, detail!.attempts) };
    },

    async listRuns(req, ctx: HandlerContext) {
      const tenant = tenantOf(req.tenant, "tenant", true);
      // The door already refuses "*" from a confined caller; this keeps the handler safe on its own.
      if (tenant === "*" && scopeOf(ctx) !== undefined) throw new PermissionDeniedError('tenant: "*" (all tenants) is only for admins of all tenants and services');
      if (req.workflowName && !NAME_RE.test(req.workflowName)) throw new InvalidArgumentError("workflow_name", "malformed workflow name");
      const after = req.createdAfter ? timestampDate(req.createdAfter) : undefined;
      const before = req.createdBefore ? timestampDate(req.createdBefore) : undefined;
      if (after && before && after >= before) throw new InvalidArgumentError("created_after", "must be before created_before");
      const limit = pageSize(req.pageSize);
      const status = req.status ? RunStatus[req.status] : undefined;
      if (req.status && !status) throw new InvalidArgumentError("status", "unknown status");
      const filters = { tenant, w: req.workflowName, s: req.status, a: after?.toISOString(), b: before?.toISOString() };
      const cursor = decodeToken<{ t: string; id: string }>(req.pageToken, filters);
      const rows = await store.listRuns({
        tenant: tenant === "*" ? undefined : tenant,
        workflowName: req.workflowName || undefined,
        status,
        createdAfter: after,
        createdBefore: before,
        cursor: cursor ? { createdAt: cursor.t, id: cursor.id } : undefined,
        limit: limit + 1,
      });
      const page = rows.slice(0, limit);
      const last = page[page.length - 1];
      return {
        runs: page.map((r) => runProto(r)),
        nextPageToken: rows.length > limit && last ? encodeToken(filters, { t: last.cursor_ts, id: last.id }) : "",
      };
    },

    async cancelRun(req, ctx: HandlerContext) {
      const id = runId(req.runId);
      if (Buffer.byteLength(req.reason) > 1000) throw new InvalidArgumentError("reason", "at most 1000 bytes");
      const grace = durationMs(req.gracePeriod) ?? 30_000;
      if (grace < 0 || grace > 600_000) throw new InvalidArgumentError("grace_period", "must be between 0 and 10 minutes");
      // A run's tenant never changes, so checking before the cancelling transaction is enough.
      const scope = scopeOf(ctx);
      if (scope !== undefined) visibleRun(await store.getRun(id), scope, req.runId);
      const res = await store.cancelRun(id, req.reason, grace);
      if (!res) throw new NotFoundError(`no run "${req.runId}"`);
      engine.afterCommit(res.after);
      return { run: runProto(res.run) };
    },

    async *watchRun(req, ctx: HandlerContext) {
      const id = runId(req.runId);
      if (req.fromSequence < 0n) throw new InvalidArgumentError("from_sequence", "must not be negative");
      visibleRun(await store.getRun(id), scopeOf(ctx), req.runId);
      let next = req.fromSequence > 1n ? req.fromSequence : 1n;
      const endAt = Date.now() + config.watchMaxMs;
      for (;;) {
        // Read the status before the events: if the run was final then, every event is stored.
        const run = await store.getRun(id);
        const events = await store.listEvents(id, next, 500);
        for (const e of events) {
          yield { event: eventProto(e) };
          next = BigInt(e.seq) + 1n;
          if (FINAL_EVENTS.has(e.type)) return;
        }
        if (events.length === 500) continue;
        if (run && FINAL_RUN.has(run.status)) return;
        if (ctx.signal.aborted) return;
        if (Date.now() >= endAt) throw new ConnectError("maximum stream duration reached; resume with from_sequence", Code.Unavailable);
        await deps.events.wait(id, Math.min(1000, endAt - Date.now()), ctx.signal);
      }
    },

    async pollTasks(req, ctx: HandlerContext) {
      const tenant = tenantOf(req.tenant);
      if (!QUEUE_RE.test(req.queue)) throw new InvalidArgumentError("queue", "1 to 128 bytes of lowercase letters, digits, '_', '-' and '.', starting with a letter");
      if (!req.workerId || Buffer.byteLength(req.workerId) > 200) throw new InvalidArgumentError("worker_id", "must be 1 to 200 bytes");
      if (req.maxTasks < 0 || req.maxTasks > 100) throw new InvalidArgumentError("max_tasks", "must be between 0 and 100");
      const waitMs = durationMs(req.waitTimeout) ?? 30_000;
      if (waitMs < 0 || waitMs > 60_000) throw new InvalidArgumentError("wait_timeout", "must be between 0 and 60 seconds");
      const deadline = Date.now() + waitMs;
      for (;;) {
        if (ctx.signal.aborted) throw new ConnectError("poll cancelled; nothing was leased", Code.Canceled);
        const { claimed, after } = await store.claim({
          kind: "worker",
          tenant,
          queue: req.queue,
          limit: req.maxTasks || 1,
          owner: req.workerId,
          workerId: req.workerId,
          queueLimit: config.queueConcurrency,
          signal: ctx.signal,
        });
        engine.afterCommit(after);
        const tasks: LeasedTask[] = [];
        for (const c of claimed) {
          let resolved: JsonObject | undefined;
          let error: { kind: string; message: string } | undefined;
          try {
            const v = resolveConfig(c.task.config, {
              input: c.run.input,
              tasks: c.upstream,
              run: { id: c.runId, tenant: c.tenant, workflow: c.run.workflowName, version: c.run.workflowVersion, priority: c.run.priority },
            });
            if (isJsonObject(v)) resolved = v;
            else error = { kind: "config.invalid", message: "config did not resolve to an object" };
          } catch (e) {
            if (!(e instanceof CelEvalError)) throw e;
            error = { kind: "cel.error", message: `config: ${e.message}` };
          }
          if (resolved) tasks.push(leasedTask(c, resolved));
          else engine.afterCommit((await store.fail(c.leaseId, error!, true)).after);
        }
        if (tasks.length > 0) return { tasks };
        const left = deadline - Date.now();
        if (left <= 0) return { tasks: [] };
        await engine.waitForQueue(tenant, req.queue, Math.min(left, config.pollIntervalMs), ctx.signal);
      }
    },

    async heartbeatTask(req, ctx: HandlerContext) {
      if (!UUID_RE.test(req.leaseId)) throw new InvalidArgumentError("lease_id", "must be a lease id from PollTasks");
      if (req.details && jsonSize(req.details) > 64 * 1024) throw new InvalidArgumentError("details", "larger than 64 KiB as JSON");
      const r = await store.heartbeat(req.leaseId.toLowerCase(), req.details as JsonObject | undefined, scopeOf(ctx));
      return { leaseExpiresAt: timestampFromDate(r.expiresAt), cancelRequested: r.cancelRequested };
    },

    async completeTask(req, ctx: HandlerContext) {
      if (!UUID_RE.test(req.leaseId)) throw new InvalidArgumentError("lease_id", "must be a lease id from PollTasks");
      const output = (req.output ?? {}) as JsonObject;
      if (jsonSize(output) > MIB) throw new InvalidArgumentError("output", "larger than 1 MiB as JSON");
      const r = await store.complete(req.leaseId.toLowerCase(), output, scopeOf(ctx));
      engine.afterCommit(r.after);
      return { alreadyRecorded: r.alreadyRecorded };
    },

    async failTask(req, ctx: HandlerContext) {
      if (!UUID_RE.test(req.leaseId)) throw new InvalidArgumentError("lease_id", "must be a lease id from PollTasks");
      const kind = req.error?.kind ?? "";
      if (!KIND_RE.test(kind)) {
        throw new InvalidArgumentError("error.kind", "required: 1 to 100 bytes of lowercase letters, digits, '_', '-' and '.', starting with a letter");
      }
      const r = await store.fail(req.leaseId.toLowerCase(), { kind, message: req.error?.message ?? "" }, req.nonRetryable, scopeOf(ctx));
      engine.afterCommit(r.after);
      return { willRetry: r.willRetry, nextAttemptAt: r.nextAttemptAt ? timestampFromDate(r.nextAttemptAt) : undefined, alreadyRecorded: r.alreadyRecorded };
    },
  };
}
