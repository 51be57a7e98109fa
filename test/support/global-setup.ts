/** Says, once per run, which suites skip because Postgres or Redis are not configured. */
export default function setup(): void {
  const skipped: string[] = [];
  if (!process.env.DATABASE_URL) skipped.push("real-Postgres suites (set DATABASE_URL; PGlite suites still run)");
  if (!process.env.REDIS_URL) skipped.push("Redis suites (set REDIS_URL)");
  if (skipped.length > 0) process.stdout.write(`orca tests: skipping ${skipped.join("; ")}\n`);
}
