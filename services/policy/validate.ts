import { createHash } from "node:crypto";
import { loadCedarEngine } from "./cedar-engine.js";
import type { BundleFailure, BundleSource, Engine, LoadResult, TestCase } from "./engine.js";
import { stableStringify } from "./input.js";
import { loadOpaEngine } from "./opa-engine.js";

/**
 * Validation as PutBundle, ValidateBundle and the directory loader all run it: load the engine
 * (which also validates entrypoints, or Cedar syntax, annotations and schema), then run every
 * test case. One code path, so a bundle that passes here is exactly one that can go live.
 */

export function loadEngine(source: BundleSource): Promise<LoadResult> {
  if (source.engine === "cedar") return Promise.resolve(loadCedarEngine(source.content, source.cedarSchema));
  return loadOpaEngine(source.content, source.entrypoint);
}

export interface ValidationReport {
  valid: boolean;
  failures: BundleFailure[];
  testsRun: number;
  testsPassed: number;
  entrypoints: string[];
  /** The loaded engine when valid (so a put that activates does not load it twice). */
  engine?: Engine;
}

export async function validateBundle(source: BundleSource, tests: TestCase[]): Promise<ValidationReport> {
  const loaded = await loadEngine(source);
  if (!loaded.ok) return { valid: false, failures: loaded.failures, testsRun: 0, testsPassed: 0, entrypoints: [] };
  const failures: BundleFailure[] = [];
  let passed = 0;
  for (const test of tests) {
    const outcome = loaded.engine.evaluate(test.input);
    if (outcome.evaluationError) {
      failures.push({ stage: "test", testName: test.name, message: outcome.reasons[0] ?? "evaluation error", expected: test.expectedDecision });
      continue;
    }
    if (outcome.decision !== test.expectedDecision) {
      failures.push({
        stage: "test",
        testName: test.name,
        message: `expected ${test.expectedDecision.toUpperCase()}, got ${outcome.decision.toUpperCase()}${outcome.reasons.length ? ` (${outcome.reasons.join("; ")})` : ""}`,
        expected: test.expectedDecision,
        actual: outcome.decision,
      });
      continue;
    }
    if (test.expectedDivertTarget && outcome.decision === "divert" && outcome.divertTarget !== test.expectedDivertTarget) {
      failures.push({
        stage: "test",
        testName: test.name,
        message: `expected DIVERT to ${JSON.stringify(test.expectedDivertTarget)}, got DIVERT to ${JSON.stringify(outcome.divertTarget)}`,
        expected: test.expectedDecision,
        actual: outcome.decision,
      });
      continue;
    }
    passed++;
  }
  return {
    valid: failures.length === 0,
    failures,
    testsRun: tests.length,
    testsPassed: passed,
    entrypoints: loaded.engine.entrypoints,
    engine: failures.length === 0 ? loaded.engine : undefined,
  };
}

/**
 * Hex SHA-256 of engine, content, schema, entrypoint and tests (tests in a canonical form, keys
 * sorted), so identical puts are recognised whatever the key order of their test inputs.
 */
export function bundleDigest(source: BundleSource, tests: TestCase[]): string {
  const hash = createHash("sha256");
  hash.update(`engine:${source.engine}\n`);
  hash.update(`content:${source.content.length}\n`);
  hash.update(source.content);
  hash.update(`\nschema:${source.cedarSchema}\nentrypoint:${source.entrypoint}\ntests:`);
  hash.update(stableStringify(tests.map((t) => ({ name: t.name, input: t.input, expected: t.expectedDecision, target: t.expectedDivertTarget ?? "" }))));
  return hash.digest("hex");
}
