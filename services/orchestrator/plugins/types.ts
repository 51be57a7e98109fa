import type { JsonObject } from "@bufbuild/protobuf";

/** Why an attempt failed: a TaskError kind (namespaced, e.g. `http.status`) and a message. */
export class TaskFailure extends Error {
  override name = "TaskFailure";
  constructor(
    readonly kind: string,
    message: string,
    readonly nonRetryable = false,
  ) {
    super(message);
  }
}

export interface PluginCall {
  /** Aborted on start-to-close timeout, cancellation, run failure/timeout, or loss of the Lock lease. */
  signal: AbortSignal;
  /** The task's config with every CEL expression resolved (already validated by `validate`). */
  config: JsonObject;
  input: JsonObject;
  /** Outputs of direct dependencies that SUCCEEDED or CACHED. */
  dependencyOutputs: JsonObject;
  runId: string;
  taskId: string;
  attempt: number;
  tenant: string;
  /** Fencing token of the task's Lock lease; 0n without a lock key. Pass it to the protected resource. */
  fencingToken: bigint;
  lockResource: string;
}

/**
 * A built-in task executor. `validate` runs at registration (with `isDynamic(key)` true for keys
 * whose value is a CEL template, so unknown until run time) and again on the resolved config
 * before each attempt (isDynamic always false); it returns `field: reason` messages.
 */
export interface Plugin {
  name: string;
  validate(config: JsonObject, isDynamic: (key: string) => boolean): string[];
  execute(call: PluginCall): Promise<JsonObject>;
}

/** The worker plugin has no executor: its tasks wait in a queue for PollTasks. */
export const WORKER_PLUGIN = "worker";

export function isObject(v: unknown): v is JsonObject {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Config keys not in `allowed` are errors: a typo must not be silently ignored. */
export function unknownKeys(config: JsonObject, allowed: string[]): string[] {
  return Object.keys(config)
    .filter((k) => !allowed.includes(k))
    .map((k) => `${k}: unknown field (known: ${allowed.join(", ")})`);
}
