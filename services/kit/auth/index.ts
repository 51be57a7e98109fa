import type { Interceptor } from "@connectrpc/connect";
import type { OrcaConfig } from "../config.js";
import type { Redis } from "../redis.js";
import type { Logger } from "../telemetry/logger.js";
import { createAuditLog } from "./audit.js";
import { authInterceptor, rateLimitInterceptor } from "./interceptor.js";
import { createJwtVerifier } from "./jwt.js";
import { MemoryRateLimiter, RedisRateLimiter } from "./rate-limit.js";

export { ACCESS_TABLE, PUBLIC_SERVICES } from "./access-table.js";
export { PEER_ADDRESS_HEADER, PEER_SAN_HEADER } from "./interceptor.js";

/**
 * The security interceptors for one process: authentication and authorization (JWT end users,
 * workload identities, the access table, tenant isolation), then rate limits. `defaultMode` is
 * the command's default when ORCA_AUTH is unset: `orca serve` is "on", `orca up` is "off".
 */
export async function createSecurityInterceptors(options: {
  config: OrcaConfig;
  logger: Logger;
  redis?: Redis;
  defaultMode: "on" | "off";
}): Promise<Interceptor[]> {
  const { config, logger } = options;
  const enabled = (config.auth.mode ?? options.defaultMode) === "on";
  if (!enabled) logger.warn("authentication is OFF (development mode): every call acts as an admin of all tenants; set ORCA_AUTH=on to enforce it");
  const audit = createAuditLog(logger);
  const verifyJwt = config.auth.jwt ? await createJwtVerifier(config.auth.jwt) : undefined;
  const interceptors = [authInterceptor({ enabled, verifyJwt, trustXfcc: config.auth.trustXfcc, audit })];
  const rateLimit = config.auth.rateLimit;
  if (rateLimit) {
    const limiter = options.redis ? new RedisRateLimiter(options.redis, rateLimit, logger) : new MemoryRateLimiter(rateLimit);
    interceptors.push(rateLimitInterceptor({ limiter, audit }));
  }
  return interceptors;
}
