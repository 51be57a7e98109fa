import { SERVICE_NAMES, type ServiceName } from "../kit/catalog.js";
import { createSecurityInterceptors } from "../kit/auth/index.js";
import { MeshClients } from "../kit/clients/mesh-clients.js";
import type { OrcaConfig } from "../kit/config.js";
import { openDatabase, type Database } from "../kit/db/database.js";
import { startEventLogRetention } from "../kit/db/event-log.js";
import { migrate } from "../kit/db/migrations.js";
import { openRedis, type Redis } from "../kit/redis.js";
import { OrcaServer, type Endpoints } from "../kit/server/server.js";
import type { ServiceInstance } from "../kit/service-module.js";
import type { Logger } from "../kit/telemetry/logger.js";
import { createServiceMetrics } from "../kit/telemetry/metrics.js";
import { SERVICE_MODULES } from "../modules.js";

const EVENT_PRUNE_INTERVAL_MS = 3_600_000;

export interface RunningMesh {
  endpoints: Partial<Record<ServiceName, Endpoints>>;
  servers: Partial<Record<ServiceName, OrcaServer>>;
  database: Database;
  /** Drains every server, then closes services, Redis and the database. */
  shutdown(): Promise<void>;
}

/**
 * Starts the named services in this process, sharing one database handle (required with PGlite,
 * which is a single session) and one Redis client. Services still call each other through the
 * typed clients over real gRPC on their ports, exactly as they do when deployed apart.
 */
export async function startMesh(options: {
  config: OrcaConfig;
  services: readonly ServiceName[];
  logger: Logger;
  /** Used when ORCA_AUTH is unset: `orca serve` passes "on", `orca up` "off". */
  defaultAuthMode: "on" | "off";
}): Promise<RunningMesh> {
  const { config, logger } = options;
  const database = await openDatabase({ databaseUrl: config.databaseUrl, dataDir: config.dataDir, logger });
  logger.info({ database: database.kind, location: database.location }, "database open");
  const redis: Redis | undefined = config.redisUrl ? openRedis(config.redisUrl, logger) : undefined;
  const urls = Object.fromEntries(SERVICE_NAMES.map((name) => [name, config.services[name].url])) as Record<ServiceName, string>;
  const tls = config.tls ? { caFile: config.tls.clientCaFile, certFile: config.tls.certFile, keyFile: config.tls.keyFile } : undefined;
  const clients = new MeshClients(urls, { defaultTimeoutMs: config.clientTimeoutMs, tls, fastPath: config.clientFastPath });
  const security = await createSecurityInterceptors({ config, logger, redis, defaultMode: options.defaultAuthMode });

  const servers: Partial<Record<ServiceName, OrcaServer>> = {};
  const instances: ServiceInstance[] = [];
  const endpoints: Partial<Record<ServiceName, Endpoints>> = {};
  const ordered = (Object.keys(SERVICE_MODULES) as ServiceName[]).filter((name) => options.services.includes(name));
  const retention: { stop(): void }[] = [];
  const shutdown = async () => {
    for (const pruner of retention) pruner.stop();
    await Promise.all(Object.values(servers).map((server) => server.shutdown()));
    for (const instance of instances) await instance.close?.();
    redis?.disconnect();
    await database.close();
  };
  try {
    for (const name of ordered) {
      const module = SERVICE_MODULES[name];
      const serviceLogger = logger.child({ service: name });
      const applied = await migrate(database.db, module);
      if (applied.length > 0) serviceLogger.info({ schema: module.schema, applied }, "migrations applied");
      const metrics = createServiceMetrics(name);
      const instance = await module.create({ config, logger: serviceLogger, database, redis, clients, metricsRegistry: metrics.registry });
      instances.push(instance);
      retention.push(
        startEventLogRetention({ db: database.db, schema: module.schema, retentionMs: config.eventRetentionMs, intervalMs: EVENT_PRUNE_INTERVAL_MS, logger: serviceLogger }),
      );
      const server = new OrcaServer({
        name,
        host: config.host,
        port: config.services[name].port,
        adminPort: config.services[name].adminPort,
        services: [{ service: module.descriptor, impl: instance.impl }],
        logger: serviceLogger,
        metrics,
        tls: config.tls,
        shutdownGraceMs: config.shutdownGraceMs,
        maxMessageBytes: config.maxMessageBytes,
        fastPath: config.grpcFastPath,
        interceptors: security,
        maxStreamSeconds: config.maxStreamSeconds,
        readiness: async () => {
          try {
            await database.ping();
          } catch (error) {
            return `database: ${error instanceof Error ? error.message : String(error)}`;
          }
          return instance.readiness?.();
        },
      });
      servers[name] = server;
      endpoints[name] = await server.start();
      // Ephemeral ports (0) are only known now; point the shared clients at them.
      if (config.services[name].port === 0) urls[name] = server.url;
    }
  } catch (error) {
    await shutdown().catch(() => undefined);
    throw error;
  }
  return { endpoints, servers, database, shutdown };
}
