import { LockService } from "../../gen/orca/lock/v1/lock_pb.js";
import { eventLogMigration } from "../kit/db/migrations.js";
import { unimplementedHandlers, type ServiceModule } from "../kit/service-module.js";

/** Lock: fair, fenced leases on named resources (issue #3). */
export const lockService: ServiceModule = {
  name: "lock",
  descriptor: LockService,
  schema: "orca_lock",
  migrations: { "0001_events": eventLogMigration() },
  async create() {
    return { impl: unimplementedHandlers(LockService, "fenced leases and wait queues arrive with issue #3") };
  },
};
