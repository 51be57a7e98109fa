import { describe, expect, it } from "vitest";
import { DEFAULT_PORTS, SERVICE_NAMES } from "../../services/kit/catalog.js";
import { ConfigError, readConfig } from "../../services/kit/config.js";

function configError(env: Record<string, string>): ConfigError {
  try {
    readConfig(env);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return error as ConfigError;
  }
  throw new Error(`readConfig(${JSON.stringify(env)}) did not throw`);
}

describe("readConfig", () => {
  it("has defaults for everything when the environment is empty", () => {
    const config = readConfig({});
    expect(config.host).toBe("127.0.0.1");
    for (const name of SERVICE_NAMES) {
      expect(config.services[name]).toEqual({
        port: DEFAULT_PORTS[name].grpc,
        adminPort: DEFAULT_PORTS[name].admin,
        url: `http://127.0.0.1:${DEFAULT_PORTS[name].grpc}`,
      });
    }
    expect(config.services.orchestrator.port).toBe(50051);
    expect(config.services.monitor.adminPort).toBe(9456);
    expect(config.databaseUrl).toBeUndefined();
    expect(config.redisUrl).toBeUndefined();
    expect(config.dataDir).toBe("./.orca-data");
    expect(config.logLevel).toBe("info");
    expect(config.tls).toBeUndefined();
    expect(config.shutdownGraceMs).toBe(10_000);
    expect(config.maxMessageBytes).toBe(4 * 1024 * 1024);
    expect(config.clientTimeoutMs).toBe(5_000);
    expect(config.grpcFastPath).toBe(true);
    expect(config.clientFastPath).toBe(true);
    expect(config.otlpEndpoint).toBeUndefined();
  });

  it("treats blank values as unset", () => {
    const config = readConfig({ LOG_LEVEL: "  ", ORCA_LOCK_PORT: "", DATABASE_URL: " " });
    expect(config.logLevel).toBe("info");
    expect(config.services.lock.port).toBe(50054);
    expect(config.databaseUrl).toBeUndefined();
  });

  it("reads valid values", () => {
    const config = readConfig({
      ORCA_HOST: "0.0.0.0",
      ORCA_LOCK_PORT: "6000",
      ORCA_LOCK_ADMIN_PORT: "0",
      LOG_LEVEL: "debug",
      DATABASE_URL: "postgres://u:p@db:5432/orca",
      REDIS_URL: "redis://cache:6379",
      ORCA_TLS_CERT_FILE: "/certs/tls.crt",
      ORCA_TLS_KEY_FILE: "/certs/tls.key",
      ORCA_TLS_CLIENT_CA_FILE: "/certs/ca.crt",
      ORCA_TLS_ALLOWED_SANS: "spiffe://cluster.local/ns/orca/sa/scheduler, monitor.orca.svc",
      ORCA_GRPC_FAST_PATH: "off",
      ORCA_CLIENT_FAST_PATH: "0",
      OTEL_EXPORTER_OTLP_ENDPOINT: "http://otel:4318",
    });
    expect(config.host).toBe("0.0.0.0");
    expect(config.services.lock).toEqual({ port: 6000, adminPort: 0, url: "https://127.0.0.1:6000" });
    expect(config.logLevel).toBe("debug");
    expect(config.databaseUrl).toBe("postgres://u:p@db:5432/orca");
    expect(config.redisUrl).toBe("redis://cache:6379");
    expect(config.tls).toEqual({
      certFile: "/certs/tls.crt",
      keyFile: "/certs/tls.key",
      clientCaFile: "/certs/ca.crt",
      allowedSans: ["spiffe://cluster.local/ns/orca/sa/scheduler", "monitor.orca.svc"],
    });
    expect(config.grpcFastPath).toBe(false);
    expect(config.clientFastPath).toBe(false);
    expect(config.otlpEndpoint).toBe("http://otel:4318");
  });

  const bad: { name: string; env: Record<string, string>; variable: string; expected: RegExp }[] = [
    { name: "port above range", env: { ORCA_LOCK_PORT: "70000" }, variable: "ORCA_LOCK_PORT", expected: /an integer from 0 to 65535/ },
    { name: "negative port", env: { ORCA_CACHE_ADMIN_PORT: "-1" }, variable: "ORCA_CACHE_ADMIN_PORT", expected: /an integer from 0 to 65535/ },
    { name: "non-integer port", env: { ORCA_SCHEDULER_PORT: "50052.5" }, variable: "ORCA_SCHEDULER_PORT", expected: /an integer from 0 to 65535/ },
    { name: "port that is not a number", env: { ORCA_POLICY_PORT: "http" }, variable: "ORCA_POLICY_PORT", expected: /an integer from 0 to 65535/ },
    {
      name: "non-integer duration",
      env: { ORCA_SHUTDOWN_GRACE_MS: "10s" },
      variable: "ORCA_SHUTDOWN_GRACE_MS",
      expected: /an integer from 0 to 600000/,
    },
    { name: "bad LOG_LEVEL", env: { LOG_LEVEL: "verbose" }, variable: "LOG_LEVEL", expected: /one of fatal, error, warn, info, debug, trace, silent/ },
    {
      name: "DATABASE_URL with a wrong scheme",
      env: { DATABASE_URL: "mysql://u:p@db/orca" },
      variable: "DATABASE_URL",
      expected: /a URL with scheme postgres or postgresql/,
    },
    { name: "DATABASE_URL that is not a URL", env: { DATABASE_URL: "not a url" }, variable: "DATABASE_URL", expected: /a URL \(postgres, postgresql\)/ },
    { name: "REDIS_URL with a wrong scheme", env: { REDIS_URL: "http://cache:6379" }, variable: "REDIS_URL", expected: /redis or rediss/ },
    {
      name: "TLS certificate without key",
      env: { ORCA_TLS_CERT_FILE: "/certs/tls.crt" },
      variable: "ORCA_TLS_KEY_FILE",
      expected: /a PEM file path \(ORCA_TLS_CERT_FILE and ORCA_TLS_KEY_FILE go together\)/,
    },
    {
      name: "TLS key without certificate",
      env: { ORCA_TLS_KEY_FILE: "/certs/tls.key" },
      variable: "ORCA_TLS_CERT_FILE",
      expected: /ORCA_TLS_CERT_FILE and ORCA_TLS_KEY_FILE go together/,
    },
    {
      name: "SAN allowlist without client CA",
      env: { ORCA_TLS_CERT_FILE: "/c", ORCA_TLS_KEY_FILE: "/k", ORCA_TLS_ALLOWED_SANS: "a.example" },
      variable: "ORCA_TLS_CLIENT_CA_FILE",
      expected: /a PEM CA file path/,
    },
    {
      name: "ORCA_GRPC_FAST_PATH=maybe",
      env: { ORCA_GRPC_FAST_PATH: "maybe" },
      variable: "ORCA_GRPC_FAST_PATH",
      expected: /one of 1, 0, true, false, yes, no, on, off/,
    },
  ];

  for (const { name, env, variable, expected } of bad) {
    it(`rejects ${name} with a ConfigError naming ${variable}`, () => {
      const error = configError(env);
      expect(error.name).toBe("ConfigError");
      expect(error.variable).toBe(variable);
      expect(error.message).toContain(variable);
      expect(error.message).toMatch(/expected /);
      expect(error.message).toMatch(expected);
      const value = Object.values(env).at(-1)!;
      if (variable in env) expect(error.message).toContain(JSON.stringify(value));
    });
  }
});
