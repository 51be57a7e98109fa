import { readFileSync } from "node:fs";
import { relative } from "node:path";
import { fromJson } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { CONFIG_DIR, configFiles, durationMs, extract, loadConfigs, placeholders, substitute, validateConfig, type GhzConfig } from "../../bench/slo/config.js";
import { registry, requestFrame, resolveCall } from "../../bench/slo/descriptors.js";
import { ghzReport, latencySvg } from "../../bench/slo/report.js";

/**
 * The SLO load configs (bench/slo/<service>/<rpc>.json) cannot rot: each is ghz's config format,
 * its call names a real unary method in gen/'s descriptors, its data (and every setup step's)
 * converts with protobuf-es fromJson, and its SLO is complete.
 */
const files = configFiles();
const named = files.map((file) => [relative(CONFIG_DIR, file).replace(/\\/g, "/"), file] as const);

describe("bench/slo configs", () => {
  it("cover the hot RPC of every service", () => {
    const names = named.map(([name]) => name);
    for (const expected of [
      "lock/Acquire.json",
      "lock/GetLock.json",
      "cache/Get.json",
      "cache/Set.json",
      "policy/Decide.json",
      "orchestrator/GetRun.json",
      "orchestrator/StartRun.json",
      "monitor/GetHealth.json",
      "scheduler/PreviewSchedule.json",
    ]) {
      expect(names).toContain(expected);
    }
  });

  describe.each(named)("%s", (name, file) => {
    const raw = JSON.parse(readFileSync(file, "utf8")) as GhzConfig;

    it("is valid (ghz keys only, plus slo and setup)", () => {
      expect(validateConfig(raw)).toEqual([]);
    });

    it("calls a real unary method of the service its folder names", () => {
      const call = resolveCall(raw.call);
      expect(call.method.methodKind).toBe("unary");
      expect(raw.call).toBe(`${call.service.typeName}.${call.method.name}`);
      expect(call.meshService).toBe(name.split("/")[0]);
    });

    it("has data that fromJson converts and encodes as one gRPC frame", () => {
      const { method } = resolveCall(raw.call);
      const dummy = Object.fromEntries(placeholders(raw.data).map((n) => [n, "1"]));
      const data = substitute(raw.data, dummy);
      expect(() => fromJson(method.input, data, { registry })).not.toThrow();
      const frame = requestFrame(method.input, data);
      expect(frame.readUInt32BE(1)).toBe(frame.length - 5);
      for (const step of raw.setup ?? []) {
        const stepMethod = resolveCall(step.call).method;
        const stepData = substitute(step.data ?? {}, Object.fromEntries(placeholders(step.data ?? {}).map((n) => [n, "1"])));
        expect(() => fromJson(stepMethod.input, stepData, { registry })).not.toThrow();
      }
    });

    it("has a complete SLO and a load ghz understands", () => {
      expect(raw.slo.p99Ms).toBeGreaterThan(0);
      expect(raw.slo.maxErrorRate).toBeGreaterThanOrEqual(0);
      expect(raw.slo.maxErrorRate).toBeLessThanOrEqual(1);
      expect(raw.slo.minRps).toBeGreaterThanOrEqual(0);
      expect(raw.insecure).toBe(true);
      expect(raw.total !== undefined || durationMs(raw.duration!) > 0).toBe(true);
      expect(raw.concurrency).toBeGreaterThanOrEqual(raw.connections);
    });
  });

  it("loadConfigs selects by service and by name", () => {
    expect(loadConfigs("lock").every((c) => c.name.startsWith("lock/"))).toBe(true);
    expect(loadConfigs("cache/Get").map((c) => c.name)).toEqual(["cache/Get"]);
    expect(() => loadConfigs("nope")).toThrow(/no config matches/);
  });
});

describe("bench/slo config checks", () => {
  const good: GhzConfig = {
    call: "orca.lock.v1.LockService.GetLock",
    duration: "10s",
    concurrency: 8,
    connections: 2,
    insecure: true,
    data: { resource: "r" },
    slo: { p99Ms: 10, maxErrorRate: 0.01, minRps: 100 },
  };

  it("reject what would rot", () => {
    expect(validateConfig(good)).toEqual([]);
    expect(validateConfig({ ...good, call: "orca.lock.v1.LockService.Nope" }).join()).toMatch(/no method Nope/);
    expect(validateConfig({ ...good, call: "orca.lock.v1.LockService.KeepAlive" }).join()).toMatch(/only unary/);
    expect(validateConfig({ ...good, data: { resourceName: "r" } }).join()).toMatch(/data:/);
    expect(validateConfig({ ...good, slo: { p99Ms: 10, maxErrorRate: 0.01 } as never }).join()).toMatch(/slo.minRps/);
    expect(validateConfig({ ...good, duration: undefined }).join()).toMatch(/total or duration/);
    expect(validateConfig({ ...good, data: { resource: "${unsaved}" } }).join()).toMatch(/not saved/);
    expect(validateConfig({ ...good, extra: 1 } as never).join()).toMatch(/unknown key extra/);
  });

  it("substitute and extract setup variables", () => {
    const response = { targets: [{ name: "orca-cache", id: "a" }, { name: "orca-lock", id: "b" }], lease: { fencingToken: "7" } };
    expect(extract(response, "targets[name=orca-lock].id")).toBe("b");
    expect(extract(response, "targets[0].id")).toBe("a");
    expect(extract(response, "lease.fencingToken")).toBe("7");
    expect(() => extract(response, "lease.leaseId")).toThrow(/nothing at leaseId/);
    expect(substitute({ id: "${x}", name: "run-${x}", n: "${n}" }, { x: "b", n: 3 })).toEqual({ id: "b", name: "run-b", n: 3 });
  });

  it("report in ghz's shape, and chart it", () => {
    const sorted = Float64Array.from([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    const report = ghzReport({ date: "d", sortedMs: sorted, elapsedMs: 1000, rps: 10, statusCodeDistribution: { OK: 10 }, errorDistribution: {} });
    expect(report).toMatchObject({ count: 10, total: 1e9, average: 5.5e6, fastest: 1e6, slowest: 10e6, rps: 10 });
    expect(report.latencyDistribution.find((d) => d.percentage === 50)?.latency).toBe(5e6);
    expect(report.histogram.reduce((n, b) => n + b.count, 0)).toBe(10);
    const svg = latencySvg("t", [{ label: "x", percentilesMs: { 10: 1, 25: 2, 50: 5, 75: 7, 90: 9, 95: 9.5, 99: 10 }, fastestMs: 1, slowestMs: 10, rps: 10, sloP99Ms: 20, status: "ok" }]);
    expect(svg).toMatch(/^<svg[\s\S]*<\/svg>\n$/);
  });
});
