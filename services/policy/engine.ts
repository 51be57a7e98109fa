/**
 * The policy engine abstraction: one interface, two real engines (Cedar and OPA WebAssembly).
 *
 * An engine is built from a bundle's content once (`loadEngine`), which either yields a loaded,
 * validated Engine or the list of load/validate failures. `evaluate` is synchronous: both
 * engines are in-process WebAssembly, so a decision never waits on I/O, and the decision point
 * can answer from memory while Postgres is down.
 *
 * Plain domain module: no transport imports. Decisions are kept as lowercase strings here and
 * mapped to the proto enum by the handlers.
 */

export type DecisionKind = "allow" | "deny" | "divert" | "tarpit";
export const DECISION_KINDS: readonly DecisionKind[] = ["allow", "deny", "divert", "tarpit"];

export type EngineKind = "cedar" | "opa_wasm";
export type FailureStage = "load" | "validate" | "test";

/** What an engine decided for one input (no ids, no cache flag: those belong to the decision point). */
export interface DecisionOutcome {
  decision: DecisionKind;
  reasons: string[];
  /** Set only for divert. */
  divertTarget?: string;
  /** Set only for tarpit, in milliseconds. */
  tarpitDelayMs?: number;
  /** True when evaluation failed and the outcome is the fail-closed DENY. */
  evaluationError?: boolean;
}

export interface BundleFailure {
  stage: FailureStage;
  testName?: string;
  message: string;
  location?: string;
  expected?: DecisionKind;
  /** Undefined when evaluation failed. */
  actual?: DecisionKind;
}

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };
export type JsonObject = { [key: string]: JsonValue };

export interface TestCase {
  name: string;
  input: JsonObject;
  expectedDecision: DecisionKind;
  expectedDivertTarget?: string;
}

/** The parts of a bundle an engine needs (what PutBundle/ValidateBundle read). */
export interface BundleSource {
  engine: EngineKind;
  content: Uint8Array;
  /** Cedar only; empty = no schema validation. */
  cedarSchema: string;
  /** OPA only; empty = first entrypoint of the manifest (or of the module). */
  entrypoint: string;
}

export interface Engine {
  readonly kind: EngineKind;
  /** OPA: the entrypoints the module offers; Cedar: empty. */
  readonly entrypoints: string[];
  /**
   * Evaluates one merged input. Never throws for a policy problem: a run-time failure or a result
   * that does not map to a decision comes back as DENY with `evaluationError` set and a reason
   * starting "evaluation error:" (fail closed, as the contract requires).
   */
  evaluate(input: JsonObject): DecisionOutcome;
}

export type LoadResult = { ok: true; engine: Engine } | { ok: false; failures: BundleFailure[] };

/** The fail-closed outcome for an evaluation that could not produce a decision. */
export function evaluationError(message: string): DecisionOutcome {
  return { decision: "deny", reasons: [`evaluation error: ${message}`], evaluationError: true };
}

export function errorText(error: unknown): string {
  if (error instanceof Error) return error.message;
  if (typeof error === "string") return error;
  if (error && typeof error === "object" && "message" in error) return String((error as { message: unknown }).message);
  return String(error);
}

/**
 * Parses a duration like "2s", "500ms", "1m30s", "1.5s" (Go style units ns/us/ms/s/m/h) into
 * milliseconds. Returns undefined when malformed. Used for Cedar's @tarpit_delay annotation.
 */
export function parseDurationMs(text: string): number | undefined {
  const trimmed = text.trim();
  if (!/^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$/.test(trimmed)) return undefined;
  const units: Record<string, number> = { ns: 1e-6, us: 1e-3, µs: 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
  let total = 0;
  for (const match of trimmed.matchAll(/(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)/g)) total += Number(match[1]) * units[match[2]!]!;
  return Number.isFinite(total) ? total : undefined;
}

/** Two outcomes agree when decision, divert target and tarpit delay are equal (reasons are not compared). */
export function outcomesAgree(a: DecisionOutcome, b: DecisionOutcome): boolean {
  return a.decision === b.decision && (a.divertTarget ?? "") === (b.divertTarget ?? "") && (a.tarpitDelayMs ?? 0) === (b.tarpitDelayMs ?? 0);
}
