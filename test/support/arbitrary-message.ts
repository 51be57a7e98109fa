import { ScalarType, type DescField, type DescMessage } from "@bufbuild/protobuf";
import fc from "fast-check";

/**
 * fast-check arbitraries for any protobuf-es message, built from its descriptor: hostile
 * strings (empty, huge, unicode, glob and SQL metacharacters), extreme numbers, unknown enum
 * values, nested messages to a bounded depth. For property tests that throw garbage at an RPC.
 */
const hostileString = fc.oneof(
  fc.constant(""),
  fc.string({ maxLength: 12 }),
  fc.string({ unit: "grapheme", maxLength: 8 }),
  fc.constantFrom("*", "**/*", "%", "_", "'; drop table x; --", "../../etc/passwd", "\u0000", "tenant", "default", "a".repeat(600), "🦀".repeat(50)),
  fc.string({ minLength: 1000, maxLength: 5000 }),
);

function scalar(type: ScalarType): fc.Arbitrary<unknown> {
  switch (type) {
    case ScalarType.STRING:
      return hostileString;
    case ScalarType.BOOL:
      return fc.boolean();
    case ScalarType.BYTES:
      return fc.oneof(fc.uint8Array({ maxLength: 16 }), fc.uint8Array({ minLength: 2000, maxLength: 3000 }));
    case ScalarType.DOUBLE:
    case ScalarType.FLOAT:
      return fc.oneof(fc.double(), fc.constantFrom(0, -1, Number.NaN, Number.POSITIVE_INFINITY, 1e300));
    case ScalarType.INT64:
    case ScalarType.SINT64:
    case ScalarType.SFIXED64:
      return fc.oneof(fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }), fc.constantFrom(0n, -1n, 1n));
    case ScalarType.UINT64:
    case ScalarType.FIXED64:
      return fc.oneof(fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), fc.constantFrom(0n, 1n));
    case ScalarType.UINT32:
    case ScalarType.FIXED32:
      return fc.oneof(fc.integer({ min: 0, max: 2 ** 32 - 1 }), fc.constantFrom(0, 1));
    default:
      return fc.oneof(fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }), fc.constantFrom(0, -1, 1, 2 ** 31 - 1));
  }
}

function fieldValue(field: DescField, depth: number): fc.Arbitrary<unknown> {
  switch (field.fieldKind) {
    case "scalar":
      return scalar(field.scalar);
    case "enum":
      return fc.oneof(fc.constantFrom(...field.enum.values.map((v) => v.number)), fc.integer({ min: -5, max: 999 }));
    case "message":
      return messageInit(field.message, depth + 1);
    case "list":
      if (field.listKind === "scalar") return fc.array(scalar(field.scalar), { maxLength: 3 });
      if (field.listKind === "enum") return fc.array(fc.constantFrom(...field.enum.values.map((v) => v.number)), { maxLength: 3 });
      return fc.array(messageInit(field.message, depth + 1), { maxLength: 2 });
    case "map": {
      const value = field.mapKind === "scalar" ? scalar(field.scalar) : field.mapKind === "enum" ? fc.constant(0) : messageInit(field.message, depth + 1);
      return fc.dictionary(fc.string({ maxLength: 6 }), value, { maxKeys: 3 });
    }
  }
}

const STRUCT_TYPES = new Set(["google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"]);

/** An init object for `create(schema, init)`; at most depth 3 of nesting. */
export function messageInit(schema: DescMessage, depth = 0): fc.Arbitrary<Record<string, unknown>> {
  if (depth > 3) return fc.constant({});
  if (STRUCT_TYPES.has(schema.typeName)) {
    // Struct-like types are built from JSON by the caller; keep them empty here.
    return fc.constant({});
  }
  const entries: Record<string, fc.Arbitrary<unknown>> = {};
  for (const field of schema.fields) {
    if (field.oneof) continue;
    entries[field.localName] = fieldValue(field, depth);
  }
  const base = fc.record(entries, { requiredKeys: [] });
  if (schema.oneofs.length === 0) return base as fc.Arbitrary<Record<string, unknown>>;
  const oneofs = schema.oneofs.map((oneof) =>
    fc.option(
      fc.oneof(...oneof.fields.map((f) => fieldValue(f, depth).map((value) => ({ case: f.localName, value })))),
      { nil: undefined },
    ).map((selected) => [oneof.localName, selected ?? { case: undefined }] as const),
  );
  return fc.tuple(base, ...oneofs).map(([fields, ...chosen]) => {
    const out: Record<string, unknown> = { ...(fields as Record<string, unknown>) };
    for (const [name, value] of chosen) out[name] = value;
    return out;
  });
}
