import { PolicyService } from "../../gen/orca/policy/v1/policy_pb.js";
import { eventLogMigration } from "../kit/db/migrations.js";
import { unimplementedHandlers, type ServiceModule } from "../kit/service-module.js";

/** Policy: OPA and Cedar decisions from versioned bundles (issue #5). */
export const policyService: ServiceModule = {
  name: "policy",
  descriptor: PolicyService,
  schema: "orca_policy",
  migrations: { "0001_events": eventLogMigration() },
  async create() {
    return { impl: unimplementedHandlers(PolicyService, "OPA/Cedar policy bundles and decisions arrive with issue #5") };
  },
};
