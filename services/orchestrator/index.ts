import { OrchestratorService } from "../../gen/orca/orchestrator/v1/orchestrator_pb.js";
import type { ServiceContext, ServiceInstance, ServiceModule } from "../kit/service-module.js";
import { readOrchestratorConfig, type OrchestratorConfig } from "./config.js";
import { meshLockProvider, meshPolicyGate, meshResultCache, type LockProvider, type PolicyGate, type ResultCache } from "./deps.js";
import { Engine } from "./engine.js";
import { orchestratorHandlers, RunEventHub } from "./handlers.js";
import { OrchestratorMetrics } from "./metrics.js";
import { orchestratorMigrations } from "./migrations.js";
import { grpcPlugin } from "./plugins/grpc.js";
import { httpPlugin } from "./plugins/http.js";
import { shellPlugin } from "./plugins/shell.js";
import { sqlPlugin } from "./plugins/sql.js";
import type { Plugin } from "./plugins/types.js";
import { CHANNEL_EVENTS, OrchestratorStore } from "./store.js";

/**
 * What can be swapped when the service is assembled: tests and the benchmark add plugins
 * (e.g. a no-op) and pass in-memory fakes of Policy/Lock/Cache; production uses none of it.
 */
export interface OrchestratorOverrides {
  extraPlugins?: Plugin[];
  policy?: (ctx: ServiceContext) => PolicyGate;
  locks?: (ctx: ServiceContext) => LockProvider;
  cache?: (ctx: ServiceContext) => ResultCache;
  /** Environment for readOrchestratorConfig (default process.env). */
  env?: Record<string, string | undefined>;
}

export interface OrchestratorInstance extends ServiceInstance {
  store: OrchestratorStore;
  engine: Engine;
  config: OrchestratorConfig;
}

export function createOrchestratorModule(overrides: OrchestratorOverrides = {}): ServiceModule & { create(ctx: ServiceContext): Promise<OrchestratorInstance> } {
  return {
    name: "orchestrator",
    descriptor: OrchestratorService,
    schema: "orca_orchestrator",
    migrations: orchestratorMigrations,
    async create(ctx) {
      const config = readOrchestratorConfig(overrides.env ?? process.env);
      const sql = sqlPlugin(config.sqlDatabases, config.sqlStatementTimeoutMs);
      const plugins = new Map<string, Plugin>();
      for (const p of [httpPlugin(config.httpAllowedHosts), grpcPlugin(ctx.clients, config.grpcAllowedTargets), shellPlugin(config.shellAllowedCommands, config.shellMaxOutputBytes), sql, ...(overrides.extraPlugins ?? [])]) {
        plugins.set(p.name, p);
      }
      const store = new OrchestratorStore(ctx.database.db, { plugins, abortGraceMs: config.abortGraceMs, replica: config.replica });
      const metrics = new OrchestratorMetrics(ctx.metricsRegistry);
      const policy = overrides.policy?.(ctx) ?? meshPolicyGate(ctx.clients, config.policyBundle);
      const locks = overrides.locks?.(ctx) ?? meshLockProvider(ctx.clients, ctx.logger);
      const cache = overrides.cache?.(ctx) ?? meshResultCache(ctx.clients, config.cacheNamespace, ctx.logger);
      const engine = new Engine({ store, database: ctx.database, config, plugins, locks, cache, logger: ctx.logger, metrics });
      const events = new RunEventHub();
      const unlisten = await ctx.database.listen(CHANNEL_EVENTS, (runId) => events.notify(runId));
      await engine.start();
      return {
        impl: orchestratorHandlers({ store, engine, policy, plugins, config, events }),
        store,
        engine,
        config,
        readiness: async () => {
          try {
            await ctx.database.ping();
            return undefined;
          } catch (error) {
            return `database unreachable: ${(error as Error).message}`;
          }
        },
        close: async () => {
          await engine.stop();
          await unlisten();
          await sql.close();
        },
      };
    },
  };
}

/** The Orchestrator: workflow definitions, durable runs and task queues (issue #6). */
export const orchestratorService: ServiceModule = createOrchestratorModule();
