import { Cron, CronPattern } from "croner";
import { DstAdjustment, DstRepeatedPolicy, DstSkippedPolicy } from "../../gen/orca/scheduler/v1/scheduler_pb.js";

/**
 * Cron evaluation with an explicit DST policy layer (pure: no I/O, no clock).
 *
 * Why our own layer instead of croner's timezone mode: croner resolves skipped and repeated local
 * times with one built-in rule, and the contract wants the user to choose (skip / run at the next
 * valid instant; first / second / both occurrences) and to see which rule applied (Preview's
 * DstAdjustment). So croner only matches the 6-field pattern against LOCAL WALL-CLOCK time, which
 * we feed it as a fake UTC timeline ("wall ms": the local date and time read as if it were UTC),
 * where every wall time exists exactly once. Each matching wall time is then mapped to real
 * instants in the zone by comparing the zone's offsets around it:
 *   - one instant whose local time equals it: a normal time;
 *   - two instants (the offset before and after a transition both fit): a repeated time (fall back);
 *   - none: a skipped time (spring forward); the gap ends at the transition instant, found by
 *     binary search between the two candidate instants.
 * We assume at most one offset transition within +-24 h of any wall time, which holds for every
 * IANA zone in practice.
 */

export const DAY_MS = 86_400_000;

export interface CronSpec {
  cron: string;
  /** IANA zone; "UTC" when the schedule's is empty. */
  timezone: string;
  dstSkipped: DstSkippedPolicy;
  dstRepeated: DstRepeatedPolicy;
  /** Inclusive lower bound (ms), or undefined. */
  startAt?: number;
  /** Exclusive upper bound (ms), or undefined. */
  endAt?: number;
}

export interface Occurrence {
  /** The UTC instant (ms) of the firing (for SKIPPED_DST records: the transition instant). */
  instant: number;
  /** False for a fire time skipped by a DST gap under DST_SKIPPED_POLICY_SKIP (recorded, not fired). */
  fire: boolean;
  adjustment: DstAdjustment;
  /**
   * Unique key of this occurrence within its schedule: the instant in Unix ms for fired times
   * (the suffix of the StartRun idempotency key), `dst-skip/<local wall time>` for skipped ones
   * (several skipped wall times share the transition instant, so the instant alone is not unique).
   */
  key: string;
}

/** A compiled schedule spec; cache it, compilation parses the pattern. */
export class CompiledCron {
  private readonly matcher: Cron;
  readonly pattern: CronPattern;

  constructor(readonly spec: CronSpec) {
    this.pattern = parseCron(spec.cron);
    // utcOffset 0: croner walks our fake-UTC wall timeline; it never sees the real zone.
    this.matcher = new Cron(spec.cron, { utcOffset: 0, mode: "6-part" });
  }

  /** The next wall time (fake-UTC ms) strictly after `wall`, or undefined. */
  private nextWall(wall: number): number | undefined {
    const next = this.matcher.nextRun(new Date(wall));
    return next ? next.getTime() : undefined;
  }

  /**
   * All occurrences at the smallest instant strictly after `after` (ms) that respects the
   * start/end bounds; an empty list when the schedule has no further occurrence.
   * Occurrences at one instant are: one fired time (several fired wall times that map to the same
   * instant, e.g. a gap collapsed onto the transition, are ONE firing), plus any skipped records.
   */
  nextGroup(after: number): Occurrence[] {
    const zone = this.spec.timezone;
    let from = after;
    if (this.spec.startAt !== undefined && from < this.spec.startAt - 1) from = this.spec.startAt - 1;
    const endAt = this.spec.endAt;
    const offsets = [zoneOffsetMs(zone, from - DAY_MS), zoneOffsetMs(zone, from), zoneOffsetMs(zone, from + DAY_MS)];
    // An instant t > from has wall time t + off(t) > from + min(offsets): start the wall walk there.
    let wall = from + Math.min(...offsets) - 1;
    let best = Number.POSITIVE_INFINITY;
    let group: Occurrence[] = [];
    for (let guard = 0; guard < 1_000_000; guard++) {
      const next = this.nextWall(wall);
      if (next === undefined) break;
      wall = next;
      const resolved = resolveWall(zone, wall);
      // Every instant this wall time (or any later one) maps to is >= wall - maxOffset.
      if (wall - resolved.maxOffset > best) break;
      if (endAt !== undefined && wall - resolved.maxOffset >= endAt) break;
      for (const occurrence of this.apply(resolved, wall)) {
        if (occurrence.instant <= from) continue;
        if (endAt !== undefined && occurrence.instant >= endAt) continue;
        if (occurrence.instant < best) {
          best = occurrence.instant;
          group = [occurrence];
        } else if (occurrence.instant === best) {
          group.push(occurrence);
        }
      }
    }
    return collapse(group);
  }

  /** Up to `count` occurrence groups after `after`, flattened, in instant order. */
  nextOccurrences(after: number, count: number): Occurrence[] {
    const out: Occurrence[] = [];
    let cursor = after;
    while (out.length < count) {
      const group = this.nextGroup(cursor);
      if (group.length === 0) break;
      out.push(...group);
      cursor = group[0].instant;
    }
    return out.slice(0, count);
  }

  /** Occurrences with from <= instant < to, oldest first, at most `limit` (then `truncated`). */
  between(from: number, to: number, limit: number): { occurrences: Occurrence[]; truncated: boolean } {
    const out: Occurrence[] = [];
    let cursor = from - 1;
    for (;;) {
      const group = this.nextGroup(cursor);
      if (group.length === 0 || group[0].instant >= to) return { occurrences: out, truncated: false };
      if (out.length + group.length > limit) return { occurrences: out, truncated: true };
      out.push(...group);
      cursor = group[0].instant;
    }
  }

  private apply(resolved: ResolvedWall, wall: number): Occurrence[] {
    switch (resolved.kind) {
      case "normal":
        return [{ instant: resolved.instant, fire: true, adjustment: DstAdjustment.NONE, key: String(resolved.instant) }];
      case "repeated": {
        const first: Occurrence = { instant: resolved.first, fire: true, adjustment: DstAdjustment.REPEATED_FIRST, key: String(resolved.first) };
        const second: Occurrence = { instant: resolved.second, fire: true, adjustment: DstAdjustment.REPEATED_SECOND, key: String(resolved.second) };
        if (this.spec.dstRepeated === DstRepeatedPolicy.RUN_ONCE_SECOND) return [second];
        if (this.spec.dstRepeated === DstRepeatedPolicy.RUN_TWICE) return [first, second];
        return [first];
      }
      case "gap":
        if (this.spec.dstSkipped === DstSkippedPolicy.SKIP) {
          return [{ instant: resolved.transition, fire: false, adjustment: DstAdjustment.MOVED_OUT_OF_GAP, key: `dst-skip/${wallIso(wall)}` }];
        }
        return [{ instant: resolved.transition, fire: true, adjustment: DstAdjustment.MOVED_OUT_OF_GAP, key: String(resolved.transition) }];
    }
  }
}

/** One fired occurrence per instant (a gap collapsed onto a regular time is one firing); skipped records kept. */
function collapse(group: Occurrence[]): Occurrence[] {
  const fired = group.filter((o) => o.fire);
  const skipped = group.filter((o) => !o.fire);
  if (fired.length <= 1) return [...skipped, ...fired];
  const moved = fired.find((o) => o.adjustment === DstAdjustment.MOVED_OUT_OF_GAP);
  return [...skipped, moved ?? fired[0]];
}

type ResolvedWall =
  | { kind: "normal"; instant: number; maxOffset: number }
  | { kind: "repeated"; first: number; second: number; maxOffset: number }
  | { kind: "gap"; transition: number; maxOffset: number };

/** Maps a wall time (fake-UTC ms) in `zone` to its real instants; see the file comment. */
export function resolveWall(zone: string, wall: number): ResolvedWall {
  const before = zoneOffsetMs(zone, wall - DAY_MS);
  const after = zoneOffsetMs(zone, wall + DAY_MS);
  const maxOffset = Math.max(before, after);
  const candidates = [...new Set([wall - before, wall - after])].filter((t) => t + zoneOffsetMs(zone, t) === wall).sort((a, b) => a - b);
  if (candidates.length === 2) return { kind: "repeated", first: candidates[0], second: candidates[1], maxOffset };
  if (candidates.length === 1) return { kind: "normal", instant: candidates[0], maxOffset };
  // A gap: the offset jumps from `before` to `after` (after > before) somewhere in
  // (wall - after, wall - before]; the first instant with the new offset is the transition.
  let lo = wall - after;
  let hi = wall - before;
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if (zoneOffsetMs(zone, mid) === before) lo = mid;
    else hi = mid;
  }
  return { kind: "gap", transition: hi, maxOffset };
}

const formatters = new Map<string, Intl.DateTimeFormat>();

function formatter(zone: string): Intl.DateTimeFormat {
  let f = formatters.get(zone);
  if (!f) {
    f = new Intl.DateTimeFormat("en-US", {
      timeZone: zone,
      hourCycle: "h23",
      year: "numeric",
      month: "numeric",
      day: "numeric",
      hour: "numeric",
      minute: "numeric",
      second: "numeric",
    });
    formatters.set(zone, f);
  }
  return f;
}

// Offsets only change at transitions, which fall on whole minutes in every IANA zone since 1970:
// cache per (zone, minute). Bounded: cleared when it grows large.
const offsetCache = new Map<string, number>();

/** The zone's UTC offset (ms, local - UTC) at `instant`. */
export function zoneOffsetMs(zone: string, instant: number): number {
  if (zone === "UTC" || zone === "Etc/UTC") return 0;
  const minute = Math.floor(instant / 60_000);
  const key = `${zone}|${minute}`;
  const cached = offsetCache.get(key);
  if (cached !== undefined) return cached;
  const parts = formatter(zone).formatToParts(new Date(minute * 60_000));
  const get = (type: string) => Number(parts.find((p) => p.type === type)?.value ?? 0);
  const local = Date.UTC(get("year"), get("month") - 1, get("day"), get("hour"), get("minute"), get("second"));
  const offset = local - minute * 60_000;
  if (offsetCache.size > 200_000) offsetCache.clear();
  offsetCache.set(key, offset);
  return offset;
}

/** True for zones Intl knows (IANA names, plus UTC). */
export function isKnownZone(zone: string): boolean {
  if (zone.length === 0 || zone.length > 100) return false;
  try {
    new Intl.DateTimeFormat("en-US", { timeZone: zone });
    return true;
  } catch {
    return false;
  }
}

/** RFC 3339 of a fake-UTC wall time, without offset: `2026-03-08T02:30:00`. */
function wallIso(wall: number): string {
  return new Date(wall).toISOString().replace(/\.000Z$/, "").replace(/Z$/, "");
}

/** RFC 3339 UTC, seconds precision unless there are milliseconds. */
export function utcIso(instant: number): string {
  return new Date(instant).toISOString().replace(/\.000Z$/, "Z");
}

/** RFC 3339 local time with the zone's offset at that instant, e.g. `2026-03-08T03:00:00-04:00`. */
export function localIso(zone: string, instant: number): string {
  const offset = zoneOffsetMs(zone, instant);
  const wall = new Date(instant + offset).toISOString().replace(/\.000Z$/, "").replace(/Z$/, "");
  if (offset === 0) return `${wall}Z`;
  const sign = offset < 0 ? "-" : "+";
  const abs = Math.abs(offset) / 60_000;
  return `${wall}${sign}${String(Math.floor(abs / 60)).padStart(2, "0")}:${String(abs % 60).padStart(2, "0")}`;
}

export class CronSyntaxError extends Error {}

/** Parses a 6-field expression (croner syntax); throws CronSyntaxError with a readable reason. */
export function parseCron(expression: string): CronPattern {
  const trimmed = expression.trim();
  if (trimmed.startsWith("@")) throw new CronSyntaxError("nicknames such as @daily are not accepted; use six fields");
  const fields = trimmed.split(/\s+/).filter(Boolean);
  if (fields.length !== 6) throw new CronSyntaxError(`must have exactly six fields (second minute hour day-of-month month day-of-week), got ${fields.length}`);
  try {
    return new CronPattern(trimmed, undefined, { mode: "6-part" });
  } catch (error) {
    throw new CronSyntaxError((error as Error).message.replace(/^CronPattern: /, ""));
  }
}

/**
 * The smallest gap (ms) between two consecutive fire times of a pattern, on a timeline without
 * DST (a DST overlap with RUN_TWICE can bring two firings closer; the minimum-interval rule is
 * about the expression, as the contract words it). Computed from the parsed fields: within a
 * minute (consecutive seconds), across minutes, across hours, and across matching days (the day
 * gap is only enumerated when it could matter). Returns Infinity for a pattern that never fires twice.
 */
export function minimumGapMs(pattern: CronPattern, expression: string): number {
  const idx = (a: number[]) => a.map((v, i) => (v ? i : -1)).filter((i) => i >= 0);
  const s = idx(pattern.second);
  const m = idx(pattern.minute);
  const h = idx(pattern.hour);
  if (s.length === 0 || m.length === 0 || h.length === 0) return Number.POSITIVE_INFINITY;
  let gap = Number.POSITIVE_INFINITY;
  const consecutive = (values: number[], weight: number, lastOfInner: number, firstOfInner: number) => {
    for (let i = 1; i < values.length; i++) gap = Math.min(gap, (values[i] - values[i - 1]) * weight + firstOfInner - lastOfInner);
  };
  consecutive(s, 1, 0, 0);
  consecutive(m, 60, s[s.length - 1], s[0]);
  const firstInHour = m[0] * 60 + s[0];
  const lastInHour = m[m.length - 1] * 60 + s[s.length - 1];
  consecutive(h, 3600, lastInHour, firstInHour);
  const firstInDay = h[0] * 3600 + firstInHour;
  const lastInDay = h[h.length - 1] * 3600 + lastInHour;
  const crossDay = (days: number) => days * 86_400 + firstInDay - lastInDay;
  if (crossDay(1) < gap) {
    // Only now does the spacing of matching days matter: enumerate them (UTC, ~2 years).
    const fields = expression.trim().split(/\s+/);
    const days = new Cron(`0 0 0 ${fields[3]} ${fields[4]} ${fields[5]}`, { utcOffset: 0, mode: "6-part" }).nextRuns(800, new Date(Date.UTC(2000, 0, 1)));
    let dayGap = Number.POSITIVE_INFINITY;
    for (let i = 1; i < days.length; i++) dayGap = Math.min(dayGap, Math.round((days[i].getTime() - days[i - 1].getTime()) / DAY_MS));
    if (Number.isFinite(dayGap)) gap = Math.min(gap, crossDay(dayGap));
  }
  return gap * 1000;
}

/** Deterministic jitter in [0, jitterMs) from (schedule id, scheduled instant): every replica agrees. */
export function jitterFor(scheduleId: string, instant: number, jitterMs: number): number {
  if (jitterMs <= 0) return 0;
  // FNV-1a over the id and the instant; good enough spread, no crypto needed.
  let hash = 0x811c9dc5;
  const text = `${scheduleId}/${instant}`;
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  return hash % jitterMs;
}
