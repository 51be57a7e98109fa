import { LockService } from "../../gen/orca/lock/v1/lock_pb.js";
import type { ServiceModule } from "../kit/service-module.js";
import { readLockConfig } from "./config.js";
import { lockHandlers } from "./handlers.js";
import { createLockMetrics } from "./metrics.js";
import { lockMigrations } from "./migrations.js";
import { LockStore } from "./store.js";

/** Lock: fair, fenced leases on named resources (issue #3). */
export const lockService: ServiceModule = {
  name: "lock",
  descriptor: LockService,
  schema: "orca_lock",
  migrations: lockMigrations,
  async create(ctx) {
    const config = readLockConfig(process.env);
    let store: LockStore | undefined;
    const metrics = createLockMetrics(ctx.metricsRegistry, () => store?.totalQueueDepth() ?? Promise.resolve(0));
    store = new LockStore(ctx.database, config, ctx.logger.child({ component: "lock" }), metrics, ctx.redis);
    await store.start();
    const started = store;
    return {
      impl: lockHandlers(started, config),
      readiness: async () => {
        try {
          await ctx.database.ping();
          return undefined;
        } catch (error) {
          return `lock: database unreachable: ${error instanceof Error ? error.message : String(error)}`;
        }
      },
      close: () => started.close(),
    };
  },
};
