import type { DescService } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import type { Migration } from "kysely";
import type { Registry } from "prom-client";
import type { ServiceName } from "./catalog.js";
import type { MeshClients } from "./clients/mesh-clients.js";
import type { OrcaConfig } from "./config.js";
import type { Database } from "./db/database.js";
import { NotImplementedError } from "./errors.js";
import type { Redis } from "./redis.js";
import type { Logger } from "./telemetry/logger.js";

/** What a service receives at start: everything it depends on, passed in explicitly. */
export interface ServiceContext {
  config: OrcaConfig;
  logger: Logger;
  database: Database;
  /** Present only when REDIS_URL is set; every feature has an in-process fallback. */
  redis?: Redis;
  clients: MeshClients;
  /** The service's own Prometheus registry (served on its admin port); register service metrics here. */
  metricsRegistry: Registry;
}

export interface ServiceInstance {
  impl: Partial<ServiceImpl<DescService>>;
  /** Problem description when a dependency is not ready (for /readyz), else undefined. */
  readiness?: () => Promise<string | undefined>;
  /** Stops background work and releases resources; called after the server drained. */
  close?: () => Promise<void>;
}

/**
 * A service as the mesh runner sees it: its contract, its schema and migrations, and a factory
 * for its handlers. `orca up` starts all six; `orca serve <name>` starts one.
 */
export interface ServiceModule {
  name: ServiceName;
  descriptor: DescService;
  schema: string;
  migrations: Record<string, Migration>;
  create(ctx: ServiceContext): Promise<ServiceInstance>;
}

/**
 * Handlers for RPCs that a later issue implements: each answers Unimplemented with a message
 * that names the missing feature. Never a fake success.
 */
export function unimplementedHandlers(descriptor: DescService, feature: string): Partial<ServiceImpl<DescService>> {
  const impl: Record<string, () => never> = {};
  for (const method of descriptor.methods) {
    impl[method.localName] = () => {
      throw new NotImplementedError(`${descriptor.typeName}/${method.name} is not implemented yet: ${feature}`);
    };
  }
  return impl as unknown as Partial<ServiceImpl<DescService>>;
}
