import type { DescField, DescMessage } from "@bufbuild/protobuf";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { checkRequestMessages, invokeNext } from "./interceptors.js";

/**
 * Values that no handler can store or compute with, rejected at the door for every service with
 * InvalidArgument naming the field (e.g. `target_ids[0]`, `input.fields["a"]`), so they never
 * surface later as an Internal error from a query or a date computation:
 * - strings with a NUL character (Postgres text and jsonb cannot hold one);
 * - google.protobuf.Timestamp outside 0001-01-01..9999-12-31 or with nanos out of range;
 * - google.protobuf.Duration beyond +-10,000 years or with nanos out of range or of the wrong sign.
 */
const TIMESTAMP_MIN_SECONDS = -62_135_596_800n;
const TIMESTAMP_MAX_SECONDS = 253_402_300_799n;
const DURATION_MAX_SECONDS = 315_576_000_000n;

function wellKnownProblem(schema: DescMessage, value: Record<string, unknown>): string | undefined {
  if (schema.typeName === "google.protobuf.Timestamp") {
    const seconds = value.seconds as bigint;
    const nanos = value.nanos as number;
    if (seconds < TIMESTAMP_MIN_SECONDS || seconds > TIMESTAMP_MAX_SECONDS) return "must be a time between 0001-01-01 and 9999-12-31";
    if (nanos < 0 || nanos > 999_999_999) return "nanos must be 0 to 999999999";
  }
  if (schema.typeName === "google.protobuf.Duration") {
    const seconds = value.seconds as bigint;
    const nanos = value.nanos as number;
    if (seconds < -DURATION_MAX_SECONDS || seconds > DURATION_MAX_SECONDS) return "must be within +-10000 years";
    if (nanos < -999_999_999 || nanos > 999_999_999 || (seconds > 0n && nanos < 0) || (seconds < 0n && nanos > 0)) return "nanos out of range or of the wrong sign";
  }
  return undefined;
}
const MAX_DEPTH = 32;

function findProblem(schema: DescMessage, message: Record<string, unknown>, path: string, depth: number): string | undefined {
  if (depth > MAX_DEPTH) return undefined;
  const wellKnown = wellKnownProblem(schema, message);
  if (wellKnown) return `${path || "(request)"}: ${wellKnown}`;
  for (const field of schema.fields) {
    const value = field.oneof
      ? (() => {
          const selected = message[field.oneof!.localName] as { case?: string; value?: unknown } | undefined;
          return selected?.case === field.localName ? selected.value : undefined;
        })()
      : message[field.localName];
    if (value === undefined || value === null) continue;
    const found = checkField(field, value, path ? `${path}.${field.name}` : field.name, depth);
    if (found) return found;
  }
  return undefined;
}

function checkValue(field: DescField, kind: "scalar" | "enum" | "message", value: unknown, path: string, depth: number): string | undefined {
  if (kind === "scalar") return typeof value === "string" && value.includes("\u0000") ? `${path}: must not contain NUL characters` : undefined;
  if (kind === "message" && "message" in field && field.message) return findProblem(field.message, value as Record<string, unknown>, path, depth + 1);
  return undefined;
}

function checkField(field: DescField, value: unknown, path: string, depth: number): string | undefined {
  switch (field.fieldKind) {
    case "scalar":
      return checkValue(field, "scalar", value, path, depth);
    case "enum":
      return undefined;
    case "message":
      return findProblem(field.message, value as Record<string, unknown>, path, depth + 1);
    case "list": {
      const items = value as unknown[];
      for (let i = 0; i < items.length; i++) {
        const found = checkValue(field, field.listKind, items[i], `${path}[${i}]`, depth);
        if (found) return found;
      }
      return undefined;
    }
    case "map": {
      for (const [key, item] of Object.entries(value as Record<string, unknown>)) {
        if (key.includes("\u0000")) return `${path}: keys must not contain NUL characters`;
        const found = checkValue(field, field.mapKind, item, `${path}[${JSON.stringify(key)}]`, depth);
        if (found) return found;
      }
      return undefined;
    }
  }
}

/** Throws InvalidArgument naming the field when `message` holds a value no handler can store. */
export function guardRequestMessage(schema: DescMessage, message: unknown): void {
  const problem = findProblem(schema, message as Record<string, unknown>, "", 0);
  if (problem) throw new ConnectError(problem, Code.InvalidArgument);
}

export function requestGuardInterceptor(): Interceptor {
  // Not async: an async frame per call is costly once AsyncLocalStorage is in use (see interceptors.ts).
  return (next) => {
    const guarded: typeof next = (req) => next(checkRequestMessages(req, (message) => guardRequestMessage(req.method.input, message)));
    return (req) => invokeNext(guarded, req);
  };
}
