import { sql, type Kysely } from "kysely";
import type { Logger } from "../telemetry/logger.js";

/**
 * Retention of a service's event log (`<schema>.events`, DESIGN.md: one row per state change).
 * Nothing reads the log back to decide anything, so old rows only cost disk; with busy
 * services (a Lock KeepAlive writes a row per renewal) they would grow without bound.
 * Rows are deleted oldest first in batches along the primary key, so each batch is an index
 * range, not a table scan, and no transaction holds many rows at once.
 */
export const EVENT_PRUNE_BATCH = 5_000;

/** Deletes events older than `retentionMs`; returns how many. `retentionMs` 0 keeps everything. */
export async function pruneEventLog(db: Kysely<any>, schema: string, retentionMs: number): Promise<number> {
  if (retentionMs <= 0) return 0;
  const events = sql.table(`${schema}.events`);
  let deleted = 0;
  for (;;) {
    const result = await sql`delete from ${events} where seq in (
        select seq from ${events} order by seq limit ${EVENT_PRUNE_BATCH}
      ) and occurred_at < now() - ${retentionMs}::bigint * interval '1 millisecond'`.execute(db);
    const n = Number(result.numAffectedRows ?? 0n);
    deleted += n;
    // A batch with a row young enough to keep means the old part is done (seq follows time).
    if (n < EVENT_PRUNE_BATCH) return deleted;
  }
}

/** Prunes every `intervalMs` (and once soon after start) until stopped. */
export function startEventLogRetention(options: {
  db: Kysely<any>;
  schema: string;
  retentionMs: number;
  intervalMs: number;
  logger: Logger;
}): { stop(): void } {
  if (options.retentionMs <= 0) return { stop: () => undefined };
  let running = false;
  const run = async () => {
    if (running) return;
    running = true;
    try {
      const deleted = await pruneEventLog(options.db, options.schema, options.retentionMs);
      if (deleted > 0) options.logger.info({ schema: options.schema, deleted }, "event log pruned");
    } catch (error) {
      options.logger.warn({ err: error, schema: options.schema }, "event log pruning failed; next try at the next interval");
    } finally {
      running = false;
    }
  };
  const first = setTimeout(() => void run(), Math.min(options.intervalMs, 60_000));
  const timer = setInterval(() => void run(), options.intervalMs);
  first.unref();
  timer.unref();
  return {
    stop: () => {
      clearTimeout(first);
      clearInterval(timer);
    },
  };
}
