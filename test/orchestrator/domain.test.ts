import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { compileExpression, compileTemplate, renderTemplate } from "../../services/orchestrator/cel.js";
import { buildDag, findCycle, validateDag } from "../../services/orchestrator/dag.js";
import { backoffDelayMs, decideRetry, DEFAULT_RETRY, unjitteredDelayMs } from "../../services/orchestrator/retry.js";
import { BadRequestSchema } from "../../services/orchestrator/bad-request.js";
import { openMemoryDatabase, type Database } from "../../services/kit/db/database.js";
import { readOrchestratorConfig } from "../../services/orchestrator/config.js";
import { startTestOrchestrator, type TestOrchestrator } from "./support.js";

describe("dag", () => {
  it("orders in Kahn order with declaration-order ties and reports cycles as a path", () => {
    const nodes = [
      { id: "d", dependsOn: ["b", "c"] },
      { id: "a", dependsOn: [] },
      { id: "c", dependsOn: ["a"] },
      { id: "b", dependsOn: ["a"] },
    ];
    expect(validateDag(nodes)).toEqual([]);
    const dag = buildDag(nodes);
    expect(dag.order).toEqual(["a", "c", "b", "d"]);
    expect([...dag.ancestors.get("d")!].sort()).toEqual(["a", "b", "c"]);
    expect(dag.sinks).toEqual(["d"]);
    const cyc = findCycle([{ id: "a", dependsOn: ["c"] }, { id: "b", dependsOn: ["a"] }, { id: "c", dependsOn: ["b"] }, { id: "x", dependsOn: [] }]);
    expect(cyc).toEqual(["a", "b", "c", "a"]);
    expect(validateDag([{ id: "a", dependsOn: ["a"] }])[0].description).toContain("cycle: a -> a");
    expect(validateDag([{ id: "a", dependsOn: ["zz"] }])).toEqual([{ field: "tasks[a].depends_on[0]", description: 'unknown task "zz"' }]);
    expect(validateDag([{ id: "a", dependsOn: [] }, { id: "a", dependsOn: [] }])[0].field).toBe("tasks[1].id");
  });
  it("handles a 1,000-task chain without recursion", () => {
    const nodes = Array.from({ length: 1000 }, (_, i) => ({ id: `t${i}`, dependsOn: i ? [`t${i - 1}`] : [] }));
    expect(buildDag(nodes).order[999]).toBe("t999");
    nodes[0].dependsOn = ["t999"];
    expect(findCycle(nodes)).toHaveLength(1001);
  });
});

describe("retry", () => {
  it("follows min(max, initial * m^(n-1)) * (1 - jitter*u)", () => {
    const p = { ...DEFAULT_RETRY, initialBackoffMs: 100, multiplier: 3, maxBackoffMs: 1000, jitter: 0.5 };
    expect([1, 2, 3, 4].map((n) => unjitteredDelayMs(p, n))).toEqual([100, 300, 900, 1000]);
    for (let i = 0; i < 200; i++) {
      const d = backoffDelayMs(p, 3);
      expect(d).toBeGreaterThanOrEqual(450);
      expect(d).toBeLessThanOrEqual(900);
    }
    expect(backoffDelayMs(p, 2, () => 0)).toBe(300);
    expect(decideRetry(p, 3, "x")).toMatchObject({ retry: false, reason: "exhausted" });
    expect(decideRetry({ ...p, nonRetryable: ["http.*"] }, 1, "http.status")).toMatchObject({ retry: false, reason: "non_retryable" });
    expect(decideRetry(p, 1, "cel.error")).toMatchObject({ retry: false });
    expect(decideRetry(p, 1, "x", true)).toMatchObject({ retry: false });
    expect(decideRetry(p, 1, "x").retry).toBe(true);
  });
});

describe("cel", () => {
  const vars = { input: { n: 2, name: "x" }, tasks: { a: { status: "SUCCEEDED", output: { v: [1, 2] } } }, run: { id: "r", tenant: "", workflow: "w", version: 3, priority: 0 } };
  it("compiles, finds task references, rejects unknown variables and bad syntax", () => {
    expect(compileExpression("size(tasks.a.output.v) > 1 && run.version == 3").program(vars)).toBe(true);
    expect(compileExpression('tasks["a"].status').taskRefs).toEqual(["a"]);
    expect(compileExpression("[1, 2].exists(x, x > input.n)").program(vars)).toBe(false);
    expect(() => compileExpression("foo.bar")).toThrow(/unknown variable "foo"/);
    expect(() => compileExpression("input.n >")).toThrow(/invalid CEL/);
  });
  it("renders templates: whole-string values keep their type, embedded ones become strings, $${ is literal", () => {
    expect(renderTemplate(compileTemplate("${input.n}"), vars)).toBe(2);
    expect(renderTemplate(compileTemplate("n=${input.n}, v=${tasks.a.output.v}"), vars)).toBe("n=2, v=[1,2]");
    expect(renderTemplate(compileTemplate("$${not} ${input.name}"), vars)).toBe("${not} x");
    expect(renderTemplate(compileTemplate("${ {'k': input.name} }"), vars)).toEqual({ k: "x" });
    expect(() => compileTemplate("${input.n")).toThrow(/unterminated/);
  });
});

describe("RegisterWorkflow validation (PGlite)", () => {
  let db: Database;
  let orch: TestOrchestrator;
  beforeAll(async () => {
    db = await openMemoryDatabase();
    orch = await startTestOrchestrator(db);
  });
  afterAll(async () => {
    await orch?.stop();
    await db?.close();
  });
  async function violations(req: Parameters<TestOrchestrator["client"]["registerWorkflow"]>[0]) {
    try {
      await orch.client.registerWorkflow(req);
    } catch (error) {
      const e = ConnectError.from(error);
      expect(e.code).toBe(Code.InvalidArgument);
      const detail = e.findDetails(BadRequestSchema)[0] as unknown as { fieldViolations: { field: string; description: string }[] };
      return { message: e.rawMessage, fields: detail.fieldViolations.map((v) => v.field) };
    }
    throw new Error("expected INVALID_ARGUMENT");
  }
  it("names the task and field: cycle, unknown dependency, bad CEL, plugin, queue, limits", async () => {
    const cycle = await violations({ name: "w", tasks: [{ id: "a", plugin: "test.noop", dependsOn: ["c"] }, { id: "b", plugin: "test.noop", dependsOn: ["a"] }, { id: "c", plugin: "test.noop", dependsOn: ["b"] }] });
    expect(cycle.message).toContain("cycle: a -> b -> c -> a");
    const unknown = await violations({ name: "w", tasks: [{ id: "fetch", plugin: "test.noop", dependsOn: ["fetc"] }] });
    expect(unknown.message).toBe('tasks[fetch].depends_on[0]: unknown task "fetc"');
    const cel = await violations({
      name: "w",
      tasks: [
        { id: "a", plugin: "test.noop" },
        { id: "x", plugin: "test.noop", dependsOn: ["a"], condition: "tasks.a.output ==", lockKey: "nope.k", config: { u: "${tasks.zz.output}" } },
      ],
    });
    expect(cel.fields).toEqual(["tasks[x].condition", "tasks[x].lock_key", "tasks[x].config"]);
    const notDep = await violations({ name: "w", tasks: [{ id: "a", plugin: "test.noop" }, { id: "b", plugin: "test.noop", condition: "tasks.a.status == 'SUCCEEDED'" }] });
    expect(notDep.message).toContain("not a dependency");
    const misc = await violations({
      name: "w",
      tasks: [
        { id: "Bad-Id", plugin: "test.noop" },
        { id: "p", plugin: "ftp" },
        { id: "q", plugin: "worker" },
        { id: "r", plugin: "test.noop", queue: "x" },
        { id: "s", plugin: "http", config: { url: "http://169.254.169.254/latest" } },
        { id: "t", plugin: "shell", config: { command: "rm", args: ["-rf", "/"] } },
      ],
    });
    expect(misc.fields).toEqual(["tasks[0].id", "tasks[p].plugin", "tasks[q].queue", "tasks[r].queue", "tasks[s].config.url", "tasks[t].config.command"]);
    const limits = await violations({ name: "1bad", tasks: [], maxParallelism: 5000 });
    expect(limits.fields).toEqual(["name", "tasks", "max_parallelism"]);
    const retry = await violations({ name: "w", tasks: [{ id: "a", plugin: "test.noop", retry: { maxAttempts: 101, multiplier: 0.5, jitter: 2 } }] });
    expect(retry.fields).toEqual(["tasks[a].retry.max_attempts", "tasks[a].retry.multiplier", "tasks[a].retry.jitter"]);
    // Nothing was stored.
    expect((await orch.client.listWorkflows({})).workflows).toHaveLength(0);
  });
  it("enforces the configured DAG size limit (ORCA_ORCHESTRATOR_MAX_TASKS) and rejects a bad setting", async () => {
    const small = await startTestOrchestrator(db, { env: { ORCA_ORCHESTRATOR_MAX_TASKS: "3" } });
    try {
      const chain = (n: number) => Array.from({ length: n }, (_, i) => ({ id: `t${i}`, plugin: "test.noop", dependsOn: i ? [`t${i - 1}`] : [] }));
      const error = await small.client.registerWorkflow({ name: "big", tasks: chain(4) }).then(
        () => undefined,
        (e: unknown) => ConnectError.from(e),
      );
      expect(error?.code).toBe(Code.InvalidArgument);
      expect(error?.rawMessage).toBe("tasks: at most 3 tasks (ORCA_ORCHESTRATOR_MAX_TASKS)");
      expect((await small.client.listWorkflows({})).workflows.filter((w) => w.name === "big")).toHaveLength(0);
      expect((await small.client.registerWorkflow({ name: "big", tasks: chain(3) })).created).toBe(true);
    } finally {
      await small.stop();
    }
    for (const bad of ["0", "20001", "many"]) {
      expect(() => readOrchestratorConfig({ ORCA_ORCHESTRATOR_MAX_TASKS: bad })).toThrow(/ORCA_ORCHESTRATOR_MAX_TASKS/);
    }
  });
  it("versions are immutable; an identical definition returns the latest with created = false", async () => {
    const def = { name: "v", tasks: [{ id: "a", plugin: "test.noop" }, { id: "b", plugin: "test.noop", dependsOn: ["a"] }] };
    expect((await orch.client.registerWorkflow(def)).workflow?.version).toBe(1);
    const again = await orch.client.registerWorkflow({ ...def, tasks: [...def.tasks].reverse() });
    expect([again.workflow?.version, again.created]).toEqual([1, false]);
    const v2 = await orch.client.registerWorkflow({ ...def, description: "second" });
    expect([v2.workflow?.version, v2.created]).toEqual([2, true]);
    expect((await orch.client.getWorkflow({ name: "v" })).workflow?.description).toBe("second");
    expect((await orch.client.getWorkflow({ name: "v", version: 1 })).workflow?.tasks.map((t) => t.id)).toEqual(["a", "b"]);
    await expect(orch.client.getWorkflow({ name: "v", version: 9 })).rejects.toMatchObject({ code: Code.NotFound });
    const versions = await orch.client.listWorkflows({ name: "v", pageSize: 1 });
    expect(versions.workflows[0].version).toBe(2);
    const next = await orch.client.listWorkflows({ name: "v", pageSize: 1, pageToken: versions.nextPageToken });
    expect(next.workflows[0].version).toBe(1);
    expect(next.nextPageToken).toBe("");
    await expect(orch.client.startRun({ workflowName: "nope" })).rejects.toMatchObject({ code: Code.NotFound });
    await expect(orch.client.startRun({ workflowName: "v", priority: 5000 })).rejects.toMatchObject({ code: Code.InvalidArgument });
    await expect(orch.client.getRun({ runId: "not-a-uuid" })).rejects.toMatchObject({ code: Code.InvalidArgument });
  });
});
