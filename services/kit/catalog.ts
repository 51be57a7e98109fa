/**
 * The mesh's six services, their default ports and the call graph between them. This is the
 * one place that declares who calls whom: clients, manifests and Istio policies follow it.
 */
export const SERVICE_NAMES = ["orchestrator", "scheduler", "policy", "lock", "cache", "monitor"] as const;
export type ServiceName = (typeof SERVICE_NAMES)[number];

export const DEFAULT_PORTS: Record<ServiceName, { grpc: number; admin: number }> = {
  orchestrator: { grpc: 50051, admin: 9451 },
  scheduler: { grpc: 50052, admin: 9452 },
  policy: { grpc: 50053, admin: 9453 },
  lock: { grpc: 50054, admin: 9454 },
  cache: { grpc: 50055, admin: 9455 },
  monitor: { grpc: 50056, admin: 9456 },
};

/** caller -> the services it calls (DESIGN.md, "How the services use each other"). */
export const CALL_GRAPH: Record<ServiceName, readonly ServiceName[]> = {
  orchestrator: ["policy", "lock", "cache"],
  scheduler: ["lock", "orchestrator"],
  monitor: ["orchestrator", "scheduler", "policy", "lock", "cache", "monitor"],
  policy: [],
  lock: [],
  cache: [],
};

export function isServiceName(value: string): value is ServiceName {
  return (SERVICE_NAMES as readonly string[]).includes(value);
}
