import type { JsonObject } from "@bufbuild/protobuf";
import pg from "pg";
import { TaskFailure, unknownKeys, type Plugin } from "./types.js";

/**
 * sql: one query in a READ ONLY transaction with a statement timeout, on a database named in
 * ORCA_ORCHESTRATOR_SQL_DATABASES. Config: database (a configured name), query, params (list),
 * max_rows (default 1000). Output: {rows, row_count, truncated}. Writes fail (read-only
 * transaction) with kind `sql.error`.
 */
const KEYS = ["database", "query", "params", "max_rows"];

export function sqlPlugin(databases: Record<string, string>, statementTimeoutMs: number): Plugin & { close(): Promise<void> } {
  const pools = new Map<string, pg.Pool>();
  const pool = (name: string) => {
    let p = pools.get(name);
    if (!p) {
      p = new pg.Pool({ connectionString: databases[name], max: 4 });
      p.on("error", () => undefined);
      pools.set(name, p);
    }
    return p;
  };
  return {
    name: "sql",
    validate(config, isDynamic) {
      const errors = unknownKeys(config, KEYS);
      if (!isDynamic("database") && (typeof config.database !== "string" || !(config.database in databases))) {
        errors.push(`database: must name a configured database (${Object.keys(databases).join(", ") || "none configured: ORCA_ORCHESTRATOR_SQL_DATABASES"})`);
      }
      if (!isDynamic("query") && (typeof config.query !== "string" || config.query.trim() === "")) errors.push("query: required string");
      if (config.params !== undefined && !isDynamic("params") && !Array.isArray(config.params)) errors.push("params: a list");
      return errors;
    },
    async execute({ config, signal }) {
      const client = await pool(String(config.database)).connect();
      const onAbort = () => void client.query("select pg_cancel_backend(pg_backend_pid())").catch(() => undefined);
      try {
        await client.query("begin read only");
        await client.query(`set local statement_timeout = ${Math.floor(statementTimeoutMs)}`);
        signal.addEventListener("abort", onAbort, { once: true });
        const res = await client.query({ text: String(config.query), values: (config.params as unknown[]) ?? [] });
        await client.query("commit");
        const max = typeof config.max_rows === "number" ? config.max_rows : 1000;
        const rows = res.rows.slice(0, max).map((r) => JSON.parse(JSON.stringify(r, (_k, v) => (typeof v === "bigint" ? v.toString() : v))) as JsonObject);
        return { rows, row_count: res.rowCount ?? res.rows.length, truncated: res.rows.length > max };
      } catch (error) {
        await client.query("rollback").catch(() => undefined);
        if (signal.aborted) throw error;
        throw new TaskFailure("sql.error", (error as Error).message);
      } finally {
        signal.removeEventListener("abort", onAbort);
        client.release();
      }
    },
    async close() {
      await Promise.all([...pools.values()].map((p) => p.end()));
    },
  };
}
