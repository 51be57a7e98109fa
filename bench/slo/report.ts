import { percentile } from "../lib/h2load.js";
import type { Slo } from "./config.js";

/**
 * Results in the shape of ghz's JSON report (`ghz --format json`): durations are integer
 * nanoseconds, `rps` calls per second, `latencyDistribution` [{percentage, latency}],
 * `histogram` [{mark (seconds), count, frequency}], `statusCodeDistribution` {code name: calls},
 * `errorDistribution` {message: calls}.
 */
export interface GhzReport {
  date: string;
  count: number;
  total: number;
  average: number;
  fastest: number;
  slowest: number;
  rps: number;
  latencyDistribution: { percentage: number; latency: number }[];
  histogram: { mark: number; count: number; frequency: number }[];
  statusCodeDistribution: Record<string, number>;
  errorDistribution: Record<string, number>;
}

const NS_PER_MS = 1_000_000;
export const PERCENTAGES = [10, 25, 50, 75, 90, 95, 99];

/** A ghz-shaped report from sorted latencies (milliseconds) and counts. */
export function ghzReport(input: {
  date: string;
  sortedMs: Float64Array;
  elapsedMs: number;
  rps: number;
  statusCodeDistribution: Record<string, number>;
  errorDistribution: Record<string, number>;
  buckets?: number;
}): GhzReport {
  const { sortedMs } = input;
  const n = sortedMs.length;
  const ns = (ms: number) => Math.round(ms * NS_PER_MS);
  let sum = 0;
  for (const v of sortedMs) sum += v;
  const fastest = n > 0 ? sortedMs[0] : 0;
  const slowest = n > 0 ? sortedMs[n - 1] : 0;
  // ghz (after hey): marks fastest, fastest + w, ..., slowest (buckets + 1 of them); each call
  // counts in the first mark at or above its latency.
  const buckets = input.buckets ?? 10;
  const histogram: GhzReport["histogram"] = [];
  if (n > 0) {
    const width = (slowest - fastest) / buckets;
    const marks = Array.from({ length: buckets + 1 }, (_, i) => (i === buckets ? slowest : fastest + width * i));
    const counts = new Array<number>(marks.length).fill(0);
    let bi = 0;
    for (const v of sortedMs) {
      while (v > marks[bi] && bi < marks.length - 1) bi++;
      counts[bi]++;
    }
    marks.forEach((mark, i) => histogram.push({ mark: mark / 1000, count: counts[i], frequency: counts[i] / n }));
  }
  return {
    date: input.date,
    count: n,
    total: ns(input.elapsedMs),
    average: n > 0 ? ns(sum / n) : 0,
    fastest: ns(fastest),
    slowest: ns(slowest),
    rps: input.rps,
    latencyDistribution: n > 0 ? PERCENTAGES.map((percentage) => ({ percentage, latency: ns(percentile(sortedMs, percentage)) })) : [],
    histogram,
    statusCodeDistribution: input.statusCodeDistribution,
    errorDistribution: input.errorDistribution,
  };
}

/** A percentile of a ghz report in milliseconds (NaN when absent). */
export function latencyMs(report: Pick<GhzReport, "latencyDistribution">, percentage: number): number {
  const entry = report.latencyDistribution.find((d) => d.percentage === percentage);
  return entry ? entry.latency / NS_PER_MS : NaN;
}

export interface SloCheck {
  p99Ms: { value: number; limit: number; ok: boolean };
  errorRate: { value: number; limit: number; ok: boolean };
  rps: { value: number; limit: number; ok: boolean };
  ok: boolean;
}

export function checkSlo(slo: Slo, p99Ms: number, errorRate: number, rps: number): SloCheck {
  const p99 = { value: p99Ms, limit: slo.p99Ms, ok: p99Ms <= slo.p99Ms };
  const err = { value: errorRate, limit: slo.maxErrorRate, ok: errorRate <= slo.maxErrorRate };
  const r = { value: rps, limit: slo.minRps, ok: rps >= slo.minRps };
  return { p99Ms: p99, errorRate: err, rps: r, ok: p99.ok && err.ok && r.ok };
}

export interface ChartRow {
  label: string;
  /** Latency percentiles in ms (keys of PERCENTAGES), plus fastest and slowest. */
  percentilesMs: Record<number, number>;
  fastestMs: number;
  slowestMs: number;
  rps: number;
  sloP99Ms?: number;
  status: "ok" | "miss" | "error" | "skipped" | "baseline";
  note?: string;
}

const escapeXml = (s: string) => s.replace(/[<>&"]/g, (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;" })[c]!);

/**
 * A self-contained SVG of the latency distributions: one row per RPC (and per baseline) on a log
 * scale in milliseconds: a thin line from fastest to slowest, a light bar p10-p90, a dark bar
 * p25-p75, a white tick at p50, a black diamond at p99, and the SLO's p99 limit as a red dash.
 */
export function latencySvg(title: string, rows: ChartRow[]): string {
  const rowH = 30;
  const left = 250;
  const right = 190;
  const plotW = 620;
  const top = 56;
  const width = left + plotW + right;
  const height = top + rows.length * rowH + 50;
  const values = rows.flatMap((r) => [r.fastestMs, r.slowestMs, r.sloP99Ms ?? NaN]).filter((v) => Number.isFinite(v) && v > 0);
  const lo = Math.pow(10, Math.floor(Math.log10(Math.max(1e-3, Math.min(...values, 1)))));
  const hi = Math.pow(10, Math.ceil(Math.log10(Math.max(...values, 1))));
  const x = (ms: number) => left + (Math.log10(Math.min(hi, Math.max(lo, ms))) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo)) * plotW;
  const colors = { ok: "#2e7d32", miss: "#c62828", error: "#c62828", skipped: "#9e9e9e", baseline: "#1565c0" };
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`);
  out.push(`<rect width="100%" height="100%" fill="#fff"/>`);
  out.push(`<text x="${left}" y="22" font-size="15" font-weight="bold">${escapeXml(title)}</text>`);
  out.push(`<text x="${left}" y="40" fill="#555">latency, ms (log scale): line fastest-slowest, bars p10-p90 and p25-p75, tick p50, ◆ p99, red dash SLO p99</text>`);
  for (let decade = lo; decade <= hi * 1.0001; decade *= 10) {
    for (const m of [1, 2, 5]) {
      const v = decade * m;
      if (v > hi * 1.0001) continue;
      const gx = x(v).toFixed(1);
      out.push(`<line x1="${gx}" y1="${top - 6}" x2="${gx}" y2="${top + rows.length * rowH}" stroke="${m === 1 ? "#ccc" : "#eee"}"/>`);
      if (m === 1 || plotW / (Math.log10(hi / lo) * 3) > 40) out.push(`<text x="${gx}" y="${top + rows.length * rowH + 16}" text-anchor="middle" fill="#555">${+v.toPrecision(3)}</text>`);
    }
  }
  out.push(`<text x="${left + plotW / 2}" y="${top + rows.length * rowH + 34}" text-anchor="middle" fill="#555">milliseconds</text>`);
  rows.forEach((r, i) => {
    const cy = top + i * rowH + rowH / 2;
    const color = colors[r.status];
    out.push(`<text x="${left - 10}" y="${cy + 4}" text-anchor="end" fill="${r.status === "baseline" ? color : "#000"}">${escapeXml(r.label)}</text>`);
    const p = r.percentilesMs;
    if (r.status === "skipped" || !Number.isFinite(p[50])) {
      out.push(`<text x="${left + 6}" y="${cy + 4}" fill="#777">${escapeXml(r.note ?? "no data")}</text>`);
      return;
    }
    out.push(`<line x1="${x(r.fastestMs).toFixed(1)}" y1="${cy}" x2="${x(r.slowestMs).toFixed(1)}" y2="${cy}" stroke="${color}"/>`);
    out.push(`<rect x="${x(p[10]).toFixed(1)}" y="${cy - 7}" width="${Math.max(1, x(p[90]) - x(p[10])).toFixed(1)}" height="14" fill="${color}" fill-opacity="0.3"/>`);
    out.push(`<rect x="${x(p[25]).toFixed(1)}" y="${cy - 7}" width="${Math.max(1, x(p[75]) - x(p[25])).toFixed(1)}" height="14" fill="${color}" fill-opacity="0.75"/>`);
    out.push(`<line x1="${x(p[50]).toFixed(1)}" y1="${cy - 8}" x2="${x(p[50]).toFixed(1)}" y2="${cy + 8}" stroke="#fff" stroke-width="2"/>`);
    const d = x(p[99]);
    out.push(`<path d="M${(d - 5).toFixed(1)},${cy} L${d.toFixed(1)},${cy - 5} L${(d + 5).toFixed(1)},${cy} L${d.toFixed(1)},${cy + 5} Z" fill="#000"/>`);
    if (r.sloP99Ms !== undefined) {
      const s = x(r.sloP99Ms).toFixed(1);
      out.push(`<line x1="${s}" y1="${cy - 11}" x2="${s}" y2="${cy + 11}" stroke="#d32f2f" stroke-width="2" stroke-dasharray="3,2"/>`);
    }
    const text = `p50 ${p[50].toFixed(2)} · p99 ${p[99].toFixed(2)} ms · ${Math.round(r.rps)}/s${r.note ? ` · ${r.note}` : ""}`;
    out.push(`<text x="${left + plotW + 10}" y="${cy + 4}" fill="${color}">${escapeXml(text)}</text>`);
  });
  out.push(`</svg>`);
  return out.join("\n") + "\n";
}
