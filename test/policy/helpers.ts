import { Writable } from "node:stream";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { expect } from "vitest";
import {
  Decision,
  Engine,
  PolicyService,
  TestCaseSchema,
  type TestCase,
} from "../../gen/orca/policy/v1/policy_pb.js";
import { openDatabase, openMemoryDatabase, type Database } from "../../services/kit/db/database.js";
import { createLogger, type Logger } from "../../services/kit/telemetry/logger.js";
import { defaultsDir } from "../../services/policy/bundle-files.js";
import { policyService } from "../../services/policy/index.js";
import type { DirectoryLoader, PolicyDomain } from "../../services/policy/policy.js";
import { createFreshDatabase, postgresAvailable } from "../support/postgres.js";
import { startServiceHarness, type ServiceHarness } from "../support/service-harness.js";

export type PolicyClient = Client<typeof PolicyService>;

/** A backend to run a suite on: PGlite always, real Postgres when DATABASE_URL is set. */
export interface Backend {
  name: string;
  available: boolean;
  open(): Promise<{ database: Database; url?: string; drop(): Promise<void> }>;
}

const silent = createLogger({ level: "silent" });

export const BACKENDS: Backend[] = [
  {
    name: "PGlite",
    available: true,
    open: async () => {
      const database = await openMemoryDatabase();
      return { database, drop: () => database.close() };
    },
  },
  {
    name: "Postgres",
    available: postgresAvailable,
    open: async () => {
      const fresh = await createFreshDatabase();
      const database = await openDatabase({ databaseUrl: fresh.url, dataDir: "unused", logger: silent });
      return {
        database,
        url: fresh.url,
        drop: async () => {
          await database.close();
          await fresh.drop();
        },
      };
    },
  },
];

/** Captures log lines as parsed JSON objects. */
export function captureLogger(): { logger: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString("utf8").split("\n")) if (line.trim()) lines.push(JSON.parse(line) as Record<string, unknown>);
      cb();
    },
  });
  return { logger: createLogger({ level: "info", destination }), lines };
}

export interface PolicyReplica {
  harness: ServiceHarness;
  client: PolicyClient;
  domain: PolicyDomain;
  loader?: DirectoryLoader;
}

/**
 * Starts the Policy service over real gRPC. The service reads its own settings from process.env
 * in create() (as the guide asks), so `policyEnv` is set there for the duration of the start.
 */
export async function startPolicy(database: Database, policyEnv: Record<string, string> = {}, logger?: Logger): Promise<PolicyReplica> {
  const saved: Record<string, string | undefined> = {};
  for (const [k, v] of Object.entries(policyEnv)) {
    saved[k] = process.env[k];
    process.env[k] = v;
  }
  try {
    const harness = await startServiceHarness(policyService, { database, logger });
    const instance = harness.instance as unknown as { domain: PolicyDomain; loader?: DirectoryLoader };
    return { harness, client: harness.client(PolicyService), domain: instance.domain, loader: instance.loader };
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

export async function expectCode(promise: Promise<unknown>, code: Code, message?: RegExp): Promise<ConnectError> {
  try {
    await promise;
  } catch (error) {
    const ce = ConnectError.from(error);
    expect(Code[ce.code]).toBe(Code[code]);
    if (message) expect(ce.rawMessage).toMatch(message);
    return ce;
  }
  throw new Error(`expected ${Code[code]}, the call succeeded`);
}

export const DEFAULT_CEDAR = readFileSync(join(defaultsDir(), "default.cedar"));
export const DEFAULT_SCHEMA = readFileSync(join(defaultsDir(), "default.cedarschema"), "utf8");

export function testCase(name: string, input: Record<string, unknown>, expected: Decision, target = ""): TestCase {
  return create(TestCaseSchema, { name, input: input as never, expectedDecision: expected, expectedDivertTarget: target });
}

/** A Cedar bundle for (tenant, name) whose only rule allows `allowedAction`. */
export function simpleCedar(allowedAction: string, reason = `may ${allowedAction}`): Uint8Array {
  return Buffer.from(`@id("allow-${allowedAction}") @reason("${reason}") permit (principal, action == Action::"${allowedAction}", resource);`);
}

export { Code, Decision, Engine };

/** Polls `fn` until it returns true (bounded wait for behaviour, not a timing assertion). */
export async function eventually(fn: () => Promise<boolean> | boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await fn()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
