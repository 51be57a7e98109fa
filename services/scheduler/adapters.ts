import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import type { LockService } from "../../gen/orca/lock/v1/lock_pb.js";
import { RunStatus, type OrchestratorService } from "../../gen/orca/orchestrator/v1/orchestrator_pb.js";
import type { Logger } from "../kit/telemetry/logger.js";
import { RunStartError, type LeaderElector, type Leadership, type RunStarter, type StartRunInput } from "./ports.js";

/**
 * The real adapters behind the ports: the Orchestrator and the Lock service through their
 * generated typed clients (ctx.clients). No other module of the Scheduler talks gRPC.
 */

const RETRYABLE = new Set([Code.Unavailable, Code.DeadlineExceeded, Code.ResourceExhausted, Code.Aborted, Code.Internal, Code.Unknown, Code.Canceled, Code.Unimplemented]);

function classify(error: unknown, what: string): RunStartError {
  const e = ConnectError.from(error);
  return new RunStartError(`${what}: ${Code[e.code]}: ${e.rawMessage}`, RETRYABLE.has(e.code), e.code === Code.NotFound);
}

const FINAL = new Set([RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.TIMED_OUT]);

export class OrchestratorRunStarter implements RunStarter {
  constructor(private readonly client: Client<typeof OrchestratorService>) {}

  async startRun(request: StartRunInput): Promise<{ runId: string; existing: boolean }> {
    try {
      const response = await this.client.startRun({
        tenant: request.tenant,
        workflowName: request.workflowName,
        workflowVersion: request.workflowVersion,
        input: request.input,
        idempotencyKey: request.idempotencyKey,
      });
      if (!response.run) throw new RunStartError("StartRun returned no run", true);
      return { runId: response.run.id, existing: response.existing };
    } catch (error) {
      if (error instanceof RunStartError) throw error;
      throw classify(error, "StartRun");
    }
  }

  async isRunFinal(tenant: string, runId: string): Promise<boolean> {
    try {
      const { run } = await this.client.getRun({ runId });
      return !run || FINAL.has(run.status);
    } catch (error) {
      if (ConnectError.from(error).code === Code.NotFound) return true;
      throw classify(error, "GetRun");
    }
  }

  async cancelRun(_tenant: string, runId: string, reason: string): Promise<void> {
    try {
      await this.client.cancelRun({ runId, reason });
    } catch (error) {
      const code = ConnectError.from(error).code;
      // Already finished or gone: nothing to cancel.
      if (code === Code.FailedPrecondition || code === Code.NotFound) return;
      throw classify(error, "CancelRun");
    }
  }

  async checkWorkflow(tenant: string, name: string, version: number): Promise<void> {
    try {
      await this.client.getWorkflow({ tenant, name, version });
    } catch (error) {
      throw classify(error, "GetWorkflow");
    }
  }
}

/** The lease resource the firer is elected on (the contract names it). */
export const FIRER_RESOURCE = "orca/scheduler/firer";

/**
 * Leader election on a Lock lease: Acquire waits in the resource's queue (so a standby is granted
 * the lease as soon as the leader's lapses or is released), then Extend renews it every third of
 * the TTL. Leadership is given up (signal aborted) when a renewal is refused (FAILED_PRECONDITION /
 * NOT_FOUND: someone else holds it) or when no renewal was confirmed within the TTL measured
 * locally from when the last successful renewal was SENT (so our clock running slow cannot make us
 * overstay). A stale firer that still writes is stopped by the fencing token in the database.
 */
export class LockLeaderElector implements LeaderElector {
  constructor(
    private readonly client: Client<typeof LockService>,
    private readonly options: { ttlMs: number; owner: string; logger: Logger; resource?: string; /** false simulates a crash in tests: the lease lapses at its TTL. */ releaseOnStop?: boolean },
  ) {}

  async run(onLeader: (leadership: Leadership) => Promise<void>, stop: AbortSignal): Promise<void> {
    const { ttlMs, owner, logger } = this.options;
    const resource = this.options.resource ?? FIRER_RESOURCE;
    while (!stop.aborted) {
      let lease;
      const sent = Date.now();
      try {
        ({ lease } = await this.client.acquire(
          { resource, owner, ttl: durationFromMs(ttlMs), waitTimeout: durationFromMs(ttlMs) },
          { signal: stop, timeoutMs: ttlMs + 5000 },
        ));
      } catch (error) {
        if (stop.aborted) return;
        const code = ConnectError.from(error).code;
        if (code !== Code.DeadlineExceeded) {
          logger.warn({ err: error }, "scheduler: firer election failed; retrying");
          await sleep(Math.min(1000, ttlMs / 4), stop);
        }
        continue;
      }
      if (!lease) continue;
      const controller = new AbortController();
      const onStop = () => controller.abort(new Error("scheduler stopping"));
      stop.addEventListener("abort", onStop, { once: true });
      let localExpiry = sent + ttlMs;
      const expiryCheck = setInterval(() => {
        if (Date.now() >= localExpiry - Math.min(200, ttlMs / 10)) controller.abort(new Error("firer lease renewal not confirmed in time"));
      }, Math.max(20, Math.floor(ttlMs / 20)));
      const renew = (async () => {
        while (!controller.signal.aborted) {
          await sleep(Math.floor(ttlMs / 3), controller.signal);
          if (controller.signal.aborted) return;
          const renewSent = Date.now();
          try {
            await this.client.extend({ leaseId: lease.leaseId, fencingToken: lease.fencingToken, ttl: durationFromMs(ttlMs) }, { timeoutMs: Math.max(500, ttlMs / 3) });
            localExpiry = renewSent + ttlMs;
          } catch (error) {
            const code = ConnectError.from(error).code;
            if (code === Code.FailedPrecondition || code === Code.NotFound) {
              controller.abort(new Error(`firer lease lost: ${ConnectError.from(error).rawMessage}`));
              return;
            }
            logger.warn({ err: error }, "scheduler: firer lease renewal failed; retrying until the lease would expire");
          }
        }
      })();
      logger.info({ fencingToken: String(lease.fencingToken) }, "scheduler: this replica is the firer");
      try {
        await onLeader({ fencingToken: lease.fencingToken, signal: controller.signal });
      } catch (error) {
        logger.error({ err: error }, "scheduler: firer loop failed");
      } finally {
        controller.abort(new Error("firer loop ended"));
        clearInterval(expiryCheck);
        stop.removeEventListener("abort", onStop);
        await renew;
        // Hand over at once when stopping cleanly; otherwise the lease lapses at its TTL.
        if (this.options.releaseOnStop !== false) {
          await this.client.release({ leaseId: lease.leaseId, fencingToken: lease.fencingToken }, { timeoutMs: 2000 }).catch(() => undefined);
        }
        logger.info("scheduler: this replica is no longer the firer");
      }
    }
  }
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}
