import { watch, type FSWatcher } from "node:fs";
import type { Logger } from "../kit/telemetry/logger.js";
import { FailedPreconditionError } from "../kit/errors.js";
import { defaultsDir, readBundleDir, type FileBundle } from "./bundle-files.js";
import type { DecisionPoint } from "./decision-point.js";
import { errorText, type BundleSource, type JsonObject, type TestCase } from "./engine.js";
import type { BundleStore, StoredBundle } from "./store.js";
import { bundleDigest, validateBundle, type ValidationReport } from "./validate.js";

/**
 * The Policy domain: PutBundle/ValidateBundle/Activate/Rollback/shadow/benchmark on top of the
 * store (Postgres) and the decision point (memory), plus the two file sources of bundles: the
 * shipped defaults and the watched ORCA_POLICY_DIR. Everything that stores a bundle goes through
 * `put`, so the directory loader and the defaults get exactly PutBundle's validation.
 */

export interface BundleInput {
  tenant: string;
  name: string;
  source: BundleSource;
  tests: TestCase[];
}

export class PolicyDomain {
  constructor(
    readonly store: BundleStore,
    readonly decisions: DecisionPoint,
    private readonly logger: Logger,
  ) {}

  validate(input: BundleInput): Promise<ValidationReport> {
    return validateBundle(input.source, input.tests);
  }

  async put(input: BundleInput, activate: boolean, createdBy: string): Promise<{ bundle: StoredBundle; created: boolean; report?: ValidationReport }> {
    const digest = bundleDigest(input.source, input.tests);
    const report = await validateBundle(input.source, input.tests);
    if (report.engine) this.decisions.rememberEngine(digest, report.engine);
    const result = await this.store.put({ ...input, digest, report, activate, createdBy });
    if (result.bundle.status === "active") await this.decisions.refresh(input.tenant, input.name, true);
    return { ...result, report };
  }

  async activate(tenant: string, name: string, version: bigint, expectedActive: bigint, by: string): Promise<{ bundle: StoredBundle; previousVersion: bigint }> {
    const result = await this.store.activate(tenant, name, version, expectedActive, by);
    await this.decisions.refresh(tenant, name, true);
    return result;
  }

  async rollback(tenant: string, name: string, expectedActive: bigint, by: string): Promise<{ bundle: StoredBundle; rolledBackVersion: bigint }> {
    const result = await this.store.rollback(tenant, name, expectedActive, by);
    await this.decisions.refresh(tenant, name, true);
    return result;
  }

  async setShadow(tenant: string, name: string, version: bigint, sampleRate: number, by: string) {
    const setting = await this.store.setShadow(tenant, name, version, sampleRate, by);
    await this.decisions.refresh(tenant, name, true);
    return setting;
  }

  async shadowReport(tenant: string, name: string) {
    // This replica's pending counts first; other replicas flush every ORCA_POLICY_SHADOW_FLUSH_MS.
    await this.decisions.settleShadows();
    await this.decisions.flushShadows();
    return this.store.getShadowReport(tenant, name);
  }

  async benchmark(tenant: string, name: string, version: bigint, input: JsonObject, iterations: number, warmup: number) {
    const bundle = await this.store.get(tenant, name, version);
    if (bundle.status === "rejected" || bundle.status === "validating") {
      throw new FailedPreconditionError(`version ${bundle.version} is ${bundle.status.toUpperCase()} and cannot be benchmarked`);
    }
    return this.decisions.benchmark(bundle, input, iterations, warmup);
  }

  /**
   * The shipped defaults (services/policy/defaults/default.*): stored and activated as bundle
   * "default" of the default tenant when that bundle has no active version, so a fresh mesh makes
   * real decisions. An operator's own activation is never overridden.
   */
  async loadDefaults(dir = defaultsDir()): Promise<void> {
    if (await this.store.getActive("", "default")) return;
    const { bundles, errors } = await readBundleDir(dir);
    const bundle = bundles.find((b) => b.name === "default");
    if (!bundle) throw new Error(`shipped defaults in ${dir} do not load: ${errors.map((e) => e.message).join("; ") || "no default bundle"}`);
    const result = await this.put({ tenant: "", name: "default", source: bundle.source, tests: bundle.tests }, true, "defaults:services/policy/defaults");
    if (result.bundle.status !== "active") {
      throw new Error(`shipped default bundle was rejected: ${result.bundle.failures.map((f) => `${f.testName ?? f.stage}: ${f.message}`).join("; ")}`);
    }
    this.logger.info({ event: "policy.defaults", version: result.bundle.version.toString(), engine: bundle.source.engine }, "default policy bundle active");
  }
}

/**
 * Watches ORCA_POLICY_DIR (fs.watch on the directory, debounced) and reloads it through
 * PolicyDomain.put: a file whose content changed is stored as a new version and activated when it
 * passes validation and its tests; a bad file is stored as REJECTED (visible in ListBundles with
 * its failures) or, if it cannot even be read as a bundle, logged, and in both cases the active
 * version keeps serving. Removing a file changes nothing (deactivation is an explicit act).
 *
 * At start every bundle in the directory is applied (the files are the desired state), then only
 * files whose digest changed since the last scan, so an operator's later ActivateBundle or
 * Rollback is not undone by an unrelated file change.
 */
export class DirectoryLoader {
  private watcher: FSWatcher | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly applied = new Map<string, string>();
  private running: Promise<void> = Promise.resolve();
  private rerun = false;
  private scanning = false;
  /** Number of completed scans (tests wait on it). */
  scans = 0;
  lastErrors: string[] = [];

  constructor(
    private readonly domain: PolicyDomain,
    private readonly dir: string,
    private readonly debounceMs: number,
    private readonly logger: Logger,
    private readonly onScan?: (result: { applied: string[]; rejected: string[]; errors: string[] }) => void,
  ) {}

  async start(): Promise<void> {
    await this.reload();
    this.watcher = watch(this.dir, () => this.schedule());
    this.watcher.on("error", (error) => this.logger.error({ err: error, dir: this.dir }, "ORCA_POLICY_DIR watch failed"));
  }

  private schedule(): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.reload(), this.debounceMs);
  }

  /** Scans the directory now (serialized: a change during a scan triggers one more scan). */
  reload(): Promise<void> {
    if (this.scanning) {
      this.rerun = true;
      return this.running;
    }
    this.scanning = true;
    this.running = (async () => {
      do {
        this.rerun = false;
        await this.scan().catch((error: unknown) => this.logger.error({ err: error, dir: this.dir }, "ORCA_POLICY_DIR scan failed"));
      } while (this.rerun);
      this.scanning = false;
    })();
    return this.running;
  }

  private async scan(): Promise<void> {
    const { bundles, errors } = await readBundleDir(this.dir);
    const applied: string[] = [];
    const rejected: string[] = [];
    for (const e of errors) this.logger.error({ event: "policy.dir.error", dir: this.dir, file: e.file, bundle: e.name, error: e.message }, "policy file not loaded; the active version keeps serving");
    for (const bundle of bundles) {
      const digest = bundleDigest(bundle.source, bundle.tests);
      if (this.applied.get(bundle.name) === digest) continue;
      try {
        const outcome = await this.apply(bundle);
        this.applied.set(bundle.name, digest);
        (outcome === "active" ? applied : rejected).push(bundle.name);
      } catch (error) {
        errors.push({ name: bundle.name, file: bundle.mainFile, message: errorText(error) });
        this.logger.error({ err: error, dir: this.dir, file: bundle.mainFile }, "policy file could not be stored; will retry on the next change");
      }
    }
    this.lastErrors = errors.map((e) => `${e.file}: ${e.message}`);
    this.scans++;
    this.onScan?.({ applied, rejected, errors: this.lastErrors });
  }

  private async apply(bundle: FileBundle): Promise<"active" | "rejected"> {
    const result = await this.domain.put({ tenant: "", name: bundle.name, source: bundle.source, tests: bundle.tests }, true, `dir:${bundle.mainFile}`);
    if (result.bundle.status === "rejected") {
      this.logger.error(
        { event: "policy.dir.rejected", file: bundle.mainFile, version: result.bundle.version.toString(), failures: result.bundle.failures },
        "policy file rejected; the active version keeps serving",
      );
      return "rejected";
    }
    this.logger.info({ event: "policy.dir.applied", file: bundle.mainFile, version: result.bundle.version.toString() }, "policy file applied");
    return "active";
  }

  async close(): Promise<void> {
    clearTimeout(this.timer);
    this.watcher?.close();
    await this.running;
  }
}
