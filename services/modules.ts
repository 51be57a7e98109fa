import type { ServiceName } from "./kit/catalog.js";
import type { ServiceModule } from "./kit/service-module.js";
import { cacheService } from "./cache/index.js";
import { lockService } from "./lock/index.js";
import { monitorService } from "./monitor/index.js";
import { orchestratorService } from "./orchestrator/index.js";
import { policyService } from "./policy/index.js";
import { schedulerService } from "./scheduler/index.js";

/** Every service module by name. Started in dependency order: callees before callers. */
export const SERVICE_MODULES: Record<ServiceName, ServiceModule> = {
  policy: policyService,
  lock: lockService,
  cache: cacheService,
  orchestrator: orchestratorService,
  scheduler: schedulerService,
  monitor: monitorService,
};
