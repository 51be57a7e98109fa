import { createServer, type Server } from "node:http";
import type { Registry } from "prom-client";

/**
 * The admin port: plain HTTP for Prometheus and Kubernetes. /healthz answers while the process
 * lives; /readyz only while the service serves and its dependencies answer; /metrics is the
 * service's own Prometheus registry.
 */
export function createAdminServer(options: { registry: Registry; ready: () => Promise<string | undefined> }): Server {
  return createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD" }).end();
      return;
    }
    if (path === "/healthz") {
      res.writeHead(200, { "content-type": "text/plain" }).end("ok\n");
      return;
    }
    if (path === "/readyz") {
      options.ready().then(
        (problem) => {
          res.writeHead(problem ? 503 : 200, { "content-type": "text/plain" }).end(problem ? `not ready: ${problem}\n` : "ready\n");
        },
        (error: unknown) => {
          res.writeHead(503, { "content-type": "text/plain" }).end(`not ready: ${error instanceof Error ? error.message : String(error)}\n`);
        },
      );
      return;
    }
    if (path === "/metrics") {
      options.registry.metrics().then(
        (body) => res.writeHead(200, { "content-type": options.registry.contentType }).end(body),
        (error: unknown) => res.writeHead(500).end(String(error)),
      );
      return;
    }
    res.writeHead(404, { "content-type": "text/plain" }).end("not found; try /metrics, /healthz or /readyz\n");
  });
}
