import type { ServiceName } from "../catalog.js";

export const ROLES = ["admin", "operator", "viewer", "system"] as const;
export type Role = (typeof ROLES)[number];

/**
 * Who is calling. End users carry a verified JWT (roles and a tenant); services inside the mesh
 * are identified by their workload identity (Istio's SPIFFE id, or a TLS client certificate).
 */
export type Principal =
  | { kind: "user"; subject: string; roles: Role[]; tenant: string }
  | { kind: "service"; service: ServiceName; identity: string }
  | { kind: "anonymous" };

/** The tenant an end user may act for; "*" (admins only) means every tenant. */
export const ALL_TENANTS = "*";

export function principalId(principal: Principal): string {
  switch (principal.kind) {
    case "user":
      return `user:${principal.tenant}:${principal.subject}`;
    case "service":
      return `service:${principal.service}`;
    default:
      return "anonymous";
  }
}
