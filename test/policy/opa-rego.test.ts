import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { defaultsDir, parseTestsJson } from "../../services/policy/bundle-files.js";
import { loadCedarEngine } from "../../services/policy/cedar-engine.js";
import { loadOpaEngine } from "../../services/policy/opa-engine.js";

/**
 * The shipped Rego (services/policy/defaults/rego) must decide like the shipped Cedar defaults.
 * Needs the `opa` CLI, which cannot be installed on the build machines (not in npm nor Debian):
 * without it this suite is skipped with a message.
 */
const opa = spawnSync("opa", ["version"], { encoding: "utf8" });
const haveOpa = opa.status === 0;
if (!haveOpa) process.stdout.write("test/policy/opa-rego.test.ts: skipped, no `opa` binary on PATH (the Rego defaults are checked only where opa is installed)\n");

describe.skipIf(!haveOpa)("shipped Rego defaults built with `opa build -t wasm`", () => {
  it("decide like the Cedar defaults on the same input table", async () => {
    const dir = mkdtempSync(join(tmpdir(), "orca-rego-"));
    try {
      const out = join(dir, "default.tar.gz");
      execFileSync("opa", ["build", "-t", "wasm", "-e", "orca/decision", "-o", out, join(defaultsDir(), "rego")]);
      const opaLoaded = await loadOpaEngine(readFileSync(out), "orca/decision");
      if (!opaLoaded.ok) throw new Error(JSON.stringify(opaLoaded.failures));
      const cedarLoaded = loadCedarEngine(readFileSync(join(defaultsDir(), "default.cedar")), readFileSync(join(defaultsDir(), "default.cedarschema"), "utf8"));
      if (!cedarLoaded.ok) throw new Error(JSON.stringify(cedarLoaded.failures));
      const table = parseTestsJson(readFileSync(join(defaultsDir(), "default.tests.json"), "utf8"));
      for (const t of table) {
        const fromOpa = opaLoaded.engine.evaluate(t.input);
        const fromCedar = cedarLoaded.engine.evaluate(t.input);
        expect({ test: t.name, decision: fromOpa.decision, target: fromOpa.divertTarget, delay: fromOpa.tarpitDelayMs }).toEqual({
          test: t.name,
          decision: fromCedar.decision,
          target: fromCedar.divertTarget,
          delay: fromCedar.tarpitDelayMs,
        });
        expect(fromOpa.decision).toBe(t.expectedDecision);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
