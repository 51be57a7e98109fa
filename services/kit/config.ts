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
  otlpEndpoint?: string;
}

type Env = Record<string, string | undefined>;

function str(env: Env, name: string): string | undefined {
  const value = env[name];
  return value === undefined || value.trim() === "" ? undefined : value.trim();
}

function integer(env: Env, name: string, fallback: number, min: number, max: number): number {
  const raw = str(env, name);
  if (raw === undefined) return fallback;
  if (!/^\d+$/.test(raw) || Number(raw) < min || Number(raw) > max) {
    throw new ConfigError(name, `an integer from ${min} to ${max}`, raw);
  }
  return Number(raw);
}

function bool(env: Env, name: string, fallback: boolean): boolean {
  const raw = str(env, name);
  if (raw === undefined) return fallback;
  if (/^(1|true|yes|on)$/i.test(raw)) return true;
  if (/^(0|false|no|off)$/i.test(raw)) return false;
  throw new ConfigError(name, "one of 1, 0, true, false, yes, no, on, off", raw);
}

function url(env: Env, name: string, protocols: string[]): string | undefined {
  const raw = str(env, name);
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
  const host = str(env, "ORCA_HOST") ?? "127.0.0.1";
  const services = {} as Record<ServiceName, ServiceEndpointConfig>;
  for (const name of SERVICE_NAMES) {
    const upper = name.toUpperCase();
    const port = integer(env, `ORCA_${upper}_PORT`, DEFAULT_PORTS[name].grpc, 0, 65535);
    const adminPort = integer(env, `ORCA_${upper}_ADMIN_PORT`, DEFAULT_PORTS[name].admin, 0, 65535);
    const scheme = str(env, "ORCA_TLS_CERT_FILE") ? "https" : "http";
    services[name] = {
      port,
      adminPort,
      url: url(env, `ORCA_${upper}_URL`, ["http", "https"]) ?? `${scheme}://127.0.0.1:${port}`,
    };
  }

  const logLevel = (str(env, "LOG_LEVEL") ?? "info") as LogLevel;
  if (!LOG_LEVELS.includes(logLevel)) throw new ConfigError("LOG_LEVEL", `one of ${LOG_LEVELS.join(", ")}`, logLevel);

  const certFile = str(env, "ORCA_TLS_CERT_FILE");
  const keyFile = str(env, "ORCA_TLS_KEY_FILE");
  if ((certFile === undefined) !== (keyFile === undefined)) {
    const missing = certFile === undefined ? "ORCA_TLS_CERT_FILE" : "ORCA_TLS_KEY_FILE";
    throw new ConfigError(missing, "a PEM file path (ORCA_TLS_CERT_FILE and ORCA_TLS_KEY_FILE go together)", "");
  }
  const tls: TlsConfig | undefined =
    certFile && keyFile
      ? {
          certFile,
          keyFile,
          clientCaFile: str(env, "ORCA_TLS_CLIENT_CA_FILE"),
          allowedSans: (str(env, "ORCA_TLS_ALLOWED_SANS") ?? "")
            .split(",")
            .map((s) => s.trim())
            .filter(Boolean),
        }
      : undefined;
  if (tls && tls.allowedSans.length > 0 && !tls.clientCaFile) {
    throw new ConfigError("ORCA_TLS_CLIENT_CA_FILE", "a PEM CA file path when ORCA_TLS_ALLOWED_SANS is set", "");
  }

  return {
    host,
    services,
    databaseUrl: url(env, "DATABASE_URL", ["postgres", "postgresql"]),
    dataDir: str(env, "ORCA_DATA_DIR") ?? "./.orca-data",
    redisUrl: url(env, "REDIS_URL", ["redis", "rediss"]),
    logLevel,
    tls,
    shutdownGraceMs: integer(env, "ORCA_SHUTDOWN_GRACE_MS", 10_000, 0, 600_000),
    maxMessageBytes: integer(env, "ORCA_MAX_MESSAGE_BYTES", 4 * 1024 * 1024, 1024, 256 * 1024 * 1024),
    clientTimeoutMs: integer(env, "ORCA_CLIENT_TIMEOUT_MS", 5_000, 1, 3_600_000),
    grpcFastPath: bool(env, "ORCA_GRPC_FAST_PATH", true),
    otlpEndpoint: url(env, "OTEL_EXPORTER_OTLP_ENDPOINT", ["http", "https"]),
  };
}
