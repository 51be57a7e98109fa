import type { JsonObject } from "@bufbuild/protobuf";
import { ConnectError, Code } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RunStatus, TaskStatus } from "../../gen/orca/orchestrator/v1/orchestrator_pb.js";
import { openMemoryDatabase, type Database } from "../../services/kit/db/database.js";
import { startEchoServer, type EchoServerHandle } from "../kit/helpers.js";
import { startTestOrchestrator, waitForRun, type TestOrchestrator } from "./support.js";

/**
 * The grpc plugin calling a server outside the mesh that Orca has no generated code for: the
 * service is described by that server's reflection. The "external" server is a real OrcaServer
 * with the testing EchoService on its own port; the Orchestrator only knows its address.
 */
describe("grpc plugin: services outside the mesh, described by server reflection (PGlite)", () => {
  let db: Database;
  let orch: TestOrchestrator;
  let external: EchoServerHandle;
  let target: string;

  beforeAll(async () => {
    db = await openMemoryDatabase();
    external = await startEchoServer();
    target = external.url;
    orch = await startTestOrchestrator(db, { env: { ORCA_ORCHESTRATOR_GRPC_ALLOWED_TARGETS: "127.0.0.1:*" } });
  });
  afterAll(async () => {
    await orch?.stop();
    await external?.server.shutdown();
    await db?.close();
  });

  const run = async (name: string, config: JsonObject, input: JsonObject = {}) => {
    await orch.client.registerWorkflow({ name, tasks: [{ id: "call", plugin: "grpc", config, retry: { maxAttempts: 1 } }] });
    const { run: started } = await orch.client.startRun({ workflowName: name, input });
    return waitForRun(orch.client, started!.id);
  };

  it("calls a unary method with a templated request and returns the response as proto JSON", async () => {
    const payload = Buffer.from("hello from a workflow").toString("base64");
    const done = await run("echo-ok", { target, service: "orca.testing.v1.EchoService", method: "Echo", request: { payload: "${input.payload}" } }, { payload });
    expect(done.status).toBe(RunStatus.SUCCEEDED);
    expect(done.tasks[0].output).toMatchObject({ payload });
  });

  it("maps the server's error to grpc.<code>, and unknown services or methods to clear failures", async () => {
    const failed = await run("echo-fail", { target, service: "orca.testing.v1.EchoService", method: "Echo", request: { failWithCode: 7, failWithMessage: "card: declined, try later" } });
    expect(failed.status).toBe(RunStatus.FAILED);
    expect(failed.tasks[0].status).toBe(TaskStatus.FAILED);
    expect(failed.tasks[0].error).toMatchObject({ kind: "grpc.permission_denied", message: "card: declined, try later" });

    const noService = await run("no-service", { target, service: "acme.payments.v1.PaymentService", method: "Charge" });
    expect(noService.tasks[0].error?.kind).toBe("grpc.not_found");
    expect(noService.tasks[0].error?.message).toContain("acme.payments.v1.PaymentService");

    const noMethod = await run("no-method", { target, service: "orca.testing.v1.EchoService", method: "Charge" });
    expect(noMethod.tasks[0].error).toMatchObject({ kind: "grpc.unimplemented" });
    expect(noMethod.tasks[0].error?.message).toContain("has no method Charge");

    const streaming = await run("streaming", { target, service: "orca.testing.v1.EchoService", method: "EchoStream" });
    expect(streaming.tasks[0].error).toMatchObject({ kind: "config.invalid", message: "method: EchoStream is not unary" });

    const badRequest = await run("bad-request", { target, service: "orca.testing.v1.EchoService", method: "Echo", request: { nope: 1 } });
    expect(badRequest.tasks[0].error?.kind).toBe("config.invalid");
    expect(badRequest.tasks[0].error?.message).toContain("request:");
  });

  it("rejects targets off the allowlist and malformed config at registration, naming the field", async () => {
    const violations = async (config: JsonObject) => {
      const error = await orch.client.registerWorkflow({ name: "bad", tasks: [{ id: "call", plugin: "grpc", config }] }).then(
        () => undefined,
        (e: unknown) => ConnectError.from(e),
      );
      expect(error?.code).toBe(Code.InvalidArgument);
      return error!.rawMessage;
    };
    expect(await violations({ target: "http://169.254.169.254:80", service: "a.B", method: "C" })).toContain(
      'tasks[call].config.target: "169.254.169.254:80" is not on the allowlist (ORCA_ORCHESTRATOR_GRPC_ALLOWED_TARGETS)',
    );
    expect(await violations({ target: "ftp://127.0.0.1:21", service: "a.B", method: "C" })).toContain("scheme must be http (h2c) or https");
    expect(await violations({ target, service: "NoPackage", method: "C" })).toContain("config.service");
    expect(await violations({ target, service: "a.B", method: "not a name" })).toContain("config.method");
    expect((await orch.client.listWorkflows({})).workflows.map((w) => w.name)).not.toContain("bad");
  });
});
