import { SchedulerService } from "../../gen/orca/scheduler/v1/scheduler_pb.js";
import { eventLogMigration } from "../kit/db/migrations.js";
import { unimplementedHandlers, type ServiceModule } from "../kit/service-module.js";

/** The Scheduler: cron schedules, exactly-once firing and event triggers (issue #7). */
export const schedulerService: ServiceModule = {
  name: "scheduler",
  descriptor: SchedulerService,
  schema: "orca_scheduler",
  migrations: { "0001_events": eventLogMigration() },
  async create() {
    return { impl: unimplementedHandlers(SchedulerService, "cron schedules and event triggers arrive with issue #7") };
  },
};
