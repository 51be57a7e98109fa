import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Engine as PolicyEngine, PolicyService, BundleStatus } from "../../gen/orca/policy/v1/policy_pb.js";
import { RunStatus, TaskStatus, OrchestratorService } from "../../gen/orca/orchestrator/v1/orchestrator_pb.js";
import type { Database } from "../../services/kit/db/database.js";
import { cacheService } from "../../services/cache/index.js";
import { lockService } from "../../services/lock/index.js";
import { policyService } from "../../services/policy/index.js";
import { createOrchestratorModule } from "../../services/orchestrator/index.js";
import { postgresAvailable } from "../support/postgres.js";
import { startServiceHarness, type ServiceHarness } from "../support/service-harness.js";
import { freshPostgres } from "./pg.js";
import { FAST_ENV, Journal, testPlugins, waitForRun } from "./support.js";

/**
 * The Orchestrator with the REAL Policy, Lock and Cache services (each started with
 * startServiceHarness on the same Postgres), called through the mesh's typed clients.
 */
const DENY_BUNDLE = `
@id("deny-forbidden")
@reason("workflow forbidden in this mesh")
forbid (principal, action, resource) when { context has workflow && context.workflow == "forbidden" };

@id("allow-start")
@reason("runs may start")
permit (principal, action == Action::"start", resource);
`;

describe.skipIf(!postgresAvailable)("orchestrator with the real Policy, Lock and Cache services", () => {
  let pg: { db: Database; close: () => Promise<void> };
  const harnesses: ServiceHarness[] = [];
  let orch: ServiceHarness;
  const journal = new Journal();
  let client: Client<typeof OrchestratorService>;
  beforeAll(async () => {
    pg = await freshPostgres();
    const env = { ORCA_SHUTDOWN_GRACE_MS: "200" };
    const policy = await startServiceHarness(policyService, { database: pg.db, env });
    const lock = await startServiceHarness(lockService, { database: pg.db, env });
    const cache = await startServiceHarness(cacheService, { database: pg.db, env });
    harnesses.push(policy, lock, cache);
    const put = await policy.client(PolicyService).putBundle({
      bundle: { name: "orchestrator-it", engine: PolicyEngine.CEDAR, content: new TextEncoder().encode(DENY_BUNDLE) },
      activate: true,
    });
    expect(BundleStatus[put.bundle!.status], JSON.stringify(put.bundle?.failures)).toBe("ACTIVE");
    const orchEnv = { ...FAST_ENV, ORCA_ORCHESTRATOR_POLICY_BUNDLE: "orchestrator-it" };
    orch = await startServiceHarness(createOrchestratorModule({ extraPlugins: testPlugins(journal), env: orchEnv }), {
      database: pg.db,
      env: orchEnv,
      peers: { policy: policy.url, lock: lock.url, cache: cache.url },
    });
    harnesses.push(orch);
    client = orch.client(OrchestratorService);
  }, 60_000);
  afterAll(async () => {
    for (const h of harnesses.reverse()) await h.stop().catch(() => undefined);
    await pg?.close();
  });

  it("StartRun asks the Policy service: ALLOW is recorded with the run, DENY is PERMISSION_DENIED with its reasons", async () => {
    await client.registerWorkflow({ name: "allowed", tasks: [{ id: "a", plugin: "test.noop" }] });
    await client.registerWorkflow({ name: "forbidden", tasks: [{ id: "a", plugin: "test.noop" }] });
    const { run, policy } = await client.startRun({ workflowName: "allowed" });
    expect(policy?.bundleName).toBe("orchestrator-it");
    expect(policy?.decisionId).not.toBe("");
    expect(RunStatus[(await waitForRun(client, run!.id)).status]).toBe("SUCCEEDED");
    try {
      await client.startRun({ workflowName: "forbidden" });
      throw new Error("expected PERMISSION_DENIED");
    } catch (error) {
      const e = ConnectError.from(error);
      expect(Code[e.code]).toBe("PermissionDenied");
      expect(e.rawMessage).toContain("workflow forbidden in this mesh");
    }
    expect((await client.listRuns({ workflowName: "forbidden" })).runs).toHaveLength(0);
  });

  it("lock-keyed tasks hold a real Lock lease: they never overlap and carry increasing fencing tokens", async () => {
    const tasks = Array.from({ length: 6 }, (_, i) => ({ id: `t${i}`, plugin: "test.sleep", config: { ms: 40 }, lockKey: '"db/" + input.db' }));
    await client.registerWorkflow({ name: "locked", maxParallelism: 6, tasks });
    const { run } = await client.startRun({ workflowName: "locked", input: { db: "main" } });
    const done = await waitForRun(client, run!.id, 30_000);
    expect(RunStatus[done.status]).toBe("SUCCEEDED");
    const j = journal.entries.filter((e) => e.runId === run!.id).sort((a, b) => a.start - b.start);
    expect(j).toHaveLength(6);
    for (let i = 1; i < j.length; i++) {
      expect(j[i].start).toBeGreaterThanOrEqual(j[i - 1].end!);
      expect(j[i].token).toBeGreaterThan(j[i - 1].token);
    }
    expect(done.tasks.every((t) => t.lockResource === "default/db/main" && t.attempts[0].fencingToken > 0n)).toBe(true);
  });

  it("results are memoized in the Cache service: the second run is CACHED", async () => {
    await client.registerWorkflow({
      name: "memo",
      tasks: [
        { id: "a", plugin: "test.noop", config: { v: "${input.v}" }, cache: { enabled: true } },
        { id: "b", plugin: "test.noop", dependsOn: ["a"], cache: { enabled: true } },
      ],
    });
    const first = await waitForRun(client, (await client.startRun({ workflowName: "memo", input: { v: 1 } })).run!.id);
    expect(first.tasks.map((t) => TaskStatus[t.status])).toEqual(["SUCCEEDED", "SUCCEEDED"]);
    await new Promise((r) => setTimeout(r, 300)); // the Set happens after commit
    const second = await waitForRun(client, (await client.startRun({ workflowName: "memo", input: { v: 1 } })).run!.id);
    expect(second.tasks.map((t) => TaskStatus[t.status])).toEqual(["CACHED", "CACHED"]);
    expect(second.tasks[1].output).toEqual(first.tasks[1].output);
  });
});
