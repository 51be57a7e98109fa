import { loadPolicy, type LoadedPolicy } from "@open-policy-agent/opa-wasm";
import { Parser } from "tar";
import {
  DECISION_KINDS,
  errorText,
  evaluationError,
  type BundleFailure,
  type DecisionKind,
  type DecisionOutcome,
  type Engine,
  type JsonObject,
  type LoadResult,
} from "./engine.js";

/**
 * OPA WebAssembly engine (@open-policy-agent/opa-wasm).
 *
 * Content is the standard bundle `opa build -t wasm` writes: a tar.gz holding /policy.wasm,
 * /data.json and /.manifest (entry names with or without the leading "/" or "./"). It is read
 * with the `tar` package's streaming Parser, in memory, with a bound on the unpacked size (a
 * small gzip can expand enormously). The module is compiled and instantiated once at load;
 * data.json is loaded once with setData; each evaluation reuses the instance (opa-wasm resets the
 * heap per evaluate, so there is no per-call allocation growth).
 *
 * Entrypoints: the manifest's `wasm[].entrypoint` list, each of which must exist in the module's
 * compiled `entrypoints()` (else VALIDATE). The evaluated entrypoint is Bundle.entrypoint, else
 * the manifest's first, else the module's first.
 *
 * Result mapping (contract, Engine.ENGINE_OPA_WASM): the entrypoint's value must be a boolean
 * (true = ALLOW, false = DENY) or {"decision": allow|deny|divert|tarpit (any case), "reasons":
 * [string], "divert_target": string (divert), "tarpit_delay_ms": number (tarpit)}. An undefined
 * result (empty result set) or anything else is an evaluation error: DENY, fail closed.
 */

const MAX_UNPACKED_BYTES = 64 * 1024 * 1024;
/** Memory in 64 KiB pages: 5 initial (opa-wasm's default), at most 4096 (256 MiB) per loaded module. */
const MEMORY = { initial: 5, maximum: 4096 };

function entryName(path: string): string {
  return path.replace(/^\.?\/+/, "");
}

async function untar(content: Uint8Array): Promise<Map<string, Buffer>> {
  const files = new Map<string, Buffer>();
  let total = 0;
  await new Promise<void>((resolve, reject) => {
    const parser = new Parser({ strict: true });
    let failed = false;
    const fail = (error: Error): void => {
      if (failed) return;
      failed = true;
      reject(error);
    };
    parser.on("entry", (entry) => {
      if (entry.type !== "File") {
        entry.resume();
        return;
      }
      const chunks: Buffer[] = [];
      entry.on("data", (chunk: Buffer) => {
        total += chunk.length;
        if (total > MAX_UNPACKED_BYTES) {
          fail(new Error(`bundle unpacks to more than ${MAX_UNPACKED_BYTES} bytes`));
          parser.abort(new Error("too large"));
          return;
        }
        chunks.push(chunk);
      });
      entry.on("end", () => files.set(entryName(entry.path), Buffer.concat(chunks)));
    });
    parser.on("error", (error: Error) => fail(error));
    parser.on("warn", (code: string, message: string | Error) => fail(new Error(`${code}: ${errorText(message)}`)));
    parser.on("end", () => (failed ? undefined : resolve()));
    parser.end(Buffer.from(content));
  });
  return files;
}

function isDecision(value: string): value is DecisionKind {
  return (DECISION_KINDS as readonly string[]).includes(value);
}

/** Maps an entrypoint's value to an outcome, or throws when it does not map (fail closed upstream). */
export function mapOpaResult(value: unknown): DecisionOutcome {
  if (value === true) return { decision: "allow", reasons: [] };
  if (value === false) return { decision: "deny", reasons: [] };
  if (!value || typeof value !== "object" || Array.isArray(value)) {
    throw new Error(`entrypoint returned ${JSON.stringify(value)?.slice(0, 80) ?? "undefined"}, expected a boolean or a decision object`);
  }
  const obj = value as Record<string, unknown>;
  const decision = typeof obj.decision === "string" ? obj.decision.toLowerCase() : "";
  if (!isDecision(decision)) throw new Error(`"decision" is ${JSON.stringify(obj.decision)}, expected allow, deny, divert or tarpit`);
  const reasons = obj.reasons ?? [];
  if (!Array.isArray(reasons) || !reasons.every((r) => typeof r === "string")) throw new Error(`"reasons" must be an array of strings`);
  const outcome: DecisionOutcome = { decision, reasons: reasons as string[] };
  if (decision === "divert") {
    if (typeof obj.divert_target !== "string" || obj.divert_target === "") throw new Error(`a divert decision needs a non-empty "divert_target"`);
    outcome.divertTarget = obj.divert_target;
  }
  if (decision === "tarpit") {
    const delay = obj.tarpit_delay_ms;
    if (typeof delay !== "number" || !Number.isFinite(delay) || delay < 0) throw new Error(`a tarpit decision needs a non-negative number "tarpit_delay_ms"`);
    outcome.tarpitDelayMs = delay;
  }
  return outcome;
}

class OpaEngine implements Engine {
  readonly kind = "opa_wasm" as const;

  constructor(
    private readonly policy: LoadedPolicy,
    private readonly entrypoint: string,
    readonly entrypoints: string[],
  ) {}

  evaluate(input: JsonObject): DecisionOutcome {
    let resultSet: unknown;
    try {
      resultSet = this.policy.evaluate(input, this.entrypoint);
    } catch (error) {
      return evaluationError(errorText(error));
    }
    if (!Array.isArray(resultSet) || resultSet.length === 0) return evaluationError(`entrypoint ${this.entrypoint} is undefined for this input`);
    try {
      return mapOpaResult((resultSet[0] as { result?: unknown }).result);
    } catch (error) {
      return evaluationError(errorText(error));
    }
  }
}

export async function loadOpaEngine(content: Uint8Array, requestedEntrypoint: string): Promise<LoadResult> {
  const fail = (stage: BundleFailure["stage"], message: string, location?: string): LoadResult => ({ ok: false, failures: [{ stage, message, location }] });
  let files: Map<string, Buffer>;
  try {
    files = await untar(content);
  } catch (error) {
    return fail("load", `content is not a readable tar.gz bundle: ${errorText(error)}`);
  }
  const wasm = files.get("policy.wasm");
  if (!wasm) return fail("load", "the bundle has no /policy.wasm (build it with `opa build -t wasm`)", "/policy.wasm");

  let data: unknown = {};
  const dataFile = files.get("data.json");
  if (dataFile) {
    try {
      data = JSON.parse(dataFile.toString("utf8"));
    } catch (error) {
      return fail("load", `data.json does not parse: ${errorText(error)}`, "/data.json");
    }
  }
  let manifestEntrypoints: string[] = [];
  const manifestFile = files.get(".manifest");
  if (manifestFile) {
    try {
      const manifest = JSON.parse(manifestFile.toString("utf8")) as { wasm?: { entrypoint?: unknown; module?: unknown }[] };
      manifestEntrypoints = (manifest.wasm ?? []).map((w) => String(w.entrypoint ?? ""));
    } catch (error) {
      return fail("load", `.manifest does not parse: ${errorText(error)}`, "/.manifest");
    }
  }

  let policy: LoadedPolicy;
  try {
    policy = await loadPolicy(wasm, { ...MEMORY });
    policy.setData((data ?? {}) as object);
  } catch (error) {
    return fail("load", `policy.wasm does not load: ${errorText(error)}`, "/policy.wasm");
  }
  const compiled = Object.keys((policy.entrypoints ?? {}) as Record<string, number>);
  const missing = manifestEntrypoints.filter((e) => !compiled.includes(e));
  if (missing.length > 0) return fail("validate", `manifest entrypoint(s) ${missing.join(", ")} are not in policy.wasm (it has: ${compiled.join(", ") || "none"})`, "/.manifest");
  const entrypoint = requestedEntrypoint || manifestEntrypoints[0] || compiled[0];
  if (!entrypoint) return fail("validate", "policy.wasm has no entrypoint", "/policy.wasm");
  if (!compiled.includes(entrypoint)) return fail("validate", `unknown entrypoint ${JSON.stringify(entrypoint)} (the bundle has: ${compiled.join(", ")})`, "entrypoint");
  return { ok: true, engine: new OpaEngine(policy, entrypoint, compiled) };
}
