import { openDatabase, type Database } from "../../services/kit/db/database.js";
import { createLogger } from "../../services/kit/telemetry/logger.js";
import { createFreshDatabase } from "../support/postgres.js";

/** A fresh real-Postgres database for one test file, with the kit's Database handle on it. */
export async function freshPostgres(): Promise<{ db: Database; url: string; close: () => Promise<void> }> {
  const fresh = await createFreshDatabase();
  const db = await openDatabase({ databaseUrl: fresh.url, dataDir: "", logger: createLogger({ level: "silent" }), poolSize: 20 });
  return {
    db,
    url: fresh.url,
    close: async () => {
      await db.close();
      await fresh.drop();
    },
  };
}
