import { fromJson, toJson, type DescMessage, type DescService, type JsonObject, type JsonValue } from "@bufbuild/protobuf";
import { ConnectError, createClient } from "@connectrpc/connect";
import { CacheService } from "../../../gen/orca/cache/v1/cache_pb.js";
import { LockService } from "../../../gen/orca/lock/v1/lock_pb.js";
import { MonitorService } from "../../../gen/orca/monitor/v1/monitor_pb.js";
import { OrchestratorService } from "../../../gen/orca/orchestrator/v1/orchestrator_pb.js";
import { PolicyService } from "../../../gen/orca/policy/v1/policy_pb.js";
import { SchedulerService } from "../../../gen/orca/scheduler/v1/scheduler_pb.js";
import type { ServiceName } from "../../kit/catalog.js";
import type { MeshClients } from "../../kit/clients/mesh-clients.js";
import { isObject, TaskFailure, unknownKeys, type Plugin } from "./types.js";

/**
 * grpc: a unary call to one of the mesh's services through its generated typed client (the
 * mesh's transports, deadlines, retries and breakers). Config: service (full name, e.g.
 * "orca.cache.v1.CacheService"), method (e.g. "Get"), request (the request message as proto
 * JSON), timeout_ms. Output: the response as proto JSON. Errors: kind `grpc.<code>` (e.g.
 * `grpc.not_found`).
 * Not done: calls to arbitrary services described by server reflection (the contract allows
 * it); only the mesh's own services are callable for now.
 */
const SERVICES: [ServiceName, DescService][] = [
  ["cache", CacheService],
  ["lock", LockService],
  ["monitor", MonitorService],
  ["orchestrator", OrchestratorService],
  ["policy", PolicyService],
  ["scheduler", SchedulerService],
];
const KEYS = ["service", "method", "request", "timeout_ms"];

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

export function grpcPlugin(clients: MeshClients): Plugin {
  const byName = new Map(SERVICES.map(([target, desc]) => [desc.typeName, { target, desc }]));
  const methodOf = (service: unknown, method: unknown) => {
    const svc = typeof service === "string" ? byName.get(service) : undefined;
    const m = svc?.desc.methods.find((x) => x.name === method);
    return { svc, m };
  };
  return {
    name: "grpc",
    validate(config, isDynamic) {
      const errors = unknownKeys(config, KEYS);
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
        const e = ConnectError.from(error);
        const name = String(e.code === undefined ? "unknown" : (Object.entries(ConnectCodeNames).find(([, v]) => v === e.code)?.[0] ?? "unknown"));
        throw new TaskFailure(`grpc.${name}`, e.rawMessage);
      }
    },
  };
}

const ConnectCodeNames: Record<string, number> = {
  canceled: 1, unknown: 2, invalid_argument: 3, deadline_exceeded: 4, not_found: 5, already_exists: 6, permission_denied: 7,
  resource_exhausted: 8, failed_precondition: 9, aborted: 10, out_of_range: 11, unimplemented: 12, internal: 13, unavailable: 14,
  data_loss: 15, unauthenticated: 16,
};
