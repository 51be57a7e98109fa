import { CelScalar, celEnv, isCelError, mapType, parse, plan, type CelValue } from "@bufbuild/cel";
import type { JsonObject, JsonValue } from "@bufbuild/protobuf";
import { celToJson } from "../kit/cel-json.js";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";

/**
 * CEL for trigger filters and input mappings (@bufbuild/cel). Expressions see one variable,
 * `event`: {id, tenant, type, payload (map), idempotency_key, published_at (timestamp)}. Payload
 * numbers come from JSON, so they are CEL doubles (`event.payload.amount > 100.0`).
 *
 * "Is the filter boolean?" @bufbuild/cel 0.6 has no public type checker (its internal one does
 * not handle select/call expressions yet), so CreateTrigger rejects filters whose ROOT is
 * statically not boolean (a non-bool literal, arithmetic, a list/map literal, a conversion such
 * as string() or size()); anything else whose type is only known at run time (e.g.
 * `event.payload.flag`) is accepted and a non-bool result is a FILTER_ERROR for that event.
 */
const ENV = celEnv({ variables: { event: mapType(CelScalar.STRING, CelScalar.DYN) } });

export interface EventVars {
  id: string;
  tenant: string;
  type: string;
  payload: JsonObject;
  idempotencyKey: string;
  publishedAtMs: number;
}

export class CelCompileError extends Error {}
export class CelRuntimeError extends Error {}

type Evaluate = (vars: EventVars) => CelValue;
type AnyExpr = { exprKind: { case: string | undefined; value?: any } };

const NON_BOOL_CALLS = new Set(["_+_", "_-_", "_*_", "_/_", "_%_", "-_", "string", "int", "uint", "double", "bytes", "size", "timestamp", "duration", "dyn", "type", "_[_]"]);
const BOOL_CALLS = new Set(["_==_", "_!=_", "_<_", "_<=_", "_>_", "_>=_", "_&&_", "_||_", "!_", "@in", "startsWith", "endsWith", "contains", "matches", "@not_strictly_false"]);

function compile(source: string): { evaluate: Evaluate; root: AnyExpr } {
  let parsed;
  try {
    parsed = parse(source);
  } catch (error) {
    throw new CelCompileError(`invalid CEL: ${(error as Error).message.replace(/^<input>:/, "at ")}`);
  }
  const unknown = new Set<string>();
  walk(parsed.expr as unknown as AnyExpr, new Set(), unknown);
  if (unknown.size > 0) throw new CelCompileError(`invalid CEL: unknown variable ${[...unknown].map((u) => `"${u}"`).join(", ")} (only "event" is declared)`);
  const program = (() => {
    try {
      return plan(ENV, parsed);
    } catch (error) {
      throw new CelCompileError(`invalid CEL: ${(error as Error).message}`);
    }
  })();
  const evaluate: Evaluate = (vars) =>
    program({
      event: {
        id: vars.id,
        tenant: vars.tenant,
        type: vars.type,
        payload: vars.payload,
        idempotency_key: vars.idempotencyKey,
        published_at: timestampFromMs(vars.publishedAtMs),
      },
    } as never) as CelValue;
  return { evaluate, root: parsed.expr as unknown as AnyExpr };
}

const TYPE_NAMES = new Set(["int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type", "dyn", "google", "timestamp", "duration"]);

function walk(expr: AnyExpr | undefined, bound: Set<string>, unknown: Set<string>): void {
  if (!expr) return;
  const { case: kind, value } = expr.exprKind;
  switch (kind) {
    case "identExpr":
      if (!bound.has(value.name) && value.name !== "event" && !TYPE_NAMES.has(value.name)) unknown.add(value.name);
      return;
    case "selectExpr":
      walk(value.operand, bound, unknown);
      return;
    case "callExpr":
      walk(value.target, bound, unknown);
      for (const arg of value.args) walk(arg, bound, unknown);
      return;
    case "listExpr":
      for (const e of value.elements) walk(e, bound, unknown);
      return;
    case "structExpr":
      for (const entry of value.entries) {
        if (entry.keyKind.case === "mapKey") walk(entry.keyKind.value, bound, unknown);
        walk(entry.value, bound, unknown);
      }
      return;
    case "comprehensionExpr": {
      walk(value.iterRange, bound, unknown);
      walk(value.accuInit, bound, unknown);
      const inner = new Set(bound);
      for (const v of [value.iterVar, value.iterVar2, value.accuVar]) if (v) inner.add(v);
      walk(value.loopCondition, inner, unknown);
      walk(value.loopStep, inner, unknown);
      walk(value.result, inner, unknown);
      return;
    }
    default:
      return;
  }
}

function staticallyNotBool(root: AnyExpr): string | undefined {
  const { case: kind, value } = root.exprKind;
  if (kind === "constExpr") return value.constantKind.case === "boolValue" ? undefined : `a ${String(value.constantKind.case).replace(/Value$/, "")} literal`;
  if (kind === "listExpr") return "a list";
  if (kind === "structExpr") return "a map";
  if (kind === "callExpr") {
    if (BOOL_CALLS.has(value.function)) return undefined;
    if (NON_BOOL_CALLS.has(value.function) && value.function !== "_[_]" && value.function !== "dyn") return `the result of ${value.function.replace(/_/g, " ").trim()}`;
  }
  return undefined;
}

export type Filter = (vars: EventVars) => { match: true } | { match: false } | { error: string };

/** Compiles a trigger filter; empty means "every event of the type". Throws CelCompileError. */
export function compileFilter(source: string): Filter {
  if (source.trim() === "") return () => ({ match: true });
  const { evaluate, root } = compile(source);
  const notBool = staticallyNotBool(root);
  if (notBool) throw new CelCompileError(`must be a boolean expression, not ${notBool}`);
  return (vars) => {
    let result: CelValue;
    try {
      result = evaluate(vars);
    } catch (error) {
      return { error: (error as Error).message };
    }
    if (isCelError(result)) return { error: result.message };
    if (typeof result !== "boolean") return { error: `filter returned ${typeof result}, not bool` };
    return result ? { match: true } : { match: false };
  };
}

export type Mapping = (vars: EventVars) => JsonObject;

/**
 * Compiles an input mapping: string values at any depth are CEL expressions over `event`; other
 * values are copied. Throws CelCompileError whose `path` names the offending entry.
 */
export function compileMapping(mapping: JsonObject | undefined): Mapping {
  if (mapping === undefined) return (vars) => vars.payload;
  const build = (value: JsonValue, path: string): ((vars: EventVars) => JsonValue) => {
    if (typeof value === "string") {
      let evaluate: Evaluate;
      try {
        ({ evaluate } = compile(value));
      } catch (error) {
        throw new MappingCompileError(path, (error as Error).message);
      }
      return (vars) => {
        let result: CelValue;
        try {
          result = evaluate(vars);
        } catch (error) {
          throw new CelRuntimeError(`input_mapping.${path}: ${(error as Error).message}`);
        }
        if (isCelError(result)) throw new CelRuntimeError(`input_mapping.${path}: ${result.message}`);
        return celToJson(result);
      };
    }
    if (Array.isArray(value)) {
      const items = value.map((v, i) => build(v, `${path}[${i}]`));
      return (vars) => items.map((f) => f(vars));
    }
    if (value !== null && typeof value === "object") {
      const entries = Object.entries(value).map(([k, v]) => [k, build(v, path ? `${path}.${k}` : k)] as const);
      return (vars) => Object.fromEntries(entries.map(([k, f]) => [k, f(vars)]));
    }
    return () => value;
  };
  const root = build(mapping, "");
  return (vars) => root(vars) as JsonObject;
}

export class MappingCompileError extends CelCompileError {
  constructor(
    readonly path: string,
    message: string,
  ) {
    super(message);
  }
}

