import { isCelList, isCelMap, isCelUint, type CelValue } from "@bufbuild/cel";
import type { JsonObject, JsonValue } from "@bufbuild/protobuf";

/**
 * A CEL result as JSON, for the services that evaluate CEL into run inputs and task configs
 * (Orchestrator, Scheduler): ints become numbers, bytes base64, Timestamps RFC 3339 strings,
 * Durations "1.5s" (their protobuf JSON forms), any other object its string form.
 */
export function celToJson(value: CelValue): JsonValue {
  if (value === null || typeof value === "boolean" || typeof value === "string") return value;
  if (typeof value === "number") return Number.isFinite(value) ? value : String(value);
  if (typeof value === "bigint") return Number(value);
  if (isCelUint(value)) return Number(value.value);
  if (value instanceof Uint8Array) return Buffer.from(value).toString("base64");
  if (isCelList(value)) return [...value].map((v) => celToJson(v));
  if (isCelMap(value)) {
    const out: JsonObject = {};
    for (const [k, v] of value) out[String(isCelUint(k) ? k.value : k)] = celToJson(v);
    return out;
  }
  const maybe = value as { $typeName?: string; seconds?: bigint; nanos?: number };
  if (maybe.$typeName === "google.protobuf.Timestamp") {
    return new Date(Number(maybe.seconds ?? 0n) * 1000 + Math.floor((maybe.nanos ?? 0) / 1e6)).toISOString();
  }
  if (maybe.$typeName === "google.protobuf.Duration") return `${Number(maybe.seconds ?? 0n) + (maybe.nanos ?? 0) / 1e9}s`;
  return String(value);
}
