import { createHash } from "node:crypto";
import type { JsonObject, JsonValue } from "./engine.js";

/**
 * Decision input helpers: merging the typed request fields, limits, normalization (for the cache
 * key) and masking (for the decision log and shadow examples). No transport here; errors are
 * returned as data and the handlers turn them into InvalidArgument / ResourceExhausted.
 */

/** JSON with object keys sorted at every level: the normalized form the cache key hashes. */
export function stableStringify(value: unknown): string {
  if (value === null || typeof value !== "object") return JSON.stringify(value) ?? "null";
  if (Array.isArray(value)) return `[${value.map((v) => (v === undefined ? "null" : stableStringify(v))).join(",")}]`;
  const keys = Object.keys(value).sort();
  const parts: string[] = [];
  for (const key of keys) {
    const v = (value as Record<string, unknown>)[key];
    if (v === undefined) continue;
    parts.push(`${JSON.stringify(key)}:${stableStringify(v)}`);
  }
  return `{${parts.join(",")}}`;
}

/** Depth of a JSON value: a scalar is 0, {} or [] is 1, {"a":{}} is 2. */
export function jsonDepth(value: JsonValue, limit: number): number {
  if (value === null || typeof value !== "object") return 0;
  if (limit < 0) return 1; // deeper than anyone asked about; stop descending
  let max = 0;
  for (const child of Array.isArray(value) ? value : Object.values(value)) {
    const d = jsonDepth(child, limit - 1);
    if (d > max) max = d;
    if (max > limit) break;
  }
  return max + 1;
}

export const TYPED_FIELDS = ["tenant", "principal", "action", "resource"] as const;
export type TypedField = (typeof TYPED_FIELDS)[number];

/**
 * Merges the typed fields into `input` (contract, DecideRequest): a typed field that is set
 * becomes the top-level key of the same name; a different existing value is a conflict (never
 * silently overridden). Returns the merged object or the name of the conflicting field.
 */
export function mergeInput(input: JsonObject | undefined, typed: Record<TypedField, string>): { merged: JsonObject } | { conflict: TypedField } {
  const merged: JsonObject = { ...(input ?? {}) };
  for (const field of TYPED_FIELDS) {
    const value = typed[field];
    if (value === "") continue;
    if (field in merged && merged[field] !== value) return { conflict: field };
    merged[field] = value;
  }
  return { merged };
}

/** SHA-256 of the deciding bundle version and the normalized input: the decision cache key. */
export function decisionCacheKey(tenant: string, name: string, version: bigint, normalizedInput: string): string {
  return createHash("sha256").update(`${tenant}\u0000${name}\u0000${version}\u0000`).update(normalizedInput).digest("base64url");
}

export const MASK = "***";

/**
 * A masker for dotted paths ("ip", "context.user.email"): returns a copy of the input with each
 * listed field replaced by "***". A path that crosses an array applies to every element.
 */
export function createMasker(paths: string[]): (input: JsonObject) => JsonObject {
  const split = paths.map((p) => p.split(".").filter(Boolean)).filter((p) => p.length > 0);
  if (split.length === 0) return (input) => input;
  const maskAt = (value: JsonValue, path: string[]): JsonValue => {
    if (value === null || typeof value !== "object") return value;
    if (Array.isArray(value)) return value.map((v) => maskAt(v, path));
    const [head, ...rest] = path as [string, ...string[]];
    if (!(head in value)) return value;
    const copy: JsonObject = { ...value };
    copy[head] = rest.length === 0 ? MASK : maskAt(value[head]!, rest);
    return copy;
  };
  return (input) => {
    let out: JsonValue = input;
    for (const path of split) out = maskAt(out, path);
    return out as JsonObject;
  };
}
