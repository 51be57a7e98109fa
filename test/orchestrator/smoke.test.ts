import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RunStatus, TaskStatus } from "../../gen/orca/orchestrator/v1/orchestrator_pb.js";
import { openMemoryDatabase, type Database } from "../../services/kit/db/database.js";
import { startTestOrchestrator, waitForRun, type TestOrchestrator } from "./support.js";

describe("orchestrator smoke (PGlite)", () => {
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
  it("runs a diamond", async () => {
    const { workflow } = await orch.client.registerWorkflow({
      name: "diamond",
      tasks: [
        { id: "a", plugin: "test.noop", config: { x: "${input.n}" } },
        { id: "b", plugin: "test.noop", dependsOn: ["a"] },
        { id: "c", plugin: "test.noop", dependsOn: ["a"], condition: "tasks.a.output.config.x > 100.0" },
        { id: "d", plugin: "test.noop", dependsOn: ["b", "c"] },
      ],
    });
    expect(workflow?.version).toBe(1);
    const { run } = await orch.client.startRun({ workflowName: "diamond", input: { n: 5 } });
    const done = await waitForRun(orch.client, run!.id);
    expect(RunStatus[done.status]).toBe("SUCCEEDED");
    expect(done.tasks.map((t) => [t.taskId, TaskStatus[t.status]])).toEqual([["a", "SUCCEEDED"], ["b", "SUCCEEDED"], ["c", "SKIPPED"], ["d", "SUCCEEDED"]]);
  });
});
