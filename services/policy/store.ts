import { createHash, randomUUID } from "node:crypto";
import { sql, type Kysely, type Selectable, type Transaction } from "kysely";
import type { Database } from "../kit/db/database.js";
import { AbortedError, FailedPreconditionError, InvalidArgumentError, NotFoundError, UnavailableError } from "../kit/errors.js";
import type { BundleFailure, BundleSource, DecisionKind, DecisionOutcome, EngineKind, JsonObject, TestCase } from "./engine.js";
import type { BundlesTable, BundleStatusText, PolicyTables } from "./schema.js";
import type { ValidationReport } from "./validate.js";

/**
 * Bundle versions, activation history and shadow reports in Postgres (schema orca_policy).
 *
 * - Versions are immutable rows; only `status` and `activated_at` ever change.
 * - Every write for one bundle takes a transaction-scoped advisory lock on (tenant, name), so
 *   version numbering, "one active version" and the activation stack are serialized per bundle
 *   on both backends, and no transaction waits on anything but the database.
 * - Every state change writes an `events` row and a pg_notify on CHANGE_CHANNEL in the same
 *   transaction, so other replicas hear only committed changes and reload that bundle.
 * - Validation (engine load + tests) runs BEFORE the writing transaction, never inside it: with
 *   PGlite all services share one session and a long transaction would stall the mesh. So a row
 *   is written with its final status and VALIDATING is never observed.
 */

export const SCHEMA = "orca_policy";
export const CHANGE_CHANNEL = "orca_policy_bundles";

export interface StoredBundle {
  tenant: string;
  name: string;
  version: bigint;
  engine: EngineKind;
  status: BundleStatusText;
  /** Empty when the query left it out (ListBundles). */
  content: Uint8Array;
  cedarSchema: string;
  entrypoint: string;
  tests: TestCase[];
  failures: BundleFailure[];
  digest: string;
  createdAt: Date;
  activatedAt: Date | null;
  createdBy: string;
}

export interface ShadowSetting {
  tenant: string;
  name: string;
  version: bigint;
  sampleRate: number;
  reportId: string;
  activeVersion: bigint;
  startedAt: Date;
}

export interface ShadowExampleRecord {
  input: JsonObject;
  active: DecisionOutcome & { decisionId: string; version: string };
  shadow: DecisionOutcome & { version: string };
  decidedAt: Date;
}

export interface ShadowReportRecord extends ShadowSetting {
  evaluated: bigint;
  agreements: bigint;
  disagreements: bigint;
  shadowErrors: bigint;
  pairs: { active: DecisionKind; shadow: DecisionKind; count: bigint }[];
  agreementExamples: ShadowExampleRecord[];
  disagreementExamples: ShadowExampleRecord[];
}

/** What one replica adds to a shadow report at a flush. */
export interface ShadowDelta {
  tenant: string;
  name: string;
  reportId: string;
  evaluated: number;
  agreements: number;
  disagreements: number;
  shadowErrors: number;
  pairs: Map<string, number>; // "active/shadow" -> count
  examples: { agreed: boolean; example: ShadowExampleRecord }[];
}

interface StoredTest {
  name: string;
  input: JsonObject;
  expected_decision: DecisionKind;
  expected_divert_target?: string;
}

interface StoredFailure {
  stage: BundleFailure["stage"];
  test_name?: string;
  message: string;
  location?: string;
  expected?: DecisionKind;
  actual?: DecisionKind;
}

function toStoredTests(tests: TestCase[]): StoredTest[] {
  return tests.map((t) => ({ name: t.name, input: t.input, expected_decision: t.expectedDecision, ...(t.expectedDivertTarget ? { expected_divert_target: t.expectedDivertTarget } : {}) }));
}

function toStoredFailures(failures: BundleFailure[]): StoredFailure[] {
  return failures.map((f) => ({ stage: f.stage, test_name: f.testName, message: f.message, location: f.location, expected: f.expected, actual: f.actual }));
}

function parseJson<T>(value: unknown): T {
  return (typeof value === "string" ? JSON.parse(value) : value) as T;
}

function fromRow(row: Partial<Selectable<BundlesTable>> & Pick<Selectable<BundlesTable>, "tenant" | "name" | "version" | "engine" | "status" | "digest">): StoredBundle {
  return {
    tenant: row.tenant,
    name: row.name,
    version: BigInt(row.version),
    engine: row.engine,
    status: row.status,
    content: row.content ? new Uint8Array(row.content) : new Uint8Array(),
    cedarSchema: row.cedar_schema ?? "",
    entrypoint: row.entrypoint ?? "",
    tests: (parseJson<StoredTest[] | undefined>(row.tests) ?? []).map((t) => ({
      name: t.name,
      input: t.input,
      expectedDecision: t.expected_decision,
      expectedDivertTarget: t.expected_divert_target,
    })),
    failures: (parseJson<StoredFailure[] | undefined>(row.failures) ?? []).map((f) => ({
      stage: f.stage,
      testName: f.test_name,
      message: f.message,
      location: f.location,
      expected: f.expected,
      actual: f.actual,
    })),
    digest: row.digest,
    createdAt: row.created_at ?? new Date(0),
    activatedAt: row.activated_at ?? null,
    createdBy: row.created_by ?? "",
  };
}

const SUMMARY_COLUMNS = ["tenant", "name", "version", "engine", "status", "entrypoint", "failures", "digest", "created_at", "activated_at", "created_by"] as const;

function describeTenant(tenant: string): string {
  return tenant === "" ? "the default tenant" : `tenant ${JSON.stringify(tenant)}`;
}

export function bundleLabel(tenant: string, name: string): string {
  return `bundle ${JSON.stringify(name)} of ${describeTenant(tenant)}`;
}

/** Database errors that mean "Postgres is not there" become Unavailable (nothing was stored). */
function isConnectionError(error: unknown): boolean {
  const code = (error as { code?: string } | undefined)?.code;
  if (typeof code === "string" && (code.startsWith("08") || code === "57P01" || code === "57P03" || ["ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EPIPE"].includes(code))) return true;
  return error instanceof Error && /Connection terminated|connect ECONNREFUSED|Client has encountered a connection error|Cannot use a pool after calling end/.test(error.message);
}

export class BundleStore {
  readonly db: Kysely<PolicyTables>;

  constructor(private readonly database: Database) {
    this.db = database.db.withSchema(SCHEMA) as Kysely<PolicyTables>;
  }

  /** Runs a database operation, mapping connection failures to Unavailable. */
  private async run<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (error) {
      if (isConnectionError(error)) throw new UnavailableError(`Postgres is unreachable (${what}): ${(error as Error).message}`);
      throw error;
    }
  }

  private tx<T>(what: string, fn: (trx: Transaction<PolicyTables>) => Promise<T>): Promise<T> {
    return this.run(what, () => this.db.transaction().execute(fn));
  }

  private async lock(trx: Transaction<PolicyTables>, tenant: string, name: string): Promise<void> {
    await sql`select pg_advisory_xact_lock(hashtext(${`orca_policy:${tenant}/${name}`}))`.execute(trx);
  }

  private async event(trx: Transaction<PolicyTables>, kind: string, tenant: string, name: string, payload: Record<string, unknown>): Promise<void> {
    await trx
      .insertInto("events")
      .values({ kind, subject: `bundle:${tenant}/${name}`, tenant, payload: JSON.stringify(payload, (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v)) })
      .execute();
    await sql`select pg_notify(${CHANGE_CHANNEL}, ${JSON.stringify({ tenant, name, kind })})`.execute(trx);
  }

  private async exists(trx: Kysely<PolicyTables>, tenant: string, name: string): Promise<boolean> {
    const row = await trx.selectFrom("bundles").select("version").where("tenant", "=", tenant).where("name", "=", name).limit(1).executeTakeFirst();
    return row !== undefined;
  }

  private async activeRow(trx: Kysely<PolicyTables>, tenant: string, name: string): Promise<Selectable<BundlesTable> | undefined> {
    return trx.selectFrom("bundles").selectAll().where("tenant", "=", tenant).where("name", "=", name).where("status", "=", "active").executeTakeFirst();
  }

  /**
   * Makes `version` active inside `trx` (the caller holds the bundle lock): retires the current
   * active version, pushes the activation, resets the shadow report. Returns the previous version.
   */
  private async activateIn(trx: Transaction<PolicyTables>, tenant: string, name: string, version: bigint, by: string): Promise<bigint> {
    const current = await this.activeRow(trx, tenant, name);
    if (current && BigInt(current.version) === version) return version;
    if (current) {
      await trx.updateTable("bundles").set({ status: "retired" }).where("tenant", "=", tenant).where("name", "=", name).where("version", "=", current.version).execute();
    }
    await trx
      .updateTable("bundles")
      .set({ status: "active", activated_at: sql`now()` } as never)
      .where("tenant", "=", tenant)
      .where("name", "=", name)
      .where("version", "=", version)
      .execute();
    const top = await trx.selectFrom("activations").select((eb) => eb.fn.max("position").as("p")).where("tenant", "=", tenant).where("name", "=", name).executeTakeFirst();
    const position = top?.p === null || top?.p === undefined ? 0 : Number(top.p) + 1;
    await trx.insertInto("activations").values({ tenant, name, position, version }).execute();
    await this.resetShadow(trx, tenant, name, version);
    const previous = current ? BigInt(current.version) : 0n;
    await this.event(trx, "bundle.activated", tenant, name, { version, previous_version: previous, by });
    return previous;
  }

  /** A new, empty report after an activation or rollback; a shadow that just went live is cleared. */
  private async resetShadow(trx: Transaction<PolicyTables>, tenant: string, name: string, activeVersion: bigint): Promise<void> {
    const shadow = await trx.selectFrom("shadows").select(["version"]).where("tenant", "=", tenant).where("name", "=", name).executeTakeFirst();
    if (!shadow || BigInt(shadow.version) === 0n) return;
    const cleared = BigInt(shadow.version) === activeVersion;
    await sql`update ${sql.table(`${SCHEMA}.shadows`)} set report_id = ${randomUUID()}, active_version = ${activeVersion}, version = ${cleared ? 0n : BigInt(shadow.version)},
      started_at = now(), evaluated = 0, agreements = 0, disagreements = 0, shadow_errors = 0 where tenant = ${tenant} and name = ${name}`.execute(trx);
  }

  async put(input: {
    tenant: string;
    name: string;
    source: BundleSource;
    tests: TestCase[];
    digest: string;
    report: ValidationReport;
    activate: boolean;
    createdBy: string;
  }): Promise<{ bundle: StoredBundle; created: boolean; previousVersion?: bigint }> {
    const { tenant, name } = input;
    return this.tx("PutBundle", async (trx) => {
      await this.lock(trx, tenant, name);
      const existing = await trx.selectFrom("bundles").select("version").where("tenant", "=", tenant).where("name", "=", name).where("digest", "=", input.digest).executeTakeFirst();
      if (existing) {
        let previousVersion: bigint | undefined;
        const row = await trx.selectFrom("bundles").select(["status"]).where("tenant", "=", tenant).where("name", "=", name).where("version", "=", existing.version).executeTakeFirstOrThrow();
        // Same content again: nothing is created. With `activate`, an identical READY or RETIRED
        // version is activated (the caller asked for this content to be live).
        if (input.activate && (row.status === "ready" || row.status === "retired")) {
          previousVersion = await this.activateIn(trx, tenant, name, BigInt(existing.version), input.createdBy);
        }
        const stored = await trx.selectFrom("bundles").select(SUMMARY_COLUMNS).select(["cedar_schema", "tests"]).where("tenant", "=", tenant).where("name", "=", name).where("version", "=", existing.version).executeTakeFirstOrThrow();
        return { bundle: fromRow(stored), created: false, previousVersion };
      }
      const max = await trx.selectFrom("bundles").select((eb) => eb.fn.max("version").as("v")).where("tenant", "=", tenant).where("name", "=", name).executeTakeFirst();
      const version = (max?.v === null || max?.v === undefined ? 0n : BigInt(max.v as bigint)) + 1n;
      const status: BundleStatusText = input.report.valid ? "ready" : "rejected";
      await trx
        .insertInto("bundles")
        .values({
          tenant,
          name,
          version,
          engine: input.source.engine,
          status,
          content: input.source.content,
          cedar_schema: input.source.cedarSchema,
          entrypoint: input.source.entrypoint,
          tests: JSON.stringify(toStoredTests(input.tests)),
          failures: JSON.stringify(toStoredFailures(input.report.failures)),
          digest: input.digest,
          created_by: input.createdBy,
        })
        .execute();
      await this.event(trx, status === "rejected" ? "bundle.rejected" : "bundle.stored", tenant, name, {
        version,
        engine: input.source.engine,
        digest: input.digest,
        failures: input.report.failures.length,
        by: input.createdBy,
      });
      let previousVersion: bigint | undefined;
      if (input.activate && status === "ready") previousVersion = await this.activateIn(trx, tenant, name, version, input.createdBy);
      const stored = await trx.selectFrom("bundles").select(SUMMARY_COLUMNS).select(["cedar_schema", "tests"]).where("tenant", "=", tenant).where("name", "=", name).where("version", "=", version).executeTakeFirstOrThrow();
      return { bundle: fromRow(stored), created: true, previousVersion };
    });
  }

  async activate(tenant: string, name: string, version: bigint, expectedActive: bigint, by: string): Promise<{ bundle: StoredBundle; previousVersion: bigint; changed: boolean }> {
    return this.tx("ActivateBundle", async (trx) => {
      await this.lock(trx, tenant, name);
      if (!(await this.exists(trx, tenant, name))) throw new NotFoundError(`${bundleLabel(tenant, name)} does not exist`);
      const row = await trx.selectFrom("bundles").select(["status"]).where("tenant", "=", tenant).where("name", "=", name).where("version", "=", version).executeTakeFirst();
      if (!row) throw new NotFoundError(`${bundleLabel(tenant, name)} has no version ${version}`);
      if (row.status === "rejected" || row.status === "validating") {
        throw new FailedPreconditionError(`version ${version} of ${bundleLabel(tenant, name)} is ${row.status.toUpperCase()} and can never be activated`);
      }
      const current = await this.activeRow(trx, tenant, name);
      const currentVersion = current ? BigInt(current.version) : 0n;
      if (expectedActive !== 0n && currentVersion !== expectedActive) {
        throw new AbortedError(`the active version of ${bundleLabel(tenant, name)} is ${currentVersion || "none"}, not ${expectedActive}`);
      }
      const previousVersion = await this.activateIn(trx, tenant, name, version, by);
      const stored = await trx.selectFrom("bundles").select(SUMMARY_COLUMNS).where("tenant", "=", tenant).where("name", "=", name).where("version", "=", version).executeTakeFirstOrThrow();
      return { bundle: fromRow(stored), previousVersion, changed: currentVersion !== version };
    });
  }

  async rollback(tenant: string, name: string, expectedActive: bigint, by: string): Promise<{ bundle: StoredBundle; rolledBackVersion: bigint }> {
    return this.tx("Rollback", async (trx) => {
      await this.lock(trx, tenant, name);
      if (!(await this.exists(trx, tenant, name))) throw new NotFoundError(`${bundleLabel(tenant, name)} does not exist`);
      const current = await this.activeRow(trx, tenant, name);
      if (!current) throw new FailedPreconditionError(`${bundleLabel(tenant, name)} has no active version to roll back`);
      const currentVersion = BigInt(current.version);
      if (expectedActive !== 0n && currentVersion !== expectedActive) {
        throw new AbortedError(`the active version of ${bundleLabel(tenant, name)} is ${currentVersion}, not ${expectedActive}`);
      }
      const stack = await trx.selectFrom("activations").select(["position", "version"]).where("tenant", "=", tenant).where("name", "=", name).orderBy("position", "desc").limit(2).execute();
      if (stack.length < 2) throw new FailedPreconditionError(`${bundleLabel(tenant, name)} has no earlier activation to return to (version ${currentVersion} is the first)`);
      const [top, below] = stack as [(typeof stack)[0], (typeof stack)[0]];
      const target = BigInt(below.version);
      await trx.deleteFrom("activations").where("tenant", "=", tenant).where("name", "=", name).where("position", "=", top.position).execute();
      await trx.updateTable("bundles").set({ status: "retired" }).where("tenant", "=", tenant).where("name", "=", name).where("version", "=", currentVersion).execute();
      await trx
        .updateTable("bundles")
        .set({ status: "active", activated_at: sql`now()` } as never)
        .where("tenant", "=", tenant)
        .where("name", "=", name)
        .where("version", "=", target)
        .execute();
      await this.resetShadow(trx, tenant, name, target);
      await this.event(trx, "bundle.rolled_back", tenant, name, { version: target, rolled_back_version: currentVersion, by });
      const stored = await trx.selectFrom("bundles").select(SUMMARY_COLUMNS).where("tenant", "=", tenant).where("name", "=", name).where("version", "=", target).executeTakeFirstOrThrow();
      return { bundle: fromRow(stored), rolledBackVersion: currentVersion };
    });
  }

  /** One version in full; version 0 = the active one. */
  async get(tenant: string, name: string, version: bigint): Promise<StoredBundle> {
    return this.run("GetBundle", async () => {
      let query = this.db.selectFrom("bundles").selectAll().where("tenant", "=", tenant).where("name", "=", name);
      query = version === 0n ? query.where("status", "=", "active") : query.where("version", "=", version);
      const row = await query.executeTakeFirst();
      if (row) return fromRow(row);
      if (!(await this.exists(this.db, tenant, name))) throw new NotFoundError(`${bundleLabel(tenant, name)} does not exist`);
      throw new NotFoundError(version === 0n ? `${bundleLabel(tenant, name)} has no active version` : `${bundleLabel(tenant, name)} has no version ${version}`);
    });
  }

  /** The active version in full, or undefined when the bundle has none. */
  async getActive(tenant: string, name: string): Promise<StoredBundle | undefined> {
    return this.run("load active bundle", async () => {
      const row = await this.activeRow(this.db, tenant, name);
      return row ? fromRow(row) : undefined;
    });
  }

  async list(query: { tenant: string; name: string; statuses: BundleStatusText[]; pageSize: number; pageToken: string }): Promise<{ bundles: StoredBundle[]; nextPageToken: string }> {
    const fingerprint = createHash("sha256")
      .update(JSON.stringify([query.tenant, query.name, [...query.statuses].sort()]))
      .digest("base64url")
      .slice(0, 16);
    let after: { n: string; v: bigint } | undefined;
    if (query.pageToken !== "") {
      try {
        const parsed = JSON.parse(Buffer.from(query.pageToken, "base64url").toString("utf8")) as { q: string; n: string; v: string };
        if (parsed.q !== fingerprint) throw new InvalidArgumentError("page_token", "belongs to another query (tenant, name or statuses differ)");
        after = { n: String(parsed.n), v: BigInt(parsed.v) };
      } catch (error) {
        if (error instanceof InvalidArgumentError) throw error;
        throw new InvalidArgumentError("page_token", "is malformed (pass next_page_token of a previous response unchanged)");
      }
    }
    return this.run("ListBundles", async () => {
      let q = this.db.selectFrom("bundles").select(SUMMARY_COLUMNS).where("tenant", "=", query.tenant);
      if (query.name !== "") q = q.where("name", "=", query.name);
      if (query.statuses.length > 0) q = q.where("status", "in", query.statuses);
      if (after) {
        const a = after;
        q = q.where((eb) => eb.or([eb("name", ">", a.n), eb.and([eb("name", "=", a.n), eb("version", "<", a.v)])]));
      }
      const rows = await q.orderBy("name", "asc").orderBy("version", "desc").limit(query.pageSize + 1).execute();
      const page = rows.slice(0, query.pageSize).map(fromRow);
      const last = page[page.length - 1];
      const nextPageToken =
        rows.length > query.pageSize && last ? Buffer.from(JSON.stringify({ q: fingerprint, n: last.name, v: last.version.toString() })).toString("base64url") : "";
      return { bundles: page, nextPageToken };
    });
  }

  async getShadow(tenant: string, name: string): Promise<ShadowSetting | undefined> {
    return this.run("load shadow", async () => {
      const row = await this.db.selectFrom("shadows").selectAll().where("tenant", "=", tenant).where("name", "=", name).executeTakeFirst();
      if (!row || BigInt(row.version) === 0n) return undefined;
      return {
        tenant,
        name,
        version: BigInt(row.version),
        sampleRate: Number(row.sample_rate),
        reportId: row.report_id,
        activeVersion: BigInt(row.active_version),
        startedAt: row.started_at,
      };
    });
  }

  /** Sets (version > 0) or clears (0) the shadow; a new report unless the same setting is repeated. */
  async setShadow(tenant: string, name: string, version: bigint, sampleRate: number, by: string): Promise<ShadowSetting | undefined> {
    return this.tx("SetShadow", async (trx) => {
      await this.lock(trx, tenant, name);
      if (!(await this.exists(trx, tenant, name))) throw new NotFoundError(`${bundleLabel(tenant, name)} does not exist`);
      const active = await this.activeRow(trx, tenant, name);
      if (version !== 0n) {
        const row = await trx.selectFrom("bundles").select(["status"]).where("tenant", "=", tenant).where("name", "=", name).where("version", "=", version).executeTakeFirst();
        if (!row) throw new NotFoundError(`${bundleLabel(tenant, name)} has no version ${version}`);
        if (row.status === "rejected" || row.status === "validating") throw new FailedPreconditionError(`version ${version} is ${row.status.toUpperCase()} and cannot be a shadow`);
        if (!active) throw new FailedPreconditionError(`${bundleLabel(tenant, name)} has no active version to compare a shadow with`);
        if (BigInt(active.version) === version) throw new FailedPreconditionError(`version ${version} is the active version; a shadow must be another version`);
      }
      const existing = await trx.selectFrom("shadows").selectAll().where("tenant", "=", tenant).where("name", "=", name).executeTakeFirst();
      if (
        existing &&
        BigInt(existing.version) === version &&
        Number(existing.sample_rate) === sampleRate &&
        (version === 0n || BigInt(existing.active_version) === BigInt(active!.version))
      ) {
        // Repeating the same SetShadow keeps the running report.
        return version === 0n ? undefined : { tenant, name, version, sampleRate, reportId: existing.report_id, activeVersion: BigInt(existing.active_version), startedAt: existing.started_at };
      }
      const reportId = randomUUID();
      const activeVersion = active ? BigInt(active.version) : 0n;
      await sql`insert into ${sql.table(`${SCHEMA}.shadows`)} (tenant, name, version, sample_rate, report_id, active_version)
        values (${tenant}, ${name}, ${version}, ${sampleRate}, ${reportId}, ${activeVersion})
        on conflict (tenant, name) do update set version = excluded.version, sample_rate = excluded.sample_rate, report_id = excluded.report_id,
          active_version = excluded.active_version, started_at = now(), evaluated = 0, agreements = 0, disagreements = 0, shadow_errors = 0`.execute(trx);
      if (existing) {
        await trx.deleteFrom("shadow_pairs").where("report_id", "=", existing.report_id).execute();
        await trx.deleteFrom("shadow_examples").where("report_id", "=", existing.report_id).execute();
      }
      await this.event(trx, version === 0n ? "shadow.cleared" : "shadow.set", tenant, name, { version, sample_rate: sampleRate, by });
      const row = await trx.selectFrom("shadows").select(["started_at"]).where("tenant", "=", tenant).where("name", "=", name).executeTakeFirstOrThrow();
      return version === 0n ? undefined : { tenant, name, version, sampleRate, reportId, activeVersion, startedAt: row.started_at };
    });
  }

  /** Adds one replica's counts to the shared report; counts for a report that was replaced are dropped. */
  async flushShadow(delta: ShadowDelta): Promise<void> {
    await this.tx("flush shadow report", async (trx) => {
      const updated = await sql`update ${sql.table(`${SCHEMA}.shadows`)} set evaluated = evaluated + ${delta.evaluated}, agreements = agreements + ${delta.agreements},
          disagreements = disagreements + ${delta.disagreements}, shadow_errors = shadow_errors + ${delta.shadowErrors}
        where tenant = ${delta.tenant} and name = ${delta.name} and report_id = ${delta.reportId}`.execute(trx);
      if (Number(updated.numAffectedRows ?? 0n) === 0) return;
      for (const [pair, count] of delta.pairs) {
        const [active, shadow] = pair.split("/");
        await sql`insert into ${sql.table(`${SCHEMA}.shadow_pairs`)} (report_id, active, shadow, count) values (${delta.reportId}, ${active}, ${shadow}, ${count})
          on conflict (report_id, active, shadow) do update set count = shadow_pairs.count + excluded.count`.execute(trx);
      }
      for (const { agreed, example } of delta.examples) {
        await trx
          .insertInto("shadow_examples")
          .values({
            report_id: delta.reportId,
            agreed,
            decided_at: example.decidedAt,
            input: JSON.stringify(example.input),
            active: JSON.stringify(example.active),
            shadow: JSON.stringify(example.shadow),
          })
          .execute();
      }
      if (delta.examples.length > 0) {
        // Keep the 10 most recent of each kind.
        await sql`delete from ${sql.table(`${SCHEMA}.shadow_examples`)} e where e.report_id = ${delta.reportId} and e.id not in (
            select id from ${sql.table(`${SCHEMA}.shadow_examples`)} where report_id = ${delta.reportId} and agreed = e.agreed order by id desc limit 10)`.execute(trx);
      }
    });
  }

  async getShadowReport(tenant: string, name: string): Promise<ShadowReportRecord> {
    return this.run("GetShadowReport", async () => {
      if (!(await this.exists(this.db, tenant, name))) throw new NotFoundError(`${bundleLabel(tenant, name)} does not exist`);
      const row = await this.db.selectFrom("shadows").selectAll().where("tenant", "=", tenant).where("name", "=", name).executeTakeFirst();
      if (!row || BigInt(row.version) === 0n) throw new FailedPreconditionError(`no shadow is set for ${bundleLabel(tenant, name)} (use SetShadow)`);
      const pairs = await this.db.selectFrom("shadow_pairs").select(["active", "shadow", "count"]).where("report_id", "=", row.report_id).orderBy("active").orderBy("shadow").execute();
      const examples = await this.db.selectFrom("shadow_examples").selectAll().where("report_id", "=", row.report_id).orderBy("id", "desc").execute();
      const toExample = (e: (typeof examples)[0]): ShadowExampleRecord => ({
        input: parseJson<JsonObject>(e.input),
        active: parseJson<ShadowExampleRecord["active"]>(e.active),
        shadow: parseJson<ShadowExampleRecord["shadow"]>(e.shadow),
        decidedAt: e.decided_at,
      });
      return {
        tenant,
        name,
        version: BigInt(row.version),
        sampleRate: Number(row.sample_rate),
        reportId: row.report_id,
        activeVersion: BigInt(row.active_version),
        startedAt: row.started_at,
        evaluated: BigInt(row.evaluated),
        agreements: BigInt(row.agreements),
        disagreements: BigInt(row.disagreements),
        shadowErrors: BigInt(row.shadow_errors),
        pairs: pairs.map((p) => ({ active: p.active as DecisionKind, shadow: p.shadow as DecisionKind, count: BigInt(p.count) })),
        agreementExamples: examples.filter((e) => e.agreed).slice(0, 10).map(toExample),
        disagreementExamples: examples.filter((e) => !e.agreed).slice(0, 10).map(toExample),
      };
    });
  }

  /** Every bundle with an active version (loaded at start so the first decisions are warm). */
  async listActive(): Promise<{ tenant: string; name: string }[]> {
    return this.run("list active bundles", () => this.db.selectFrom("bundles").select(["tenant", "name"]).where("status", "=", "active").execute());
  }

  listen(onChange: (change: { tenant: string; name: string; kind: string }) => void): Promise<() => Promise<void>> {
    return this.database.listen(CHANGE_CHANNEL, (payload) => {
      try {
        const parsed = JSON.parse(payload) as { tenant: string; name: string; kind: string };
        onChange(parsed);
      } catch {
        // Not ours; ignore.
      }
    });
  }
}
