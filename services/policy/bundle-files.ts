import { existsSync } from "node:fs";
import { readdir, readFile, stat } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { DECISION_KINDS, errorText, type BundleSource, type DecisionKind, type JsonObject, type TestCase } from "./engine.js";

/**
 * Bundles as files: the layout of ORCA_POLICY_DIR and of the shipped defaults
 * (services/policy/defaults/). One bundle per base name, in the default tenant:
 *
 *   <name>.cedar                Cedar policy set (UTF-8)
 *   <name>.cedarschema          optional Cedar schema, human-readable format
 *   <name>.cedarschema.json     optional Cedar schema, JSON format (instead of the above)
 *   <name>.tar.gz               OPA bundle from `opa build -t wasm` (instead of .cedar)
 *   <name>.entrypoint           optional OPA entrypoint (one line), e.g. orca/decision
 *   <name>.tests.json           optional test cases: [{"name", "input", "expected_decision":
 *                               "ALLOW"|"DENY"|"DIVERT"|"TARPIT", "expected_divert_target"}]
 *
 * Hidden files and directories (Kubernetes ConfigMap mounts keep their real files under ..data
 * and show symlinks) are skipped; symlinks to files are followed.
 */

export interface FileBundle {
  name: string;
  /** The file that defines the bundle (.cedar or .tar.gz), for "dir:<file>". */
  mainFile: string;
  source: BundleSource;
  tests: TestCase[];
}

export interface FileBundleError {
  name: string;
  file: string;
  message: string;
}

export const BUNDLE_NAME = /^[a-z0-9][a-z0-9._-]{0,127}$/;

export function parseDecision(value: unknown): DecisionKind | undefined {
  if (typeof value !== "string") return undefined;
  const lower = value.toLowerCase().replace(/^decision_/, "");
  return (DECISION_KINDS as readonly string[]).includes(lower) ? (lower as DecisionKind) : undefined;
}

export function parseTestsJson(text: string): TestCase[] {
  const parsed = JSON.parse(text) as unknown;
  const list = Array.isArray(parsed) ? parsed : (parsed as { tests?: unknown })?.tests;
  if (!Array.isArray(list)) throw new Error("expected an array of test cases");
  return list.map((raw, i) => {
    const t = raw as { name?: unknown; input?: unknown; expected_decision?: unknown; expected_divert_target?: unknown };
    if (typeof t.name !== "string" || t.name === "") throw new Error(`test ${i} has no name`);
    const expected = parseDecision(t.expected_decision);
    if (!expected) throw new Error(`test ${JSON.stringify(t.name)}: expected_decision must be ALLOW, DENY, DIVERT or TARPIT`);
    if (t.input !== undefined && (typeof t.input !== "object" || t.input === null || Array.isArray(t.input))) throw new Error(`test ${JSON.stringify(t.name)}: input must be an object`);
    return {
      name: t.name,
      input: (t.input ?? {}) as JsonObject,
      expectedDecision: expected,
      expectedDivertTarget: typeof t.expected_divert_target === "string" && t.expected_divert_target !== "" ? t.expected_divert_target : undefined,
    };
  });
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}

export async function readBundleDir(dir: string): Promise<{ bundles: FileBundle[]; errors: FileBundleError[] }> {
  const names = (await readdir(dir)).filter((f) => !f.startsWith("."));
  const files = new Set<string>();
  for (const f of names) if (await isFile(join(dir, f))) files.add(f);
  const bundles: FileBundle[] = [];
  const errors: FileBundleError[] = [];
  const bases = new Map<string, "cedar" | "opa_wasm" | "both">();
  for (const f of files) {
    const m = /^(.+)\.(cedar|tar\.gz)$/.exec(f);
    if (!m) continue;
    const kind = m[2] === "cedar" ? "cedar" : "opa_wasm";
    const prev = bases.get(m[1]!);
    bases.set(m[1]!, prev && prev !== kind ? "both" : kind);
  }
  for (const [name, kind] of [...bases].sort(([a], [b]) => a.localeCompare(b))) {
    const mainFile = kind === "opa_wasm" ? `${name}.tar.gz` : `${name}.cedar`;
    try {
      if (kind === "both") throw new Error(`both ${name}.cedar and ${name}.tar.gz exist; keep one`);
      if (!BUNDLE_NAME.test(name)) throw new Error(`${JSON.stringify(name)} is not a valid bundle name (lowercase letters, digits, '.', '_', '-')`);
      const content = new Uint8Array(await readFile(join(dir, mainFile)));
      let cedarSchema = "";
      let entrypoint = "";
      if (kind === "cedar") {
        if (files.has(`${name}.cedarschema.json`)) cedarSchema = await readFile(join(dir, `${name}.cedarschema.json`), "utf8");
        else if (files.has(`${name}.cedarschema`)) cedarSchema = await readFile(join(dir, `${name}.cedarschema`), "utf8");
      } else if (files.has(`${name}.entrypoint`)) {
        entrypoint = (await readFile(join(dir, `${name}.entrypoint`), "utf8")).trim();
      }
      let tests: TestCase[] = [];
      if (files.has(`${name}.tests.json`)) {
        try {
          tests = parseTestsJson(await readFile(join(dir, `${name}.tests.json`), "utf8"));
        } catch (error) {
          throw new Error(`${name}.tests.json: ${errorText(error)}`);
        }
      }
      bundles.push({ name, mainFile, source: { engine: kind, content, cedarSchema, entrypoint }, tests });
    } catch (error) {
      errors.push({ name, file: mainFile, message: errorText(error) });
    }
  }
  return { bundles, errors };
}

/** services/policy/defaults, found from this module whether it runs from the sources (tsx) or from dist/. */
export function defaultsDir(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    for (const candidate of [join(dir, "defaults"), join(dir, "services", "policy", "defaults")]) {
      if (existsSync(join(candidate, "default.cedar"))) return candidate;
    }
    const parent = dirname(dir);
    if (parent === dir) throw new Error("cannot find services/policy/defaults/default.cedar");
    dir = parent;
  }
}
