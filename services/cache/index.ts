import { CacheService } from "../../gen/orca/cache/v1/cache_pb.js";
import type { ServiceImpl } from "@connectrpc/connect";
import type { DescService } from "@bufbuild/protobuf";
import type { ServiceModule } from "../kit/service-module.js";
import { TieredCache } from "./cache.js";
import { readCacheConfig, type CacheConfig } from "./config.js";
import { cacheHandlers } from "./handlers.js";
import { SCHEMA } from "./l3.js";
import { cacheMigrations } from "./migrations.js";

/**
 * Cache: L1 memory -> L2 Redis -> L3 Postgres (issue #4). `createCacheModule` lets tests and
 * embedders pass settings (an env map or a config); the mesh uses `cacheService`, which reads
 * process.env once in create().
 */
export function createCacheModule(options: { env?: Record<string, string | undefined>; config?: CacheConfig; replicaId?: string } = {}): ServiceModule {
  return {
    name: "cache",
    descriptor: CacheService,
    schema: SCHEMA,
    migrations: cacheMigrations,
    async create(ctx) {
      const config = options.config ?? readCacheConfig(options.env ?? process.env);
      const cache = new TieredCache({
        database: ctx.database,
        redis: ctx.redis,
        config,
        logger: ctx.logger,
        registry: ctx.metricsRegistry,
        maxResponseBytes: ctx.config.maxMessageBytes,
        replicaId: options.replicaId,
      });
      await cache.start();
      return {
        impl: cacheHandlers(cache, config, ctx.config.maxMessageBytes) as unknown as Partial<ServiceImpl<DescService>>,
        // Redis is never a readiness condition (L1 and L3 answer without it); Postgres is.
        readiness: async () => {
          try {
            await ctx.database.ping();
            return undefined;
          } catch (error) {
            return `postgres (L3) unreachable: ${error instanceof Error ? error.message : String(error)}`;
          }
        },
        close: () => cache.close(),
        // Exposed for tests and operations (purge now, inspect tiers); not part of the contract.
        cache,
      } as Awaited<ReturnType<ServiceModule["create"]>> & { cache: TieredCache };
    },
  };
}

export const cacheService: ServiceModule = createCacheModule();
export { TieredCache };
