import type { DescField, DescMessage } from "@bufbuild/protobuf";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { checkRequestMessages } from "./interceptors.js";

/**
 * Postgres text and jsonb cannot hold a NUL character, so a request string carrying one would
 * fail deep inside a query as an Internal error. This guard rejects such requests at the door
 * with InvalidArgument naming the field (e.g. `target_ids[0]`, `input.fields["a"]`), for every
 * service, before any handler runs.
 */
const MAX_DEPTH = 32;

function findNul(schema: DescMessage, message: Record<string, unknown>, path: string, depth: number): string | undefined {
  if (depth > MAX_DEPTH) return undefined;
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
  if (kind === "scalar") return typeof value === "string" && value.includes("\u0000") ? path : undefined;
  if (kind === "message" && "message" in field && field.message) return findNul(field.message, value as Record<string, unknown>, path, depth + 1);
  return undefined;
}

function checkField(field: DescField, value: unknown, path: string, depth: number): string | undefined {
  switch (field.fieldKind) {
    case "scalar":
      return checkValue(field, "scalar", value, path, depth);
    case "enum":
      return undefined;
    case "message":
      return findNul(field.message, value as Record<string, unknown>, path, depth + 1);
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
        if (key.includes("\u0000")) return `${path} (a key)`;
        const found = checkValue(field, field.mapKind, item, `${path}[${JSON.stringify(key)}]`, depth);
        if (found) return found;
      }
      return undefined;
    }
  }
}

export function textGuardInterceptor(): Interceptor {
  const check = (schema: DescMessage, message: unknown) => {
    const path = findNul(schema, message as Record<string, unknown>, "", 0);
    if (path) throw new ConnectError(`${path}: must not contain NUL characters`, Code.InvalidArgument);
  };
  return (next) => async (req) => next(checkRequestMessages(req, (message) => check(req.method.input, message)));
}
