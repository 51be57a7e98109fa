import { create } from "@bufbuild/protobuf";
import { durationFromMs, durationMs, timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import {
  CacheEntrySchema,
  InvalidationCause,
  LookupResultSchema,
  Tier,
  type CacheService,
  type InvalidationEvent,
  type KeySelector,
  type LookupResult,
} from "../../gen/orca/cache/v1/cache_pb.js";
import { callInfoKey } from "../kit/call-scope.js";
import { InvalidArgumentError, PermissionDeniedError, ResourceExhaustedError } from "../kit/errors.js";
import type { Invalidation, Lookup, Selector, TieredCache } from "./cache.js";
import type { CacheConfig } from "./config.js";
import type { TierName } from "./entry.js";
import { GlobError, parseGlob } from "./glob.js";

/** Limits of the contract (cache.proto). */
export const LIMITS = {
  namespaceBytes: 128,
  keyBytes: 512,
  contentTypeBytes: 256,
  tagBytes: 128,
  tags: 32,
  batchKeys: 1000,
  watchNamespaces: 100,
};

const NAMESPACE = /^[A-Za-z0-9._:-]+$/;

const bytes = (s: string) => Buffer.byteLength(s, "utf8");

function checkNamespace(field: string, namespace: string): void {
  if (namespace === "") throw new InvalidArgumentError(field, "must not be empty");
  if (bytes(namespace) > LIMITS.namespaceBytes) throw new InvalidArgumentError(field, `is ${bytes(namespace)} bytes; at most ${LIMITS.namespaceBytes} are allowed`);
  if (!NAMESPACE.test(namespace)) throw new InvalidArgumentError(field, "may only contain letters, digits, '.', '_', '-' and ':'");
}

function checkKey(field: string, key: string): void {
  if (key === "") throw new InvalidArgumentError(field, "must not be empty");
  if (bytes(key) > LIMITS.keyBytes) throw new InvalidArgumentError(field, `is ${bytes(key)} bytes; at most ${LIMITS.keyBytes} are allowed`);
}

function checkTag(field: string, tag: string): void {
  if (tag === "") throw new InvalidArgumentError(field, "must not be empty");
  if (bytes(tag) > LIMITS.tagBytes) throw new InvalidArgumentError(field, `is ${bytes(tag)} bytes; at most ${LIMITS.tagBytes} are allowed`);
}

/**
 * The caller may act for `tenant` when no principal is known (no auth configured: trusted mesh),
 * when its principal carries no tenant, when the tenants match, or when it is admin or system.
 */
function checkTenant(tenant: string, ctx: HandlerContext): void {
  const principal = ctx.values.get(callInfoKey)?.principal;
  if (!principal || principal.tenant === undefined || principal.tenant === tenant) return;
  if (principal.roles.includes("admin") || principal.roles.includes("system")) return;
  throw new PermissionDeniedError(`principal ${principal.subject} may not act for tenant ${JSON.stringify(tenant)}`);
}

const TIERS: Record<TierName, Tier> = { l1: Tier.L1_MEMORY, l2: Tier.L2_REDIS, l3: Tier.L3_POSTGRES };

function toLookupResult(lookup: Lookup): LookupResult {
  const e = lookup.entry;
  return create(LookupResultSchema, {
    key: lookup.key,
    found: lookup.found,
    tier: lookup.tier ? TIERS[lookup.tier] : Tier.UNSPECIFIED,
    stale: lookup.stale,
    entry: e
      ? create(CacheEntrySchema, {
          key: e.key,
          value: e.value,
          contentType: e.contentType,
          tags: e.tags,
          storedAt: timestampFromMs(e.storedAt),
          expiresAt: timestampFromMs(e.expiresAt),
        })
      : undefined,
  });
}

const CAUSES = {
  set: InvalidationCause.SET,
  delete: InvalidationCause.DELETE,
  invalidate: InvalidationCause.INVALIDATE,
  flush: InvalidationCause.FLUSH,
} as const;

function toSelectorMessage(selector: Selector | undefined): Partial<KeySelector> | undefined {
  if (!selector) return undefined;
  if (selector.kind === "key") return { selector: { case: "key", value: selector.key } };
  if (selector.kind === "pattern") return { selector: { case: "pattern", value: selector.pattern } };
  return { selector: { case: "tag", value: selector.tag } };
}

function toEvent(message: Invalidation): Partial<InvalidationEvent> {
  return {
    namespace: message.namespace,
    cause: CAUSES[message.cause],
    selector: toSelectorMessage(message.selector) as KeySelector | undefined,
    occurredAt: timestampFromMs(message.at),
  };
}

/** Thin handlers: validate (naming the proto field), call the domain, map the result. */
export function cacheHandlers(cache: TieredCache, config: CacheConfig, maxResponseBytes: number): ServiceImpl<typeof CacheService> {
  return {
    async get(req, ctx) {
      checkNamespace("namespace", req.namespace);
      checkKey("key", req.key);
      checkTenant(req.tenant, ctx);
      return { result: toLookupResult(await cache.get(req.tenant, req.namespace, req.key)) };
    },

    async batchGet(req, ctx) {
      checkNamespace("namespace", req.namespace);
      if (req.keys.length === 0) throw new InvalidArgumentError("keys", "must have at least one key");
      if (req.keys.length > LIMITS.batchKeys) throw new InvalidArgumentError("keys", `has ${req.keys.length} keys; at most ${LIMITS.batchKeys} are allowed`);
      req.keys.forEach((key, i) => checkKey(`keys[${i}]`, key));
      checkTenant(req.tenant, ctx);
      const lookups = await cache.getMany(req.tenant, req.namespace, req.keys);
      let total = 0;
      for (const l of lookups) total += (l.entry?.value.byteLength ?? 0) + (l.entry ? bytes(l.key) + 64 : 0);
      if (total > maxResponseBytes) {
        throw new ResourceExhaustedError(`the found values total ${total} bytes, more than the maximum response size of ${maxResponseBytes} bytes; ask for fewer keys per call`);
      }
      return { results: lookups.map(toLookupResult) };
    },

    async set(req, ctx) {
      checkNamespace("namespace", req.namespace);
      checkKey("key", req.key);
      if (bytes(req.contentType) > LIMITS.contentTypeBytes) {
        throw new InvalidArgumentError("content_type", `is ${bytes(req.contentType)} bytes; at most ${LIMITS.contentTypeBytes} are allowed`);
      }
      let ttlMs: number | undefined;
      if (req.ttl) {
        if (req.ttl.seconds < 0n || req.ttl.nanos < 0) throw new InvalidArgumentError("ttl", "must not be negative");
        ttlMs = durationMs(req.ttl);
        if (ttlMs > config.maxTtlMs) throw new InvalidArgumentError("ttl", `is ${ttlMs} ms; at most ${config.maxTtlMs} ms (the server's maximum TTL) is allowed`);
        if (ttlMs === 0 && (req.ttl.seconds > 0n || req.ttl.nanos > 0)) ttlMs = 1; // sub-millisecond TTLs round up, never to "default"
      }
      if (req.tags.length > LIMITS.tags) throw new InvalidArgumentError("tags", `has ${req.tags.length} tags; at most ${LIMITS.tags} are allowed`);
      req.tags.forEach((tag, i) => checkTag(`tags[${i}]`, tag));
      if (req.value.byteLength > config.maxValueBytes) {
        throw new ResourceExhaustedError(`value is ${req.value.byteLength} bytes; the maximum value size is ${config.maxValueBytes} bytes`);
      }
      checkTenant(req.tenant, ctx);
      const { entry, tiers } = await cache.set({
        tenant: req.tenant,
        namespace: req.namespace,
        key: req.key,
        value: req.value,
        contentType: req.contentType,
        ttlMs,
        tags: req.tags,
      });
      return { storedAt: timestampFromMs(entry.storedAt), expiresAt: timestampFromMs(entry.expiresAt), tiers: tiers.map((t) => TIERS[t]) };
    },

    async delete(req, ctx) {
      checkNamespace("namespace", req.namespace);
      checkKey("key", req.key);
      checkTenant(req.tenant, ctx);
      return { deleted: await cache.delete(req.tenant, req.namespace, req.key) };
    },

    async invalidate(req, ctx) {
      checkNamespace("namespace", req.namespace);
      const s = req.selector?.selector;
      let selector: Selector;
      if (!s || s.case === undefined) throw new InvalidArgumentError("selector", "must set one of key, pattern or tag");
      if (s.case === "key") {
        checkKey("selector.key", s.value);
        selector = { kind: "key", key: s.value };
      } else if (s.case === "pattern") {
        if (s.value === "") throw new InvalidArgumentError("selector.pattern", "must not be empty");
        if (bytes(s.value) > LIMITS.keyBytes) throw new InvalidArgumentError("selector.pattern", `is ${bytes(s.value)} bytes; at most ${LIMITS.keyBytes} are allowed`);
        try {
          parseGlob(s.value);
        } catch (error) {
          if (error instanceof GlobError) throw new InvalidArgumentError("selector.pattern", `is malformed: it ${error.message}`);
          throw error;
        }
        selector = { kind: "pattern", pattern: s.value };
      } else {
        checkTag("selector.tag", s.value);
        selector = { kind: "tag", tag: s.value };
      }
      checkTenant(req.tenant, ctx);
      return { count: BigInt(await cache.invalidate(req.tenant, req.namespace, selector)) };
    },

    async getStats(req, ctx) {
      if (req.namespace !== "") checkNamespace("namespace", req.namespace);
      checkTenant(req.tenant, ctx);
      const stats = await cache.statistics(req.tenant, req.namespace || undefined);
      return {
        replica: stats.replica,
        since: timestampFromMs(stats.since.getTime()),
        namespaces: stats.namespaces.map((ns) => ({
          namespace: ns.namespace,
          hits: BigInt(ns.hits),
          misses: BigInt(ns.misses),
          hitRatio: ns.hitRatio,
          staleHits: BigInt(ns.staleHits),
          defaultTtl: durationFromMs(ns.policy.defaultTtlMs),
          staleWhileRevalidate: durationFromMs(ns.policy.staleWhileRevalidateMs),
          staleIfError: durationFromMs(ns.policy.staleIfErrorMs),
          tiers: ns.tiers.map((t) => ({
            tier: TIERS[t.tier],
            available: t.available,
            hits: BigInt(t.hits),
            misses: BigInt(t.misses),
            hitRatio: t.hitRatio,
            evictions: BigInt(t.evictions),
            bytes: BigInt(Math.max(0, Math.round(t.bytes))),
            entries: BigInt(t.entries),
          })),
        })),
      };
    },

    async *watchInvalidations(req, ctx) {
      if (req.namespaces.length > LIMITS.watchNamespaces) {
        throw new InvalidArgumentError("namespaces", `has ${req.namespaces.length} namespaces; at most ${LIMITS.watchNamespaces} are allowed`);
      }
      req.namespaces.forEach((ns, i) => checkNamespace(`namespaces[${i}]`, ns));
      checkTenant(req.tenant, ctx);
      for await (const message of cache.watch(req.tenant, req.namespaces, ctx.signal)) {
        yield { event: toEvent(message) as InvalidationEvent };
      }
    },
  };
}
