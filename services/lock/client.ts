import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import {
  KeepAliveRequestSchema,
  LeaseFailureReason,
  LeaseFailureSchema,
  type KeepAliveRequest,
  type Lease,
  type LockService,
} from "../../gen/orca/lock/v1/lock_pb.js";

/**
 * `withLock`: run a function while holding a lease, the way users should (exported for the typed
 * clients: `import { withLock } from "@orca/mesh/clients"`).
 *
 *   await withLock(lockClient, "reports/daily", async ({ fencingToken, signal }) => {
 *     await store.write(report, { fencingToken, signal }); // the store rejects lower tokens
 *   });
 *
 * It acquires (waiting up to `waitTimeoutMs`), keeps the lease alive over a KeepAlive stream while
 * `fn` runs, passes the fencing token, aborts `signal` as soon as the lease is lost (a
 * FAILED_PRECONDITION/NOT_FOUND from KeepAlive, or no renewal confirmed before the lease's
 * expiry as measured locally from when the renewal was SENT, so clock skew cannot make us
 * overstay), and releases at the end, also when `fn` throws.
 *
 * If the lease was lost while `fn` ran, `withLock` throws LeaseLostError even when `fn` returned
 * normally: its writes may have been fenced off, and the caller must not treat the work as done
 * under the lock.
 */
export interface WithLockOptions {
  /** Tenant of the resource; empty = default tenant. */
  tenant?: string;
  /** Owner shown to observers; default: the server uses the caller's identity. */
  owner?: string;
  /** Lease TTL (default 30 s). The lease survives a client crash for at most this long. */
  ttlMs?: number;
  /** How long to wait in the queue (default 60 s; 0 = try-lock). */
  waitTimeoutMs?: number;
  /** 0 (default) to 100; see AcquireRequest.priority. */
  priority?: number;
  /** 0 = capacity in effect (mutex for a new resource); N = a semaphore of N. */
  capacity?: number;
  /** Renewal period (default a third of the TTL). */
  keepAliveIntervalMs?: number;
  /** Cancels the wait, and aborts fn's signal while it runs. */
  signal?: AbortSignal;
}

export interface LockContext {
  fencingToken: bigint;
  leaseId: string;
  lease: Lease;
  /** Aborted (with a LeaseLostError reason) when the lease is lost, or when options.signal aborts. */
  signal: AbortSignal;
}

/** The lease ended while the protected work was running. */
export class LeaseLostError extends Error {
  constructor(
    message: string,
    readonly reason: "expired" | "released" | "not_holder" | "not_found" | "unconfirmed",
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "LeaseLostError";
  }
}

/** A KeepAlive stream is reopened after this long, so a transport's default deadline never cuts it. */
const KEEPALIVE_STREAM_MS = 10 * 60_000;

const REASONS: Partial<Record<LeaseFailureReason, LeaseLostError["reason"]>> = {
  [LeaseFailureReason.EXPIRED]: "expired",
  [LeaseFailureReason.RELEASED]: "released",
  [LeaseFailureReason.NOT_HOLDER]: "not_holder",
};

function lostFrom(error: ConnectError): LeaseLostError | undefined {
  if (error.code === Code.NotFound) return new LeaseLostError(`lease lost: ${error.rawMessage}`, "not_found", { cause: error });
  if (error.code !== Code.FailedPrecondition) return undefined;
  const detail = error.findDetails(LeaseFailureSchema)[0];
  return new LeaseLostError(`lease lost: ${error.rawMessage}`, (detail && REASONS[detail.reason]) ?? "expired", { cause: error });
}

export async function withLock<T>(
  client: Client<typeof LockService>,
  resource: string,
  fn: (lock: LockContext) => Promise<T> | T,
  options: WithLockOptions = {},
): Promise<T> {
  const ttlMs = options.ttlMs ?? 30_000;
  const waitTimeoutMs = options.waitTimeoutMs ?? 60_000;
  const interval = Math.max(1, options.keepAliveIntervalMs ?? Math.floor(ttlMs / 3));
  const tenant = options.tenant ?? "";
  const acquireSent = Date.now();
  const { lease } = await client.acquire(
    {
      tenant,
      resource,
      owner: options.owner ?? "",
      ttl: durationFromMs(ttlMs),
      waitTimeout: durationFromMs(waitTimeoutMs),
      priority: options.priority ?? 0,
      capacity: options.capacity ?? 0,
    },
    // The call's deadline must not cut the wait short (transports default to a few seconds).
    { signal: options.signal, timeoutMs: waitTimeoutMs + 10_000 },
  );
  if (!lease) throw new Error("Acquire returned no lease");

  const controller = new AbortController();
  const keeperStop = new AbortController();
  // Local view of expiry: send time of the last confirmed renewal + TTL (never the server's clock).
  let localExpiry = acquireSent + ttlMs;
  let lost: LeaseLostError | undefined;
  const lose = (error: LeaseLostError) => {
    if (lost || keeperStop.signal.aborted) return;
    lost = error;
    controller.abort(error);
    keeperStop.abort();
  };
  const onCallerAbort = () => controller.abort(options.signal!.reason);
  options.signal?.addEventListener("abort", onCallerAbort, { once: true });

  let expiryTimer: NodeJS.Timeout | undefined;
  const armExpiry = () => {
    clearTimeout(expiryTimer);
    expiryTimer = setTimeout(() => {
      if (Date.now() >= localExpiry) lose(new LeaseLostError(`lease on "${resource}" expired before a renewal was confirmed`, "unconfirmed"));
      else armExpiry();
    }, Math.max(0, localExpiry - Date.now()));
  };
  armExpiry();

  const keeper = (async () => {
    const request: KeepAliveRequest = create(KeepAliveRequestSchema, { tenant, leaseId: lease.leaseId, fencingToken: lease.fencingToken, ttl: durationFromMs(ttlMs) });
    while (!keeperStop.signal.aborted) {
      const sentTimes: number[] = [];
      async function* requests() {
        while (!keeperStop.signal.aborted) {
          await sleep(interval, keeperStop.signal);
          if (keeperStop.signal.aborted) return;
          sentTimes.push(Date.now());
          yield request;
        }
      }
      try {
        for await (const _response of client.keepAlive(requests(), { signal: keeperStop.signal, timeoutMs: KEEPALIVE_STREAM_MS })) {
          const sent = sentTimes.shift();
          if (sent !== undefined) localExpiry = Math.max(localExpiry, sent + ttlMs);
          armExpiry();
        }
      } catch (error) {
        if (keeperStop.signal.aborted) return;
        const connectError = ConnectError.from(error);
        const lostError = lostFrom(connectError);
        if (lostError) return lose(lostError);
        // Transport trouble: reopen after a pause; the local expiry timer decides when it is too late.
      }
      await sleep(Math.min(200, interval), keeperStop.signal);
    }
  })();

  let result: T;
  let failure: { error: unknown } | undefined;
  try {
    result = await fn({ fencingToken: lease.fencingToken, leaseId: lease.leaseId, lease, signal: controller.signal });
  } catch (error) {
    failure = { error };
  } finally {
    keeperStop.abort();
    clearTimeout(expiryTimer);
    options.signal?.removeEventListener("abort", onCallerAbort);
    await keeper.catch(() => undefined);
    // Release even when fn threw. Failures are not fatal: an unreleased lease lapses at its TTL.
    await client.release({ tenant, leaseId: lease.leaseId, fencingToken: lease.fencingToken }).catch(() => undefined);
  }
  // A lost lease wins over fn's own outcome (fn's error, often the abort, is the cause chain's end).
  if (lost) throw lost;
  if (failure) throw failure.error;
  return result!;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}
