import { EventEmitter, on } from "node:events";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../../../gen/health/v1/health_pb.js";

export { ServingStatus };

/**
 * Serving status per service name ("" is the server as a whole), as grpc.health.v1 defines it.
 * Plain state plus change events; the gRPC handler below is a thin view of it.
 */
export class HealthRegistry {
  private readonly statuses = new Map<string, ServingStatus>();
  private readonly changes = new EventEmitter({ captureRejections: false });

  constructor() {
    this.changes.setMaxListeners(0);
    this.statuses.set("", ServingStatus.NOT_SERVING);
  }

  set(service: string, status: ServingStatus): void {
    if (this.statuses.get(service) === status) return;
    this.statuses.set(service, status);
    this.changes.emit("change", service, status);
  }

  get(service: string): ServingStatus | undefined {
    return this.statuses.get(service);
  }

  /** Every known name to NOT_SERVING: the first step of a graceful shutdown. */
  shutdown(): void {
    for (const name of this.statuses.keys()) this.set(name, ServingStatus.NOT_SERVING);
  }

  all(): Map<string, ServingStatus> {
    return new Map(this.statuses);
  }

  /** Current status, then every change, until the signal aborts. */
  async *watch(service: string, signal: AbortSignal): AsyncGenerator<ServingStatus> {
    let last = this.get(service) ?? ServingStatus.SERVICE_UNKNOWN;
    yield last;
    try {
      for await (const [name, status] of on(this.changes, "change", { signal })) {
        if (name !== service || status === last) continue;
        last = status as ServingStatus;
        yield last;
      }
    } catch (error) {
      if (signal.aborted) return;
      throw error;
    }
  }
}

export function healthHandlers(registry: HealthRegistry): ServiceImpl<typeof Health> {
  return {
    check(req) {
      const status = registry.get(req.service);
      if (status === undefined) throw new ConnectError(`unknown service "${req.service}"`, Code.NotFound);
      return { status };
    },
    list() {
      const statuses: Record<string, { status: ServingStatus }> = {};
      for (const [name, status] of registry.all()) statuses[name] = { status };
      return { statuses };
    },
    async *watch(req, ctx) {
      for await (const status of registry.watch(req.service, ctx.signal)) yield { status };
    },
  };
}
