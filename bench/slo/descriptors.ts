import { createRegistry, fromJson, toBinary, type DescMessage, type DescMethod, type DescService, type JsonValue } from "@bufbuild/protobuf";
import { file_health_v1_health } from "../../gen/health/v1/health_pb.js";
import { file_orca_cache_v1_cache } from "../../gen/orca/cache/v1/cache_pb.js";
import { file_orca_lock_v1_lock } from "../../gen/orca/lock/v1/lock_pb.js";
import { file_orca_monitor_v1_monitor } from "../../gen/orca/monitor/v1/monitor_pb.js";
import { file_orca_orchestrator_v1_orchestrator } from "../../gen/orca/orchestrator/v1/orchestrator_pb.js";
import { file_orca_policy_v1_policy } from "../../gen/orca/policy/v1/policy_pb.js";
import { file_orca_scheduler_v1_scheduler } from "../../gen/orca/scheduler/v1/scheduler_pb.js";
import { grpcFrame } from "../rpc/common.js";

/** Every service file of the mesh, from the generated descriptors in gen/. */
export const registry = createRegistry(
  file_orca_orchestrator_v1_orchestrator,
  file_orca_scheduler_v1_scheduler,
  file_orca_policy_v1_policy,
  file_orca_lock_v1_lock,
  file_orca_cache_v1_cache,
  file_orca_monitor_v1_monitor,
  file_health_v1_health,
);

export interface ResolvedCall {
  service: DescService;
  method: DescMethod;
  /** "/orca.lock.v1.LockService/GetLock": the HTTP/2 :path of the call. */
  path: string;
  /** The mesh service that serves it ("lock"), from the package "orca.<service>.v1". */
  meshService: string;
}

/**
 * Resolves a ghz `call` ("orca.lock.v1.LockService.GetLock", or the "Service/Method" form ghz also
 * accepts) to its method in the descriptors. Throws with the reason.
 */
export function resolveCall(call: string): ResolvedCall {
  const slash = call.lastIndexOf("/");
  const cut = slash >= 0 ? slash : call.lastIndexOf(".");
  if (cut <= 0) throw new Error(`call ${JSON.stringify(call)}: expected "package.Service.Method"`);
  const serviceName = call.slice(0, cut);
  const methodName = call.slice(cut + 1);
  const service = registry.getService(serviceName);
  if (!service) throw new Error(`call ${JSON.stringify(call)}: unknown service ${serviceName}`);
  const method = service.methods.find((m) => m.name === methodName);
  if (!method) throw new Error(`call ${JSON.stringify(call)}: ${serviceName} has no method ${methodName}`);
  if (method.methodKind !== "unary") throw new Error(`call ${JSON.stringify(call)}: only unary methods can be load-tested (${method.methodKind})`);
  const meshService = /^orca\.(\w+)\.v1$/.exec(service.file.proto.package ?? "")?.[1] ?? "";
  return { service, method, path: `/${service.typeName}/${method.name}`, meshService };
}

/** The request message of `schema` from proto JSON (throws with protobuf-es's message when invalid). */
export function encodeRequest(schema: DescMessage, data: JsonValue): Uint8Array {
  return toBinary(schema, fromJson(schema, data, { registry }));
}

/** The exact bytes h2load posts: one uncompressed gRPC length-prefixed message. */
export function requestFrame(schema: DescMessage, data: JsonValue): Buffer {
  return grpcFrame(encodeRequest(schema, data));
}
