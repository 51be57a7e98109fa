import type { DescService } from "@bufbuild/protobuf";
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { SERVICE_NAMES, type ServiceName } from "../../services/kit/catalog.js";
import { createSecurityInterceptors } from "../../services/kit/auth/index.js";
import { MeshClients } from "../../services/kit/clients/mesh-clients.js";
import { readConfig, type OrcaConfig } from "../../services/kit/config.js";
import type { Database } from "../../services/kit/db/database.js";
import { migrate } from "../../services/kit/db/migrations.js";
import type { Redis } from "../../services/kit/redis.js";
import { OrcaServer } from "../../services/kit/server/server.js";
import type { ServiceInstance, ServiceModule } from "../../services/kit/service-module.js";
import { createLogger, type Logger } from "../../services/kit/telemetry/logger.js";
import { createServiceMetrics } from "../../services/kit/telemetry/metrics.js";

/**
 * Starts one service module on ephemeral ports against the given database (and Redis), the way
 * the mesh runner does: migrations, the module's factory, a real OrcaServer. Several harnesses on
 * one database are several replicas of the service.
 */
export interface ServiceHarness {
  url: string;
  /** The admin port (/healthz, /readyz, /metrics) on 127.0.0.1. */
  adminPort: number;
  server: OrcaServer;
  instance: ServiceInstance;
  config: OrcaConfig;
  client<S extends DescService>(service: S): Client<S>;
  /** Drains the server and closes the instance (not the database). */
  stop(): Promise<void>;
}

export async function startServiceHarness(
  module: ServiceModule,
  options: {
    database: Database;
    redis?: Redis;
    env?: Record<string, string>;
    logger?: Logger;
    /** ORCA_AUTH when env does not set it; services' own tests default to "off". */
    defaultAuthMode?: "on" | "off";
    /** URLs of other services this one calls. */
    peers?: Partial<Record<ServiceName, string>>;
    /**
     * Interceptors of this service's outgoing calls to its peers, e.g. one adding the
     * x-forwarded-client-cert an Istio sidecar would, for peers with ORCA_TRUST_XFCC=1.
     */
    clientInterceptors?: Interceptor[];
  },
): Promise<ServiceHarness> {
  const config = readConfig({ ...options.env, ORCA_SHUTDOWN_GRACE_MS: options.env?.ORCA_SHUTDOWN_GRACE_MS ?? "200" });
  const logger = options.logger ?? createLogger({ level: "silent" });
  const urls = Object.fromEntries(SERVICE_NAMES.map((n) => [n, options.peers?.[n] ?? config.services[n].url])) as Record<ServiceName, string>;
  await migrate(options.database.db, module);
  // Process metrics off: several harnesses in one test process would register them twice.
  const metrics = createServiceMetrics(module.name, { processMetrics: false });
  const security = await createSecurityInterceptors({ config, logger, redis: options.redis, defaultMode: options.defaultAuthMode ?? "off" });
  const instance = await module.create({
    config,
    logger,
    database: options.database,
    redis: options.redis,
    clients: new MeshClients(urls, { interceptors: options.clientInterceptors }),
    metricsRegistry: metrics.registry,
  });
  const server = new OrcaServer({
    name: module.name,
    host: "127.0.0.1",
    port: 0,
    adminPort: 0,
    services: [{ service: module.descriptor, impl: instance.impl }],
    logger,
    metrics,
    shutdownGraceMs: config.shutdownGraceMs,
    maxMessageBytes: config.maxMessageBytes,
    fastPath: config.grpcFastPath,
    interceptors: security,
    maxStreamSeconds: config.maxStreamSeconds,
    readiness: instance.readiness,
  });
  const { url, adminPort } = await server.start();
  const transport = createGrpcTransport({ baseUrl: url });
  return {
    url,
    adminPort,
    server,
    instance,
    config,
    client: (service) => createClient(service, transport),
    stop: async () => {
      await server.shutdown();
      await instance.close?.();
    },
  };
}
