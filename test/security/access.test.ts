import type { DescMessage, DescService } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EchoService } from "../../gen/orca/testing/v1/echo_pb.js";
import { createSecurityInterceptors } from "../../services/kit/auth/index.js";
import { ACCESS_TABLE } from "../../services/kit/auth/access-table.js";
import { ROLES } from "../../services/kit/auth/principal.js";
import { CALL_GRAPH, SERVICE_NAMES, type ServiceName } from "../../services/kit/catalog.js";
import { readConfig } from "../../services/kit/config.js";
import { OrcaServer, registration } from "../../services/kit/server/server.js";
import { unimplementedHandlers } from "../../services/kit/service-module.js";
import { createLogger } from "../../services/kit/telemetry/logger.js";
import { SERVICE_MODULES } from "../../services/modules.js";
import { callAny } from "../support/generic-call.js";
import { makeIssuer } from "../support/jwt.js";

/**
 * The access table, enforced for every method of every contract: generated from the
 * descriptors, so a new RPC without an entry fails here. Handlers are "not implemented" stubs:
 * reaching one answers Unimplemented, and being stopped at the door answers Unauthenticated or
 * PermissionDenied.
 */
/** Stubs answer Unimplemented; those with a request stream read it first, as real ones do. */
function stubHandlers(descriptor: DescService) {
  const impl = unimplementedHandlers(descriptor, "stub for the access test") as unknown as Record<string, (...args: never[]) => unknown>;
  for (const method of descriptor.methods) {
    if (method.methodKind !== "bidi_streaming" && method.methodKind !== "client_streaming") continue;
    const fail = impl[method.localName];
    impl[method.localName] = async function* (requests: AsyncIterable<unknown>): AsyncGenerator<never> {
      for await (const _ of requests) break;
      fail();
    };
  }
  return impl as never;
}

const services = [...Object.values(SERVICE_MODULES).map((m) => ({ name: m.name as ServiceName | "testing", descriptor: m.descriptor })), { name: "testing" as const, descriptor: EchoService }];
const methods = services.flatMap(({ name, descriptor }) => descriptor.methods.map((method) => ({ owner: name, service: descriptor, method, key: `${descriptor.typeName}/${method.name}` })));

describe("the access table", () => {
  it("has an entry for every RPC of every contract, and none for RPCs that do not exist", () => {
    const missing = methods.filter((m) => !(m.key in ACCESS_TABLE)).map((m) => m.key);
    expect(missing).toEqual([]);
    const known = new Set(methods.map((m) => m.key));
    expect(Object.keys(ACCESS_TABLE).filter((key) => !known.has(key))).toEqual([]);
  });

  it("lets a service call another only along the call graph", () => {
    for (const m of methods) {
      for (const caller of ACCESS_TABLE[m.key].services) {
        expect(m.owner !== "testing" && CALL_GRAPH[caller].includes(m.owner as ServiceName), `${caller} -> ${m.key}`).toBe(true);
      }
    }
  });
});

describe("authorization enforced on every method", async () => {
  const issuer = await makeIssuer();
  let server: OrcaServer;
  let url: string;
  const tokens = new Map<string, string>();

  beforeAll(async () => {
    const config = readConfig({ ORCA_AUTH: "on", ORCA_JWT_ISSUER: issuer.issuer, ORCA_JWT_AUDIENCE: issuer.audience, ORCA_JWT_JWKS_URL: "https://unused.test/jwks", ORCA_TRUST_XFCC: "1" });
    const logger = createLogger({ level: "silent" });
    // The JWKS is handed over directly (no network): same verifier, local key set.
    const security = await createSecurityInterceptors({
      config: { ...config, auth: { ...config.auth, jwt: undefined } },
      logger,
      defaultMode: "on",
    });
    const { createJwtVerifier } = await import("../../services/kit/auth/jwt.js");
    const { authInterceptor } = await import("../../services/kit/auth/interceptor.js");
    const { createAuditLog } = await import("../../services/kit/auth/audit.js");
    void security;
    const verifyJwt = await createJwtVerifier({ issuer: issuer.issuer, audience: issuer.audience, algorithms: ["RS256"], clockToleranceSeconds: 5, jwks: issuer.jwks });
    server = new OrcaServer({
      name: "access-test",
      host: "127.0.0.1",
      port: 0,
      adminPort: 0,
      services: services.map(({ descriptor }) => registration(descriptor, stubHandlers(descriptor))),
      logger,
      interceptors: [authInterceptor({ enabled: true, verifyJwt, trustXfcc: true, audit: createAuditLog(logger) })],
      shutdownGraceMs: 100,
      maxMessageBytes: 1 << 20,
      fastPath: true,
    });
    url = (await server.start()).url;
    for (const role of ROLES) tokens.set(role, await issuer.sign({ sub: `${role}-user`, roles: [role], tenant: "acme" }));
  });
  afterAll(() => server.shutdown());

  const transport = () => createGrpcTransport({ baseUrl: url });

  it("answers Unauthenticated to a call without credentials, and health stays public", async () => {
    for (const m of methods) {
      const error = await callAny(transport(), m.service, m.method, {}, {});
      expect(error?.code, m.key).toBe(Code.Unauthenticated);
    }
    const { Health } = await import("../../gen/health/v1/health_pb.js");
    expect(await callAny(transport(), Health, Health.method.check, {}, {})).toBeUndefined();
  });

  it.each([...ROLES])("role %s reaches exactly the methods the table grants it", async (role) => {
    const token = tokens.get(role)!;
    for (const m of methods) {
      const error = await callAny(transport(), m.service, m.method, {}, { authorization: `Bearer ${token}` });
      const granted = ACCESS_TABLE[m.key].roles.includes(role);
      expect(error?.code, `${role} -> ${m.key}`).toBe(granted ? Code.Unimplemented : Code.PermissionDenied);
    }
  });

  it.each(SERVICE_NAMES)("workload identity of %s (Istio XFCC) reaches exactly its call-graph methods", async (caller) => {
    const xfcc = `By=spiffe://cluster.local/ns/orca/sa/orca-x;Hash=abc;Subject="";URI=spiffe://cluster.local/ns/orca/sa/orca-${caller}`;
    for (const m of methods) {
      const error = await callAny(transport(), m.service, m.method, {}, { "x-forwarded-client-cert": xfcc });
      const granted = ACCESS_TABLE[m.key].services.includes(caller);
      expect(error?.code, `${caller} -> ${m.key}`).toBe(granted ? Code.Unimplemented : Code.PermissionDenied);
    }
  });

  it("ignores a forged peer-identity header", async () => {
    const error = await callAny(transport(), EchoService, EchoService.method.echo, {}, { "x-orca-peer-san": "spiffe://cluster.local/ns/orca/sa/orca-orchestrator" });
    expect(error?.code).toBe(Code.Unauthenticated);
  });

  it("refuses a workload identity that is not an Orca service", async () => {
    const error = await callAny(transport(), EchoService, EchoService.method.echo, {}, { "x-forwarded-client-cert": "URI=spiffe://cluster.local/ns/other/sa/intruder" });
    expect(error?.code).toBe(Code.Unauthenticated);
  });

  describe("tenant isolation at the door: every RPC whose request names a tenant", () => {
    /** A request naming `tenant` wherever the method's request carries one (top level or one level down). */
    const withTenant = (input: DescMessage, tenant: string): Record<string, unknown> | undefined => {
      if (input.fields.some((f) => f.name === "tenant" && f.fieldKind === "scalar")) return { tenant };
      for (const field of input.fields) {
        if (field.oneof) continue;
        if (field.fieldKind === "message" && field.message.fields.some((f) => f.name === "tenant")) return { [field.localName]: { tenant } };
        if (field.fieldKind === "list" && field.listKind === "message" && field.message.fields.some((f) => f.name === "tenant")) return { [field.localName]: [{ tenant }] };
      }
      return undefined;
    };
    const tenantMethods = methods.filter((m) => withTenant(m.method.input, "x") !== undefined);

    it("covers the tenant-owned RPCs of every service", () => {
      const owners = new Set(tenantMethods.map((m) => m.owner));
      for (const name of ["orchestrator", "scheduler", "policy", "lock", "cache", "monitor"]) expect(owners.has(name as ServiceName), name).toBe(true);
    });

    it("denies another tenant's name to an end user of every role, and lets their own through", async () => {
      const token = await issuer.sign({ sub: "mallory", roles: [...ROLES], tenant: "acme" });
      for (const m of tenantMethods) {
        const cross = await callAny(transport(), m.service, m.method, withTenant(m.method.input, "globex")!, { authorization: `Bearer ${token}` });
        expect(cross?.code, `${m.key} with tenant globex`).toBe(Code.PermissionDenied);
        const own = await callAny(transport(), m.service, m.method, withTenant(m.method.input, "acme")!, { authorization: `Bearer ${token}` });
        expect(own?.code, `${m.key} with own tenant`).toBe(Code.Unimplemented);
      }
    });
  });
});
