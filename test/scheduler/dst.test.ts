import { describe, expect, it } from "vitest";
import { DstAdjustment, DstRepeatedPolicy, DstSkippedPolicy } from "../../gen/orca/scheduler/v1/scheduler_pb.js";
import { CompiledCron, localIso, minimumGapMs, parseCron, utcIso } from "../../services/scheduler/cron.js";

// Pure unit tests of the DST policy layer, America/New_York 2026:
// spring forward 2026-03-08 02:00 EST -> 03:00 EDT (07:00Z); fall back 2026-11-01 02:00 EDT -> 01:00 EST (06:00Z).
const NY = "America/New_York";

function fire(cron: string, skipped: DstSkippedPolicy, repeated: DstRepeatedPolicy, from: string, n: number) {
  const c = new CompiledCron({ cron, timezone: NY, dstSkipped: skipped, dstRepeated: repeated });
  return c.nextOccurrences(Date.parse(from), n).map((o) => ({ utc: utcIso(o.instant), local: localIso(NY, o.instant), fire: o.fire, adj: o.adjustment, key: o.key }));
}

describe("DST: the skipped hour (2026-03-08, America/New_York)", () => {
  it("RUN_AT_NEXT_VALID_TIME moves 02:30 to the transition instant 03:00 EDT", () => {
    const got = fire("0 30 2 * * *", DstSkippedPolicy.RUN_AT_NEXT_VALID_TIME, DstRepeatedPolicy.RUN_ONCE_FIRST, "2026-03-07T12:00:00Z", 2);
    expect(got[0]).toMatchObject({ utc: "2026-03-08T07:00:00Z", local: "2026-03-08T03:00:00-04:00", fire: true, adj: DstAdjustment.MOVED_OUT_OF_GAP });
    expect(got[1]).toMatchObject({ utc: "2026-03-09T06:30:00Z", local: "2026-03-09T02:30:00-04:00", adj: DstAdjustment.NONE });
  });

  it("RUN_AT_NEXT_VALID_TIME collapses every gap time and a regular 03:00 into ONE firing", () => {
    const got = fire("0 */30 1-3 * * *", DstSkippedPolicy.RUN_AT_NEXT_VALID_TIME, DstRepeatedPolicy.RUN_ONCE_FIRST, "2026-03-08T05:00:00Z", 4);
    expect(got.map((g) => g.local)).toEqual(["2026-03-08T01:00:00-05:00", "2026-03-08T01:30:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-08T03:30:00-04:00"]);
    expect(got.filter((g) => g.utc === "2026-03-08T07:00:00Z")).toHaveLength(1);
  });

  it("SKIP records each skipped time (not fired) and keeps the regular 03:00", () => {
    const got = fire("0 */30 1-3 * * *", DstSkippedPolicy.SKIP, DstRepeatedPolicy.RUN_ONCE_FIRST, "2026-03-08T05:00:00Z", 6);
    const skipped = got.filter((g) => !g.fire);
    expect(skipped.map((s) => s.key)).toEqual(["dst-skip/2026-03-08T02:00:00", "dst-skip/2026-03-08T02:30:00"]);
    expect(got.filter((g) => g.fire).map((g) => g.local)).toEqual(["2026-03-08T01:00:00-05:00", "2026-03-08T01:30:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-08T03:30:00-04:00"]);
  });

  it("SKIP on a daily 02:30 fires nothing that day", () => {
    const got = fire("0 30 2 * * *", DstSkippedPolicy.SKIP, DstRepeatedPolicy.RUN_ONCE_FIRST, "2026-03-07T12:00:00Z", 2);
    expect(got[0]).toMatchObject({ fire: false, key: "dst-skip/2026-03-08T02:30:00" });
    expect(got[1]).toMatchObject({ fire: true, local: "2026-03-09T02:30:00-04:00" });
  });
});

describe("DST: the repeated hour (2026-11-01, America/New_York)", () => {
  const from = "2026-11-01T04:45:00Z"; // 00:45 EDT
  it("RUN_ONCE_FIRST fires 01:30 once, at the EDT occurrence", () => {
    const got = fire("0 30 1 * * *", DstSkippedPolicy.RUN_AT_NEXT_VALID_TIME, DstRepeatedPolicy.RUN_ONCE_FIRST, from, 2);
    expect(got[0]).toMatchObject({ utc: "2026-11-01T05:30:00Z", local: "2026-11-01T01:30:00-04:00", adj: DstAdjustment.REPEATED_FIRST });
    expect(got[1].utc).toBe("2026-11-02T06:30:00Z");
  });
  it("RUN_ONCE_SECOND fires 01:30 once, at the EST occurrence", () => {
    const got = fire("0 30 1 * * *", DstSkippedPolicy.RUN_AT_NEXT_VALID_TIME, DstRepeatedPolicy.RUN_ONCE_SECOND, from, 2);
    expect(got[0]).toMatchObject({ utc: "2026-11-01T06:30:00Z", local: "2026-11-01T01:30:00-05:00", adj: DstAdjustment.REPEATED_SECOND });
    expect(got[1].utc).toBe("2026-11-02T06:30:00Z");
  });
  it("RUN_TWICE fires both, in instant order, interleaved with an interval expression", () => {
    const got = fire("0 */30 1 * * *", DstSkippedPolicy.RUN_AT_NEXT_VALID_TIME, DstRepeatedPolicy.RUN_TWICE, from, 4);
    expect(got.map((g) => g.local)).toEqual(["2026-11-01T01:00:00-04:00", "2026-11-01T01:30:00-04:00", "2026-11-01T01:00:00-05:00", "2026-11-01T01:30:00-05:00"]);
    expect(new Set(got.map((g) => g.key)).size).toBe(4);
  });
  it("a zone without DST in UTC is unaffected", () => {
    const c = new CompiledCron({ cron: "0 30 1 * * *", timezone: "UTC", dstSkipped: DstSkippedPolicy.SKIP, dstRepeated: DstRepeatedPolicy.RUN_TWICE });
    expect(c.nextOccurrences(Date.parse(from), 1).map((o) => utcIso(o.instant))).toEqual(["2026-11-02T01:30:00Z"]);
  });
});

describe("cron parsing and the minimum interval", () => {
  it("accepts six fields only", () => {
    expect(() => parseCron("0 30 2 * *")).toThrow(/six fields/);
    expect(() => parseCron("0 30 2 * * * 2026")).toThrow(/six fields/);
    expect(() => parseCron("@daily")).toThrow(/nicknames/);
    expect(() => parseCron("0 61 2 * * *")).toThrow();
  });
  it("computes the smallest gap between fire times", () => {
    const gap = (e: string) => minimumGapMs(parseCron(e), e);
    expect(gap("*/10 * * * * *")).toBe(10_000);
    expect(gap("0 * * * * *")).toBe(60_000);
    expect(gap("0,1 0 0 1 1 *")).toBe(1000);
    expect(gap("0 0,59 0,23 * * *")).toBe(60_000); // 23:59 -> 00:00 next day
    expect(gap("0 0 12 * * MON")).toBe(7 * 86_400_000);
  });
});
