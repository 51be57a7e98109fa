/**
 * Retry policy: the contract's delay formula, with jitter, and the retryable-kind rules.
 *   delay before attempt n+1 (n >= 1) = min(max_backoff, initial * multiplier^(n-1)) * (1 - jitter * u), u in [0, 1)
 * Jitter only shortens the delay ("equal-ish" jitter downwards), so a delay never exceeds
 * max_backoff and never falls below (1 - jitter) times the un-jittered delay: callers can rely
 * on both bounds, and the tests check them.
 */
export interface EffectiveRetry {
  maxAttempts: number;
  initialBackoffMs: number;
  multiplier: number;
  maxBackoffMs: number;
  jitter: number;
  nonRetryable: string[];
}

export const DEFAULT_RETRY: EffectiveRetry = {
  maxAttempts: 3,
  initialBackoffMs: 1_000,
  multiplier: 2,
  maxBackoffMs: 5 * 60_000,
  jitter: 0.2,
  nonRetryable: [],
};

/** Kinds that are never retried, whatever the policy says (the contract). */
export const NEVER_RETRIED = new Set(["cel.error", "config.invalid", "cancelled"]);

export function unjitteredDelayMs(policy: EffectiveRetry, attempt: number): number {
  const raw = policy.initialBackoffMs * Math.pow(policy.multiplier, Math.max(0, attempt - 1));
  return Math.min(policy.maxBackoffMs, raw);
}

export function backoffDelayMs(policy: EffectiveRetry, attempt: number, random: () => number = Math.random): number {
  const base = unjitteredDelayMs(policy, attempt);
  return Math.round(base * (1 - policy.jitter * random()));
}

/** Whether an error kind matches a non-retryable entry (exact, or `prefix.*`). */
export function kindMatches(kind: string, pattern: string): boolean {
  if (pattern.endsWith(".*")) return kind.startsWith(pattern.slice(0, -1));
  return kind === pattern;
}

export type RetryDecision = { retry: true; delayMs: number } | { retry: false; reason: "exhausted" | "non_retryable" };

/** What follows a failed attempt number `attempt` (1-based). */
export function decideRetry(policy: EffectiveRetry, attempt: number, kind: string, nonRetryable = false, random?: () => number): RetryDecision {
  if (nonRetryable || NEVER_RETRIED.has(kind) || policy.nonRetryable.some((p) => kindMatches(kind, p))) return { retry: false, reason: "non_retryable" };
  if (attempt >= policy.maxAttempts) return { retry: false, reason: "exhausted" };
  return { retry: true, delayMs: backoffDelayMs(policy, attempt, random) };
}
