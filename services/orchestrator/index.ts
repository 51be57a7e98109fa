import { OrchestratorService } from "../../gen/orca/orchestrator/v1/orchestrator_pb.js";
import { eventLogMigration } from "../kit/db/migrations.js";
import { unimplementedHandlers, type ServiceModule } from "../kit/service-module.js";

/** The Orchestrator: workflow definitions, durable runs and task queues (issue #6). */
export const orchestratorService: ServiceModule = {
  name: "orchestrator",
  descriptor: OrchestratorService,
  schema: "orca_orchestrator",
  migrations: { "0001_events": eventLogMigration() },
  async create() {
    return { impl: unimplementedHandlers(OrchestratorService, "durable workflow DAGs arrive with issue #6") };
  },
};
