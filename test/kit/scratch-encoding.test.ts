import { ScalarType, create, protoInt64, toBinary, type DescField, type DescFile, type DescMessage, type Message } from "@bufbuild/protobuf";
import { reflect, type ReflectMessage } from "@bufbuild/protobuf/reflect";
import { describe, expect, it } from "vitest";
import { file_orca_cache_v1_cache } from "../../gen/orca/cache/v1/cache_pb.js";
import { file_orca_lock_v1_lock } from "../../gen/orca/lock/v1/lock_pb.js";
import { file_orca_monitor_v1_monitor } from "../../gen/orca/monitor/v1/monitor_pb.js";
import { file_orca_orchestrator_v1_orchestrator } from "../../gen/orca/orchestrator/v1/orchestrator_pb.js";
import { file_orca_policy_v1_policy } from "../../gen/orca/policy/v1/policy_pb.js";
import { file_orca_scheduler_v1_scheduler } from "../../gen/orca/scheduler/v1/scheduler_pb.js";
import { EchoRequestSchema, EchoResponseSchema, file_orca_testing_v1_echo } from "../../gen/orca/testing/v1/echo_pb.js";
import { encodeInScratch, isScratchView } from "../../services/kit/server/scratch-encoding.js";

// The fast path encodes responses into a reused buffer; plain toBinary is the reference for every byte.

const files: DescFile[] = [
  file_orca_cache_v1_cache,
  file_orca_lock_v1_lock,
  file_orca_monitor_v1_monitor,
  file_orca_orchestrator_v1_orchestrator,
  file_orca_policy_v1_policy,
  file_orca_scheduler_v1_scheduler,
  file_orca_testing_v1_echo,
];
const schemas = files.flatMap((file) => file.messages.flatMap(function all(message): DescMessage[] {
  return [message, ...message.nestedMessages.flatMap(all)];
}));

/** A pseudo-random number source, seeded, so that a failure can be replayed. */
function random(seed: number): () => number {
  return () => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return seed / 2147483648;
  };
}

function scalar(type: ScalarType, next: () => number): unknown {
  const n = Math.floor(next() * 1e6) - (next() < 0.3 ? 5e5 : 0);
  switch (type) {
    case ScalarType.STRING:
      return ["", "a", "ünï", "✓ text ".repeat(Math.floor(next() * 30))][Math.floor(next() * 4)];
    case ScalarType.BYTES:
      return Uint8Array.from({ length: Math.floor(next() * 300) }, (_, i) => (i * 7 + n) & 255);
    case ScalarType.BOOL:
      return next() < 0.5;
    case ScalarType.DOUBLE:
    case ScalarType.FLOAT:
      return next() < 0.2 ? 0 : Math.fround(n / 7);
    case ScalarType.INT64:
    case ScalarType.SINT64:
    case ScalarType.SFIXED64:
      return protoInt64.parse(String(n * 1e6));
    case ScalarType.UINT64:
    case ScalarType.FIXED64:
      return protoInt64.uParse(String(Math.abs(n) * 1e6));
    case ScalarType.UINT32:
    case ScalarType.FIXED32:
      return Math.abs(n);
    default:
      return n;
  }
}

function fill(schema: DescMessage, next: () => number, depth: number): Message {
  const message = reflect(schema);
  for (const field of schema.fields) {
    if (next() < 0.25) continue;
    if (field.oneof && message.oneofCase(field.oneof) !== undefined) continue;
    setField(message, field, next, depth);
  }
  return message.message;
}

function setField(message: ReflectMessage, field: DescField, next: () => number, depth: number): void {
  const value = (kind: "scalar" | "enum" | "message", desc: DescField): unknown => {
    if (kind === "enum" && desc.enum) return desc.enum.values[Math.floor(next() * desc.enum.values.length)].number;
    if (kind === "message" && desc.message) return reflect(desc.message, fill(desc.message, next, depth + 1) as never);
    return scalar(desc.scalar ?? ScalarType.INT32, next);
  };
  switch (field.fieldKind) {
    case "scalar":
    case "enum":
      message.set(field, value(field.fieldKind, field));
      return;
    case "message":
      if (depth < 3) message.set(field, value("message", field));
      return;
    case "list": {
      const list = message.get(field);
      if (field.listKind === "message" && depth >= 3) return;
      for (let i = Math.floor(next() * 4); i > 0; i--) list.add(value(field.listKind, field));
      return;
    }
    case "map": {
      const map = message.get(field);
      if (field.mapKind === "message" && depth >= 3) return;
      for (let i = Math.floor(next() * 3); i > 0; i--) map.set(scalar(field.mapKey, next) as never, value(field.mapKind, field));
      return;
    }
  }
}

describe("encodeInScratch", () => {
  it(`gives the bytes toBinary gives, for random messages of all ${schemas.length} message types of the six contracts`, () => {
    const next = random(20261129);
    let scratchUsed = 0;
    for (const schema of schemas) {
      for (let i = 0; i < 20; i++) {
        const message = fill(schema, next, 0);
        const expected = toBinary(schema, message);
        const actual = encodeInScratch((m: Message) => toBinary(schema, m), message);
        expect(Buffer.from(actual).equals(Buffer.from(expected)), schema.typeName).toBe(true);
        if (isScratchView(actual)) scratchUsed++;
      }
    }
    // Messages that encode to nothing need no buffer at all; the others used the scratch.
    expect(scratchUsed).toBeGreaterThan(schemas.length * 10);
  });

  it("gives plain toBinary its own arrays outside encodeInScratch", () => {
    const message = create(EchoResponseSchema, { payload: new Uint8Array(100).fill(1) });
    const inside = encodeInScratch((m: typeof message) => toBinary(EchoResponseSchema, m), message);
    const first = toBinary(EchoResponseSchema, message);
    const second = toBinary(EchoResponseSchema, create(EchoResponseSchema, { payload: new Uint8Array(100).fill(2) }));
    expect(isScratchView(inside)).toBe(true);
    expect(isScratchView(first) || isScratchView(second)).toBe(false);
    expect(first.buffer).not.toBe(second.buffer);
    expect(first[first.length - 1]).toBe(1);
  });

  it("encodes a message larger than the scratch buffer by growing out of it", () => {
    const payload = Uint8Array.from({ length: 200_000 }, (_, i) => i & 255);
    const message = create(EchoRequestSchema, { payload, failWithMessage: "ü".repeat(1000) });
    const bytes = encodeInScratch((m: typeof message) => toBinary(EchoRequestSchema, m), message);
    expect(isScratchView(bytes)).toBe(false);
    expect(Buffer.from(bytes).equals(Buffer.from(toBinary(EchoRequestSchema, message)))).toBe(true);
  });

  it("gives a second message in the same call a buffer of its own, so the first one's bytes stay intact", () => {
    const a = create(EchoResponseSchema, { correlationId: "a".repeat(80) });
    const b = create(EchoResponseSchema, { correlationId: "b".repeat(80) });
    const [first, second] = encodeInScratch(() => [toBinary(EchoResponseSchema, a), toBinary(EchoResponseSchema, b)], undefined);
    expect(Buffer.from(first).toString()).toContain("a".repeat(80));
    expect(Buffer.from(second).toString()).toContain("b".repeat(80));
  });

  it("releases the scratch buffer when encoding throws half-way", () => {
    const bad = create(EchoRequestSchema, { payload: new Uint8Array(10) });
    (bad as { delayMs: unknown }).delayMs = "not a number";
    expect(() => encodeInScratch((m: typeof bad) => toBinary(EchoRequestSchema, m), bad)).toThrow();
    const good = create(EchoResponseSchema, { payload: new Uint8Array(100).fill(3) });
    const bytes = encodeInScratch((m: typeof good) => toBinary(EchoResponseSchema, m), good);
    expect(isScratchView(bytes)).toBe(true);
    expect(Buffer.from(bytes).equals(Buffer.from(toBinary(EchoResponseSchema, good)))).toBe(true);
  });
});
