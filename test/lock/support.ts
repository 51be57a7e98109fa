import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { sql } from "kysely";
import { expect } from "vitest";
import { LockService, type Lease } from "../../gen/orca/lock/v1/lock_pb.js";
import { openDatabase, openMemoryDatabase, type Database } from "../../services/kit/db/database.js";
import { createLogger } from "../../services/kit/telemetry/logger.js";
import { lockService } from "../../services/lock/index.js";
import { createFreshDatabase } from "../support/postgres.js";
import { startServiceHarness, type ServiceHarness } from "../support/service-harness.js";

export type BackendKind = "pglite" | "postgres";

export interface Backend {
  kind: BackendKind;
  database: Database;
  /** A second, independent handle on the same data (Postgres only): another process's view. */
  reopen?: () => Promise<Database>;
  cleanup(): Promise<void>;
}

export async function openBackend(kind: BackendKind): Promise<Backend> {
  if (kind === "pglite") {
    const database = await openMemoryDatabase();
    return { kind, database, cleanup: () => database.close() };
  }
  const fresh = await createFreshDatabase();
  const open = () => openDatabase({ databaseUrl: fresh.url, dataDir: mkdtempSync(join(tmpdir(), "orca-lock-")), logger: createLogger({ level: "silent" }) });
  const database = await open();
  const extra: Database[] = [];
  return {
    kind,
    database,
    reopen: async () => {
      const db = await open();
      extra.push(db);
      return db;
    },
    cleanup: async () => {
      for (const db of extra) await db.close().catch(() => undefined);
      await database.close();
      await fresh.drop();
    },
  };
}

/** Starts a Lock replica; `env` sets ORCA_LOCK_* variables for this replica's readLockConfig. */
export async function startLock(database: Database, env: Record<string, string> = {}): Promise<ServiceHarness> {
  const saved = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
  Object.assign(process.env, env);
  try {
    return await startServiceHarness(lockService, { database });
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

export type LockClient = Client<typeof LockService>;

export const ms = durationFromMs;

export async function expectCode(promise: Promise<unknown>, code: Code, message?: RegExp): Promise<ConnectError> {
  let caught: unknown;
  try {
    await promise;
  } catch (error) {
    caught = error;
  }
  expect(caught, "expected the call to fail").toBeInstanceOf(ConnectError);
  const error = caught as ConnectError;
  expect(Code[error.code], error.message).toBe(Code[code]);
  if (message) expect(error.rawMessage).toMatch(message);
  return error;
}

export async function acquire(client: LockClient, resource: string, opts: { ttlMs?: number; waitMs?: number; owner?: string; priority?: number; capacity?: number; tenant?: string; signal?: AbortSignal; timeoutMs?: number } = {}): Promise<Lease> {
  const res = await client.acquire(
    {
      resource,
      tenant: opts.tenant ?? "",
      owner: opts.owner ?? "",
      ttl: ms(opts.ttlMs ?? 10_000),
      waitTimeout: ms(opts.waitMs ?? 0),
      priority: opts.priority ?? 0,
      capacity: opts.capacity ?? 0,
    },
    { signal: opts.signal, timeoutMs: opts.timeoutMs },
  );
  return res.lease!;
}

export function release(client: LockClient, lease: Lease) {
  return client.release({ tenant: lease.tenant, leaseId: lease.leaseId, fencingToken: lease.fencingToken });
}

export const sleep = (msec: number) => new Promise((r) => setTimeout(r, msec));

/** Polls `check` until it returns true or `timeoutMs` passes (then fails with `what`). */
export async function eventually(what: string, check: () => Promise<boolean> | boolean, timeoutMs = 5_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > until) throw new Error(`timed out waiting for: ${what}`);
    await sleep(20);
  }
}

/** Row counts of every orca_lock table, to prove bad input changed nothing. */
export async function snapshot(database: Database) {
  const { rows } = await sql<{ t: string; n: number; x: string }>`
    select 'leases' as t, count(*)::int as n, coalesce(string_agg(id::text || ':' || coalesce(end_reason, '') || ':' || expires_at::text, ',' order by id), '') as x from orca_lock.leases
    union all select 'waiters', count(*)::int, '' from orca_lock.waiters
    union all select 'resources', count(*)::int, coalesce(string_agg(name || ':' || capacity || ':' || last_token, ',' order by name), '') from orca_lock.resources
    union all select 'events', count(*)::int, '' from orca_lock.events`.execute(database.db);
  return rows;
}
