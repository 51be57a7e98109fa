import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { LockService } from "../../gen/orca/lock/v1/lock_pb.js";
import { OrchestratorService } from "../../gen/orca/orchestrator/v1/orchestrator_pb.js";
import { SchedulerService } from "../../gen/orca/scheduler/v1/scheduler_pb.js";
import type { ServiceContext, ServiceModule } from "../kit/service-module.js";
import { LockLeaderElector, OrchestratorRunStarter } from "./adapters.js";
import { readSchedulerConfig } from "./config.js";
import { schedulerHandlers } from "./handlers.js";
import { createSchedulerMetrics } from "./metrics.js";
import { schedulerMigrations } from "./migrations.js";
import type { LeaderElector, RunStarter } from "./ports.js";
import { Scheduler } from "./scheduler.js";

/**
 * Builds the Scheduler module. The defaults reach the Orchestrator and the Lock service through
 * ctx.clients; tests may inject other implementations of the ports (named as fakes there).
 */
export function createSchedulerModule(overrides: { runStarter?: (ctx: ServiceContext) => RunStarter; elector?: (ctx: ServiceContext) => LeaderElector } = {}): ServiceModule {
  return {
    name: "scheduler",
    descriptor: SchedulerService,
    schema: "orca_scheduler",
    migrations: schedulerMigrations,
    async create(ctx) {
      const config = readSchedulerConfig(process.env);
      const logger = ctx.logger.child({ component: "scheduler" });
      const runStarter = overrides.runStarter?.(ctx) ?? new OrchestratorRunStarter(ctx.clients.client("orchestrator", OrchestratorService));
      const elector =
        overrides.elector?.(ctx) ??
        new LockLeaderElector(ctx.clients.client("lock", LockService), { ttlMs: config.leaderTtlMs, owner: `scheduler-${hostname()}-${process.pid}-${randomBytes(3).toString("hex")}`, logger });
      const scheduler = new Scheduler(ctx.database, config, runStarter, logger, createSchedulerMetrics(ctx.metricsRegistry));
      await scheduler.start(elector);
      return {
        impl: schedulerHandlers(scheduler, config),
        readiness: async () => {
          try {
            await ctx.database.ping();
            return undefined;
          } catch (error) {
            return `scheduler: database unreachable: ${error instanceof Error ? error.message : String(error)}`;
          }
        },
        close: () => scheduler.close(),
      };
    },
  };
}

/** The Scheduler: cron schedules, exactly-once firing and event triggers (issue #7). */
export const schedulerService: ServiceModule = createSchedulerModule();
