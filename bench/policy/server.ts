import { pino } from "pino";
import { PolicyService } from "../../gen/orca/policy/v1/policy_pb.js";
import { MeshClients } from "../../services/kit/clients/mesh-clients.js";
import { readConfig } from "../../services/kit/config.js";
import { openMemoryDatabase } from "../../services/kit/db/database.js";
import { migrate } from "../../services/kit/db/migrations.js";
import { OrcaServer } from "../../services/kit/server/server.js";
import { createLogger } from "../../services/kit/telemetry/logger.js";
import { createServiceMetrics } from "../../services/kit/telemetry/metrics.js";
import { policyService } from "../../services/policy/index.js";
import type { PolicyDomain } from "../../services/policy/policy.js";
import { fixtureBundle } from "../../test/policy/fixtures/opa-abi-fixture.js";

/**
 * The Policy service for the benchmark, in its own child process (its own CPU, apart from
 * h2load and the parent): embedded PGlite, the shipped Cedar defaults active as bundle
 * "default", and the OPA ABI test fixture active as bundle "opa". Decision log lines are written
 * (to /dev/null), as every Decide writes one in production. Reports {type:"ready", port} over IPC.
 */
const database = await openMemoryDatabase();
const logger = createLogger({ level: "info", destination: pino.destination({ dest: "/dev/null", sync: false }) });
const config = readConfig({ ORCA_SHUTDOWN_GRACE_MS: "200" });
await migrate(database.db, policyService);
const metrics = createServiceMetrics("policy", { processMetrics: false });
const instance = await policyService.create({ config, logger, database, clients: new MeshClients(Object.fromEntries(Object.entries(config.services).map(([k, v]) => [k, v.url])) as never), metricsRegistry: metrics.registry });
const domain = (instance as unknown as { domain: PolicyDomain }).domain;
const opa = await domain.put({ tenant: "", name: "opa", source: { engine: "opa_wasm", content: await fixtureBundle(), cedarSchema: "", entrypoint: "" }, tests: [] }, true, "bench");
if (opa.bundle.status !== "active") throw new Error("the OPA fixture bundle did not activate");
const server = new OrcaServer({
  name: "policy",
  host: "127.0.0.1",
  port: 0,
  adminPort: 0,
  services: [{ service: PolicyService, impl: instance.impl }],
  logger,
  metrics,
  shutdownGraceMs: 200,
  maxMessageBytes: config.maxMessageBytes,
  fastPath: config.grpcFastPath,
});
const { port } = await server.start();
process.send?.({ type: "ready", port });
process.on("message", (message: { type: string }) => {
  if (message.type === "stats") process.send?.({ type: "stats", stats: domain.decisions.stats() });
});
process.once("SIGTERM", () => {
  void (async () => {
    await server.shutdown();
    await instance.close?.();
    await database.close();
    process.exit(0);
  })();
});
