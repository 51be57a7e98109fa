import { isServiceName, type ServiceName } from "../catalog.js";

/**
 * Workload identities. Inside the mesh, Istio's sidecar puts the caller's SPIFFE id in
 * x-forwarded-client-cert (and strips any value a client sent); outside it, the server reads the
 * verified TLS client certificate's SAN. Either way the id looks like
 * spiffe://<trust domain>/ns/<namespace>/sa/orca-<service>.
 */
const SPIFFE_SA = /^spiffe:\/\/[^/]+\/ns\/[^/]+\/sa\/orca-([a-z]+)$/;

export function serviceFromSpiffeId(id: string): ServiceName | undefined {
  const match = SPIFFE_SA.exec(id);
  return match && isServiceName(match[1]) ? match[1] : undefined;
}

/**
 * The URI of the nearest client in an XFCC header: elements are separated by commas (one per
 * proxy hop, the last one added by our own sidecar), fields by semicolons, e.g.
 * `By=spiffe://...;Hash=...;Subject="";URI=spiffe://cluster.local/ns/orca/sa/orca-scheduler`.
 */
export function uriFromXfcc(header: string): string | undefined {
  const elements = header.split(",");
  const last = elements[elements.length - 1] ?? "";
  for (const field of last.split(";")) {
    const eq = field.indexOf("=");
    if (eq > 0 && field.slice(0, eq).trim().toLowerCase() === "uri") return field.slice(eq + 1).trim().replace(/^"|"$/g, "");
  }
  return undefined;
}
