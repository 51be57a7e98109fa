import type { DescMessage } from "@bufbuild/protobuf";
import { MethodOptions_IdempotencyLevel as IdempotencyLevel } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { callInfoKey } from "../call-scope.js";
import { checkRequestMessages } from "../interceptors.js";
import type { ServiceName } from "../catalog.js";
import { ACCESS_TABLE, PUBLIC_SERVICES, type AccessRule } from "./access-table.js";
import type { AuditLog } from "./audit.js";
import { serviceFromSpiffeId, uriFromXfcc } from "./identity.js";
import { AuthenticationError } from "./jwt.js";
import { ALL_TENANTS, principalId, type Principal } from "./principal.js";
import type { RateLimiter } from "./rate-limit.js";

/** Headers the server itself sets from the connection; any value a client sends is dropped. */
export const PEER_ADDRESS_HEADER = "x-orca-peer-address";
export const PEER_SAN_HEADER = "x-orca-peer-san";

export interface AuthInterceptorOptions {
  /** Off only by an explicit development setting: every call then acts as an admin of all tenants. */
  enabled: boolean;
  verifyJwt?: (token: string) => Promise<Extract<Principal, { kind: "user" }>>;
  trustXfcc: boolean;
  audit: AuditLog;
  table?: Record<string, AccessRule>;
}

const DEVELOPMENT_PRINCIPAL: Principal = { kind: "user", subject: "development", roles: ["admin"], tenant: ALL_TENANTS };

async function authenticate(header: Headers, options: AuthInterceptorOptions): Promise<Principal> {
  const san = header.get(PEER_SAN_HEADER) ?? (options.trustXfcc ? uriFromXfcc(header.get("x-forwarded-client-cert") ?? "") : undefined);
  const authorization = header.get("authorization");
  // An end user's token wins over the hop's identity: behind Istio every call also has an XFCC.
  if (authorization) {
    const match = /^Bearer ([A-Za-z0-9._~+/=-]+)$/.exec(authorization);
    if (!match) throw new AuthenticationError("authorization header must be `Bearer <jwt>`");
    if (!options.verifyJwt) throw new AuthenticationError("end-user tokens are not accepted: no JWT issuer is configured");
    return options.verifyJwt(match[1]);
  }
  if (san) {
    const service = serviceFromSpiffeId(san);
    if (!service) throw new AuthenticationError(`workload identity ${san} is not an Orca service`);
    return { kind: "service", service, identity: san };
  }
  return { kind: "anonymous" };
}

function allowed(principal: Principal, rule: AccessRule): boolean {
  if (principal.kind === "service") return rule.services.includes(principal.service as ServiceName);
  if (principal.kind === "user") return principal.roles.some((role) => rule.roles.includes(role));
  return false;
}

/**
 * Tenant isolation at the door: every `tenant` field of a request (top level, or inside a
 * top-level message or list of messages, such as CreateSchedule's `schedule.tenant` or
 * BatchDecide's `requests[].tenant`) must be the caller's tenant; an empty one is filled in. So
 * services that scope every query by the request tenant cannot be asked for another tenant's
 * objects. Services act for whichever tenant their own caller named; admins with tenant "*" for
 * any. Objects addressed by id alone are checked by the services (see `callerTenant`).
 */
function enforceTenant(principal: Principal, schema: DescMessage, message: Record<string, unknown>, path = "", depth = 0): string | undefined {
  if (principal.kind !== "user" || principal.tenant === ALL_TENANTS) return undefined;
  for (const field of schema.fields) {
    const name = path ? `${path}.${field.name}` : field.name;
    if (field.name === "tenant" && field.fieldKind === "scalar") {
      const requested = message[field.localName] as string;
      if (requested !== "" && requested !== principal.tenant) return `${name}: the caller acts for tenant "${principal.tenant}", not "${requested}"`;
      message[field.localName] = principal.tenant;
    } else if (field.name.endsWith("_tenant") && field.fieldKind === "scalar") {
      // Other tenant references (e.g. Decide's bundle_tenant): empty keeps its own meaning
      // (the shared default), anything else must be the caller's tenant.
      const requested = message[field.localName] as string;
      if (requested !== "" && requested !== principal.tenant) return `${name}: the caller acts for tenant "${principal.tenant}", not "${requested}"`;
    } else if (depth === 0 && field.fieldKind === "message" && !field.oneof && message[field.localName]) {
      const problem = enforceTenant(principal, field.message, message[field.localName] as Record<string, unknown>, name, depth + 1);
      if (problem) return problem;
    } else if (depth === 0 && field.fieldKind === "list" && field.listKind === "message") {
      const items = message[field.localName] as Record<string, unknown>[];
      for (let i = 0; i < items.length; i++) {
        const problem = enforceTenant(principal, field.message, items[i], `${name}[${i}]`, depth + 1);
        if (problem) return problem;
      }
    }
  }
  return undefined;
}

function deny(code: Code, message: string): ConnectError {
  return new ConnectError(message, code);
}

export function authInterceptor(options: AuthInterceptorOptions): Interceptor {
  const table = options.table ?? ACCESS_TABLE;
  return (next) => async (req) => {
    if (PUBLIC_SERVICES.has(req.service.typeName)) return next(req);
    const info = req.contextValues.get(callInfoKey);
    const method = `${req.service.typeName}/${req.method.name}`;
    const auditFields = { method, peer: req.header.get(PEER_ADDRESS_HEADER) ?? undefined, correlationId: info?.correlationId };
    let principal: Principal;
    if (!options.enabled) principal = DEVELOPMENT_PRINCIPAL;
    else {
      try {
        principal = await authenticate(req.header, options);
      } catch (error) {
        const reason = error instanceof AuthenticationError ? error.message : "invalid credentials";
        options.audit.record("authentication_failed", { ...auditFields, reason });
        throw deny(Code.Unauthenticated, reason);
      }
      if (principal.kind === "anonymous") {
        options.audit.record("authentication_failed", { ...auditFields, reason: "no credentials" });
        throw deny(Code.Unauthenticated, "this method needs a bearer token or a workload identity");
      }
      const rule = table[method];
      if (!rule || !allowed(principal, rule)) {
        options.audit.record("permission_denied", { ...auditFields, principal: principalId(principal), reason: rule ? "role or identity not allowed" : "method not in the access table" });
        throw deny(Code.PermissionDenied, `${principalId(principal)} may not call ${method}`);
      }
    }
    if (info) info.principal = principal.kind === "user" ? { subject: principal.subject, roles: principal.roles, tenant: principal.tenant } : principal.kind === "service" ? { subject: principal.identity, roles: ["system"] } : undefined;
    const checkTenant = (message: Record<string, unknown>) => {
      const problem = enforceTenant(principal, req.method.input, message);
      if (problem) {
        options.audit.record("tenant_denied", { ...auditFields, principal: principalId(principal), reason: problem });
        throw deny(Code.PermissionDenied, problem);
      }
    };
    return next(checkRequestMessages(req, checkTenant));
  };
}

/**
 * Token-bucket limits per end user (or peer address, for calls without one) and method group
 * (service x read/write), answered with
 * ResourceExhausted and a `retry-after-ms` header when exceeded.
 */
export function rateLimitInterceptor(options: { limiter: RateLimiter; audit: AuditLog }): Interceptor {
  return (next) => async (req) => {
    if (PUBLIC_SERVICES.has(req.service.typeName)) return next(req);
    const info = req.contextValues.get(callInfoKey);
    // The mesh's own services are not limited here: bulkheads and queues bound them.
    if (info?.principal?.roles.includes("system") && info.principal.tenant === undefined) return next(req);
    const who = info?.principal ? `${info.principal.tenant ?? ""}:${info.principal.subject}` : (req.header.get(PEER_ADDRESS_HEADER) ?? "unknown");
    const group = `${req.service.typeName}:${req.method.idempotency === IdempotencyLevel.NO_SIDE_EFFECTS ? "read" : "write"}`;
    const decision = await options.limiter.take(`${who}|${group}`);
    if (!decision.allowed) {
      const method = `${req.service.typeName}/${req.method.name}`;
      options.audit.record("rate_limited", { method, principal: who, peer: req.header.get(PEER_ADDRESS_HEADER) ?? undefined, reason: group, correlationId: info?.correlationId });
      throw new ConnectError(`rate limit exceeded for ${group}; retry after ${decision.retryAfterMs} ms`, Code.ResourceExhausted, {
        "retry-after-ms": String(decision.retryAfterMs),
      });
    }
    return next(req);
  };
}
