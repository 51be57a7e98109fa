import { CacheService } from "../../gen/orca/cache/v1/cache_pb.js";
import { eventLogMigration } from "../kit/db/migrations.js";
import { unimplementedHandlers, type ServiceModule } from "../kit/service-module.js";

/** Cache: L1 memory, L2 Redis, L3 Postgres tiers (issue #4). */
export const cacheService: ServiceModule = {
  name: "cache",
  descriptor: CacheService,
  schema: "orca_cache",
  migrations: { "0001_events": eventLogMigration() },
  async create() {
    return { impl: unimplementedHandlers(CacheService, "the three-tier cache arrives with issue #4") };
  },
};
