import { MonitorService } from "../../gen/orca/monitor/v1/monitor_pb.js";
import { SERVICE_NAMES } from "../kit/catalog.js";
import type { ServiceContext, ServiceInstance, ServiceModule } from "../kit/service-module.js";
import { readMonitorConfig } from "./config.js";
import { monitorHandlers } from "./handlers.js";
import { monitorMigrations } from "./migrations.js";
import { MonitorEngine, type TargetInput } from "./monitor.js";
import { orchestratorRecoveryStarter, type RecoveryStarter } from "./recovery.js";
import { defaultSecretSource, type SecretSource } from "./secrets.js";

/**
 * The mesh's own six services as builtin targets (tenant "default", names `orca-<service>`),
 * from the kit config's service URLs: gRPC health of the whole server (service ""), which is
 * what the kit flips to NOT_SERVING first when a service drains on SIGTERM.
 */
export function builtinTargets(ctx: Pick<ServiceContext, "config">, intervalMs: number, timeoutMs: number): TargetInput[] {
  return SERVICE_NAMES.map((name) => {
    const url = new URL(ctx.config.services[name].url);
    const port = url.port || (url.protocol === "https:" ? "443" : "80");
    return {
      tenant: "default",
      name: `orca-${name}`,
      probe: { kind: "grpc", address: `${url.hostname}:${port}`, service: "", tls: url.protocol === "https:", url: "", expectedStatus: 0, intervalMs, timeoutMs },
      labels: { service: name, component: "orca" },
      builtin: true,
    };
  });
}

/** Overrides for tests: an in-memory recovery fake and a secret source. */
export interface MonitorOverrides {
  recovery?: RecoveryStarter;
  secrets?: SecretSource;
}

export function createMonitorModule(overrides: MonitorOverrides = {}): ServiceModule {
  return {
    name: "monitor",
    descriptor: MonitorService,
    schema: "orca_monitor",
    migrations: monitorMigrations,
    async create(ctx) {
      const config = readMonitorConfig(process.env);
      const secrets = overrides.secrets ?? defaultSecretSource();
      const engine = new MonitorEngine({
        database: ctx.database,
        config,
        logger: ctx.logger.child({ component: "monitor" }),
        recovery: overrides.recovery ?? orchestratorRecoveryStarter(ctx.clients, ctx.config.clientTimeoutMs),
        secrets,
      });
      const builtins = config.builtinTargets ? builtinTargets(ctx, config.defaultIntervalMs, Math.min(config.defaultTimeoutMs, config.defaultIntervalMs)) : [];
      await engine.start(builtins);
      return {
        impl: monitorHandlers(engine, config, secrets) as unknown as ServiceInstance["impl"],
        readiness: async () => {
          try {
            await ctx.database.ping();
            return undefined;
          } catch (error) {
            return `monitor: database unreachable: ${error instanceof Error ? error.message : String(error)}`;
          }
        },
        close: () => engine.close(),
      };
    },
  };
}

/** Monitor: health, anomalies, alerts, signed webhooks and recovery workflows (issue #8). */
export const monitorService: ServiceModule = createMonitorModule();
