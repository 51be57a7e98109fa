import { pino, type Logger } from "pino";
import { encodedLineSink, type EncodedLineSink } from "./logger.js";

/**
 * The per-call "rpc" log line of one method and code, written as bytes.
 *
 * Every served call logs the same shape: the logger's bindings, then durationMs, correlationId
 * and msg "rpc". pino builds each line as a string from its parts (a loop over the fields, an
 * escape scan per string, several intermediate strings), and the batcher then encodes it; on a
 * busy server that was several percent of the CPU per call. Here pino formats the line once per
 * level with placeholder values, the text around the placeholders is kept as UTF-8 bytes, and
 * each call copies those bytes and writes its three values (time, duration, id; all ASCII) into
 * the log chunk directly. The result is byte for byte what pino writes (test/kit/rpc-line.test.ts).
 * Anything this cannot reproduce exactly (a destination other than the kit's batcher, a mixin or
 * hook, a correlation id that would need escaping) goes through pino as usual.
 */
export class RpcLine {
  private readonly sink: EncodedLineSink | undefined;
  private readonly templates = new Map<number, Template | null>();

  /** `logger`: a child with the line's constant fields (method, code) bound. */
  constructor(private readonly logger: Logger) {
    this.sink = plainLogger(logger) ? encodedLineSink(logger) : undefined;
  }

  /** Logs `"durationMs": durationMicros / 1000` (an integer number of microseconds, as milliseconds). */
  info(durationMicros: number, correlationId: string): void {
    this.write(INFO, durationMicros, correlationId);
  }

  error(durationMicros: number, correlationId: string): void {
    this.write(ERROR, durationMicros, correlationId);
  }

  private write(level: number, durationMicros: number, correlationId: string): void {
    const logger = this.logger;
    if (logger.levelVal > level) return;
    const template = this.sink && this.template(level);
    if (template && durationMicros >= 0 && durationMicros <= MAX_MICROS && Number.isInteger(durationMicros)) {
      const sink = this.sink!;
      const head = headFor(template, (logger as unknown as Record<symbol, () => string>)[timeSym]());
      const chunk = sink.room(head.length + MAX_DURATION_CHARS + template.beforeId.length + correlationId.length + template.rest.length);
      let at = sink.end;
      at = copy(chunk, at, head);
      at = writeMillis(chunk, at, durationMicros);
      at = copy(chunk, at, template.beforeId);
      at = writeSafeId(chunk, at, correlationId);
      // Not committed: the id needs JSON escaping, so pino writes this line.
      if (at >= 0) return sink.commit(copy(chunk, at, template.rest));
    }
    const line = { durationMs: durationMicros / 1000, correlationId };
    if (level === ERROR) logger.error(line, "rpc");
    else logger.info(line, "rpc");
  }

  private template(level: number): Template | null {
    let template = this.templates.get(level);
    if (template === undefined) this.templates.set(level, (template = buildTemplate(this.logger, level)));
    return template;
  }
}

const { asJsonSym, timeSym, mixinSym, hooksSym, formattersSym } = pino.symbols;
const INFO = 30;
const ERROR = 50;
/** Durations written here (about 31 years); longer ones, never seen, go through pino. */
const MAX_MICROS = 1e15;
const MAX_DURATION_CHARS = 17;

/** The line's text around its three values: before the time, before the duration, before the id, after it. */
interface Template {
  beforeTime: string;
  beforeDuration: string;
  beforeId: Buffer;
  rest: Buffer;
  /** Everything up to the duration, for the time it was made with (the time changes once per millisecond). */
  head: Buffer;
  headTime: string;
}

// Placeholders: a time pino never makes, a duration and an id no call has.
const TIME_MARK = "\u0001time\u0001";
const DURATION_MARK = 987654321.125;
const ID_MARK = "orca-placeholder-correlation-id";

/** Only loggers whose lines are a plain function of their fields can be templated. */
function plainLogger(logger: Logger): boolean {
  const internals = logger as unknown as Record<symbol, unknown>;
  const hooks = internals[hooksSym] as { logMethod?: unknown; streamWrite?: unknown } | undefined;
  const formatters = internals[formattersSym] as { log?: unknown } | undefined;
  return !internals[mixinSym] && !hooks?.logMethod && !hooks?.streamWrite && !(logger as { msgPrefix?: string }).msgPrefix && !formatters?.log;
}

/** pino formats the line once with placeholders; null if the line does not split around them as expected. */
function buildTemplate(logger: Logger, level: number): Template | null {
  const asJson = (logger as unknown as Record<symbol, (obj: object, msg: string, level: number, time: string) => string>)[asJsonSym];
  const line = asJson.call(logger, { durationMs: DURATION_MARK, correlationId: ID_MARK }, "rpc", level, TIME_MARK);
  const duration = String(DURATION_MARK);
  const timeAt = line.indexOf(TIME_MARK);
  const durationAt = line.indexOf(duration, timeAt + TIME_MARK.length);
  const idAt = line.indexOf(`"${ID_MARK}"`, durationAt + duration.length);
  if (timeAt < 0 || durationAt < 0 || idAt < 0) return null;
  const parts = [
    line.slice(0, timeAt),
    line.slice(timeAt + TIME_MARK.length, durationAt),
    line.slice(durationAt + duration.length, idAt + 1),
    line.slice(idAt + 1 + ID_MARK.length),
  ];
  // Each placeholder exactly once, and nothing else derived from the values.
  if (parts.join("") !== line.replace(TIME_MARK, "").replace(duration, "").replace(ID_MARK, "")) return null;
  if (parts.some((part) => part.includes(TIME_MARK) || part.includes(duration) || part.includes(ID_MARK))) return null;
  const [beforeTime, beforeDuration, beforeId, rest] = parts;
  return { beforeTime, beforeDuration, beforeId: Buffer.from(beforeId), rest: Buffer.from(rest), head: EMPTY, headTime: TIME_MARK };
}

/** The line's bytes up to the duration, encoded once per time string (isoTime in logger.ts keeps one per millisecond). */
function headFor(template: Template, time: string): Buffer {
  if (time !== template.headTime) {
    template.headTime = time;
    template.head = Buffer.from(template.beforeTime + time + template.beforeDuration, "utf8");
  }
  return template.head;
}

const EMPTY = Buffer.alloc(0);

function copy(chunk: Buffer, at: number, bytes: Buffer): number {
  chunk.set(bytes, at);
  return at + bytes.length;
}

/**
 * micros / 1000 as JavaScript prints it ("12", "0.5", "0.123"): the integer part, then up to
 * three decimals without trailing zeros. Exact for integers up to MAX_MICROS, as every such
 * quotient's shortest round-trip form is its three-decimal form.
 */
function writeMillis(chunk: Buffer, at: number, micros: number): number {
  const whole = Math.floor(micros / 1000);
  let fraction = micros - whole * 1000;
  at = writeDigits(chunk, at, whole);
  if (fraction === 0) return at;
  chunk[at++] = DOT;
  let divisor = 100;
  while (fraction > 0) {
    const digit = Math.floor(fraction / divisor);
    chunk[at++] = ZERO + digit;
    fraction -= digit * divisor;
    divisor /= 10;
  }
  return at;
}

function writeDigits(chunk: Buffer, at: number, value: number): number {
  let digits = 1;
  for (let rest = value; rest >= 10; rest = Math.floor(rest / 10)) digits++;
  for (let i = at + digits - 1, rest = value; i >= at; i--, rest = Math.floor(rest / 10)) chunk[i] = ZERO + (rest % 10);
  return at + digits;
}

/**
 * The id into the chunk as JSON string content, if it needs no escaping (the kit's correlation
 * ids are UUIDs, trace ids or checked request ids); -1 otherwise, and nothing is committed.
 */
function writeSafeId(chunk: Buffer, at: number, id: string): number {
  for (let i = 0; i < id.length; i++) {
    const c = id.charCodeAt(i);
    if (c >= 128 || SAFE_ID_CHAR[c] === 0) return -1;
    chunk[at + i] = c;
  }
  return at + id.length;
}

const ZERO = 48;
const DOT = 46;
/** ASCII characters a correlation id may hold: letters, digits and . _ : - */
const SAFE_ID_CHAR = new Uint8Array(128);
for (const c of "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-") SAFE_ID_CHAR[c.charCodeAt(0)] = 1;
