import { PolicyService } from "../../gen/orca/policy/v1/policy_pb.js";
import type { ServiceInstance, ServiceModule } from "../kit/service-module.js";
import { readPolicyConfig } from "./config.js";
import { DecisionPoint } from "./decision-point.js";
import { policyHandlers } from "./handlers.js";
import { policyMigrations } from "./migrations.js";
import { DirectoryLoader, PolicyDomain } from "./policy.js";
import { BundleStore, SCHEMA } from "./store.js";

/**
 * Policy: OPA and Cedar decisions from versioned bundles that are tested before they go live
 * (issue #5). Start order: NOTIFY listener first (so no change is missed between loading and
 * listening), then the shipped defaults when no default bundle is active, then every active
 * bundle preloaded, then the ORCA_POLICY_DIR loader.
 */
export const policyService: ServiceModule = {
  name: "policy",
  descriptor: PolicyService,
  schema: SCHEMA,
  migrations: policyMigrations,
  async create(ctx) {
    const config = readPolicyConfig(process.env);
    const logger = ctx.logger.child({ component: "policy" });
    const store = new BundleStore(ctx.database);
    const decisions = new DecisionPoint(store, config, logger, ctx.metricsRegistry);
    const domain = new PolicyDomain(store, decisions, logger);
    const unlisten = await store.listen((change) => void decisions.refresh(change.tenant, change.name).catch(() => undefined));
    let loader: DirectoryLoader | undefined;
    try {
      if (config.loadDefaults) await domain.loadDefaults();
      await decisions.preloadActive();
      if (config.dir) {
        loader = new DirectoryLoader(domain, config.dir, config.dirDebounceMs, logger);
        await loader.start();
      }
    } catch (error) {
      await unlisten();
      await loader?.close();
      await decisions.close();
      throw error;
    }
    const instance: PolicyInstance = {
      impl: policyHandlers(domain, config),
      readiness: async () => {
        try {
          await ctx.database.ping();
          return undefined;
        } catch (error) {
          return `Postgres unreachable: ${error instanceof Error ? error.message : String(error)}`;
        }
      },
      close: async () => {
        await loader?.close();
        await unlisten();
        await decisions.close();
      },
      domain,
      loader,
    };
    return instance;
  },
};

/** The instance create() returns; `domain` and `loader` are for tests and the benchmark (not used by the runner). */
export interface PolicyInstance extends ServiceInstance {
  domain: PolicyDomain;
  loader?: DirectoryLoader;
}

export type { PolicyDomain };
