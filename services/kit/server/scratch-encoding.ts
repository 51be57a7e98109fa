import { BinaryWriter } from "@bufbuild/protobuf/wire";

/**
 * Message encoding into a reused scratch buffer, for the fast path's responses.
 *
 * protobuf-es 2.17's toBinary() gives every message a new BinaryWriter whose first buffer is a
 * 128-byte Uint8Array, and finish() returns a slice() of it: two typed arrays per message, both
 * above V8's 64-byte limit for arrays on the JS heap, so two malloc'ed backing stores that the
 * garbage collector must track and free. For a small response that is about 1.4 µs of the
 * 1.7 µs toBinary takes, several percent of a whole call on the fast path. Upstream knows
 * (bufbuild/protobuf-es#333, #1108, #1513) but offers no way to pass a writer in.
 *
 * So, while `encodeInScratch(fn, message)` runs, the first BinaryWriter that needs a buffer
 * is given a process-wide scratch buffer, and its finish() returns a view of that buffer
 * instead of a copy. The bytes stay valid only until the next encodeInScratch call: the
 * caller copies them out at once (the fast path copies them into the response envelope, which
 * it did anyway). Outside such a call, and for every other writer, BinaryWriter behaves exactly
 * as shipped: the two methods below fall through to the originals. A message larger than the
 * scratch buffer grows out of it the usual way. package.json pins @bufbuild/protobuf to an
 * exact version, and test/kit/scratch-encoding.test.ts compares bytes with plain toBinary.
 */
export function encodeInScratch<M, R = Uint8Array>(encode: (message: M) => R, message: M): R {
  const outerActive = active;
  const outerWriter = scratchWriter;
  active = true;
  scratchWriter = undefined;
  try {
    return encode(message);
  } finally {
    // Also when encode threw half-way: the abandoned writer's claim on the scratch ends here.
    active = outerActive;
    scratchWriter = outerWriter;
  }
}

/** Whether `bytes` is a view of the scratch buffer (for tests). */
export function isScratchView(bytes: Uint8Array): boolean {
  return bytes.buffer === SCRATCH.buffer;
}

const SCRATCH_BYTES = 64 * 1024;
// Its own ArrayBuffer at offset 0: BinaryWriter makes DataViews over `buffer.buffer`.
const SCRATCH = new Uint8Array(SCRATCH_BYTES);
let active = false;
let scratchWriter: BinaryWriter | undefined;

interface WriterInternals {
  buffer: Uint8Array;
  pos: number;
  stackPos: number[];
  ensureCapacity(size: number): void;
}

const prototype = BinaryWriter.prototype as unknown as WriterInternals & { finish(): Uint8Array };
const originalEnsureCapacity = prototype.ensureCapacity;
const originalFinish = prototype.finish;
if (typeof originalEnsureCapacity !== "function" || typeof originalFinish !== "function") {
  throw new Error("@bufbuild/protobuf: BinaryWriter has no ensureCapacity()/finish(); scratch-encoding.ts must be updated for this version");
}

prototype.ensureCapacity = function ensureCapacity(this: WriterInternals, size: number): void {
  if (active && scratchWriter === undefined && this.buffer.length === 0 && this.pos + size <= SCRATCH_BYTES) {
    scratchWriter = this as unknown as BinaryWriter;
    this.buffer = SCRATCH;
    return;
  }
  originalEnsureCapacity.call(this, size);
};

prototype.finish = function finish(this: WriterInternals): Uint8Array {
  if (this.buffer !== SCRATCH) return originalFinish.call(this);
  const bytes = SCRATCH.subarray(0, this.pos);
  this.pos = 0;
  this.stackPos = [];
  // The writer starts over with a buffer of its own, as after the original finish(). The scratch
  // stays claimed until encodeInScratch returns, so nothing else writes over these bytes first.
  this.buffer = EMPTY;
  return bytes;
};

const EMPTY = new Uint8Array(0);
