import { fromJson, toJson, type DescMessage, type DescService, type JsonObject, type JsonValue } from "@bufbuild/protobuf";
import { ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import picomatch from "picomatch";
import { CacheService } from "../../../gen/orca/cache/v1/cache_pb.js";
import { LockService } from "../../../gen/orca/lock/v1/lock_pb.js";
import { MonitorService } from "../../../gen/orca/monitor/v1/monitor_pb.js";
import { OrchestratorService } from "../../../gen/orca/orchestrator/v1/orchestrator_pb.js";
import { PolicyService } from "../../../gen/orca/policy/v1/policy_pb.js";
import { SchedulerService } from "../../../gen/orca/scheduler/v1/scheduler_pb.js";
import type { ServiceName } from "../../kit/catalog.js";
import type { MeshClients } from "../../kit/clients/mesh-clients.js";
import { ReflectionError, ReflectionResolver } from "./grpc-reflection.js";
import { isObject, TaskFailure, unknownKeys, type Plugin } from "./types.js";

/**
 * grpc: a unary call.
 * - To one of the mesh's services through its generated typed client (the mesh's transports,
 *   deadlines, retries and breakers): config service (full name, e.g.
 *   "orca.cache.v1.CacheService"), method (e.g. "Get"), request (proto JSON), timeout_ms.
 * - To any other gRPC server, with `target` ("http://host:port" for h2c, "https://..." for
 *   TLS): the service is described by that server's reflection (grpc.reflection.v1), so no
 *   generated code is needed. Only targets whose "host:port" matches
 *   ORCA_ORCHESTRATOR_GRPC_ALLOWED_TARGETS (globs, e.g. "payments.internal:50051,*.svc:*") may be
 *   called: the SSRF guard, as for the http plugin. Such calls carry no Orca identity.
 * Output: the response as proto JSON. Errors: kind `grpc.<code>` (e.g. `grpc.not_found`).
 */
const SERVICES: [ServiceName, DescService][] = [
  ["cache", CacheService],
  ["lock", LockService],
  ["monitor", MonitorService],
  ["orchestrator", OrchestratorService],
  ["policy", PolicyService],
  ["scheduler", SchedulerService],
];
const KEYS = ["target", "service", "method", "request", "timeout_ms"];
const SERVICE_NAME = /^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+$/;
const METHOD_NAME = /^[A-Za-z_]\w*$/;

/** Request fields naming the tenant whose objects a call touches. */
const TENANT_FIELDS = new Set(["tenant", "bundle_tenant"]);

/**
 * The plugin calls with the Orchestrator's own identity, which may act for any tenant, so a task
 * must not name another tenant than its run's: like the auth interceptor at the door, every
 * tenant field at the top level or one message down must be the run's tenant (an empty `tenant`
 * is filled in; an empty `bundle_tenant` stays the shared default bundles). Returns the problem.
 */
function confineTenant(schema: DescMessage, message: Record<string, unknown>, tenant: string, path = "", depth = 0): string | undefined {
  for (const field of schema.fields) {
    const name = path ? `${path}.${field.name}` : field.name;
    if (TENANT_FIELDS.has(field.name) && field.fieldKind === "scalar" && typeof message[field.localName] === "string") {
      const named = message[field.localName] as string;
      if (named !== "" && named !== tenant && !(tenant === "" && named === "default")) return `request.${name}: the run belongs to tenant "${tenant}", not "${named}"`;
      if (field.name === "tenant") message[field.localName] = tenant;
    } else if (depth === 0 && field.fieldKind === "message" && !field.oneof && message[field.localName]) {
      const problem = confineTenant(field.message, message[field.localName] as Record<string, unknown>, tenant, name, depth + 1);
      if (problem) return problem;
    } else if (depth === 0 && field.fieldKind === "list" && field.listKind === "message") {
      const items = message[field.localName] as Record<string, unknown>[];
      for (let i = 0; i < items.length; i++) {
        const problem = confineTenant(field.message, items[i], tenant, `${name}[${i}]`, depth + 1);
        if (problem) return problem;
      }
    }
  }
  return undefined;
}

export function grpcPlugin(clients: MeshClients, allowedTargets: string[] = []): Plugin {
  const byName = new Map(SERVICES.map(([target, desc]) => [desc.typeName, { target, desc }]));
  const methodOf = (service: unknown, method: unknown) => {
    const svc = typeof service === "string" ? byName.get(service) : undefined;
    const m = svc?.desc.methods.find((x) => x.name === method);
    return { svc, m };
  };
  const external = externalCalls(allowedTargets);
  return {
    name: "grpc",
    validate(config, isDynamic) {
      const errors = unknownKeys(config, KEYS);
      if (config.target !== undefined) return [...errors, ...external.validate(config, isDynamic)];
      if (isDynamic("service") || isDynamic("method")) return errors;
      const { svc, m } = methodOf(config.service, config.method);
      if (!svc) errors.push(`service: unknown service "${String(config.service)}" (known: ${[...byName.keys()].join(", ")})`);
      else if (!m) errors.push(`method: unknown method "${String(config.method)}" of ${svc.desc.typeName}`);
      else if (m.methodKind !== "unary") errors.push(`method: ${m.name} is not unary`);
      else if (config.request !== undefined && !isDynamic("request")) {
        if (!isObject(config.request)) errors.push("request: an object (proto JSON)");
        else {
          try {
            fromJson(m.input, config.request);
          } catch (error) {
            errors.push(`request: ${(error as Error).message}`);
          }
        }
      }
      return errors;
    },
    async execute({ config, signal, tenant }) {
      if (config.target !== undefined) return external.execute(config, signal);
      const { svc, m } = methodOf(config.service, config.method);
      if (!svc || !m || m.methodKind !== "unary") throw new TaskFailure("config.invalid", "unknown service or method", true);
      const client = clients.client(svc.target, svc.desc) as unknown as ReturnType<typeof createClient>;
      const request = fromJson(m.input, (config.request ?? {}) as JsonValue);
      const problem = confineTenant(m.input, request as unknown as Record<string, unknown>, tenant);
      if (problem) throw new TaskFailure("grpc.permission_denied", problem, true);
      try {
        const call = (client as unknown as Record<string, (req: unknown, opts: unknown) => Promise<unknown>>)[m.localName];
        const res = await call(request, { signal, timeoutMs: typeof config.timeout_ms === "number" ? config.timeout_ms : undefined });
        return toJson(m.output, res as never) as JsonObject;
      } catch (error) {
        if (signal.aborted) throw error;
        throw callFailure(error);
      }
    },
  };
}

function codeName(code: number): string {
  return Object.entries(ConnectCodeNames).find(([, v]) => v === code)?.[0] ?? "unknown";
}

function callFailure(error: unknown): TaskFailure {
  const e = ConnectError.from(error);
  return new TaskFailure(`grpc.${codeName(e.code)}`, e.rawMessage);
}

/** Calls to servers outside the mesh, described by their own server reflection. */
function externalCalls(allowedTargets: string[]) {
  const allowed = allowedTargets.length > 0 ? picomatch(allowedTargets, { nocase: true }) : () => false;
  const transports = new Map<string, Transport>();
  const transportFor = (target: string) => {
    let transport = transports.get(target);
    // Responses (descriptors included) are bounded like the kit's own messages: a hostile or
    // broken server must not make the Orchestrator buffer gigabytes.
    if (!transport) transports.set(target, (transport = createGrpcTransport({ baseUrl: target, readMaxBytes: 4 * 1024 * 1024 })));
    return transport;
  };
  const resolver = new ReflectionResolver(transportFor);
  const checkTarget = (raw: unknown): string | undefined => {
    if (typeof raw !== "string") return "target: a URL such as http://host:port";
    let url: URL;
    try {
      url = new URL(raw);
    } catch {
      return "target: not a URL (e.g. http://payments.internal:50051)";
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") return "target: scheme must be http (h2c) or https";
    if (url.pathname !== "/" || url.search || url.username) return "target: only scheme, host and port (no path, query or credentials)";
    const port = url.port || (url.protocol === "https:" ? "443" : "80");
    if (!allowed(`${url.hostname}:${port}`)) return `target: "${url.hostname}:${port}" is not on the allowlist (ORCA_ORCHESTRATOR_GRPC_ALLOWED_TARGETS)`;
    return undefined;
  };
  return {
    validate(config: JsonObject, isDynamic: (key: string) => boolean): string[] {
      const errors: string[] = [];
      if (!isDynamic("target")) {
        const e = checkTarget(config.target);
        if (e) errors.push(e);
      }
      // The service's schema is only known by asking the server, which registration does not do.
      if (!isDynamic("service") && !(typeof config.service === "string" && SERVICE_NAME.test(config.service))) {
        errors.push('service: the full service name, e.g. "acme.payments.v1.PaymentService"');
      }
      if (!isDynamic("method") && !(typeof config.method === "string" && METHOD_NAME.test(config.method))) errors.push('method: a method name, e.g. "Charge"');
      if (config.request !== undefined && !isDynamic("request") && !isObject(config.request)) errors.push("request: an object (proto JSON)");
      return errors;
    },
    async execute(config: JsonObject, signal: AbortSignal): Promise<JsonObject> {
      const problem = checkTarget(config.target);
      if (problem) throw new TaskFailure("config.invalid", problem, true);
      const target = new URL(String(config.target)).origin;
      let service: DescService;
      try {
        service = await resolver.service(target, String(config.service), signal);
      } catch (error) {
        if (signal.aborted) throw error;
        if (error instanceof ReflectionError) throw new TaskFailure(`grpc.${codeName(error.code)}`, error.message);
        throw error;
      }
      const method = service.methods.find((m) => m.name === config.method);
      if (!method) throw new TaskFailure("grpc.unimplemented", `${service.typeName} on ${target} has no method ${String(config.method)}`, true);
      if (method.methodKind !== "unary") throw new TaskFailure("config.invalid", `method: ${method.name} is not unary`, true);
      let request;
      try {
        request = fromJson(method.input, (config.request ?? {}) as JsonValue);
      } catch (error) {
        throw new TaskFailure("config.invalid", `request: ${(error as Error).message}`, true);
      }
      const client = createClient(service, transportFor(target)) as unknown as Record<string, (req: unknown, opts: unknown) => Promise<unknown>>;
      try {
        const res = await client[method.localName](request, { signal, timeoutMs: typeof config.timeout_ms === "number" ? config.timeout_ms : undefined });
        return toJson(method.output, res as never) as JsonObject;
      } catch (error) {
        if (signal.aborted) throw error;
        throw callFailure(error);
      }
    },
  };
}

const ConnectCodeNames: Record<string, number> = {
  canceled: 1, unknown: 2, invalid_argument: 3, deadline_exceeded: 4, not_found: 5, already_exists: 6, permission_denied: 7,
  resource_exhausted: 8, failed_precondition: 9, aborted: 10, out_of_range: 11, unimplemented: 12, internal: 13, unavailable: 14,
  data_loss: 15, unauthenticated: 16,
};
