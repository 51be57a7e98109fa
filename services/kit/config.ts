import { DEFAULT_PORTS, SERVICE_NAMES, type ServiceName } from "./catalog.js";

/**
 * Configuration, read from the environment once at start and validated. A bad value stops the
 * process with a ConfigError that names the variable and the expected form. Every variable is
 * documented in README.md ("Configuration").
 */
export class ConfigError extends Error {
  constructor(
    readonly variable: string,
    expected: string,
    value: string,
  ) {
    super(`invalid ${variable}=${JSON.stringify(value)}: expected ${expected}`);
    this.name = "ConfigError";
  }
}

export type LogLevel = "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent";

export interface TlsConfig {
  certFile: string;
  keyFile: string;
  /** CA bundle for client certificates; when set, clients must present a certificate. */
  clientCaFile?: string;
  /** Client-certificate SANs that may connect (URI or DNS entries); empty allows any verified client. */
  allowedSans: string[];
}

export interface ServiceEndpointConfig {
  port: number;
  adminPort: number;
  /** Base URL other services use to reach this one. */
  url: string;
}

export interface AuthConfig {
  /** "on" or "off"; undefined lets the command decide (`orca serve`: on, `orca up`: off). */
  mode?: "on" | "off";
  jwt?: {
    issuer: string;
    audience: string;
    algorithms: string[];
    clockToleranceSeconds: number;
    jwksUrl?: string;
    publicKeyFile?: string;
  };
  /** Trust the caller identity in x-forwarded-client-cert (only behind an Istio sidecar). */
  trustXfcc: boolean;
  /** Per end user and method group; unset (no limit) unless ORCA_RATE_LIMIT_RPS is set. */
  rateLimit?: { ratePerSecond: number; burst: number };
}

export interface OrcaConfig {
  host: string;
  services: Record<ServiceName, ServiceEndpointConfig>;
  databaseUrl?: string;
  dataDir: string;
  redisUrl?: string;
  logLevel: LogLevel;
  tls?: TlsConfig;
  shutdownGraceMs: number;
  maxMessageBytes: number;
  clientTimeoutMs: number;
  /** Serve unary gRPC calls on the kit's fast path (ORCA_GRPC_FAST_PATH=0 turns it off). */
  grpcFastPath: boolean;
  /** Make unary gRPC calls to other services on the kit's client path (ORCA_CLIENT_FAST_PATH=0 turns it off). */
  clientFastPath: boolean;
  otlpEndpoint?: string;
  auth: AuthConfig;
  /** Server streams end with Unavailable after this long; clients resume (WatchRun from a sequence). */
  maxStreamSeconds: number;
  /** Rows of each service's event log older than this are deleted hourly; 0 keeps them forever. */
  eventRetentionMs: number;
}

/**
 * Readers for one environment variable each, shared by the kit and every service's own config,
 * so all variables behave alike: blank means unset, bad values throw a ConfigError naming them.
 */
export type Env = Record<string, string | undefined>;

export function envString(env: Env, name: string): string | undefined {
  const value = env[name];
  return value === undefined || value.trim() === "" ? undefined : value.trim();
}

export function envInteger(env: Env, name: string, fallback: number, min: number, max: number): number {
  const raw = envString(env, name);
  if (raw === undefined) return fallback;
  if (!/^\d+$/.test(raw) || Number(raw) < min || Number(raw) > max) {
    throw new ConfigError(name, `an integer from ${min} to ${max}`, raw);
  }
  return Number(raw);
}

export function envBool(env: Env, name: string, fallback: boolean): boolean {
  const raw = envString(env, name);
  if (raw === undefined) return fallback;
  if (/^(1|true|yes|on)$/i.test(raw)) return true;
  if (/^(0|false|no|off)$/i.test(raw)) return false;
  throw new ConfigError(name, "one of 1, 0, true, false, yes, no, on, off", raw);
}

export function envUrl(env: Env, name: string, protocols: string[]): string | undefined {
  const raw = envString(env, name);
  if (raw === undefined) return undefined;
  let parsed: URL;
  try {
    parsed = new URL(raw);
  } catch {
    throw new ConfigError(name, `a URL (${protocols.join(", ")})`, raw);
  }
  if (!protocols.includes(parsed.protocol.replace(/:$/, ""))) {
    throw new ConfigError(name, `a URL with scheme ${protocols.join(" or ")}`, raw);
  }
  return raw;
}

const LOG_LEVELS: LogLevel[] = ["fatal", "error", "warn", "info", "debug", "trace", "silent"];

export function readConfig(env: Env = process.env): OrcaConfig {
  const host = envString(env, "ORCA_HOST") ?? "127.0.0.1";
  const services = {} as Record<ServiceName, ServiceEndpointConfig>;
  for (const name of SERVICE_NAMES) {
    const upper = name.toUpperCase();
    const port = envInteger(env, `ORCA_${upper}_PORT`, DEFAULT_PORTS[name].grpc, 0, 65535);
    const adminPort = envInteger(env, `ORCA_${upper}_ADMIN_PORT`, DEFAULT_PORTS[name].admin, 0, 65535);
    const scheme = envString(env, "ORCA_TLS_CERT_FILE") ? "https" : "http";
    services[name] = {
      port,
      adminPort,
      url: envUrl(env, `ORCA_${upper}_URL`, ["http", "https"]) ?? `${scheme}://127.0.0.1:${port}`,
    };
  }

  const logLevel = (envString(env, "LOG_LEVEL") ?? "info") as LogLevel;
  if (!LOG_LEVELS.includes(logLevel)) throw new ConfigError("LOG_LEVEL", `one of ${LOG_LEVELS.join(", ")}`, logLevel);

  const certFile = envString(env, "ORCA_TLS_CERT_FILE");
  const keyFile = envString(env, "ORCA_TLS_KEY_FILE");
  if ((certFile === undefined) !== (keyFile === undefined)) {
    const missing = certFile === undefined ? "ORCA_TLS_CERT_FILE" : "ORCA_TLS_KEY_FILE";
    throw new ConfigError(missing, "a PEM file path (ORCA_TLS_CERT_FILE and ORCA_TLS_KEY_FILE go together)", "");
  }
  const tls: TlsConfig | undefined =
    certFile && keyFile
      ? {
          certFile,
          keyFile,
          clientCaFile: envString(env, "ORCA_TLS_CLIENT_CA_FILE"),
          allowedSans: (envString(env, "ORCA_TLS_ALLOWED_SANS") ?? "")
            .split(",")
            .map((s) => s.trim())
            .filter(Boolean),
        }
      : undefined;
  if (tls && tls.allowedSans.length > 0 && !tls.clientCaFile) {
    throw new ConfigError("ORCA_TLS_CLIENT_CA_FILE", "a PEM CA file path when ORCA_TLS_ALLOWED_SANS is set", "");
  }

  const authMode = envString(env, "ORCA_AUTH");
  if (authMode !== undefined && authMode !== "on" && authMode !== "off") throw new ConfigError("ORCA_AUTH", "on or off", authMode);
  const issuer = envString(env, "ORCA_JWT_ISSUER");
  const audience = envString(env, "ORCA_JWT_AUDIENCE");
  const jwksUrl = envUrl(env, "ORCA_JWT_JWKS_URL", ["http", "https"]);
  const publicKeyFile = envString(env, "ORCA_JWT_PUBLIC_KEY_FILE");
  const jwtConfigured = issuer ?? audience ?? jwksUrl ?? publicKeyFile;
  if (jwtConfigured !== undefined) {
    if (!issuer) throw new ConfigError("ORCA_JWT_ISSUER", "the issuer (iss) end-user tokens must carry", "");
    if (!audience) throw new ConfigError("ORCA_JWT_AUDIENCE", "the audience (aud) end-user tokens must carry", "");
    if (!jwksUrl && !publicKeyFile) throw new ConfigError("ORCA_JWT_JWKS_URL", "a JWKS URL (or set ORCA_JWT_PUBLIC_KEY_FILE)", "");
  }
  const algorithms = (envString(env, "ORCA_JWT_ALGORITHMS") ?? "RS256,ES256").split(",").map((a) => a.trim());
  for (const algorithm of algorithms) {
    if (!/^(RS|PS|ES)(256|384|512)$|^EdDSA$/.test(algorithm)) {
      throw new ConfigError("ORCA_JWT_ALGORITHMS", "asymmetric JWS algorithms such as RS256,ES256,EdDSA (never none or HS*)", algorithm);
    }
  }

  return {
    auth: {
      mode: authMode as "on" | "off" | undefined,
      jwt:
        issuer && audience
          ? { issuer, audience, algorithms, clockToleranceSeconds: envInteger(env, "ORCA_JWT_CLOCK_TOLERANCE_S", 30, 0, 300), jwksUrl, publicKeyFile }
          : undefined,
      trustXfcc: envBool(env, "ORCA_TRUST_XFCC", false),
      rateLimit:
        envString(env, "ORCA_RATE_LIMIT_RPS") === undefined
          ? undefined
          : {
              ratePerSecond: envInteger(env, "ORCA_RATE_LIMIT_RPS", 100, 1, 1_000_000),
              burst: envInteger(env, "ORCA_RATE_LIMIT_BURST", 200, 1, 10_000_000),
            },
    },
    maxStreamSeconds: envInteger(env, "ORCA_MAX_STREAM_SECONDS", 3600, 1, 86_400),
    eventRetentionMs: eventRetention(env),
    host,
    services,
    databaseUrl: envUrl(env, "DATABASE_URL", ["postgres", "postgresql"]),
    dataDir: envString(env, "ORCA_DATA_DIR") ?? "./.orca-data",
    redisUrl: envUrl(env, "REDIS_URL", ["redis", "rediss"]),
    logLevel,
    tls,
    shutdownGraceMs: envInteger(env, "ORCA_SHUTDOWN_GRACE_MS", 10_000, 0, 600_000),
    maxMessageBytes: envInteger(env, "ORCA_MAX_MESSAGE_BYTES", 4 * 1024 * 1024, 1024, 256 * 1024 * 1024),
    clientTimeoutMs: envInteger(env, "ORCA_CLIENT_TIMEOUT_MS", 5_000, 1, 3_600_000),
    grpcFastPath: envBool(env, "ORCA_GRPC_FAST_PATH", true),
    clientFastPath: envBool(env, "ORCA_CLIENT_FAST_PATH", true),
    otlpEndpoint: envUrl(env, "OTEL_EXPORTER_OTLP_ENDPOINT", ["http", "https"]),
  };
}

const HOUR_MS = 3_600_000;

/** ORCA_EVENT_RETENTION_MS: 0 (keep forever) or at least an hour; default 30 days. */
function eventRetention(env: Env): number {
  const value = envInteger(env, "ORCA_EVENT_RETENTION_MS", 30 * 24 * HOUR_MS, 0, 3650 * 24 * HOUR_MS);
  if (value !== 0 && value < HOUR_MS) throw new ConfigError("ORCA_EVENT_RETENTION_MS", `0 (keep forever) or an integer from ${HOUR_MS} to ${3650 * 24 * HOUR_MS}`, String(value));
  return value;
}
