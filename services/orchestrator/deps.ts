import { create, type JsonObject } from "@bufbuild/protobuf";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { CacheService } from "../../gen/orca/cache/v1/cache_pb.js";
import { LockService, type KeepAliveRequest } from "../../gen/orca/lock/v1/lock_pb.js";
import { Decision, PolicyService } from "../../gen/orca/policy/v1/policy_pb.js";
import type { MeshClients } from "../kit/clients/mesh-clients.js";
import { FailedPreconditionError, UnavailableError } from "../kit/errors.js";
import type { Logger } from "../kit/telemetry/logger.js";
import { durationMs, msDuration } from "./definition.js";

/**
 * What the engine needs from the Policy, Lock and Cache services, as small interfaces: the
 * service uses the mesh implementations below (generated typed clients); unit tests pass
 * in-memory fakes.
 */
export type PolicyEffectName = "ALLOW" | "DENY" | "DIVERT" | "TARPIT";

export interface PolicyOutcome {
  effect: PolicyEffectName;
  reasons: string[];
  delayMs: number;
  bundleName: string;
  bundleVersion: string;
  decisionId: string;
  cached: boolean;
  divertTarget: string;
}

export interface PolicyGate {
  /** The decision for (tenant, workflow, action "start"). Throws UnavailableError when it cannot be had (fail closed). */
  decide(req: { tenant: string; workflow: string; version: number; priority: number }): Promise<PolicyOutcome>;
}

export interface LockGrant {
  leaseId: string;
  token: bigint;
  ttlMs: number;
}

export interface LockProvider {
  /** Waits up to `waitMs` for the lease; throws on timeout or error. */
  acquire(req: { tenant: string; resource: string; owner: string; ttlMs: number; waitMs: number; priority: number; signal: AbortSignal }): Promise<LockGrant>;
  /** Keeps a lease alive until `signal` aborts; calls `onLost` if the Lock service says it is gone. */
  keepAlive(req: { tenant: string; grant: LockGrant; signal: AbortSignal; onLost: (why: string) => void }): void;
  /** Extends once; false when the lease is lost (expired, released, not ours). Throws when the service is unreachable. */
  extend(req: { tenant: string; leaseId: string; token: bigint; ttlMs: number }): Promise<boolean>;
  release(req: { tenant: string; leaseId: string; token: bigint }): Promise<void>;
}

export interface ResultCache {
  /** The stored output, or undefined on a miss (a stale value is a miss: its TTL has passed). Errors count as a miss. */
  get(tenant: string, key: string): Promise<JsonObject | undefined>;
  set(tenant: string, key: string, output: JsonObject, ttlMs: number): Promise<void>;
}

const EFFECTS: Record<number, PolicyEffectName | undefined> = {
  [Decision.ALLOW]: "ALLOW",
  [Decision.DENY]: "DENY",
  [Decision.DIVERT]: "DIVERT",
  [Decision.TARPIT]: "TARPIT",
};

export function meshPolicyGate(clients: MeshClients, bundle: string): PolicyGate {
  const client = clients.client("policy", PolicyService);
  return {
    async decide({ tenant, workflow, version, priority }) {
      let res;
      try {
        res = await client.decide({
          tenant,
          action: "start",
          resource: `Workflow::"${workflow}"`,
          bundle,
          input: { workflow, workflow_version: version, priority },
        });
      } catch (error) {
        const e = ConnectError.from(error);
        // No active bundle is a configuration problem, reported as such; anything else means no
        // decision could be had, and no run starts (fail closed).
        if (e.code === Code.FailedPrecondition) throw new FailedPreconditionError(`policy: ${e.rawMessage}; no run was started`);
        throw new UnavailableError(`policy service unavailable (${Code[e.code]}: ${e.rawMessage}); no run was started`);
      }
      const r = res.result;
      const effect = r ? EFFECTS[r.decision] : undefined;
      if (!r || !effect) throw new UnavailableError("policy service returned no decision; no run was started");
      return {
        effect,
        reasons: [...r.reasons],
        delayMs: durationMs(r.tarpitDelay) ?? 0,
        bundleName: r.bundleName,
        bundleVersion: String(r.bundleVersion),
        decisionId: r.decisionId,
        cached: r.cached,
        divertTarget: r.divertTarget,
      };
    },
  };
}

/** Lock priority is 0..100; task priority is -1000..1000. */
export function lockPriority(priority: number): number {
  return Math.max(0, Math.min(100, Math.round((priority + 1000) / 20)));
}

function isLost(error: unknown): boolean {
  const code = ConnectError.from(error).code;
  return code === Code.FailedPrecondition || code === Code.NotFound;
}

export function meshLockProvider(clients: MeshClients, logger: Logger): LockProvider {
  const client = clients.client("lock", LockService);
  return {
    async acquire({ tenant, resource, owner, ttlMs, waitMs, priority, signal }) {
      const res = await client.acquire(
        { tenant, resource, owner, ttl: msDuration(ttlMs), waitTimeout: msDuration(waitMs), priority },
        { signal, timeoutMs: waitMs + 5_000 },
      );
      const lease = res.lease;
      if (!lease) throw new Error("lock service granted no lease");
      return { leaseId: lease.leaseId, token: lease.fencingToken, ttlMs };
    },
    keepAlive({ tenant, grant, signal, onLost }) {
      // One KeepAlive stream per held lease, a message every third of the TTL; if the stream
      // breaks for another reason than a lost lease, fall back to Extend until the next tick.
      const interval = Math.max(100, Math.floor(grant.ttlMs / 3));
      async function* requests(): AsyncGenerator<Partial<KeepAliveRequest>> {
        while (!signal.aborted) {
          yield { tenant, leaseId: grant.leaseId, fencingToken: grant.token, ttl: create(DurationSchema, msDuration(grant.ttlMs)) };
          await new Promise<void>((resolve) => {
            const timer = setTimeout(resolve, interval);
            signal.addEventListener("abort", () => (clearTimeout(timer), resolve()), { once: true });
          });
        }
      }
      const run = async () => {
        while (!signal.aborted) {
          try {
            for await (const _ of client.keepAlive(requests() as AsyncIterable<KeepAliveRequest>, { signal, timeoutMs: 0 })) {
              if (signal.aborted) return;
            }
            return;
          } catch (error) {
            if (signal.aborted) return;
            if (isLost(error)) return onLost(ConnectError.from(error).rawMessage);
            logger.warn({ err: error, lease: grant.leaseId }, "lock keepalive stream broke; extending instead");
            try {
              if (!(await this.extend({ tenant, leaseId: grant.leaseId, token: grant.token, ttlMs: grant.ttlMs }))) return onLost("lease lost");
            } catch {
              // Unreachable: keep trying until the lease would have lapsed; the Lock service's
              // own expiry then makes the next holder safe (fencing).
            }
            await new Promise((r) => setTimeout(r, interval));
          }
        }
      };
      void run();
    },
    async extend({ tenant, leaseId, token, ttlMs }) {
      try {
        await client.extend({ tenant, leaseId, fencingToken: token, ttl: msDuration(ttlMs) });
        return true;
      } catch (error) {
        if (isLost(error)) return false;
        throw error;
      }
    },
    async release({ tenant, leaseId, token }) {
      try {
        await client.release({ tenant, leaseId, fencingToken: token });
      } catch (error) {
        if (!isLost(error)) logger.warn({ err: error, lease: leaseId }, "lock release failed; the lease will lapse at its TTL");
      }
    },
  };
}

export function meshResultCache(clients: MeshClients, namespace: string, logger: Logger): ResultCache {
  const client = clients.client("cache", CacheService);
  return {
    async get(tenant, key) {
      try {
        const res = await client.get({ tenant, namespace, key }, { timeoutMs: 2_000 });
        const r = res.result;
        if (!r?.found || r.stale || !r.entry) return undefined;
        const value = JSON.parse(Buffer.from(r.entry.value).toString("utf8")) as unknown;
        return typeof value === "object" && value !== null && !Array.isArray(value) ? (value as JsonObject) : undefined;
      } catch (error) {
        logger.debug({ err: error }, "cache lookup failed; treated as a miss");
        return undefined;
      }
    },
    async set(tenant, key, output, ttlMs) {
      try {
        await client.set({ tenant, namespace, key, value: Buffer.from(JSON.stringify(output)), contentType: "application/json", ttl: msDuration(ttlMs), tags: ["orchestrator"] });
      } catch (error) {
        logger.warn({ err: error }, "cache write failed; the result is not memoized");
      }
    },
  };
}
