/** The cache's own view of one entry, shared by the tiers (times are epoch milliseconds, server clock). */
export interface StoredEntry {
  tenant: string;
  namespace: string;
  key: string;
  value: Uint8Array;
  contentType: string;
  tags: string[];
  /** From the orca_cache.entry_version sequence: a later write always has a larger version. */
  version: bigint;
  storedAt: number;
  expiresAt: number;
  /** expiresAt + the namespace's largest stale window when written; no tier keeps it longer. */
  staleUntil: number;
}

export type TierName = "l1" | "l2" | "l3";
export const TIER_NAMES: readonly TierName[] = ["l1", "l2", "l3"];

/** Tenants and namespaces of any text map to one string without ambiguity (NUL cannot occur in a namespace). */
export function namespaceId(tenant: string, namespace: string): string {
  return `${namespace}\u0000${tenant}`;
}

export function entryId(tenant: string, namespace: string, key: string): string {
  return `${namespace}\u0000${tenant}\u0000${key}`;
}

/** Bytes an entry costs in L1: key and value, content type, tags and a fixed overhead for the object and the LRU node. */
export function entrySize(entry: StoredEntry): number {
  let size = 200 + Buffer.byteLength(entry.key) + entry.value.byteLength + entry.contentType.length;
  for (const tag of entry.tags) size += 16 + tag.length;
  return size;
}

/** Rejects after `ms` with a TimeoutError; the operation itself is not cancelled (its result is ignored). */
export function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const error = new Error(`${what} took longer than ${ms} ms`);
      error.name = "TimeoutError";
      reject(error);
    }, ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
