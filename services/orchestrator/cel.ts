import { CelScalar, celEnv, isCelError, mapType, parse, plan, type CelValue } from "@bufbuild/cel";
import type { JsonObject, JsonValue } from "@bufbuild/protobuf";
import { celToJson } from "../kit/cel-json.js";

/**
 * CEL for conditions, config expressions and lock keys (@bufbuild/cel). Expressions are parsed
 * and planned at registration (syntax errors and unknown variables are INVALID_ARGUMENT then),
 * and planned programs are reused for every run.
 *
 * Variables (see the contract): `input` (the run input), `tasks` (id -> {status, output}, only
 * the task's transitive dependencies), `run` ({id, tenant, workflow, version, priority}).
 * Values come from protobuf Structs, so numbers are CEL doubles, as with google.protobuf.Value
 * everywhere in CEL (`input.n + 1.0`, or `int(input.n) + 1`); `run.version` and
 * `run.priority` are ints.
 *
 * Registration checks (beyond syntax): every free identifier is one of the three variables
 * (or a CEL type name such as `int`), and every `tasks.<id>` names one of the task's
 * transitive dependencies, because only those are visible at run time.
 */
const ENV = celEnv({
  variables: {
    input: mapType(CelScalar.STRING, CelScalar.DYN),
    tasks: mapType(CelScalar.STRING, CelScalar.DYN),
    run: mapType(CelScalar.STRING, CelScalar.DYN),
  },
});

const VARIABLES = new Set(["input", "tasks", "run"]);
const TYPE_NAMES = new Set(["int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type", "dyn", "google"]);

export interface CelVars {
  input: JsonObject;
  tasks: Record<string, { status: string; output: JsonObject }>;
  run: { id: string; tenant: string; workflow: string; version: number; priority: number };
}

export type Program = (vars: CelVars) => JsonValue;

export class CelEvalError extends Error {
  override name = "CelEvalError";
}

export interface Compiled {
  program: Program;
  /** Task ids the expression reads through `tasks.<id>`. */
  taskRefs: string[];
  source: string;
}

type AnyExpr = { exprKind: { case: string | undefined; value?: any } };

/** Parses and plans an expression; throws an Error with a readable message when it is invalid. */
export function compileExpression(source: string): Compiled {
  let parsed;
  try {
    parsed = parse(source);
  } catch (error) {
    throw new Error(`invalid CEL: ${(error as Error).message.replace(/^<input>:/, "at ")}`);
  }
  const taskRefs = new Set<string>();
  const unknown = new Set<string>();
  walk(parsed.expr as unknown as AnyExpr, new Set(), taskRefs, unknown);
  if (unknown.size > 0) {
    throw new Error(`invalid CEL: unknown variable ${[...unknown].map((u) => `"${u}"`).join(", ")} (known: input, tasks, run)`);
  }
  const evaluate = plan(ENV, parsed);
  const program: Program = (vars) => {
    let result: unknown;
    try {
      result = evaluate({ input: vars.input, tasks: vars.tasks, run: { ...vars.run, version: BigInt(vars.run.version), priority: BigInt(vars.run.priority) } } as never);
    } catch (error) {
      throw new CelEvalError((error as Error).message);
    }
    if (isCelError(result)) throw new CelEvalError(result.message);
    return celToJson(result as CelValue);
  };
  return { program, taskRefs: [...taskRefs], source };
}

function walk(expr: AnyExpr | undefined, bound: Set<string>, taskRefs: Set<string>, unknown: Set<string>): void {
  if (!expr) return;
  const { case: kind, value } = expr.exprKind;
  switch (kind) {
    case "identExpr":
      if (!bound.has(value.name) && !VARIABLES.has(value.name) && !TYPE_NAMES.has(value.name)) unknown.add(value.name);
      return;
    case "selectExpr": {
      const operand = value.operand as AnyExpr | undefined;
      if (operand?.exprKind.case === "identExpr" && operand.exprKind.value.name === "tasks" && !bound.has("tasks")) taskRefs.add(value.field);
      walk(operand, bound, taskRefs, unknown);
      return;
    }
    case "callExpr": {
      walk(value.target, bound, taskRefs, unknown);
      for (const arg of value.args) walk(arg, bound, taskRefs, unknown);
      // tasks["id"] is an index call; record constant ids too.
      if (value.function === "_[_]" && value.args.length === 2) {
        const [target, key] = value.args as AnyExpr[];
        if (target.exprKind.case === "identExpr" && target.exprKind.value.name === "tasks" && key.exprKind.case === "constExpr") {
          const c = key.exprKind.value.constantKind;
          if (c.case === "stringValue") taskRefs.add(c.value);
        }
      }
      return;
    }
    case "listExpr":
      for (const e of value.elements) walk(e, bound, taskRefs, unknown);
      return;
    case "structExpr":
      for (const entry of value.entries) {
        if (entry.keyKind.case === "mapKey") walk(entry.keyKind.value, bound, taskRefs, unknown);
        walk(entry.value, bound, taskRefs, unknown);
      }
      return;
    case "comprehensionExpr": {
      walk(value.iterRange, bound, taskRefs, unknown);
      walk(value.accuInit, bound, taskRefs, unknown);
      const inner = new Set(bound);
      for (const v of [value.iterVar, value.iterVar2, value.accuVar]) if (v) inner.add(v);
      walk(value.loopCondition, inner, taskRefs, unknown);
      walk(value.loopStep, inner, taskRefs, unknown);
      walk(value.result, inner, taskRefs, unknown);
      return;
    }
    default:
      return;
  }
}


// ---------------------------------------------------------------------------------------------
// Config templates: `${ expr }` (the whole string: any JSON result), `${ expr }` inside a longer
// string (the result as a string), `$${` (a literal `${`).

type Part = { literal: string } | { expr: Compiled };
export type Template = { kind: "literal"; value: string } | { kind: "whole"; expr: Compiled } | { kind: "parts"; parts: Part[] };

export const MAX_EXPRESSION_BYTES = 4096;

/** Splits a config string into literals and expressions; throws on a malformed template or bad CEL. */
export function compileTemplate(text: string): Template {
  const parts: Part[] = [];
  let literal = "";
  let i = 0;
  while (i < text.length) {
    if (text.startsWith("$${", i)) {
      literal += "${";
      i += 3;
      continue;
    }
    if (text.startsWith("${", i)) {
      const end = findClose(text, i + 2);
      if (end < 0) throw new Error(`unterminated "\${" at offset ${i}`);
      const source = text.slice(i + 2, end).trim();
      if (source === "") throw new Error(`empty expression at offset ${i}`);
      if (Buffer.byteLength(source) > MAX_EXPRESSION_BYTES) throw new Error(`expression longer than ${MAX_EXPRESSION_BYTES} bytes`);
      if (literal) parts.push({ literal });
      literal = "";
      parts.push({ expr: compileExpression(source) });
      i = end + 1;
      continue;
    }
    literal += text[i++];
  }
  if (literal) parts.push({ literal });
  const exprs = parts.filter((p): p is { expr: Compiled } => "expr" in p);
  if (exprs.length === 0) return { kind: "literal", value: parts.map((p) => (p as { literal: string }).literal).join("") };
  if (parts.length === 1) return { kind: "whole", expr: exprs[0].expr };
  return { kind: "parts", parts };
}

/** The closing brace of `${ ... }`, skipping braces inside CEL string literals and maps. */
function findClose(text: string, from: number): number {
  let depth = 0;
  let quote: string | undefined;
  for (let i = from; i < text.length; i++) {
    const c = text[i];
    if (quote) {
      if (c === "\\") i++;
      else if (c === quote) quote = undefined;
      continue;
    }
    if (c === '"' || c === "'") quote = c;
    else if (c === "{") depth++;
    else if (c === "}") {
      if (depth === 0) return i;
      depth--;
    }
  }
  return -1;
}

export function renderTemplate(template: Template, vars: CelVars): JsonValue {
  switch (template.kind) {
    case "literal":
      return template.value;
    case "whole":
      return template.expr.program(vars);
    case "parts":
      return template.parts
        .map((p) => {
          if ("literal" in p) return p.literal;
          const v = p.expr.program(vars);
          return typeof v === "string" ? v : JSON.stringify(v);
        })
        .join("");
  }
}

/** A config object with its templates compiled; strings without `${` stay as they are. */
export type CompiledConfig = { kind: "value"; value: JsonValue } | { kind: "template"; template: Template } | { kind: "object"; entries: [string, CompiledConfig][] } | { kind: "array"; items: CompiledConfig[] };

/**
 * Compiles every string of a config; `errors` receives `path: message` for each bad template, with
 * the path relative to the config (e.g. `url` or `headers.x-id`).
 */
export function compileConfig(value: JsonValue, path: string, errors: { path: string; message: string }[], refs: Set<string>): CompiledConfig {
  if (typeof value === "string") {
    if (!value.includes("${")) return { kind: "value", value };
    try {
      const template = compileTemplate(value);
      if (template.kind === "literal") return { kind: "value", value: template.value };
      for (const ref of templateRefs(template)) refs.add(ref);
      return { kind: "template", template };
    } catch (error) {
      errors.push({ path, message: (error as Error).message });
      return { kind: "value", value };
    }
  }
  if (Array.isArray(value)) return { kind: "array", items: value.map((v, i) => compileConfig(v, `${path}[${i}]`, errors, refs)) };
  if (value !== null && typeof value === "object") {
    return { kind: "object", entries: Object.entries(value).map(([k, v]) => [k, compileConfig(v, path ? `${path}.${k}` : k, errors, refs)]) };
  }
  return { kind: "value", value };
}

export function templateRefs(template: Template): string[] {
  if (template.kind === "whole") return template.expr.taskRefs;
  if (template.kind === "parts") return template.parts.flatMap((p) => ("expr" in p ? p.expr.taskRefs : []));
  return [];
}

export function resolveConfig(config: CompiledConfig, vars: CelVars): JsonValue {
  switch (config.kind) {
    case "value":
      return config.value;
    case "template":
      return renderTemplate(config.template, vars);
    case "array":
      return config.items.map((c) => resolveConfig(c, vars));
    case "object":
      return Object.fromEntries(config.entries.map(([k, c]) => [k, resolveConfig(c, vars)]));
  }
}
