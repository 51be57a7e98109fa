import type { DescService } from "@bufbuild/protobuf";
import type { Client, Transport } from "@connectrpc/connect";
import { createClient } from "@connectrpc/connect";
import type { ServiceName } from "../catalog.js";
import { createOrcaTransport, type ClientOptions } from "./factory.js";

/**
 * The one factory the services use to reach each other: one transport (HTTP/2 session, breaker)
 * per target, shared by every client of that target.
 */
export class MeshClients {
  private readonly transports = new Map<ServiceName, Transport>();

  constructor(
    private readonly urls: Record<ServiceName, string>,
    private readonly defaults: Omit<ClientOptions, "baseUrl" | "target"> = {},
  ) {}

  client<S extends DescService>(target: ServiceName, service: S): Client<S> {
    let transport = this.transports.get(target);
    if (!transport) {
      transport = createOrcaTransport({ ...this.defaults, baseUrl: this.urls[target], target });
      this.transports.set(target, transport);
    }
    return createClient(service, transport);
  }
}
