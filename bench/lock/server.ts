/**
 * The Lock service in its own process for the benchmark (so the load generator does not share
 * its event loop): real Postgres from DATABASE_URL, one replica, logs off. Prints one JSON line
 * {"url": ...} when ready; stops on SIGTERM.
 */
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openDatabase } from "../../services/kit/db/database.js";
import { createLogger } from "../../services/kit/telemetry/logger.js";
import { lockService } from "../../services/lock/index.js";
import { startServiceHarness } from "../../test/support/service-harness.js";

const databaseUrl = process.env.DATABASE_URL;
if (!databaseUrl) throw new Error("DATABASE_URL is required");
const database = await openDatabase({ databaseUrl, dataDir: mkdtempSync(join(tmpdir(), "orca-lock-bench-")), logger: createLogger({ level: "silent" }), poolSize: 20 });
const harness = await startServiceHarness(lockService, { database });
process.stdout.write(`${JSON.stringify({ url: harness.url })}\n`);
const stop = async () => {
  await harness.stop();
  await database.close();
  process.exit(0);
};
process.on("SIGTERM", () => void stop());
process.on("SIGINT", () => void stop());
