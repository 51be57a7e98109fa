/**
 * EWMA baselines and anomaly scores: plain numbers in, plain numbers out (no transport, no DB).
 *
 * Per metric (probe latency in ms, probe error indicator 0/1) we keep:
 *  - `current`: a fast EWMA (alpha_fast) - what the target looks like right now;
 *  - `baseline`: a slow EWMA (alpha_slow) - what it usually looks like;
 *  - `variance`: the exponentially weighted variance around the slow mean, updated with the
 *    standard incremental form (Finch 2009): diff = x - mean; mean += a*diff;
 *    var = (1-a) * (var + a*diff^2). The same alpha as the baseline, so "usual spread" adapts
 *    at the same speed as "usual value".
 *  - score = (current - baseline) / max(stddev, floor). The floor stops a perfectly steady
 *    target (stddev ~ 0) from turning a 0.1 ms wobble into a huge score.
 * The baseline keeps learning during an anomaly (slowly, with bounded steps; see foldSample):
 * a lasting shift eventually becomes the
 * new normal and the alert resolves, which is the Prometheus/Datadog-style behaviour operators
 * expect from "anomaly" rather than "threshold" rules. Until `warmupSamples` samples have been
 * folded in, the score is reported as 0 so anomaly rules cannot fire on a cold baseline.
 */
export interface EwmaState {
  current: number;
  baseline: number;
  variance: number;
  count: number;
}

export interface EwmaSettings {
  fastAlpha: number;
  slowAlpha: number;
  warmupSamples: number;
  stddevFloor: number;
}

/** Samples further than this many spreads from the baseline are outliers (see foldSample). */
export const CLAMP_SIGMAS = 3;

export const emptyEwma = (): EwmaState => ({ current: 0, baseline: 0, variance: 0, count: 0 });

/** Folds one sample in; returns a new state (the input is not changed). */
export function foldSample(state: EwmaState, value: number, settings: EwmaSettings): EwmaState {
  if (!Number.isFinite(value)) return state;
  if (state.count === 0) return { current: value, baseline: value, variance: 0, count: 1 };
  const a = settings.slowAlpha;
  // Outliers (more than CLAMP_SIGMAS spreads from the baseline, once warmed up) do not widen
  // the spread, and move the baseline by at most CLAMP_SIGMAS spreads x alpha. Folding them in
  // raw (or even winsorized at 3 sigma) makes the variance grow geometrically during an
  // anomaly, so the score of the very anomaly collapses within a few probes. This way a lasting
  // shift still becomes the new normal (the baseline creeps towards it and samples become
  // inliers again), just slowly, which is what an anomaly score should do.
  const spread = Math.max(Math.sqrt(Math.max(0, state.variance)), settings.stddevFloor);
  const raw = value - state.baseline;
  if (state.count >= settings.warmupSamples && Math.abs(raw) > CLAMP_SIGMAS * spread) {
    return {
      current: state.current + settings.fastAlpha * (value - state.current),
      baseline: state.baseline + a * Math.sign(raw) * CLAMP_SIGMAS * spread,
      variance: state.variance,
      count: state.count + 1,
    };
  }
  const diff = raw;
  return {
    current: state.current + settings.fastAlpha * (value - state.current),
    baseline: state.baseline + a * diff,
    variance: (1 - a) * (state.variance + a * diff * diff),
    count: state.count + 1,
  };
}

export function stddev(state: EwmaState): number {
  return Math.sqrt(Math.max(0, state.variance));
}

export function warmedUp(state: EwmaState, settings: EwmaSettings): boolean {
  return state.count >= settings.warmupSamples;
}

/** (current - baseline) / max(stddev, floor); 0 before warm-up. */
export function anomalyScore(state: EwmaState, settings: EwmaSettings): number {
  if (!warmedUp(state, settings)) return 0;
  return (state.current - state.baseline) / Math.max(stddev(state), settings.stddevFloor);
}

/** A target's statistics as stored (JSON) and evaluated. */
export interface TargetStats {
  latency: EwmaState;
  errorRate: EwmaState;
  /** Latency of the last probe in ms; null if it got no answer or there was none. */
  lastLatencyMs: number | null;
  consecutiveFailures: number;
}

export const emptyStats = (): TargetStats => ({ latency: emptyEwma(), errorRate: emptyEwma(), lastLatencyMs: null, consecutiveFailures: 0 });

/** Folds one probe result: latency only if the probe got an answer; the error indicator always. */
export function foldProbe(
  stats: TargetStats,
  probe: { latencyMs: number | null; ok: boolean },
  latency: EwmaSettings,
  errorRate: EwmaSettings,
): TargetStats {
  return {
    latency: probe.latencyMs === null ? stats.latency : foldSample(stats.latency, probe.latencyMs, latency),
    errorRate: foldSample(stats.errorRate, probe.ok ? 0 : 1, errorRate),
    lastLatencyMs: probe.latencyMs,
    consecutiveFailures: probe.ok ? 0 : stats.consecutiveFailures + 1,
  };
}
