import { readdirSync, readFileSync, statSync } from "node:fs";
import { join, relative, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { fromJson, type JsonObject, type JsonValue } from "@bufbuild/protobuf";
import { registry, resolveCall, type ResolvedCall } from "./descriptors.js";

/**
 * The load configs in bench/slo/<service>/<rpc>.json: ghz's own JSON config format (call, total
 * or duration, concurrency, connections, data, metadata, insecure; `host` is left out and filled
 * in by the runner from the mesh it starts) plus two keys of ours that the runner strips before
 * handing a config to ghz:
 *   slo    {p99Ms, maxErrorRate, minRps}: what the full run holds the RPC to;
 *   setup  [{call, data, save}]: unary calls made once before the load, in order, with a real
 *          client. `save` maps a variable name to a path in the response's proto JSON
 *          ("lease.leaseId", "targets[name=orca-lock].id", "items[0].id"); later setup steps and
 *          the config's `data` use it as "${name}". A string that is exactly "${name}" becomes the
 *          saved value (keeping its JSON type); inside a longer string it is spliced in. The
 *          built-in variable ${benchRun} is unique per run of the runner.
 */

export interface Slo {
  /** 99th percentile latency, milliseconds. */
  p99Ms: number;
  /** Largest fraction of calls that may fail (non-OK status or transport failure), 0 to 1. */
  maxErrorRate: number;
  /** Fewest calls per second. */
  minRps: number;
}

export interface SetupStep {
  call: string;
  data?: JsonObject;
  save?: Record<string, string>;
}

export interface GhzConfig {
  name?: string;
  call: string;
  total?: number;
  /** ghz duration string: "10s", "500ms", "1m". */
  duration?: string;
  concurrency: number;
  connections: number;
  data: JsonObject;
  metadata?: Record<string, string>;
  insecure: boolean;
  setup?: SetupStep[];
  slo: Slo;
}

export interface LoadedConfig {
  /** "<service>/<rpc>", from the file's place in bench/slo. */
  name: string;
  file: string;
  config: GhzConfig;
  call: ResolvedCall;
}

export const CONFIG_DIR = fileURLToPath(new URL(".", import.meta.url)).replace(/[\\/]dist[\\/]bench[\\/]slo[\\/]?$/, `${sep}bench${sep}slo`);

/** All config files under bench/slo/<service>/, sorted. */
export function configFiles(dir = CONFIG_DIR): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir).sort()) {
    const sub = join(dir, entry);
    if (!statSync(sub).isDirectory()) continue;
    for (const file of readdirSync(sub).sort()) if (file.endsWith(".json")) out.push(join(sub, file));
  }
  return out;
}

const PLACEHOLDER = /\$\{(\w+)\}/g;

/** Replaces "${name}" placeholders (see above). Unknown names throw. */
export function substitute(value: JsonValue, vars: Record<string, JsonValue>): JsonValue {
  if (typeof value === "string") {
    const whole = /^\$\{(\w+)\}$/.exec(value);
    if (whole) {
      if (!(whole[1] in vars)) throw new Error(`unknown variable \${${whole[1]}}`);
      return vars[whole[1]];
    }
    return value.replace(PLACEHOLDER, (_, name: string) => {
      if (!(name in vars)) throw new Error(`unknown variable \${${name}}`);
      const v = vars[name];
      return typeof v === "string" ? v : JSON.stringify(v);
    });
  }
  if (Array.isArray(value)) return value.map((v) => substitute(v, vars));
  if (value !== null && typeof value === "object") return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, substitute(v, vars)]));
  return value;
}

/** Names of the "${...}" variables a value uses. */
export function placeholders(value: JsonValue): string[] {
  const text = JSON.stringify(value);
  return [...new Set([...text.matchAll(PLACEHOLDER)].map((m) => m[1]))];
}

/** Reads `path` ("a.b[0].c", "targets[name=orca-lock].id") out of a proto JSON value. */
export function extract(value: JsonValue, path: string): JsonValue {
  let current: JsonValue | undefined = value;
  for (const part of path.split(".")) {
    const match = /^(\w+)((?:\[[^\]]+\])*)$/.exec(part);
    if (!match) throw new Error(`bad path segment ${JSON.stringify(part)} in ${path}`);
    current = current !== null && typeof current === "object" && !Array.isArray(current) ? current[match[1]] : undefined;
    for (const [, selector] of match[2].matchAll(/\[([^\]]+)\]/g)) {
      if (!Array.isArray(current)) throw new Error(`${path}: ${match[1]} is not a list`);
      const eq = selector.indexOf("=");
      current =
        eq < 0
          ? current[Number(selector)]
          : current.find((item) => item !== null && typeof item === "object" && !Array.isArray(item) && String(item[selector.slice(0, eq)]) === selector.slice(eq + 1));
    }
    if (current === undefined) throw new Error(`${path}: nothing at ${part}`);
  }
  return current as JsonValue;
}

const DURATION = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/;

/** A ghz duration ("10s", "500ms", "1m") in milliseconds. */
export function durationMs(value: string): number {
  const match = DURATION.exec(value);
  if (!match) throw new Error(`duration ${JSON.stringify(value)}: expected e.g. "10s" or "500ms"`);
  return Number(match[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[match[2] as "ms"];
}

const GHZ_KEYS = new Set(["name", "call", "total", "duration", "concurrency", "connections", "data", "metadata", "insecure", "setup", "slo"]);

/**
 * Everything wrong with a config: unknown keys, a call that does not resolve to a unary method,
 * data (and setup data) that protobuf-es fromJson rejects (placeholders stand in as "1"), missing
 * or out-of-range SLO fields. Empty when it is valid.
 */
export function validateConfig(raw: unknown): string[] {
  const problems: string[] = [];
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) return ["not a JSON object"];
  const c = raw as Record<string, unknown>;
  for (const key of Object.keys(c)) if (!GHZ_KEYS.has(key)) problems.push(`unknown key ${key} (ghz keys: call, total, duration, concurrency, connections, data, metadata, insecure; ours: slo, setup)`);
  const dummy = (value: JsonValue) => substitute(value, Object.fromEntries(placeholders(value).map((name) => [name, "1"])));
  const checkData = (where: string, call: unknown, data: unknown) => {
    if (typeof call !== "string") return problems.push(`${where}call: required string "package.Service.Method"`);
    let method;
    try {
      method = resolveCall(call).method;
    } catch (error) {
      return problems.push(`${where}${(error as Error).message}`);
    }
    if (data === undefined) return;
    if (data === null || typeof data !== "object" || Array.isArray(data)) return problems.push(`${where}data: an object (proto JSON of ${method.input.typeName})`);
    try {
      fromJson(method.input, dummy(data as JsonObject), { registry });
    } catch (error) {
      problems.push(`${where}data: ${(error as Error).message}`);
    }
  };
  checkData("", c.call, c.data ?? {});
  if (c.data === undefined) problems.push("data: required (use {} for an empty request)");
  const hasTotal = c.total !== undefined;
  const hasDuration = c.duration !== undefined;
  if (!hasTotal && !hasDuration) problems.push("total or duration: one is required");
  if (hasTotal && (!Number.isInteger(c.total) || (c.total as number) < 1)) problems.push("total: a positive integer");
  if (hasDuration) {
    try {
      if (typeof c.duration !== "string") throw new Error("duration: a string such as \"10s\"");
      durationMs(c.duration);
    } catch (error) {
      problems.push((error as Error).message);
    }
  }
  for (const key of ["concurrency", "connections"]) {
    if (!Number.isInteger(c[key]) || (c[key] as number) < 1) problems.push(`${key}: a positive integer`);
  }
  if (Number.isInteger(c.concurrency) && Number.isInteger(c.connections) && (c.connections as number) > (c.concurrency as number)) {
    problems.push("connections: at most concurrency (ghz spreads the concurrency over the connections)");
  }
  if (c.insecure !== true) problems.push("insecure: true (the mesh's ports speak h2c unless ORCA_TLS_* is set)");
  if (c.metadata !== undefined) {
    if (c.metadata === null || typeof c.metadata !== "object" || Array.isArray(c.metadata)) problems.push("metadata: an object of strings");
    else for (const [k, v] of Object.entries(c.metadata)) if (typeof v !== "string" || !/^[a-z0-9._-]+$/.test(k)) problems.push(`metadata.${k}: lower-case header name with a string value`);
  }
  const slo = c.slo as Record<string, unknown> | undefined;
  if (!slo || typeof slo !== "object") problems.push("slo: required {p99Ms, maxErrorRate, minRps}");
  else {
    if (typeof slo.p99Ms !== "number" || !(slo.p99Ms > 0)) problems.push("slo.p99Ms: a number > 0 (milliseconds)");
    if (typeof slo.maxErrorRate !== "number" || slo.maxErrorRate < 0 || slo.maxErrorRate > 1) problems.push("slo.maxErrorRate: a number from 0 to 1");
    if (typeof slo.minRps !== "number" || slo.minRps < 0) problems.push("slo.minRps: a number >= 0");
    for (const key of Object.keys(slo)) if (!["p99Ms", "maxErrorRate", "minRps"].includes(key)) problems.push(`slo: unknown key ${key}`);
  }
  const saved = new Set(["benchRun"]);
  if (c.setup !== undefined) {
    if (!Array.isArray(c.setup)) problems.push("setup: a list of {call, data, save}");
    else
      c.setup.forEach((step: unknown, i) => {
        const s = step as SetupStep;
        if (s === null || typeof s !== "object") return problems.push(`setup[${i}]: an object`);
        for (const name of placeholders((s.data ?? {}) as JsonValue)) if (!saved.has(name)) problems.push(`setup[${i}].data: \${${name}} is not saved by an earlier step`);
        checkData(`setup[${i}].`, s.call, s.data ?? {});
        for (const [name, path] of Object.entries(s.save ?? {})) {
          if (typeof path !== "string") problems.push(`setup[${i}].save.${name}: a path string`);
          saved.add(name);
        }
      });
  }
  for (const name of placeholders((c.data ?? {}) as JsonValue)) if (!saved.has(name)) problems.push(`data: \${${name}} is not saved by a setup step`);
  return problems;
}

/** Loads and validates configs; `selector` is "all", a service ("lock") or "service/rpc" ("lock/GetLock"). */
export function loadConfigs(selector = "all", dir = CONFIG_DIR): LoadedConfig[] {
  const all = configFiles(dir).map((file) => {
    const name = relative(dir, file).replace(/\\/g, "/").replace(/\.json$/, "");
    const raw = JSON.parse(readFileSync(file, "utf8")) as unknown;
    const problems = validateConfig(raw);
    if (problems.length > 0) throw new Error(`${name}: invalid config:\n  ${problems.join("\n  ")}`);
    const config = raw as GhzConfig;
    return { name, file, config, call: resolveCall(config.call) };
  });
  const selected = selector === "all" ? all : all.filter((c) => c.name === selector || c.name.startsWith(`${selector}/`) || c.name.toLowerCase() === selector.toLowerCase());
  if (selected.length === 0) throw new Error(`no config matches ${JSON.stringify(selector)}; known: all, ${[...new Set(all.map((c) => c.name.split("/")[0]))].join(", ")}, ${all.map((c) => c.name).join(", ")}`);
  return selected;
}
