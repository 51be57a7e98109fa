import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BundleStatus, FailureStage } from "../../gen/orca/policy/v1/policy_pb.js";
import type { Database } from "../../services/kit/db/database.js";
import { fixtureBundle } from "./fixtures/opa-abi-fixture.js";
import {
  BACKENDS,
  captureLogger,
  Code,
  DEFAULT_CEDAR,
  DEFAULT_SCHEMA,
  Decision,
  Engine,
  expectCode,
  simpleCedar,
  startPolicy,
  testCase,
  type PolicyReplica,
} from "./helpers.js";

for (const backend of BACKENDS) {
  describe.skipIf(!backend.available)(`Policy service on ${backend.name}`, () => {
    let db: { database: Database; drop(): Promise<void> };
    let replica: PolicyReplica;
    let logs: ReturnType<typeof captureLogger>;

    beforeAll(async () => {
      db = await backend.open();
      logs = captureLogger();
      replica = await startPolicy(db.database, { ORCA_POLICY_SENSITIVE_FIELDS: "ip,context.user.email", ORCA_POLICY_MAX_BUNDLE_BYTES: String(1024 * 1024) }, logs.logger);
    });
    afterAll(async () => {
      await replica?.harness.stop();
      await db?.drop();
    });

    it("activates the shipped defaults at start and makes real decisions with them", async () => {
      const { client } = replica;
      const list = await client.listBundles({ name: "default" });
      expect(list.bundles.map((b) => [b.version, b.status, b.engine, b.createdBy])).toEqual([[1n, BundleStatus.ACTIVE, Engine.CEDAR, "defaults:services/policy/defaults"]]);
      const allow = await client.decide({ tenant: "trusted", action: "read", input: { ip_reputation: 90 } });
      expect(allow.result).toMatchObject({ decision: Decision.ALLOW, bundleName: "default", bundleVersion: 1n, cached: false, reasons: ["trusted tenant may read"] });
      expect(allow.result!.decisionId).toMatch(/^[0-9a-f-]{36}$/);
      const tarpit = await client.decide({ tenant: "trusted", action: "read", input: { ip_reputation: 30 } });
      expect(tarpit.result?.decision).toBe(Decision.TARPIT);
      expect(tarpit.result?.tarpitDelay?.seconds).toBe(2n);
      const divert = await client.decide({ tenant: "trusted", action: "read", input: { canary: true } });
      expect(divert.result).toMatchObject({ decision: Decision.DIVERT, divertTarget: "canary" });
      const deny = await client.decide({ tenant: "acme", action: "read" });
      expect(deny.result).toMatchObject({ decision: Decision.DENY, reasons: ["no matching permit"] });
      const start = await client.decide({ tenant: "acme", action: "start", principal: 'User::"alice"', resource: 'Workflow::"billing"' });
      expect(start.result?.decision).toBe(Decision.ALLOW);
    });

    it("writes a decision log line per decision, with its id and sensitive fields masked", async () => {
      const { result } = await replica.client.decide({ tenant: "trusted", action: "read", input: { ip: "10.1.2.3", context: { user: { email: "a@b.c", id: 7 } } }, bypassCache: true });
      const line = logs.lines.find((l) => l.decision_id === result!.decisionId);
      expect(line).toMatchObject({ event: "policy.decision", decision: "allow", bundle: "default", version: "1", cached: false });
      expect(line!.input).toEqual({ tenant: "trusted", action: "read", ip: "***", context: { user: { email: "***", id: 7 } } });
      expect(JSON.stringify(logs.lines)).not.toContain("10.1.2.3");
    });

    it("stores versions, treats identical puts as the same version, and runs BatchDecide in order", async () => {
      const { client } = replica;
      const bundle = { tenant: "t1", name: "edge", engine: Engine.CEDAR, content: simpleCedar("read"), tests: [testCase("reads", { action: "read" }, Decision.ALLOW)] };
      const first = await client.putBundle({ bundle, activate: true });
      expect(first).toMatchObject({ created: true, bundle: { version: 1n, status: BundleStatus.ACTIVE } });
      expect(first.bundle!.createdBy).not.toBe(""); // the caller's identity
      expect(first.bundle!.digest).toMatch(/^[0-9a-f]{64}$/);
      const again = await client.putBundle({ bundle, activate: true });
      expect(again).toMatchObject({ created: false, bundle: { version: 1n, status: BundleStatus.ACTIVE, digest: first.bundle!.digest } });
      const batch = await client.batchDecide({
        requests: [
          { bundleTenant: "t1", bundle: "edge", action: "read" },
          { bundleTenant: "t1", bundle: "edge", action: "write" },
          { action: "start" },
        ],
      });
      expect(batch.results.map((r) => [r.decision, r.bundleName])).toEqual([
        [Decision.ALLOW, "edge"],
        [Decision.DENY, "edge"],
        [Decision.ALLOW, "default"],
      ]);
      // All or nothing: one invalid request fails the call, naming its index.
      await expectCode(client.batchDecide({ requests: [{ action: "read" }, { bundle: "Bad Name" }] }), Code.InvalidArgument, /^requests\[1\]\.bundle/);
      await expectCode(client.batchDecide({ requests: [] }), Code.InvalidArgument, /^requests/);
      // A tenant's bundles are separate from another tenant's.
      await expectCode(client.decide({ bundleTenant: "t2", bundle: "edge", action: "read" }), Code.FailedPrecondition, /tenant "t2"/);
    });

    it("rejects a bundle whose tests fail, stores its failures, and keeps the active bundle serving", async () => {
      const { client } = replica;
      const before = await client.decide({ tenant: "trusted", action: "read", bypassCache: true });
      const bad = await client.putBundle({
        bundle: {
          name: "default",
          engine: Engine.CEDAR,
          content: simpleCedar("write"),
          tests: [testCase("trusted read still allowed", { tenant: "trusted", action: "read" }, Decision.ALLOW), testCase("writes", { action: "write" }, Decision.ALLOW)],
        },
        activate: true,
      });
      expect(bad.created).toBe(true);
      expect(bad.bundle?.status).toBe(BundleStatus.REJECTED);
      expect(bad.bundle?.failures).toHaveLength(1);
      expect(bad.bundle?.failures[0]).toMatchObject({ stage: FailureStage.TEST, testName: "trusted read still allowed", expected: Decision.ALLOW, actual: Decision.DENY });
      expect(bad.bundle?.failures[0]?.message).toMatch(/^expected ALLOW, got DENY/);
      const after = await client.decide({ tenant: "trusted", action: "read", bypassCache: true });
      expect([after.result?.decision, after.result?.bundleVersion]).toEqual([before.result?.decision, before.result?.bundleVersion]);
      await expectCode(client.activateBundle({ name: "default", version: bad.bundle!.version }), Code.FailedPrecondition, /REJECTED/);
      const stored = await client.getBundle({ name: "default", version: bad.bundle!.version });
      expect(stored.bundle?.failures[0]?.testName).toBe("trusted read still allowed");
      expect(Buffer.from(stored.bundle!.content).toString()).toContain("write");
      expect((await client.getBundle({ name: "default" })).bundle?.version).toBe(1n);
    });

    it("ValidateBundle is a dry run that stores nothing", async () => {
      const { client } = replica;
      const count = (await client.listBundles({})).bundles.length;
      const ok = await client.validateBundle({ bundle: { engine: Engine.CEDAR, content: DEFAULT_CEDAR, cedarSchema: DEFAULT_SCHEMA, tests: [testCase("x", { tenant: "trusted", action: "read" }, Decision.ALLOW)] } });
      expect(ok).toMatchObject({ valid: true, testsRun: 1, testsPassed: 1, failures: [] });
      const syntax = await client.validateBundle({ bundle: { engine: Engine.CEDAR, content: Buffer.from("permit(") } });
      expect(syntax.valid).toBe(false);
      expect(syntax.failures[0]?.stage).toBe(FailureStage.VALIDATE);
      const opa = await client.validateBundle({ bundle: { engine: Engine.OPA_WASM, content: await fixtureBundle() } });
      expect(opa.valid).toBe(true);
      expect([...opa.entrypoints].sort()).toContain("orca/decision");
      expect((await client.listBundles({})).bundles.length).toBe(count);
    });

    it("activates and rolls back through the activation history, clearing the cache each time", async () => {
      const { client } = replica;
      const put = (action: string) => client.putBundle({ bundle: { tenant: "t3", name: "gate", engine: Engine.CEDAR, content: simpleCedar(action) } });
      const v1 = (await put("read")).bundle!.version;
      const v2 = (await put("write")).bundle!.version;
      const v3 = (await put("delete")).bundle!.version;
      expect([v1, v2, v3]).toEqual([1n, 2n, 3n]);
      await expectCode(client.decide({ bundleTenant: "t3", bundle: "gate", action: "read" }), Code.FailedPrecondition, /has no active version/);
      await expectCode(client.rollback({ tenant: "t3", name: "gate" }), Code.FailedPrecondition, /no active version/);
      expect((await client.activateBundle({ tenant: "t3", name: "gate", version: 1n })).previousVersion).toBe(0n);
      const decide = (action: string) => client.decide({ bundleTenant: "t3", bundle: "gate", action });
      expect((await decide("read")).result?.decision).toBe(Decision.ALLOW);
      expect((await decide("read")).result?.cached).toBe(true);
      const clearsBefore = (await client.getStats({})).decisionCache!.clears;
      const a2 = await client.activateBundle({ tenant: "t3", name: "gate", version: 2n, expectedActiveVersion: 1n });
      expect(a2.previousVersion).toBe(1n);
      expect((await client.getStats({})).decisionCache!.clears).toBe(clearsBefore + 1n);
      const afterSwitch = await decide("write");
      expect(afterSwitch.result).toMatchObject({ decision: Decision.ALLOW, bundleVersion: 2n, cached: false });
      await expectCode(client.activateBundle({ tenant: "t3", name: "gate", version: 3n, expectedActiveVersion: 1n }), Code.Aborted);
      await client.activateBundle({ tenant: "t3", name: "gate", version: 3n });
      // Activating the active version changes nothing.
      expect((await client.activateBundle({ tenant: "t3", name: "gate", version: 3n })).previousVersion).toBe(3n);
      const r1 = await client.rollback({ tenant: "t3", name: "gate", expectedActiveVersion: 3n });
      expect([r1.bundle?.version, r1.rolledBackVersion, r1.bundle?.status]).toEqual([2n, 3n, BundleStatus.ACTIVE]);
      expect((await decide("write")).result).toMatchObject({ bundleVersion: 2n, decision: Decision.ALLOW, cached: false });
      await expectCode(client.rollback({ tenant: "t3", name: "gate", expectedActiveVersion: 3n }), Code.Aborted);
      const r2 = await client.rollback({ tenant: "t3", name: "gate" });
      expect([r2.bundle?.version, r2.rolledBackVersion]).toEqual([1n, 2n]);
      await expectCode(client.rollback({ tenant: "t3", name: "gate" }), Code.FailedPrecondition, /no earlier activation/);
      const statuses = (await client.listBundles({ tenant: "t3", name: "gate" })).bundles.map((b) => [b.version, b.status]);
      expect(statuses).toEqual([
        [3n, BundleStatus.RETIRED],
        [2n, BundleStatus.RETIRED],
        [1n, BundleStatus.ACTIVE],
      ]);
      // Pagination and status filters.
      const page1 = await client.listBundles({ tenant: "t3", pageSize: 2 });
      expect(page1.bundles.map((b) => b.version)).toEqual([3n, 2n]);
      const page2 = await client.listBundles({ tenant: "t3", pageSize: 2, pageToken: page1.nextPageToken });
      expect([page2.bundles.map((b) => b.version), page2.nextPageToken]).toEqual([[1n], ""]);
      await expectCode(client.listBundles({ tenant: "t3", name: "gate", pageToken: page1.nextPageToken }), Code.InvalidArgument, /^page_token/);
      expect((await client.listBundles({ tenant: "t3", statuses: [BundleStatus.ACTIVE] })).bundles.map((b) => b.version)).toEqual([1n]);
    });

    it("answers repeated inputs from the decision cache, normalizing key order, and counts hits", async () => {
      const { client } = replica;
      const s0 = (await client.getStats({})).decisionCache!;
      const a = await client.decide({ input: { tenant: "trusted", action: "read", ip_reputation: 77, z: { b: 1, a: 2 } } });
      const b = await client.decide({ input: { z: { a: 2, b: 1 }, ip_reputation: 77, action: "read", tenant: "trusted" } });
      expect([a.result?.cached, b.result?.cached]).toEqual([false, true]);
      expect(b.result?.decisionId).not.toBe(a.result?.decisionId);
      const bypass = await client.decide({ input: { tenant: "trusted", action: "read", ip_reputation: 77, z: { b: 1, a: 2 } }, bypassCache: true });
      expect(bypass.result?.cached).toBe(false);
      const s1 = (await client.getStats({})).decisionCache!;
      expect(s1.hits - s0.hits).toBe(1n);
      expect(s1.misses - s0.misses).toBe(1n);
      expect(s1.hitRatio).toBeGreaterThan(0);
      expect(s1.maxEntries).toBe(10000n);
      // The same figures on the admin port's /metrics (the harness keeps the port private).
      const adminPort = (replica.harness.server as unknown as { endpoints: { adminPort: number } }).endpoints.adminPort;
      const metrics = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
      expect(metrics).toMatch(/orca_policy_decision_cache_hit_ratio\{[^}]*\} 0\.\d*[1-9]/);
      expect(metrics).toMatch(/orca_policy_decision_cache_lookups_total\{result="hit"[^}]*\} [1-9]/);
      expect(metrics).toMatch(/orca_policy_decisions_total\{decision="allow",cached="true"[^}]*\} [1-9]/);
    });

    it("evaluates OPA wasm bundles (ABI test fixture) through the same RPCs", async () => {
      const { client } = replica;
      const put = await client.putBundle({
        bundle: {
          tenant: "t4",
          name: "opa-edge",
          engine: Engine.OPA_WASM,
          content: await fixtureBundle(),
          tests: [testCase("trusted", { tenant: "trusted" }, Decision.ALLOW), testCase("canary", { route: "canary" }, Decision.DIVERT, "canary")],
        },
        activate: true,
      });
      expect(put.bundle?.status).toBe(BundleStatus.ACTIVE);
      expect(put.bundle?.entrypoint).toBe("");
      const d = (input: Record<string, string>) => client.decide({ bundleTenant: "t4", bundle: "opa-edge", input, bypassCache: true });
      expect((await d({ tenant: "trusted" })).result).toMatchObject({ decision: Decision.ALLOW, reasons: ["trusted tenant"], bundleVersion: 1n });
      expect((await d({ risk: "slow" })).result?.tarpitDelay).toMatchObject({ seconds: 1n, nanos: 500_000_000 });
      const err = (await d({ mode: "broken" })).result;
      expect(err?.decision).toBe(Decision.DENY);
      expect(err?.reasons[0]).toMatch(/^evaluation error:/);
      const stats = await client.getStats({});
      expect(stats.evaluationErrors).toBeGreaterThan(0n);
      // A malformed OPA bundle is stored REJECTED with a LOAD failure; the active version keeps serving.
      const broken = await client.putBundle({ bundle: { tenant: "t4", name: "opa-edge", engine: Engine.OPA_WASM, content: Buffer.from("not a tarball at all") }, activate: true });
      expect(broken.bundle).toMatchObject({ status: BundleStatus.REJECTED, version: 2n });
      expect(broken.bundle?.failures[0]?.stage).toBe(FailureStage.LOAD);
      expect((await d({ tenant: "trusted" })).result).toMatchObject({ decision: Decision.ALLOW, bundleVersion: 1n });
      const unknownEntry = await client.putBundle({ bundle: { tenant: "t4", name: "opa-edge", engine: Engine.OPA_WASM, content: await fixtureBundle(), entrypoint: "nope/nope" } });
      expect(unknownEntry.bundle?.status).toBe(BundleStatus.REJECTED);
      expect(unknownEntry.bundle?.failures[0]).toMatchObject({ stage: FailureStage.VALIDATE, location: "entrypoint" });
    });

    it("answers bad input with clear errors and leaves stored state and the active bundle untouched", async () => {
      const { client } = replica;
      const snapshot = async () => JSON.stringify((await client.listBundles({ tenant: "", pageSize: 1000 })).bundles.map((b) => [b.name, String(b.version), b.status]));
      const before = await snapshot();
      const long = "x".repeat(1025);
      await expectCode(client.decide({ bundle: "Default!" }), Code.InvalidArgument, /^bundle:/);
      await expectCode(client.decide({ tenant: long }), Code.InvalidArgument, /^tenant:/);
      await expectCode(client.decide({ tenant: "a", input: { tenant: "b" } }), Code.InvalidArgument, /^tenant: conflicts/);
      let deep: Record<string, unknown> = { leaf: 1 };
      for (let i = 0; i < 40; i++) deep = { d: deep };
      await expectCode(client.decide({ input: deep as never }), Code.InvalidArgument, /^input: nests deeper than 32/);
      await expectCode(client.decide({ input: { blob: "y".repeat(70 * 1024) } }), Code.ResourceExhausted, /more than the maximum of 65536 bytes/);
      await expectCode(client.decide({ bundle: "nothing-here" }), Code.FailedPrecondition, /"nothing-here" of the default tenant has no active version/);
      await expectCode(client.getBundle({ name: "nothing-here" }), Code.NotFound);
      await expectCode(client.getBundle({ name: "default", version: 99n }), Code.NotFound, /no version 99/);
      await expectCode(client.activateBundle({ name: "default", version: 99n }), Code.NotFound);
      await expectCode(client.activateBundle({ name: "nothing-here", version: 1n }), Code.NotFound);
      await expectCode(client.activateBundle({ name: "default", version: 0n }), Code.InvalidArgument, /^version/);
      await expectCode(client.rollback({ name: "nothing-here" }), Code.NotFound);
      await expectCode(client.putBundle({ bundle: { name: "", engine: Engine.CEDAR, content: simpleCedar("x") } }), Code.InvalidArgument, /^bundle\.name/);
      await expectCode(client.putBundle({ bundle: { name: "Upper", engine: Engine.CEDAR, content: simpleCedar("x") } }), Code.InvalidArgument, /^bundle\.name/);
      await expectCode(client.putBundle({ bundle: { name: "x", content: simpleCedar("x") } }), Code.InvalidArgument, /^bundle\.engine/);
      await expectCode(client.putBundle({ bundle: { name: "x", engine: Engine.CEDAR } }), Code.InvalidArgument, /^bundle\.content/);
      await expectCode(client.putBundle({ bundle: { name: "x", engine: Engine.OPA_WASM, content: Buffer.from("x"), cedarSchema: "entity A;" } }), Code.InvalidArgument, /^bundle\.cedar_schema/);
      await expectCode(
        client.putBundle({ bundle: { name: "x", engine: Engine.CEDAR, content: simpleCedar("x"), tests: [testCase("a", {}, Decision.ALLOW), testCase("a", {}, Decision.DENY)] } }),
        Code.InvalidArgument,
        /^bundle\.tests\[1\]\.name/,
      );
      await expectCode(client.putBundle({ bundle: { name: "x", engine: Engine.CEDAR, content: simpleCedar("x"), tests: [testCase("a", {}, Decision.UNSPECIFIED)] } }), Code.InvalidArgument, /expected_decision/);
      await expectCode(client.putBundle({ bundle: { name: "x", engine: Engine.CEDAR, content: Buffer.alloc(1024 * 1024 + 1, 32) } }), Code.ResourceExhausted, /^bundle\.content is 1048577 bytes/);
      await expectCode(client.setShadow({ name: "default", version: 1n, sampleRate: 1.5 }), Code.InvalidArgument, /^sample_rate/);
      await expectCode(client.benchmarkPolicy({ iterations: 100_001 }), Code.InvalidArgument, /^iterations/);
      await expectCode(client.getShadowReport({ name: "nothing-here" }), Code.NotFound);
      expect(await snapshot()).toBe(before);
      expect((await client.decide({ tenant: "trusted", action: "read", bypassCache: true })).result).toMatchObject({ decision: Decision.ALLOW, bundleVersion: 1n });
    });

    it("shadows a candidate off the response path and reports agreements and disagreements", async () => {
      const { client } = replica;
      const bundle = (content: Uint8Array) => ({ tenant: "t5", name: "shadowed", engine: Engine.CEDAR, content });
      await client.putBundle({ bundle: bundle(DEFAULT_CEDAR), activate: true });
      // The candidate also lets "acme" read: it disagrees exactly on acme reads.
      const candidate = Buffer.concat([DEFAULT_CEDAR, Buffer.from('\n@id("acme-read") permit (principal, action == Action::"read", resource) when { context.tenant == "acme" };')]);
      const v2 = (await client.putBundle({ bundle: bundle(candidate) })).bundle!.version;
      await expectCode(client.getShadowReport({ tenant: "t5", name: "shadowed" }), Code.FailedPrecondition, /no shadow/);
      await expectCode(client.setShadow({ tenant: "t5", name: "shadowed", version: 1n }), Code.FailedPrecondition, /active version/);
      const set = await client.setShadow({ tenant: "t5", name: "shadowed", version: v2 });
      expect(set.report).toMatchObject({ activeVersion: 1n, shadowVersion: 2n, sampleRate: 1, evaluated: 0n });
      const decide = (tenant: string, extra: Record<string, unknown> = {}) =>
        client.decide({ bundleTenant: "t5", bundle: "shadowed", tenant, action: "read", input: { ip: "192.0.2.1", ...extra } as never });
      for (let i = 0; i < 3; i++) expect((await decide("trusted", { n: i })).result?.decision).toBe(Decision.ALLOW);
      for (let i = 0; i < 2; i++) expect((await decide("acme", { n: i })).result?.decision).toBe(Decision.DENY); // the caller gets the active decision
      const report = (await client.getShadowReport({ tenant: "t5", name: "shadowed" })).report!;
      expect([report.evaluated, report.agreements, report.disagreements, report.shadowErrors]).toEqual([5n, 3n, 2n, 0n]);
      const pairs = report.pairs.map((p) => [p.active, p.shadow, p.count]);
      expect(pairs).toEqual(
        expect.arrayContaining([
          [Decision.ALLOW, Decision.ALLOW, 3n],
          [Decision.DENY, Decision.ALLOW, 2n],
        ]),
      );
      expect(report.disagreementExamples).toHaveLength(2);
      expect(report.disagreementExamples[0]).toMatchObject({ active: { decision: Decision.DENY, bundleVersion: 1n }, shadow: { decision: Decision.ALLOW, bundleVersion: 2n } });
      expect(report.disagreementExamples[0]?.input?.ip).toBe("***");
      expect(report.agreementExamples).toHaveLength(3);
      // Repeating the same SetShadow keeps the report; an activation starts a new one.
      expect((await client.setShadow({ tenant: "t5", name: "shadowed", version: v2 })).report?.evaluated).toBe(5n);
      const v3 = (await client.putBundle({ bundle: bundle(simpleCedar("read")) })).bundle!.version;
      await client.setShadow({ tenant: "t5", name: "shadowed", version: v3 });
      expect((await client.getShadowReport({ tenant: "t5", name: "shadowed" })).report?.evaluated).toBe(0n);
      // Clearing it.
      expect((await client.setShadow({ tenant: "t5", name: "shadowed", version: 0n })).report).toBeUndefined();
      await expectCode(client.getShadowReport({ tenant: "t5", name: "shadowed" }), Code.FailedPrecondition);
    });

    it("benchmarks a version in-process", async () => {
      const r = await replica.client.benchmarkPolicy({ input: { tenant: "trusted", action: "read", ip_reputation: 30 }, iterations: 300, warmupIterations: 10 });
      expect(r).toMatchObject({ engine: Engine.CEDAR, version: 1n, iterations: 300, result: { decision: Decision.TARPIT, decisionId: "", cached: false } });
      const ns = (d?: { seconds: bigint; nanos: number }) => Number(d!.seconds) * 1e9 + d!.nanos;
      expect(ns(r.p50)).toBeGreaterThan(0);
      expect(ns(r.p99)).toBeGreaterThanOrEqual(ns(r.p50));
      expect(ns(r.max)).toBeGreaterThanOrEqual(ns(r.p99));
      expect(r.evaluationsPerSecond).toBeGreaterThan(0);
      await expectCode(replica.client.benchmarkPolicy({ name: "default", version: 2n }), Code.FailedPrecondition, /REJECTED/);
    });
  });
}
