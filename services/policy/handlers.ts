import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromDate, type DurationSchema } from "@bufbuild/protobuf/wkt";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import {
  BundleStatus,
  Decision,
  Engine,
  FailureStage,
  type BundleSchema,
  type BundleFailureSchema,
  type DecideRequest,
  type DecisionResultSchema,
  type Bundle as BundleMessage,
  type ShadowReportSchema,
  PolicyService,
} from "../../gen/orca/policy/v1/policy_pb.js";
import { callInfoKey, callerTenant } from "../kit/call-scope.js";
import { InvalidArgumentError, PermissionDeniedError, ResourceExhaustedError } from "../kit/errors.js";
import { BUNDLE_NAME } from "./bundle-files.js";
import type { PolicyConfig } from "./config.js";
import type { DecideCall, DecisionRecord } from "./decision-point.js";
import type { BundleFailure, DecisionKind, DecisionOutcome, EngineKind, JsonObject, TestCase } from "./engine.js";
import { jsonDepth, mergeInput } from "./input.js";
import type { BundleInput, PolicyDomain } from "./policy.js";
import type { ShadowExampleRecord, ShadowReportRecord, ShadowSetting, StoredBundle } from "./store.js";
import type { BundleStatusText } from "./schema.js";

/**
 * Thin handlers: validate the request (InvalidArgumentError naming the proto field, limits as
 * ResourceExhausted), call the domain, map to messages. All semantics live in the domain modules.
 */

const MAX_TYPED_FIELD_BYTES = 1024;
const MAX_DEPTH = 32;
const MAX_BATCH = 1000;
const MAX_TESTS = 1000;

const DECISION_TO_PROTO: Record<DecisionKind, Decision> = { allow: Decision.ALLOW, deny: Decision.DENY, divert: Decision.DIVERT, tarpit: Decision.TARPIT };
const DECISION_FROM_PROTO: Partial<Record<Decision, DecisionKind>> = { [Decision.ALLOW]: "allow", [Decision.DENY]: "deny", [Decision.DIVERT]: "divert", [Decision.TARPIT]: "tarpit" };
const ENGINE_TO_PROTO: Record<EngineKind, Engine> = { cedar: Engine.CEDAR, opa_wasm: Engine.OPA_WASM };
const STATUS_TO_PROTO: Record<BundleStatusText, BundleStatus> = {
  validating: BundleStatus.VALIDATING,
  rejected: BundleStatus.REJECTED,
  ready: BundleStatus.READY,
  active: BundleStatus.ACTIVE,
  retired: BundleStatus.RETIRED,
};
const STATUS_FROM_PROTO: Partial<Record<BundleStatus, BundleStatusText>> = Object.fromEntries(Object.entries(STATUS_TO_PROTO).map(([k, v]) => [v, k]));
const STAGE_TO_PROTO = { load: FailureStage.LOAD, validate: FailureStage.VALIDATE, test: FailureStage.TEST } as const;

function durationFromMs(ms: number): MessageInitShape<typeof DurationSchema> {
  const seconds = Math.floor(ms / 1000);
  return { seconds: BigInt(seconds), nanos: Math.round((ms - seconds * 1000) * 1e6) };
}

function durationFromNs(ns: bigint): MessageInitShape<typeof DurationSchema> {
  return { seconds: ns / 1_000_000_000n, nanos: Number(ns % 1_000_000_000n) };
}

function checkName(field: string, name: string, allowEmpty = false): void {
  if (name === "" && allowEmpty) return;
  if (name === "") throw new InvalidArgumentError(field, "is required");
  if (Buffer.byteLength(name) > 128) throw new InvalidArgumentError(field, "is longer than 128 bytes");
  if (!BUNDLE_NAME.test(name)) throw new InvalidArgumentError(field, "must be lowercase letters, digits, '.', '_' and '-', starting with a letter or digit");
}

function checkTenantLength(field: string, tenant: string): void {
  if (Buffer.byteLength(tenant) > MAX_TYPED_FIELD_BYTES) throw new InvalidArgumentError(field, "is longer than 1 KiB");
}

/**
 * Tenant access (DESIGN: JWT roles admin, operator, viewer, system, checked per RPC by the auth
 * interceptor of the security issue). Until that interceptor sets a principal, every caller is
 * trusted (the mesh runs behind mTLS). With a principal: end users only for their token's tenant
 * (admins of "*" and services for any); anyone authenticated may evaluate the default tenant's
 * bundles.
 */
function authorizeTenant(ctx: HandlerContext, tenant: string, evaluateOnly = false): void {
  const principal = ctx.values.get(callInfoKey)?.principal;
  if (!principal) return;
  if (evaluateOnly && tenant === "") return;
  // An end user is confined to its token's tenant whatever its roles (an admin of "acme" may not
  // evaluate or manage "globex"'s bundles); `bundle_tenant` is not a field the door checks.
  const confined = callerTenant(ctx.values);
  if (confined !== undefined && confined !== tenant) {
    throw new PermissionDeniedError(`caller ${principal.subject} may not act for ${tenant === "" ? "the default tenant" : `tenant ${JSON.stringify(tenant)}`}`);
  }
  if (principal.roles.includes("admin") || principal.roles.includes("system")) return;
  if (principal.tenant === "*" || (principal.tenant ?? "") === tenant) return;
  throw new PermissionDeniedError(`caller ${principal.subject} may not act for ${tenant === "" ? "the default tenant" : `tenant ${JSON.stringify(tenant)}`}`);
}

function callerIdentity(ctx: HandlerContext): string {
  return ctx.values.get(callInfoKey)?.principal?.subject ?? "anonymous";
}

function decisionResult(record: DecisionRecord): MessageInitShape<typeof DecisionResultSchema> {
  return { ...outcomeMessage(record.outcome), bundleName: record.bundleName, bundleVersion: record.bundleVersion, decisionId: record.decisionId, cached: record.cached };
}

function outcomeMessage(outcome: DecisionOutcome): MessageInitShape<typeof DecisionResultSchema> {
  return {
    decision: DECISION_TO_PROTO[outcome.decision],
    reasons: outcome.reasons,
    divertTarget: outcome.decision === "divert" ? (outcome.divertTarget ?? "") : "",
    tarpitDelay: outcome.decision === "tarpit" ? durationFromMs(outcome.tarpitDelayMs ?? 0) : undefined,
  };
}

function failureMessage(f: BundleFailure): MessageInitShape<typeof BundleFailureSchema> {
  return {
    stage: STAGE_TO_PROTO[f.stage],
    testName: f.testName ?? "",
    message: f.message,
    location: f.location ?? "",
    expected: f.expected ? DECISION_TO_PROTO[f.expected] : Decision.UNSPECIFIED,
    actual: f.actual ? DECISION_TO_PROTO[f.actual] : Decision.UNSPECIFIED,
  };
}

function bundleMessage(b: StoredBundle, full: boolean): MessageInitShape<typeof BundleSchema> {
  return {
    tenant: b.tenant,
    name: b.name,
    version: b.version,
    engine: ENGINE_TO_PROTO[b.engine],
    status: STATUS_TO_PROTO[b.status],
    content: full ? b.content : new Uint8Array(),
    cedarSchema: full ? b.cedarSchema : "",
    entrypoint: b.entrypoint,
    tests: full
      ? b.tests.map((t) => ({ name: t.name, input: t.input, expectedDecision: DECISION_TO_PROTO[t.expectedDecision], expectedDivertTarget: t.expectedDivertTarget ?? "" }))
      : [],
    failures: b.failures.map(failureMessage),
    digest: b.digest,
    createdAt: timestampFromDate(b.createdAt),
    activatedAt: b.activatedAt ? timestampFromDate(b.activatedAt) : undefined,
    createdBy: b.createdBy,
  };
}

function shadowExample(e: ShadowExampleRecord, name: string) {
  return {
    input: e.input,
    active: { ...outcomeMessage(e.active), bundleName: name, bundleVersion: BigInt(e.active.version), decisionId: e.active.decisionId },
    shadow: { ...outcomeMessage(e.shadow), bundleName: name, bundleVersion: BigInt(e.shadow.version) },
    decidedAt: timestampFromDate(new Date(e.decidedAt)),
  };
}

function shadowReport(s: ShadowSetting | ShadowReportRecord): MessageInitShape<typeof ShadowReportSchema> {
  const r = s as Partial<ShadowReportRecord>;
  return {
    tenant: s.tenant,
    name: s.name,
    activeVersion: s.activeVersion,
    shadowVersion: s.version,
    sampleRate: s.sampleRate,
    startedAt: timestampFromDate(s.startedAt),
    evaluated: r.evaluated ?? 0n,
    agreements: r.agreements ?? 0n,
    disagreements: r.disagreements ?? 0n,
    shadowErrors: r.shadowErrors ?? 0n,
    pairs: (r.pairs ?? []).map((p) => ({ active: DECISION_TO_PROTO[p.active], shadow: DECISION_TO_PROTO[p.shadow], count: p.count })),
    agreementExamples: (r.agreementExamples ?? []).map((e) => shadowExample(e, s.name)),
    disagreementExamples: (r.disagreementExamples ?? []).map((e) => shadowExample(e, s.name)),
  };
}

/** Validates one DecideRequest (field names prefixed for BatchDecide) and builds the call. */
function decideCall(req: DecideRequest, config: PolicyConfig, prefix: string): DecideCall {
  const bundle = req.bundle === "" ? "default" : req.bundle;
  checkName(`${prefix}bundle`, bundle);
  checkTenantLength(`${prefix}bundle_tenant`, req.bundleTenant);
  for (const field of ["tenant", "principal", "action", "resource"] as const) {
    if (Buffer.byteLength(req[field]) > MAX_TYPED_FIELD_BYTES) throw new InvalidArgumentError(`${prefix}${field}`, "is longer than 1 KiB");
  }
  const merged = mergeInput(req.input, { tenant: req.tenant, principal: req.principal, action: req.action, resource: req.resource });
  if ("conflict" in merged) {
    throw new InvalidArgumentError(`${prefix}${merged.conflict}`, `conflicts with a different value of input.${merged.conflict}`);
  }
  if (jsonDepth(merged.merged, MAX_DEPTH) > MAX_DEPTH) throw new InvalidArgumentError(`${prefix}input`, `nests deeper than ${MAX_DEPTH} levels`);
  const size = Buffer.byteLength(JSON.stringify(merged.merged));
  if (size > config.maxInputBytes) {
    throw new ResourceExhaustedError(`${prefix}input: the merged input is ${size} bytes, more than the maximum of ${config.maxInputBytes} bytes`);
  }
  return { bundleTenant: req.bundleTenant, bundleName: bundle, input: merged.merged, bypassCache: req.bypassCache };
}

/** Validates the bundle of PutBundle/ValidateBundle (an empty name is allowed for ValidateBundle). */
function bundleInput(b: BundleMessage | undefined, config: PolicyConfig, allowEmptyName: boolean): BundleInput {
  if (!b) throw new InvalidArgumentError("bundle", "is required");
  checkName("bundle.name", b.name, allowEmptyName);
  checkTenantLength("bundle.tenant", b.tenant);
  if (b.engine !== Engine.CEDAR && b.engine !== Engine.OPA_WASM) throw new InvalidArgumentError("bundle.engine", "must be ENGINE_OPA_WASM or ENGINE_CEDAR");
  if (b.content.length === 0) throw new InvalidArgumentError("bundle.content", "is empty");
  if (b.content.length > config.maxBundleBytes) {
    throw new ResourceExhaustedError(`bundle.content is ${b.content.length} bytes, more than the maximum of ${config.maxBundleBytes} bytes`);
  }
  if (b.engine === Engine.OPA_WASM && b.cedarSchema !== "") throw new InvalidArgumentError("bundle.cedar_schema", "must be empty for an OPA bundle");
  if (b.tests.length > MAX_TESTS) throw new InvalidArgumentError("bundle.tests", `has more than ${MAX_TESTS} cases`);
  const seen = new Set<string>();
  const tests: TestCase[] = b.tests.map((t, i) => {
    if (t.name === "" || Buffer.byteLength(t.name) > 200) throw new InvalidArgumentError(`bundle.tests[${i}].name`, "must be 1 to 200 bytes");
    if (seen.has(t.name)) throw new InvalidArgumentError(`bundle.tests[${i}].name`, `duplicates the test name ${JSON.stringify(t.name)}`);
    seen.add(t.name);
    const expected = DECISION_FROM_PROTO[t.expectedDecision];
    if (!expected) throw new InvalidArgumentError(`bundle.tests[${i}].expected_decision`, "must be set");
    return { name: t.name, input: (t.input ?? {}) as JsonObject, expectedDecision: expected, expectedDivertTarget: t.expectedDivertTarget || undefined };
  });
  return {
    tenant: b.tenant,
    name: b.name,
    // An entrypoint means nothing to a Cedar bundle; it is ignored (and left out of the digest).
    source: { engine: b.engine === Engine.CEDAR ? "cedar" : "opa_wasm", content: b.content, cedarSchema: b.cedarSchema, entrypoint: b.engine === Engine.CEDAR ? "" : b.entrypoint },
    tests,
  };
}

function positiveVersion(field: string, version: bigint, allowZero: boolean): bigint {
  if (version < 0n || (!allowZero && version === 0n)) throw new InvalidArgumentError(field, allowZero ? "must not be negative" : "must be positive");
  return version;
}

export function policyHandlers(domain: PolicyDomain, config: PolicyConfig): Partial<ServiceImpl<typeof PolicyService>> {
  return {
    async decide(req, ctx) {
      const call = decideCall(req, config, "");
      authorizeTenant(ctx, call.bundleTenant, true);
      return { result: decisionResult(await domain.decisions.decide(call)) };
    },

    async batchDecide(req, ctx) {
      if (req.requests.length === 0) throw new InvalidArgumentError("requests", "is empty");
      if (req.requests.length > MAX_BATCH) throw new InvalidArgumentError("requests", `has more than ${MAX_BATCH} entries`);
      const calls = req.requests.map((r, i) => decideCall(r, config, `requests[${i}].`));
      for (const tenant of new Set(calls.map((c) => c.bundleTenant))) authorizeTenant(ctx, tenant, true);
      const records = await domain.decisions.decideMany(calls);
      return { results: records.map(decisionResult) };
    },

    async putBundle(req, ctx) {
      const input = bundleInput(req.bundle, config, false);
      authorizeTenant(ctx, input.tenant);
      const result = await domain.put(input, req.activate, callerIdentity(ctx));
      return { bundle: bundleMessage(result.bundle, false), created: result.created };
    },

    async validateBundle(req, ctx) {
      const input = bundleInput(req.bundle, config, true);
      authorizeTenant(ctx, input.tenant);
      const report = await domain.validate(input);
      return { valid: report.valid, failures: report.failures.map(failureMessage), testsRun: report.testsRun, testsPassed: report.testsPassed, entrypoints: report.entrypoints };
    },

    async activateBundle(req, ctx) {
      checkName("name", req.name);
      positiveVersion("version", req.version, false);
      positiveVersion("expected_active_version", req.expectedActiveVersion, true);
      authorizeTenant(ctx, req.tenant);
      const result = await domain.activate(req.tenant, req.name, req.version, req.expectedActiveVersion, callerIdentity(ctx));
      return { bundle: bundleMessage(result.bundle, false), previousVersion: result.previousVersion };
    },

    async rollback(req, ctx) {
      checkName("name", req.name);
      positiveVersion("expected_active_version", req.expectedActiveVersion, true);
      authorizeTenant(ctx, req.tenant);
      const result = await domain.rollback(req.tenant, req.name, req.expectedActiveVersion, callerIdentity(ctx));
      return { bundle: bundleMessage(result.bundle, false), rolledBackVersion: result.rolledBackVersion };
    },

    async listBundles(req, ctx) {
      checkName("name", req.name, true);
      if (req.pageSize < 0 || req.pageSize > 1000) throw new InvalidArgumentError("page_size", "must be from 0 to 1000");
      authorizeTenant(ctx, req.tenant);
      const statuses = req.statuses
        .filter((s) => s !== BundleStatus.UNSPECIFIED)
        .map((s, i) => {
          const text = STATUS_FROM_PROTO[s];
          if (!text) throw new InvalidArgumentError(`statuses[${i}]`, "is not a known status");
          return text;
        });
      const page = await domain.store.list({ tenant: req.tenant, name: req.name, statuses, pageSize: req.pageSize === 0 ? 50 : req.pageSize, pageToken: req.pageToken });
      return { bundles: page.bundles.map((b) => bundleMessage(b, false)), nextPageToken: page.nextPageToken };
    },

    async getBundle(req, ctx) {
      checkName("name", req.name);
      positiveVersion("version", req.version, true);
      authorizeTenant(ctx, req.tenant);
      return { bundle: bundleMessage(await domain.store.get(req.tenant, req.name, req.version), true) };
    },

    async setShadow(req, ctx) {
      checkName("name", req.name);
      positiveVersion("version", req.version, true);
      if (!(req.sampleRate >= 0 && req.sampleRate <= 1)) throw new InvalidArgumentError("sample_rate", "must be from 0 to 1");
      authorizeTenant(ctx, req.tenant);
      const setting = await domain.setShadow(req.tenant, req.name, req.version, req.sampleRate === 0 ? 1 : req.sampleRate, callerIdentity(ctx));
      // A repeated SetShadow keeps its running report, so answer with the report as it stands.
      return { report: setting ? shadowReport(await domain.shadowReport(req.tenant, req.name)) : undefined };
    },

    async getShadowReport(req, ctx) {
      checkName("name", req.name);
      authorizeTenant(ctx, req.tenant);
      return { report: shadowReport(await domain.shadowReport(req.tenant, req.name)) };
    },

    async benchmarkPolicy(req, ctx) {
      const name = req.name === "" ? "default" : req.name;
      checkName("name", name);
      positiveVersion("version", req.version, true);
      if (req.iterations < 0 || req.iterations > 100_000) throw new InvalidArgumentError("iterations", "must be from 0 to 100000");
      if (req.warmupIterations < 0 || req.warmupIterations > 10_000) throw new InvalidArgumentError("warmup_iterations", "must be from 0 to 10000");
      const input = (req.input ?? {}) as JsonObject;
      if (jsonDepth(input, MAX_DEPTH) > MAX_DEPTH) throw new InvalidArgumentError("input", `nests deeper than ${MAX_DEPTH} levels`);
      const size = Buffer.byteLength(JSON.stringify(input));
      if (size > config.maxInputBytes) throw new ResourceExhaustedError(`input is ${size} bytes, more than the maximum of ${config.maxInputBytes} bytes`);
      authorizeTenant(ctx, req.tenant);
      const r = await domain.benchmark(req.tenant, name, req.version, input, req.iterations || 1000, req.warmupIterations || 100);
      return {
        engine: ENGINE_TO_PROTO[r.engine],
        version: r.version,
        iterations: r.iterations,
        p50: durationFromNs(r.p50Ns),
        p99: durationFromNs(r.p99Ns),
        mean: durationFromNs(r.meanNs),
        min: durationFromNs(r.minNs),
        max: durationFromNs(r.maxNs),
        evaluationsPerSecond: r.evaluationsPerSecond,
        result: { ...outcomeMessage(r.outcome), bundleName: name, bundleVersion: r.version, decisionId: "", cached: false },
      };
    },

    async getStats(_req, ctx) {
      const principal = ctx.values.get(callInfoKey)?.principal;
      if (principal && !principal.roles.some((r) => r === "operator" || r === "admin")) {
        throw new PermissionDeniedError("GetStats needs the operator or admin role");
      }
      const s = domain.decisions.stats();
      return {
        decisionCache: {
          entries: BigInt(s.cache.entries),
          maxEntries: BigInt(s.cache.maxEntries),
          ttl: durationFromMs(s.cache.ttlMs),
          hits: BigInt(s.cache.hits),
          misses: BigInt(s.cache.misses),
          hitRatio: s.cache.hitRatio,
          evictions: BigInt(s.cache.evictions),
          clears: BigInt(s.cache.clears),
        },
        decisions: (Object.keys(s.decisions) as DecisionKind[]).map((d) => ({ decision: DECISION_TO_PROTO[d], count: BigInt(s.decisions[d]) })),
        evaluationErrors: BigInt(s.evaluationErrors),
        replica: s.replica,
        since: timestampFromDate(s.since),
      };
    },
  };
}
