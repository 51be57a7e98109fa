#!/usr/bin/env node
import { parseArgs } from "node:util";
import { SERVICE_NAMES, isServiceName, type ServiceName } from "../kit/catalog.js";
import { ConfigError, readConfig, type OrcaConfig } from "../kit/config.js";
import { exitOnSignals } from "../kit/lifecycle.js";
import { createLogger } from "../kit/telemetry/logger.js";
import { startTracing } from "../kit/telemetry/tracing.js";
import { startMesh, type RunningMesh } from "./mesh.js";

const USAGE = `orca: the Orca orchestration mesh

Usage:
  orca up                 start all six services in this process (PGlite when DATABASE_URL is unset)
  orca serve <service>    start one service (what a Kubernetes Deployment runs)
  orca help               this text

Services: ${SERVICE_NAMES.join(", ")}
Configuration comes from environment variables; see README.md ("Configuration").`;

function printTable(mesh: RunningMesh, config: OrcaConfig): void {
  const rows = Object.entries(mesh.endpoints).map(([name, ep]) => [name, ep.url, `http://127.0.0.1:${ep.adminPort}/metrics`]);
  const header = ["service", "gRPC / gRPC-Web / Connect", "admin"];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i])).join("  ");
  const out = [line(header), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)];
  out.push("", `database: ${mesh.database.kind} (${mesh.database.location}); redis: ${config.redisUrl ? "on" : "off (in-process fallbacks)"}`);
  out.push(`try: npx buf curl --http2-prior-knowledge --reflect --list-methods ${mesh.endpoints.lock?.url ?? ""}`);
  process.stdout.write(`${out.join("\n")}\n`);
}

async function main(argv: string[]): Promise<void> {
  const { positionals } = parseArgs({ args: argv, allowPositionals: true, strict: true, options: {} });
  const [command, target] = positionals;
  if (command === undefined || command === "help") {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  let services: ServiceName[];
  if (command === "up") services = [...SERVICE_NAMES];
  else if (command === "serve" && target !== undefined && isServiceName(target)) services = [target];
  else {
    process.stderr.write(`${command === "serve" ? `unknown service "${target ?? ""}"` : `unknown command "${command}"`}\n\n${USAGE}\n`);
    process.exit(2);
  }

  let config: OrcaConfig;
  try {
    config = readConfig();
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`orca: ${error.message}\n`);
      process.exit(2);
    }
    throw error;
  }
  const logger = createLogger({ level: config.logLevel });
  const tracing = startTracing({ serviceName: `orca-${command === "up" ? "mesh" : services[0]}`, otlpEndpoint: config.otlpEndpoint });
  const mesh = await startMesh({ config, services, logger, defaultAuthMode: command === "up" ? "off" : "on" });
  if (command === "up") printTable(mesh, config);
  else logger.info({ endpoints: mesh.endpoints }, "serving");
  exitOnSignals(logger, async () => {
    await mesh.shutdown();
    await tracing.shutdown();
  });
}

main(process.argv.slice(2)).catch((error: unknown) => {
  process.stderr.write(`orca: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exit(1);
});
