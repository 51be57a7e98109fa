import { readFileSync } from "node:fs";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { defaultsDir, parseTestsJson, readBundleDir } from "../../services/policy/bundle-files.js";
import { loadCedarEngine } from "../../services/policy/cedar-engine.js";
import type { Engine, JsonObject } from "../../services/policy/engine.js";
import { createMasker, mergeInput, stableStringify } from "../../services/policy/input.js";
import { loadOpaEngine } from "../../services/policy/opa-engine.js";
import { validateBundle } from "../../services/policy/validate.js";
import { buildOpaBundle, compileFixtureWasm, FIXTURE_MANIFEST, fixtureBundle } from "./fixtures/opa-abi-fixture.js";

const defaults = defaultsDir();
const cedarText = readFileSync(join(defaults, "default.cedar"));
const cedarSchema = readFileSync(join(defaults, "default.cedarschema"), "utf8");
const defaultTests = parseTestsJson(readFileSync(join(defaults, "default.tests.json"), "utf8"));

function cedar(): Engine {
  const loaded = loadCedarEngine(cedarText, cedarSchema);
  if (!loaded.ok) throw new Error(JSON.stringify(loaded.failures));
  return loaded.engine;
}

describe("Cedar engine on the shipped default rules", () => {
  it("passes the defaults' own test table", async () => {
    const { bundles, errors } = await readBundleDir(defaults);
    expect(errors).toEqual([]);
    const report = await validateBundle(bundles[0]!.source, bundles[0]!.tests);
    expect(report.failures).toEqual([]);
    expect(report.testsRun).toBe(defaultTests.length);
    expect(report.testsPassed).toBe(defaultTests.length);
  });

  it.each([
    [{ tenant: "trusted", action: "read", ip_reputation: 90 }, "allow", ["trusted tenant may read"]],
    [{ tenant: "acme", action: "read" }, "deny", ["no matching permit"]],
    [{ tenant: "trusted", action: "read", ip_reputation: 5 }, "deny", ["ip reputation below 20"]],
    [{ principal: 'User::"alice"', action: "start", resource: 'Workflow::"billing"', tenant: "acme" }, "allow", ["workflow runs may start"]],
    [{ principal: "alice", action: "Action::\"start\"", tenant: "acme" }, "allow", ["workflow runs may start"]],
  ] as [JsonObject, string, string[]][])("decides %j as %s", (input, decision, reasons) => {
    const outcome = cedar().evaluate(input);
    expect(outcome.decision).toBe(decision);
    expect(outcome.reasons).toEqual(reasons);
  });

  it("maps tarpit and divert annotations, tarpit winning and carrying its delay", () => {
    const e = cedar();
    expect(e.evaluate({ tenant: "trusted", action: "read", ip_reputation: 30 })).toMatchObject({ decision: "tarpit", tarpitDelayMs: 2000 });
    expect(e.evaluate({ tenant: "trusted", action: "read", canary: true })).toMatchObject({ decision: "divert", divertTarget: "canary" });
    expect(e.evaluate({ tenant: "trusted", action: "read", canary: true, ip_reputation: 30 })).toMatchObject({ decision: "tarpit" });
    // Allow reasons are every determining permit's @reason, ordered by policy id.
    expect(e.evaluate({ tenant: "trusted", action: "read", ip_reputation: 30 }).reasons).toEqual(["trusted tenant may read", "ip reputation below 50: slowed down"]);
  });

  it("fails closed on inputs Cedar cannot take", () => {
    const e = cedar();
    const bad = e.evaluate({ principal: { nope: 1 }, action: "read" } as JsonObject);
    expect(bad.decision).toBe("deny");
    expect(bad.evaluationError).toBe(true);
    expect(bad.reasons[0]).toMatch(/^evaluation error:/);
    // Floats become Cedar decimals and nulls are dropped, so these still evaluate.
    expect(e.evaluate({ tenant: "trusted", action: "read", ratio: 0.5, note: null }).decision).toBe("allow");
  });

  it("reports syntax, annotation, schema and encoding problems as failures", () => {
    const syntax = loadCedarEngine(Buffer.from("permit(principal, action, resource) when { x };\nforbid("), "");
    expect(syntax.ok).toBe(false);
    if (!syntax.ok) expect(syntax.failures[0]).toMatchObject({ stage: "validate", location: "2:8" });
    const annotation = loadCedarEngine(Buffer.from('@decision("tarpit") permit(principal, action, resource);'), "");
    expect(!annotation.ok && annotation.failures[0]!.message).toMatch(/tarpit_delay/);
    const schema = loadCedarEngine(Buffer.from('permit(principal, action == Action::"fly", resource);'), cedarSchema);
    expect(!schema.ok && schema.failures[0]!.message).toMatch(/does not validate against the schema/);
    const badSchema = loadCedarEngine(cedarText, "entity ;;");
    expect(!badSchema.ok && badSchema.failures[0]!.message).toMatch(/schema error/);
    const notUtf8 = loadCedarEngine(new Uint8Array([0xff, 0xfe, 0x00]), "");
    expect(!notUtf8.ok && notUtf8.failures[0]).toMatchObject({ stage: "load" });
  });
});

describe("OPA wasm engine on the ABI test fixture", () => {
  let bundle: Uint8Array;
  let wasm: Uint8Array;
  beforeAll(async () => {
    wasm = await compileFixtureWasm();
    bundle = await fixtureBundle();
  });

  it("reads the tar.gz, takes the entrypoint from the manifest and decides a table of inputs", async () => {
    const loaded = await loadOpaEngine(bundle, "");
    if (!loaded.ok) throw new Error(JSON.stringify(loaded.failures));
    const e = loaded.engine;
    expect(e.entrypoints.sort()).toEqual(["orca/allow_all", "orca/decision", "orca/number", "orca/trap"]);
    expect(e.evaluate({ tenant: "trusted" })).toEqual({ decision: "allow", reasons: ["trusted tenant"] });
    expect(e.evaluate({ tenant: "acme" })).toEqual({ decision: "deny", reasons: ["no rule matched"] });
    expect(e.evaluate({ tenant: "trusted", risk: "blocked" })).toEqual({ decision: "deny", reasons: ["blocked by fixture"] });
    expect(e.evaluate({ tenant: "trusted", risk: "slow" })).toEqual({ decision: "tarpit", reasons: ["slow lane"], tarpitDelayMs: 1500 });
    expect(e.evaluate({ route: "canary" })).toEqual({ decision: "divert", reasons: ["canary route"], divertTarget: "canary" });
    const broken = e.evaluate({ mode: "broken" });
    expect(broken).toMatchObject({ decision: "deny", evaluationError: true });
    expect(broken.reasons[0]).toMatch(/^evaluation error: "decision" is "maybe"/);
  });

  it("evaluates a named entrypoint: booleans map, other values and traps fail closed", async () => {
    const allowAll = await loadOpaEngine(bundle, "orca/allow_all");
    expect(allowAll.ok && allowAll.engine.evaluate({})).toEqual({ decision: "allow", reasons: [] });
    const number = await loadOpaEngine(bundle, "orca/number");
    expect(number.ok && number.engine.evaluate({})).toMatchObject({ decision: "deny", evaluationError: true });
    const trap = await loadOpaEngine(bundle, "orca/trap");
    expect(trap.ok && trap.engine.evaluate({})).toMatchObject({ decision: "deny", evaluationError: true });
  });

  it("rejects broken bundles with the stage and location of the problem", async () => {
    const notTar = await loadOpaEngine(Buffer.from("definitely not a tarball, just text"), "");
    expect(!notTar.ok && notTar.failures[0]).toMatchObject({ stage: "load" });
    const noWasm = await loadOpaEngine(await buildOpaBundle({ data: "{}", manifest: FIXTURE_MANIFEST }), "");
    expect(!noWasm.ok && noWasm.failures[0]).toMatchObject({ stage: "load", location: "/policy.wasm" });
    const badWasm = await loadOpaEngine(await buildOpaBundle({ wasm: Buffer.from("\0asm garbage"), data: "{}", manifest: FIXTURE_MANIFEST }), "");
    expect(!badWasm.ok && badWasm.failures[0]).toMatchObject({ stage: "load", location: "/policy.wasm" });
    const badData = await loadOpaEngine(await buildOpaBundle({ wasm, data: "{oops", manifest: FIXTURE_MANIFEST }), "");
    expect(!badData.ok && badData.failures[0]).toMatchObject({ stage: "load", location: "/data.json" });
    const unknownEntry = await loadOpaEngine(bundle, "orca/nope");
    expect(!unknownEntry.ok && unknownEntry.failures[0]).toMatchObject({ stage: "validate" });
    const badManifest = await loadOpaEngine(
      await buildOpaBundle({ wasm, data: "{}", manifest: JSON.stringify({ wasm: [{ entrypoint: "x/y", module: "/policy.wasm" }] }) }),
      "",
    );
    expect(!badManifest.ok && badManifest.failures[0]).toMatchObject({ stage: "validate", location: "/.manifest" });
  });
});

describe("input helpers", () => {
  it("merges typed fields, refusing conflicts", () => {
    expect(mergeInput({ a: 1, tenant: "x" }, { tenant: "x", principal: "p", action: "", resource: "" })).toEqual({ merged: { a: 1, tenant: "x", principal: "p" } });
    expect(mergeInput({ tenant: "y" }, { tenant: "x", principal: "", action: "", resource: "" })).toEqual({ conflict: "tenant" });
  });
  it("normalizes key order and masks dotted paths (also through arrays)", () => {
    expect(stableStringify({ b: 1, a: { d: [1, { z: 1, y: 2 }], c: null } })).toBe('{"a":{"c":null,"d":[1,{"y":2,"z":1}]},"b":1}');
    const mask = createMasker(["ip", "context.user.email", "items.secret"]);
    expect(mask({ ip: "1.2.3.4", context: { user: { email: "a@b", id: 1 } }, items: [{ secret: 1, ok: 2 }] })).toEqual({
      ip: "***",
      context: { user: { email: "***", id: 1 } },
      items: [{ secret: "***", ok: 2 }],
    });
  });
});
