import type { Logger } from "../telemetry/logger.js";

/**
 * Security events as structured log lines (`"audit": true`): failed authentication, denied
 * calls, rate limiting. Personal data is masked: IPv4 addresses keep their /24, IPv6 their /48;
 * tokens and credentials are never passed in.
 */
export type AuditEvent = "authentication_failed" | "permission_denied" | "tenant_denied" | "rate_limited";

export interface AuditLog {
  record(event: AuditEvent, fields: { method: string; principal?: string; peer?: string; reason: string; correlationId?: string }): void;
}

export function maskAddress(address: string | undefined): string | undefined {
  if (!address) return undefined;
  const v4 = /^(?:::ffff:)?(\d+\.\d+\.\d+)\.\d+$/.exec(address);
  if (v4) return `${v4[1]}.0/24`;
  if (address.includes(":")) return `${address.split(":").slice(0, 3).join(":")}::/48`;
  return "masked";
}

export function createAuditLog(logger: Logger): AuditLog {
  const audit = logger.child({ audit: true });
  return {
    record(event, fields) {
      audit.warn({ event, ...fields, peer: maskAddress(fields.peer) }, "security");
    },
  };
}
