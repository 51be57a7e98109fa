import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BundleStatus, FailureStage } from "../../gen/orca/policy/v1/policy_pb.js";
import type { Database } from "../../services/kit/db/database.js";
import { BACKENDS, Decision, Engine, eventually, simpleCedar, startPolicy, testCase, type PolicyReplica } from "./helpers.js";

for (const backend of BACKENDS) {
  describe.skipIf(!backend.available)(`Policy replicas on ${backend.name}`, () => {
    let db: { database: Database; drop(): Promise<void> };
    let a: PolicyReplica;
    let b: PolicyReplica;
    beforeAll(async () => {
      db = await backend.open();
      a = await startPolicy(db.database);
      b = await startPolicy(db.database);
    });
    afterAll(async () => {
      await a?.harness.stop();
      await b?.harness.stop();
      await db?.drop();
    });

    it("starts the defaults once and switches every replica on activation and rollback (NOTIFY)", async () => {
      expect((await b.client.listBundles({ name: "default" })).bundles).toHaveLength(1);
      const put = (action: string) => a.client.putBundle({ bundle: { tenant: "r", name: "gate", engine: Engine.CEDAR, content: simpleCedar(action) } });
      await put("read");
      await put("write");
      await a.client.activateBundle({ tenant: "r", name: "gate", version: 1n });
      const onB = () => b.client.decide({ bundleTenant: "r", bundle: "gate", action: "write" });
      // B loads the bundle lazily on its first Decide and caches the decision.
      expect((await onB()).result).toMatchObject({ decision: Decision.DENY, bundleVersion: 1n });
      expect((await onB()).result?.cached).toBe(true);
      await a.client.activateBundle({ tenant: "r", name: "gate", version: 2n });
      await eventually(async () => (await onB()).result?.bundleVersion === 2n, "replica B to serve version 2");
      expect((await onB()).result?.decision).toBe(Decision.ALLOW);
      await b.client.rollback({ tenant: "r", name: "gate" });
      await eventually(async () => (await a.client.decide({ bundleTenant: "r", bundle: "gate", action: "write" })).result?.bundleVersion === 1n, "replica A to roll back");
    });
  });

  describe.skipIf(!backend.available)(`ORCA_POLICY_DIR hot reload on ${backend.name}`, () => {
    let db: { database: Database; drop(): Promise<void> };
    let replica: PolicyReplica;
    let dir: string;
    const tests = (expected: "ALLOW" | "DENY") => JSON.stringify([{ name: "reads", input: { action: "read" }, expected_decision: expected }]);
    beforeAll(async () => {
      dir = mkdtempSync(join(tmpdir(), "orca-policy-dir-"));
      writeFileSync(join(dir, "edge.cedar"), simpleCedar("read"));
      writeFileSync(join(dir, "edge.tests.json"), tests("ALLOW"));
      db = await backend.open();
      replica = await startPolicy(db.database, { ORCA_POLICY_DIR: dir, ORCA_POLICY_DIR_DEBOUNCE_MS: "50" });
    });
    afterAll(async () => {
      await replica?.harness.stop();
      await db?.drop();
      rmSync(dir, { recursive: true, force: true });
    });

    const decide = (action: string) => replica.client.decide({ bundle: "edge", action, bypassCache: true });

    it("loads the directory at start", async () => {
      expect((await decide("read")).result).toMatchObject({ decision: Decision.ALLOW, bundleVersion: 1n });
      const v1 = (await replica.client.getBundle({ name: "edge", version: 1n })).bundle!;
      expect([v1.status, v1.createdBy, v1.tests.length]).toEqual([BundleStatus.ACTIVE, "dir:edge.cedar", 1]);
    });

    it("reloads a changed file, and a broken one never replaces the good active bundle", async () => {
      writeFileSync(join(dir, "edge.cedar"), Buffer.concat([simpleCedar("read"), Buffer.from("\n"), simpleCedar("write")]));
      await eventually(async () => (await decide("write")).result?.bundleVersion === 2n, "the changed file to become version 2");
      expect((await decide("write")).result?.decision).toBe(Decision.ALLOW);

      // A syntax error: stored as REJECTED (visible with its failures), version 2 keeps serving.
      const scans = replica.loader!.scans;
      writeFileSync(join(dir, "edge.cedar"), "permit (principal, action, resource) when {");
      await eventually(() => replica.loader!.scans > scans, "the broken file to be scanned");
      await eventually(async () => (await replica.client.listBundles({ name: "edge" })).bundles.length === 3, "the rejected version to be stored");
      const rejected = (await replica.client.getBundle({ name: "edge", version: 3n })).bundle!;
      expect(rejected.status).toBe(BundleStatus.REJECTED);
      expect(rejected.failures[0]?.stage).toBe(FailureStage.VALIDATE);
      expect((await decide("write")).result).toMatchObject({ decision: Decision.ALLOW, bundleVersion: 2n });

      // Tests that fail: rejected too.
      writeFileSync(join(dir, "edge.cedar"), simpleCedar("delete"));
      await eventually(async () => (await replica.client.listBundles({ name: "edge" })).bundles.length === 4, "the failing-tests version to be stored");
      expect((await replica.client.getBundle({ name: "edge", version: 4n })).bundle?.failures[0]).toMatchObject({ stage: FailureStage.TEST, testName: "reads" });
      expect((await decide("read")).result).toMatchObject({ decision: Decision.ALLOW, bundleVersion: 2n });

      // A file that cannot even be read as a bundle (bad tests JSON): logged, nothing stored.
      const scans2 = replica.loader!.scans;
      writeFileSync(join(dir, "edge.tests.json"), "{ not json");
      await eventually(() => replica.loader!.scans > scans2 && replica.loader!.lastErrors.length > 0, "the unreadable file to be reported");
      expect(replica.loader!.lastErrors[0]).toMatch(/edge\.tests\.json/);
      expect((await replica.client.listBundles({ name: "edge" })).bundles).toHaveLength(4);
      expect((await decide("read")).result?.bundleVersion).toBe(2n);

      // Fixed again: a good version goes live.
      writeFileSync(join(dir, "edge.cedar"), simpleCedar("read"));
      writeFileSync(join(dir, "edge.tests.json"), tests("ALLOW"));
      await eventually(async () => (await decide("read")).result?.bundleVersion === 1n, "the fixed file (identical to version 1) to be active again");
      expect((await decide("write")).result?.decision).toBe(Decision.DENY);
    });
  });
}

describe("PutBundle through the same validation as the directory", () => {
  it("test cases carry their expected divert target", async () => {
    const backend = BACKENDS[0]!;
    const db = await backend.open();
    const replica = await startPolicy(db.database, { ORCA_POLICY_LOAD_DEFAULTS: "0" });
    try {
      // Without defaults nothing is active: Decide says so, naming tenant and bundle.
      await expect(replica.client.decide({ action: "read" })).rejects.toThrow(/"default" of the default tenant has no active version/);
      const content = Buffer.from('@decision("divert") @divert_target("blue") permit (principal, action, resource);');
      const put = await replica.client.putBundle({ bundle: { name: "d", engine: Engine.CEDAR, content, tests: [testCase("goes green", {}, Decision.DIVERT, "green")] } });
      expect(put.bundle?.status).toBe(BundleStatus.REJECTED);
      expect(put.bundle?.failures[0]?.message).toMatch(/expected DIVERT to "green", got DIVERT to "blue"/);
    } finally {
      await replica.harness.stop();
      await db.drop();
    }
  });
});
