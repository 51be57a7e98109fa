import { createHash } from "node:crypto";
import * as cedar from "@cedar-policy/cedar-wasm/nodejs";
import {
  errorText,
  evaluationError,
  parseDurationMs,
  type BundleFailure,
  type DecisionOutcome,
  type Engine,
  type JsonObject,
  type JsonValue,
  type LoadResult,
} from "./engine.js";

/**
 * Cedar engine (@cedar-policy/cedar-wasm, its Node entry).
 *
 * Load: the policy set text is split into policies (policySetTextToParts), each policy's
 * annotations are read once (policyToJson), the set is validated against the bundle's schema
 * when it has one, and then PREPARSED once into cedar-wasm's thread-local store under an id
 * derived from the content digest. Every evaluation then calls statefulIsAuthorized with that id
 * (measured in the issue: ~65 µs a call preparsed against ~210 µs reparsed), so nothing is
 * parsed per call. The preparsed store has no delete; ids are content digests, so reloading the
 * same bundle (another replica switch, a shadow, a benchmark) reuses the same entry.
 *
 * Policy ids: `@id("...")` when a policy carries it (must be unique), else "policy<N>" by
 * position, like Cedar's own numbering. Ids are what Cedar reports as determining policies and
 * what reasons fall back to.
 *
 * Request mapping (contract, Engine.ENGINE_CEDAR):
 * - principal/resource: a UID string `Type::"id"`, an {"type","id"} object or {"__entity":{...}}.
 *   A plain string that is not a UID becomes `User::"<s>"` (principal) or `Resource::"<s>"`
 *   (resource), so edge inputs like {"principal": "alice"} work; a missing one becomes
 *   `Anonymous::"anonymous"` / `Resource::"none"` (Cedar requires all three).
 * - action: `Action::"<action>"` unless it already is a UID; missing = `Action::"none"`.
 * - entities: the input's `entities` array (Cedar entity JSON), else none.
 * - context: the input's `context` object plus every other top-level field (top-level wins on a
 *   clash, so `tenant` is `context.tenant`). JSON has things Cedar does not: null values are
 *   dropped (Cedar has no null) and non-integer numbers become `decimal(...)` values rounded to
 *   Cedar's 4 decimal places (Cedar has no floats; integers stay Longs).
 * - The schema is used to validate the POLICIES at load time, not each request: edge inputs are
 *   free-form and strict request validation would turn every extra field into an error.
 *
 * Decision mapping: Deny -> DENY with the determining forbid policies' @reason (or ids), or "no
 * matching permit". Allow -> ALLOW unless a determining permit has @decision("tarpit") with
 * @tarpit_delay (TARPIT, the longest delay wins) or @decision("divert") with @divert_target
 * (DIVERT, the first by policy id); TARPIT beats DIVERT. Allow reasons are the determining
 * permits' @reason (or ids), ordered by policy id.
 */

interface PolicyMeta {
  id: string;
  effect: "permit" | "forbid";
  reason?: string;
  decision?: "allow" | "deny" | "tarpit" | "divert";
  tarpitDelayMs?: number;
  divertTarget?: string;
}

const UID = /^((?:[A-Za-z_][A-Za-z0-9_]*::)+)"((?:[^"\\]|\\.)*)"$/;

type Uid = { type: string; id: string };

function toUid(value: JsonValue | undefined, fallbackType: string, missing: Uid): Uid {
  if (value === undefined || value === null || value === "") return missing;
  if (typeof value === "string") {
    const match = UID.exec(value);
    if (match) return { type: match[1]!.slice(0, -2), id: JSON.parse(`"${match[2]!}"`) as string };
    return { type: fallbackType, id: value };
  }
  if (typeof value === "object" && !Array.isArray(value)) {
    const inner = (value.__entity ?? value) as JsonValue;
    if (inner && typeof inner === "object" && !Array.isArray(inner) && typeof inner.type === "string" && typeof inner.id === "string") {
      return { type: inner.type, id: inner.id };
    }
  }
  throw new Error(`expected a Cedar entity UID (Type::"id") or {"type","id"}, got ${JSON.stringify(value).slice(0, 80)}`);
}

/** JSON -> Cedar JSON value (see the header: nulls dropped, floats as decimals). */
function toCedarValue(value: JsonValue): JsonValue | undefined {
  if (value === null) return undefined;
  if (typeof value === "number") {
    if (Number.isInteger(value)) return value;
    return { __extn: { fn: "decimal", arg: Number(value.toFixed(4)).toFixed(4) } };
  }
  if (Array.isArray(value)) return value.map(toCedarValue).filter((v): v is JsonValue => v !== undefined);
  if (typeof value === "object") {
    // Cedar's own escapes pass through untouched.
    if ("__entity" in value || "__extn" in value) return value;
    const out: JsonObject = {};
    for (const [k, v] of Object.entries(value)) {
      const converted = toCedarValue(v);
      if (converted !== undefined) out[k] = converted;
    }
    return out;
  }
  return value;
}

const RESERVED = new Set(["principal", "action", "resource", "entities", "context"]);

function lineColumn(text: string, offset: number): string {
  const before = text.slice(0, offset);
  const line = before.split("\n").length;
  const column = offset - before.lastIndexOf("\n");
  return `${line}:${column}`;
}

function detailed(errors: cedar.DetailedError[], text?: string): { message: string; location?: string }[] {
  return errors.map((e) => {
    const loc = e.sourceLocations?.[0];
    const label = loc?.label ? ` (${loc.label})` : "";
    return { message: `${e.message}${label}${e.help ? `; ${e.help}` : ""}`, location: loc && text ? lineColumn(text, loc.start) : undefined };
  });
}

class CedarEngine implements Engine {
  readonly kind = "cedar" as const;
  readonly entrypoints: string[] = [];

  constructor(
    private readonly setId: string,
    private readonly meta: Map<string, PolicyMeta>,
  ) {}

  evaluate(input: JsonObject): DecisionOutcome {
    let answer: cedar.AuthorizationAnswer;
    try {
      const context: JsonObject = {};
      const rawContext = input.context;
      if (rawContext !== undefined && rawContext !== null) {
        if (typeof rawContext !== "object" || Array.isArray(rawContext)) throw new Error("input.context must be an object");
        Object.assign(context, rawContext);
      }
      for (const [k, v] of Object.entries(input)) if (!RESERVED.has(k)) context[k] = v;
      const entities = input.entities ?? [];
      if (!Array.isArray(entities)) throw new Error("input.entities must be an array of Cedar entities");
      const action = toUid(input.action, "Action", { type: "Action", id: "none" });
      answer = cedar.statefulIsAuthorized({
        principal: toUid(input.principal, "User", { type: "Anonymous", id: "anonymous" }),
        action,
        resource: toUid(input.resource, "Resource", { type: "Resource", id: "none" }),
        context: toCedarValue(context) as cedar.Context,
        entities: entities as unknown as cedar.Entities,
        preparsedPolicySetId: this.setId,
      });
    } catch (error) {
      return evaluationError(errorText(error));
    }
    if (answer.type === "failure") return evaluationError(answer.errors.map((e) => e.message).join("; "));
    const determining = [...answer.response.diagnostics.reason].sort();
    const policies = determining.map((id) => this.meta.get(id) ?? { id, effect: "permit" as const });
    const reasons = policies.map((p) => p.reason ?? p.id);
    if (answer.response.decision === "deny") {
      return { decision: "deny", reasons: reasons.length > 0 ? reasons : ["no matching permit"] };
    }
    const tarpits = policies.filter((p) => p.decision === "tarpit");
    if (tarpits.length > 0) {
      return { decision: "tarpit", reasons, tarpitDelayMs: Math.max(...tarpits.map((p) => p.tarpitDelayMs ?? 0)) };
    }
    const divert = policies.find((p) => p.decision === "divert");
    if (divert) return { decision: "divert", reasons, divertTarget: divert.divertTarget };
    return { decision: "allow", reasons };
  }
}

export function loadCedarEngine(content: Uint8Array, schemaText: string): LoadResult {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(content);
  } catch {
    return { ok: false, failures: [{ stage: "load", message: "policy text is not valid UTF-8" }] };
  }
  const parts = cedar.policySetTextToParts(text);
  if (parts.type === "failure") {
    return { ok: false, failures: detailed(parts.errors, text).map((e) => ({ stage: "validate", message: `Cedar syntax error: ${e.message}`, location: e.location })) };
  }
  const failures: BundleFailure[] = [];
  if (parts.policy_templates.length > 0) {
    failures.push({ stage: "validate", message: "policy templates are not supported (bundles hold static policies only)" });
  }
  if (parts.policies.length === 0) failures.push({ stage: "validate", message: "the policy set has no policies" });

  const policies: Record<string, string> = {};
  const meta = new Map<string, PolicyMeta>();
  parts.policies.forEach((policyText, index) => {
    const json = cedar.policyToJson(policyText);
    if (json.type === "failure") {
      failures.push({ stage: "validate", message: json.errors.map((e) => e.message).join("; "), location: `policy${index}` });
      return;
    }
    const annotations = json.json.annotations ?? {};
    const id = annotations.id ?? `policy${index}`;
    if (meta.has(id)) {
      failures.push({ stage: "validate", message: `duplicate policy id ${JSON.stringify(id)}`, location: id });
      return;
    }
    const m: PolicyMeta = { id, effect: json.json.effect, reason: annotations.reason };
    const decision = annotations.decision?.toLowerCase();
    if (decision !== undefined) {
      const allowed = m.effect === "permit" ? ["allow", "tarpit", "divert"] : ["deny"];
      if (!allowed.includes(decision)) {
        failures.push({ stage: "validate", message: `@decision(${JSON.stringify(annotations.decision)}) is not valid on a ${m.effect} policy (expected ${allowed.join(" or ")})`, location: id });
      } else {
        m.decision = decision as PolicyMeta["decision"];
      }
    }
    if (m.decision === "tarpit") {
      const delay = annotations.tarpit_delay === undefined ? undefined : parseDurationMs(annotations.tarpit_delay);
      if (delay === undefined) failures.push({ stage: "validate", message: '@decision("tarpit") needs @tarpit_delay("<duration>", e.g. "2s")', location: id });
      m.tarpitDelayMs = delay;
    }
    if (m.decision === "divert") {
      if (!annotations.divert_target) failures.push({ stage: "validate", message: '@decision("divert") needs a non-empty @divert_target("<target>")', location: id });
      m.divertTarget = annotations.divert_target;
    }
    meta.set(id, m);
    policies[id] = policyText;
  });
  if (failures.length > 0) return { ok: false, failures };

  if (schemaText.trim() !== "") {
    let schema: cedar.Schema = schemaText;
    if (schemaText.trimStart().startsWith("{")) {
      try {
        schema = JSON.parse(schemaText) as cedar.Schema;
      } catch (error) {
        return { ok: false, failures: [{ stage: "validate", message: `Cedar schema is not valid JSON: ${errorText(error)}`, location: "schema" }] };
      }
    }
    const validation = cedar.validate({ schema, policies: { staticPolicies: policies }, validationSettings: { mode: "strict" } });
    if (validation.type === "failure") {
      return { ok: false, failures: detailed(validation.errors, schemaText).map((e) => ({ stage: "validate", message: `Cedar schema error: ${e.message}`, location: e.location ? `schema ${e.location}` : "schema" })) };
    }
    if (validation.validationErrors.length > 0) {
      return {
        ok: false,
        failures: validation.validationErrors.map((e) => ({ stage: "validate", message: `policy does not validate against the schema: ${e.error.message}`, location: e.policyId })),
      };
    }
  }

  const setId = `orca-${createHash("sha256").update(JSON.stringify(policies)).digest("hex")}`;
  const preparsed = cedar.preparsePolicySet(setId, { staticPolicies: policies });
  if (preparsed.type === "failure") {
    return { ok: false, failures: detailed(preparsed.errors, text).map((e) => ({ stage: "validate", message: e.message, location: e.location })) };
  }
  return { ok: true, engine: new CedarEngine(setId, meta) };
}
