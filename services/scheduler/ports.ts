import type { JsonObject } from "@bufbuild/protobuf";

/**
 * What the Scheduler needs from the outside world, as small interfaces: the domain depends on
 * these, the service wires the real gRPC adapters (adapters.ts), and unit tests inject fakes.
 */

export interface StartRunInput {
  tenant: string;
  workflowName: string;
  workflowVersion: number;
  input: JsonObject;
  idempotencyKey: string;
}

/** A StartRun/CancelRun/GetRun failure, classified: retryable (try again later) or permanent. */
export class RunStartError extends Error {
  constructor(
    message: string,
    readonly retryable: boolean,
    /** NOT_FOUND from the Orchestrator (the workflow or run does not exist). */
    readonly notFound = false,
  ) {
    super(message);
    this.name = "RunStartError";
  }
}

export interface RunStarter {
  /** Starts (or, for a known idempotency key, returns) a run. Throws RunStartError. */
  startRun(request: StartRunInput): Promise<{ runId: string; existing: boolean }>;
  /** True when the run has reached a final state (or no longer exists). Throws RunStartError. */
  isRunFinal(tenant: string, runId: string): Promise<boolean>;
  /** Asks the Orchestrator to cancel a run; a run that already finished is not an error. */
  cancelRun(tenant: string, runId: string, reason: string): Promise<void>;
  /** Throws RunStartError(notFound) if the workflow (version) is not registered, RunStartError(retryable) if unreachable. */
  checkWorkflow(tenant: string, name: string, version: number): Promise<void>;
}

export interface Leadership {
  /** Fencing token of the firer lease: every firer write is stamped with it (see store.fence). */
  fencingToken: bigint;
  /** Aborted when the lease is lost (or the elector stops). */
  signal: AbortSignal;
}

/**
 * Elects the one active firer among the replicas. `run` calls `onLeader` each time this replica
 * becomes leader and awaits it; `onLeader` must return when `leadership.signal` aborts.
 */
export interface LeaderElector {
  run(onLeader: (leadership: Leadership) => Promise<void>, stop: AbortSignal): Promise<void>;
}
