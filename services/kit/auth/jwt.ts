import { readFileSync } from "node:fs";
import { createLocalJWKSet, createRemoteJWKSet, importSPKI, jwtVerify, type JWTVerifyGetKey } from "jose";
import { ROLES, type Principal, type Role } from "./principal.js";

export interface JwtConfig {
  issuer: string;
  audience: string;
  /** Pinned algorithms; a token signed with any other (including "none") is rejected. */
  algorithms: string[];
  clockToleranceSeconds: number;
  jwksUrl?: string;
  /** A PEM public key (SPKI), when no JWKS URL is used. */
  publicKeyFile?: string;
  /** A JWKS document (for tests and air-gapped setups). */
  jwks?: { keys: object[] };
}

export class AuthenticationError extends Error {}

/**
 * Verifies end-user bearer tokens with jose: pinned algorithms, required issuer and audience,
 * a small clock tolerance, keys from a JWKS URL (jose caches them and refetches at most every
 * 30 s when an unknown kid arrives) or a static key. A verified token must carry `roles` (some of
 * admin, operator, viewer, system) and a `tenant`.
 */
export async function createJwtVerifier(config: JwtConfig): Promise<(token: string) => Promise<Extract<Principal, { kind: "user" }>>> {
  let key: JWTVerifyGetKey | Awaited<ReturnType<typeof importSPKI>>;
  if (config.jwksUrl) key = createRemoteJWKSet(new URL(config.jwksUrl), { cooldownDuration: 30_000, cacheMaxAge: 600_000 });
  else if (config.jwks) key = createLocalJWKSet(config.jwks as never);
  else if (config.publicKeyFile) key = await importSPKI(readFileSync(config.publicKeyFile, "utf8"), config.algorithms[0]);
  else throw new Error("JWT verification needs ORCA_JWT_JWKS_URL or ORCA_JWT_PUBLIC_KEY_FILE");

  return async (token) => {
    let payload;
    try {
      ({ payload } = await jwtVerify(token, key as JWTVerifyGetKey, {
        issuer: config.issuer,
        audience: config.audience,
        algorithms: config.algorithms,
        clockTolerance: config.clockToleranceSeconds,
        requiredClaims: ["sub", "exp"],
      }));
    } catch (error) {
      throw new AuthenticationError(`invalid token: ${(error as { code?: string }).code ?? (error as Error).message}`);
    }
    const roles = Array.isArray(payload.roles) ? payload.roles.filter((r): r is Role => (ROLES as readonly unknown[]).includes(r)) : [];
    if (roles.length === 0) throw new AuthenticationError("invalid token: no known role in the roles claim");
    if (typeof payload.tenant !== "string" || payload.tenant === "") throw new AuthenticationError("invalid token: missing tenant claim");
    if (payload.tenant === "*" && !roles.includes("admin")) throw new AuthenticationError("invalid token: only admins may act for every tenant");
    return { kind: "user", subject: payload.sub!, roles, tenant: payload.tenant };
  };
}
