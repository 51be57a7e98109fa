import { afterAll, beforeAll, describe, expect, it } from "vitest";
import pg from "pg";
import { InvalidationCause, Tier } from "../../gen/orca/cache/v1/cache_pb.js";
import type { Database } from "../../services/kit/db/database.js";
import { createFreshDatabase, postgresAvailable } from "../support/postgres.js";
import { openPostgres, startReplica, str, text, waitFor, type Replica } from "./helpers.js";

/**
 * Without Redis, Postgres NOTIFY is the only way invalidations reach other replicas. When a
 * replica's LISTEN connection is cut, what is sent meanwhile is lost; once LISTEN is back the
 * replica must drop its L1 (and send FLUSH to its watchers) rather than serve values that were
 * invalidated during the gap.
 */
describe.skipIf(!postgresAvailable)("cache: LISTEN connection lost and re-established (Postgres, no Redis)", () => {
  let drop: () => Promise<void>;
  let url: string;
  let database: Database;
  let a: Replica;
  let b: Replica;
  let admin: pg.Client;

  beforeAll(async () => {
    ({ url, drop } = await createFreshDatabase());
    database = await openPostgres(url);
    a = await startReplica({ database, name: "a" });
    b = await startReplica({ database, name: "b" });
    admin = new pg.Client({ connectionString: url });
    await admin.connect();
  });

  afterAll(async () => {
    await admin?.end();
    await a?.stop();
    await b?.stop();
    await database?.close();
    await drop?.();
  });

  const listeners = async () =>
    (await admin.query<{ pid: number }>(`select pid from pg_stat_activity where datname = current_database() and query ilike 'LISTEN %'`)).rows.map((r) => r.pid);

  it("drops L1 and sends watchers FLUSH after LISTEN comes back, so nothing invalidated in the gap is served", async () => {
    await a.client.set({ namespace: "gap", key: "k", value: text("old"), ttl: { seconds: 3600n, nanos: 0 } });
    expect((await a.client.get({ namespace: "gap", key: "k" })).result?.tier).toBe(Tier.L1_MEMORY);
    const controller = new AbortController();
    const events: { namespace: string; cause: InvalidationCause }[] = [];
    void (async () => {
      for await (const { event } of a.client.watchInvalidations({ namespaces: ["gap"] }, { signal: controller.signal })) events.push(event!);
    })().catch(() => undefined);
    await waitFor(() => events.length >= 1, 2000, "the initial FLUSH");
    expect(events[0]).toMatchObject({ namespace: "gap", cause: InvalidationCause.FLUSH });

    // Cut every LISTEN connection (both replicas'), then change the value on b while they are down.
    const before = await listeners();
    expect(before.length).toBeGreaterThanOrEqual(2);
    await admin.query(`select pg_terminate_backend(pid) from unnest($1::int[]) as pid`, [before]);
    await b.client.set({ namespace: "gap", key: "k", value: text("new"), ttl: { seconds: 3600n, nanos: 0 } });

    // LISTEN comes back by itself; replica a then forgets what it may have missed.
    await waitFor(async () => (await listeners()).filter((pid) => !before.includes(pid)).length >= 2, 10_000, "LISTEN re-established");
    await waitFor(() => events.length >= 2, 5000, "FLUSH after the reconnect");
    expect(events[1]).toMatchObject({ namespace: "gap", cause: InvalidationCause.FLUSH });
    const res = await a.client.get({ namespace: "gap", key: "k" });
    expect(res.result?.tier).toBe(Tier.L3_POSTGRES);
    expect(str(res.result?.entry?.value)).toBe("new");
    controller.abort();

    // And invalidations flow again over the new connection.
    await b.client.set({ namespace: "gap", key: "k", value: text("newer"), ttl: { seconds: 3600n, nanos: 0 } });
    await waitFor(async () => str((await a.client.get({ namespace: "gap", key: "k" })).result?.entry?.value) === "newer", 5000, "the next invalidation");
  });
});
