import type { PGlite } from "@electric-sql/pglite";

/**
 * Presents one embedded PGlite instance as the small pool interface kysely's PostgresDialect
 * uses (connect / query / release / end). PGlite is a single session, so a connection is a
 * mutex: kysely holds it for a whole transaction, and every other query or transaction waits its
 * turn. That is what makes BEGIN ... COMMIT from several services safe on one instance, and it
 * is why the embedded mode serializes transactions (fine for one machine, not for load).
 */
export class PglitePool {
  private tail: Promise<void> = Promise.resolve();

  constructor(private readonly pglite: PGlite) {}

  async connect() {
    let release!: () => void;
    const previous = this.tail;
    this.tail = new Promise<void>((resolve) => (release = resolve));
    await previous;
    const pglite = this.pglite;
    return {
      async query(sql: string, parameters: readonly unknown[]) {
        const result = await pglite.query(sql, parameters as unknown[]);
        return {
          command: (result as { command?: string }).command ?? "SELECT",
          rowCount: result.affectedRows ?? result.rows.length,
          rows: result.rows,
        };
      },
      release,
    };
  }

  async end(): Promise<void> {
    await this.tail;
    await this.pglite.close();
  }
}
