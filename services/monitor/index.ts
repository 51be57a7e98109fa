import { MonitorService } from "../../gen/orca/monitor/v1/monitor_pb.js";
import { eventLogMigration } from "../kit/db/migrations.js";
import { unimplementedHandlers, type ServiceModule } from "../kit/service-module.js";

/** Monitor: health, anomalies, alerts and signed webhooks (issue #8). */
export const monitorService: ServiceModule = {
  name: "monitor",
  descriptor: MonitorService,
  schema: "orca_monitor",
  migrations: { "0001_events": eventLogMigration() },
  async create() {
    return { impl: unimplementedHandlers(MonitorService, "targets, alerts and webhooks arrive with issue #8") };
  },
};
