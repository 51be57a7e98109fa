/**
 * The typed-client entry point for users' TypeScript services:
 *   import { createOrcaClient } from "@orca/mesh/clients";
 *   import { LockService } from "@orca/mesh/gen/orca/lock/v1/lock_pb.js";
 */
export { createOrcaClient, createOrcaTransport, propagationInterceptor, resilienceInterceptor, type ClientOptions } from "./factory.js";
export { MeshClients } from "./mesh-clients.js";
export { withLock, LeaseLostError, type WithLockOptions, type LockContext } from "../../lock/client.js";
export { CacheHelper, NearCache, createCacheClient, type CacheClient } from "../../cache/client.js";
export { WebhookVerifier, verifyWebhookSignature, parseSignatureHeader, type WebhookVerification } from "../../monitor/verify-webhook.js";
