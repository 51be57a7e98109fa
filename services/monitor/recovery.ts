import type { JsonObject } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { OrchestratorService } from "../../gen/orca/orchestrator/v1/orchestrator_pb.js";
import type { MeshClients } from "../kit/clients/mesh-clients.js";

/**
 * Starting recovery workflows, behind a small interface so the engine's tests can use an
 * in-memory fake. The production implementation calls the Orchestrator's StartRun through the
 * mesh client factory, always with the idempotency key `orca-alert/<alert id>`: whatever
 * happens on our side (a retry after a lost answer, two replicas racing, a restart), the
 * Orchestrator starts at most one run per alert firing.
 */
export interface RecoveryRequest {
  tenant: string;
  workflowName: string;
  workflowVersion: number;
  input: JsonObject;
  idempotencyKey: string;
}

export interface RecoveryStarter {
  /** Returns the run id (of the new run, or of the existing run for the key). */
  start(request: RecoveryRequest): Promise<string>;
}

export const recoveryKey = (alertId: string) => `orca-alert/${alertId}`;

export function orchestratorRecoveryStarter(clients: MeshClients, timeoutMs: number): RecoveryStarter {
  return {
    async start(request) {
      const client = clients.client("orchestrator", OrchestratorService);
      try {
        const response = await client.startRun(
          {
            tenant: request.tenant,
            workflowName: request.workflowName,
            workflowVersion: request.workflowVersion,
            input: request.input,
            idempotencyKey: request.idempotencyKey,
          },
          { timeoutMs },
        );
        if (!response.run?.id) throw new ConnectError("orchestrator answered StartRun without a run", Code.Internal);
        return response.run.id;
      } catch (error) {
        const ce = ConnectError.from(error);
        throw new Error(`orchestrator StartRun: ${Code[ce.code]}: ${ce.rawMessage}`);
      }
    },
  };
}
