import { pino, type Logger } from "pino";
import type { LogLevel } from "../config.js";

export type { Logger };

/**
 * JSON logs, one object per line. Authorization and cookie headers are redacted wherever they
 * appear, so a log line never carries a credential.
 */
export function createLogger(options: {
  level: LogLevel;
  service?: string;
  /** Where lines go: stdout by default, a file (by path), or any pino destination stream. */
  destination?: pino.DestinationStream | string;
}): Logger {
  return pino(
    {
      level: options.level,
      base: options.service ? { service: options.service } : {},
      timestamp: isoTime,
      redact: { paths: ["*.authorization", "*.cookie", "*.token", "*.secret", "*.password"], censor: "[redacted]" },
      formatters: { level: (label) => ({ level: label }) },
    },
    batchedDestination(options.destination),
  );
}

/**
 * A child of `logger` without redaction, for lines the kit builds itself from scalar fields
 * only, such as the per-call "rpc" line (method, code, duration, correlation id). Redaction has
 * nothing to find in them, and pino's wildcard redaction ("*.token") costs about 4 µs per line,
 * more than formatting and writing the line. Never log objects or caller data through it.
 */
export function scalarLineLogger(logger: Logger): Logger {
  return logger.child({}, { redact: { paths: [] } });
}

let lastMs = 0;
let lastTime = "";

/**
 * pino's isoTime (`,"time":"2026-01-01T00:00:00.000Z"`), formatted once per millisecond: under
 * load many lines share a millisecond, and Date#toISOString is a measurable part of a line.
 */
function isoTime(): string {
  const now = Date.now();
  if (now !== lastMs) {
    lastMs = now;
    lastTime = `,"time":"${new Date(now).toISOString()}"`;
  }
  return lastTime;
}

/** The parts of sonic-boom (what pino.destination() returns) the batching below relies on. */
interface SonicBoomLike {
  write(chunk: string | Buffer): boolean;
  flush?(cb?: (error?: Error) => void): void;
  flushSync(): void;
}

function isSonicBoom(stream: pino.DestinationStream | undefined): stream is pino.DestinationStream & SonicBoomLike {
  return typeof (stream as Partial<SonicBoomLike> | undefined)?.flushSync === "function";
}

/**
 * Lines for stdout or a file go to sonic-boom (pino's own destination, asynchronous writes) in
 * batches: one write per event-loop turn, as bytes. sonic-boom in its default text mode appends
 * every line to the text not yet written, measures its byte length on every write and encodes
 * the written text once more when the write completes; on a busy server that was several
 * microseconds per line. Joining a turn's lines and encoding them once, for a sonic-boom in its
 * "buffer" content mode, makes it one copy per turn. Lines wait at most until the end of the
 * current turn, and are written synchronously if the process exits first. A sonic-boom passed in
 * by the caller is batched as text; other destinations (streams in tests) get every line as it
 * comes.
 */
function batchedDestination(destination: pino.DestinationStream | string | undefined): pino.DestinationStream | undefined {
  if (destination === undefined) {
    // What pino does without a destination, unless something replaced process.stdout.write.
    if (process.stdout.write !== Object.getPrototypeOf(process.stdout).write) return undefined;
    return (stdoutBatcher ??= new LineBatcher(pino.destination({ dest: process.stdout.fd ?? 1, contentMode: "buffer" }), true));
  }
  if (typeof destination === "string") return new LineBatcher(pino.destination({ dest: destination, contentMode: "buffer" }), true);
  if (!isSonicBoom(destination)) return destination;
  // One batcher per destination, so that loggers sharing a destination keep their lines in order.
  let batcher = batchers.get(destination);
  if (batcher === undefined) batchers.set(destination, (batcher = new LineBatcher(destination, false)));
  return batcher;
}

let stdoutBatcher: LineBatcher | undefined;
const batchers = new WeakMap<SonicBoomLike, LineBatcher>();

/**
 * Where a caller can write a line it encodes itself (see rpc-line.ts): `room(maxBytes)` gives the
 * chunk with at least maxBytes free from `end`; the caller writes its bytes there and calls
 * `commit(newEnd)`. The bytes take their place among pino's lines, in order.
 */
export interface EncodedLineSink {
  room(maxBytes: number): Buffer;
  readonly end: number;
  commit(end: number): void;
}

/** The sink behind a logger made by createLogger for stdout or a file, or undefined for other destinations. */
export function encodedLineSink(logger: Logger): EncodedLineSink | undefined {
  const stream = (logger as unknown as Record<symbol, unknown>)[pino.symbols.streamSym];
  return stream instanceof LineBatcher && stream.acceptsBytes ? stream : undefined;
}

const pendingBatchers = new Set<LineBatcher>();
let exitHookInstalled = false;

/** Bytes a batcher encodes lines into before it hands them to sonic-boom (more for longer lines). */
const CHUNK_BYTES = 64 * 1024;

class LineBatcher implements pino.DestinationStream, EncodedLineSink {
  /** Text mode: the turn's lines. */
  private lines: string[] = [];
  /**
   * Bytes mode: lines are encoded as they come, while they are fresh in the cache, into a chunk
   * whose written part is handed over at the end of the turn (sonic-boom keeps a reference until
   * its write completes, so that part is never written again; the rest of the chunk is used for
   * the next turns).
   */
  private chunk = EMPTY_CHUNK;
  private chunkStart = 0;
  private chunkEnd = 0;
  private scheduled = false;

  /** `asBytes`: the target is a sonic-boom in "buffer" content mode. */
  constructor(
    private readonly target: SonicBoomLike,
    private readonly asBytes: boolean,
  ) {
    if (!exitHookInstalled) {
      exitHookInstalled = true;
      process.once("exit", () => {
        for (const batcher of pendingBatchers) batcher.flushSync();
      });
    }
  }

  write(line: string): boolean {
    if (this.asBytes) this.encode(line);
    else this.lines.push(line);
    this.schedule();
    return true;
  }

  get acceptsBytes(): boolean {
    return this.asBytes;
  }

  room(maxBytes: number): Buffer {
    if (this.chunkEnd + maxBytes > this.chunk.length) this.newChunk(maxBytes);
    return this.chunk;
  }

  get end(): number {
    return this.chunkEnd;
  }

  commit(end: number): void {
    this.chunkEnd = end;
    this.schedule();
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    pendingBatchers.add(this);
    setImmediate(this.drain);
  }

  /** pino's logger.flush(). */
  flush(cb?: (error?: Error) => void): void {
    this.drain();
    if (this.target.flush) this.target.flush(cb);
    else cb?.();
  }

  flushSync(): void {
    this.drain();
    try {
      this.target.flushSync();
    } catch {
      // sonic-boom throws while its file is still opening; it writes what it has once open.
    }
  }

  private encode(line: string): void {
    // UTF-8 takes at most 3 bytes per UTF-16 code unit.
    if (this.chunkEnd + line.length * 3 > this.chunk.length) this.newChunk(line.length * 3);
    this.chunkEnd += this.chunk.write(line, this.chunkEnd);
  }

  /** Hands over what the current chunk holds and starts a new one with room for `bytes`. */
  private newChunk(bytes: number): void {
    this.handOver();
    this.chunk = Buffer.allocUnsafeSlow(Math.max(CHUNK_BYTES, bytes));
    this.chunkStart = this.chunkEnd = 0;
  }

  /** Bytes mode: what was encoded since the last hand-over goes to sonic-boom. */
  private handOver(): void {
    if (this.chunkEnd === this.chunkStart) return;
    const bytes = this.chunk.subarray(this.chunkStart, this.chunkEnd);
    this.chunkStart = this.chunkEnd;
    this.send(bytes);
  }

  private send(data: string | Buffer): void {
    try {
      this.target.write(data);
    } catch {
      // The destination was closed (shutdown); a log line must not crash the process.
    }
  }

  private readonly drain = (): void => {
    this.scheduled = false;
    pendingBatchers.delete(this);
    if (this.asBytes) return this.handOver();
    if (this.lines.length === 0) return;
    const text = this.lines.length === 1 ? this.lines[0] : this.lines.join("");
    this.lines = [];
    this.send(text);
  };
}

const EMPTY_CHUNK = Buffer.alloc(0);
