import { sql, type Kysely, type Transaction } from "kysely";
import type { StoredEntry } from "./entry.js";
import { globToPostgresRegex } from "./glob.js";
import type { CacheTables } from "./schema.js";

export const SCHEMA = "orca_cache";
/** Postgres NOTIFY channel of invalidation events (also used when Redis is configured; receivers dedupe). */
export const NOTIFY_CHANNEL = "orca_cache_invalidations";

export type Selector = { kind: "key"; key: string } | { kind: "pattern"; pattern: string } | { kind: "tag"; tag: string };

type Row = {
  key: string;
  value: Uint8Array;
  content_type: string;
  tags: string[];
  version: bigint;
  stored_at: Date;
  expires_at: Date;
  stale_until: Date;
};

function toEntry(tenant: string, namespace: string, row: Row): StoredEntry {
  return {
    tenant,
    namespace,
    key: row.key,
    value: row.value,
    contentType: row.content_type,
    tags: row.tags,
    version: BigInt(row.version),
    storedAt: row.stored_at.getTime(),
    expiresAt: row.expires_at.getTime(),
    staleUntil: row.stale_until.getTime(),
  };
}

/**
 * L3: Postgres, the tier of record (schema orca_cache, table entries). Times come from the
 * database clock (now()), so replicas with skewed clocks agree on TTLs. Every write also writes
 * its events row and its pg_notify in the same transaction: listeners only hear committed
 * changes, and the NOTIFY is sent exactly when the change becomes visible.
 */
export class L3Tier {
  constructor(readonly db: Kysely<CacheTables>) {}

  async read(tenant: string, namespace: string, keys: string[]): Promise<StoredEntry[]> {
    const rows = await this.db
      .selectFrom("entries")
      .select(["key", "value", "content_type", "tags", "version", "stored_at", "expires_at", "stale_until"])
      .where("tenant", "=", tenant)
      .where("namespace", "=", namespace)
      .where(keys.length === 1 ? sql<boolean>`key = ${keys[0]}` : sql<boolean>`key = any(${keys}::text[])`)
      .where("stale_until", ">", sql<Date>`now()`)
      .execute();
    return rows.map((row) => toEntry(tenant, namespace, row as Row));
  }

  private async notify(trx: Transaction<CacheTables>, payload: string): Promise<void> {
    await sql`select pg_notify(${NOTIFY_CHANNEL}, ${payload})`.execute(trx);
  }

  async upsert(input: {
    tenant: string;
    namespace: string;
    key: string;
    value: Uint8Array;
    contentType: string;
    tags: string[];
    ttlMs: number;
    graceMs: number;
    notifyPayload: string;
  }, beforeCommit?: (entry: StoredEntry) => Promise<void>): Promise<StoredEntry> {
    return this.db.transaction().execute(async (trx) => {
      const expires = sql<Date>`now() + ${input.ttlMs} * interval '1 millisecond'`;
      const row = await trx
        .insertInto("entries")
        .values({
          tenant: input.tenant,
          namespace: input.namespace,
          key: input.key,
          value: input.value,
          content_type: input.contentType,
          tags: input.tags,
          version: sql<bigint>`nextval('orca_cache.entry_version')`,
          stored_at: sql<Date>`now()`,
          expires_at: expires,
          stale_until: sql<Date>`now() + ${input.ttlMs + input.graceMs} * interval '1 millisecond'`,
          updated_at: sql<Date>`now()`,
        } as never)
        .onConflict((oc) =>
          oc.columns(["tenant", "namespace", "key"]).doUpdateSet({
            value: sql.ref("excluded.value"),
            content_type: sql.ref("excluded.content_type"),
            tags: sql.ref("excluded.tags"),
            version: sql.ref("excluded.version"),
            stored_at: sql.ref("excluded.stored_at"),
            expires_at: sql.ref("excluded.expires_at"),
            stale_until: sql.ref("excluded.stale_until"),
            updated_at: sql.ref("excluded.updated_at"),
          }),
        )
        .returning(["key", "value", "content_type", "tags", "version", "stored_at", "expires_at", "stale_until"])
        .executeTakeFirstOrThrow();
      const entry = toEntry(input.tenant, input.namespace, row as unknown as Row);
      await trx
        .insertInto("events")
        .values({
          kind: "cache.set",
          subject: `${input.namespace}/${input.key}`,
          tenant: input.tenant,
          payload: JSON.stringify({ ttlMs: input.ttlMs, bytes: input.value.byteLength, tags: input.tags, version: String(row.version) }),
        })
        .execute();
      await this.notify(trx, input.notifyPayload);
      await beforeCommit?.(entry);
      return entry;
    });
  }

  /**
   * Removes the selected entries; returns their keys and a fresh version number that orders the
   * removal after every earlier write (L2 tombstones carry it).
   */
  async remove(input: {
    tenant: string;
    namespace: string;
    selector: Selector;
    eventKind: string;
    notifyPayload: string;
  }, beforeCommit?: (keys: string[], version: bigint) => Promise<void>): Promise<{ keys: string[]; version: bigint }> {
    return this.db.transaction().execute(async (trx) => {
      const { tenant, namespace, selector } = input;
      let query = trx.deleteFrom("entries").where("tenant", "=", tenant).where("namespace", "=", namespace);
      if (selector.kind === "key") query = query.where("key", "=", selector.key);
      else if (selector.kind === "tag") query = query.where(sql<boolean>`tags @> array[${selector.tag}]::text[]`);
      else if (selector.pattern !== "*") query = query.where(sql<boolean>`key ~ ${globToPostgresRegex(selector.pattern)}`);
      // Rows past stale_until are already gone for every reader (and await the purge): not counted.
      const removed = await query.returning(["key", "stale_until"]).execute();
      const now = await sql<{ now: Date; version: bigint }>`select now() as now, nextval('orca_cache.entry_version') as version`.execute(trx);
      const { version, now: dbNow } = now.rows[0];
      const keys = removed.filter((r) => r.stale_until.getTime() > dbNow.getTime()).map((r) => r.key);
      await trx
        .insertInto("events")
        .values({
          kind: input.eventKind,
          subject: selector.kind === "key" ? `${namespace}/${selector.key}` : namespace,
          tenant,
          payload: JSON.stringify({ selector, count: keys.length, version: String(version) }),
        })
        .execute();
      await this.notify(trx, input.notifyPayload);
      await beforeCommit?.(keys, BigInt(version));
      return { keys, version: BigInt(version) };
    });
  }

  /** Deletes rows past stale_until, in batches; returns how many. */
  async purge(batch = 1000): Promise<number> {
    let total = 0;
    for (;;) {
      const n = await this.db.transaction().execute(async (trx) => {
        const result = await sql`
          delete from orca_cache.entries where ctid in (
            select ctid from orca_cache.entries where stale_until < now() limit ${batch} for update skip locked)
          returning 1`.execute(trx);
        const count = result.rows.length;
        if (count > 0) {
          await trx.insertInto("events").values({ kind: "cache.purged", subject: "entries", tenant: "", payload: JSON.stringify({ count }) }).execute();
        }
        return count;
      });
      total += n;
      if (n < batch) return total;
    }
  }

  async now(): Promise<number> {
    const result = await sql<{ now: Date }>`select clock_timestamp() as now`.execute(this.db);
    return result.rows[0].now.getTime();
  }

  /** Live (not past stale_until) entries and bytes (key + value) per namespace of a tenant. */
  async figures(tenant: string, namespace?: string): Promise<Map<string, { entries: number; bytes: number }>> {
    let query = this.db
      .selectFrom("entries")
      .select(["namespace", sql<bigint>`count(*)`.as("entries"), sql<bigint>`coalesce(sum(octet_length(key) + octet_length(value)), 0)`.as("bytes")])
      .where("tenant", "=", tenant)
      .where("stale_until", ">", sql<Date>`now()`)
      .groupBy("namespace");
    if (namespace !== undefined) query = query.where("namespace", "=", namespace);
    const rows = await query.execute();
    return new Map(rows.map((r) => [r.namespace, { entries: Number(r.entries), bytes: Number(r.bytes) }]));
  }
}
