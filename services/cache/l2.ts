import type { Redis } from "ioredis";
import type { Logger } from "../kit/telemetry/logger.js";
import { withTimeout, type StoredEntry } from "./entry.js";

/**
 * L2: Redis, shared by the replicas. Redis is an accelerator, never the source of truth, so
 * every call here has a short budget (ORCA_CACHE_L2_TIMEOUT_MS) and a failure is a miss.
 *
 * Layout (P = ORCA_CACHE_REDIS_PREFIX, G = the current generation):
 *   P gen                       the generation counter
 *   P g<G>:e:<tenant>:<ns>:<key>  hash { v: version, d: header+value } or a tombstone { v, t: 1 }
 *   P g<G>:t:<tenant>:<ns>:<tag>  set of keys carrying the tag
 * Every data key has PX = staleUntil - now, so Redis drops it when no tier may serve it anymore.
 *
 * Ordering: writes go through a Lua script that only replaces a key holding a smaller version,
 * so a slow promotion of an old L3 row can never overwrite a newer Set, and a Delete/Invalidate
 * leaves a short-lived tombstone carrying its version so that a promotion racing it is refused.
 * Tombstones are written INSIDE the L3 transaction, before its COMMIT (and so before its NOTIFY
 * reaches anyone): a replica that drops its L1 on the notification can never re-read the old
 * value from L2. A Set tombstones its key with its own new version, then writes the value with
 * that version after the commit (the script lets a value replace the tombstone of its version).
 *
 * Lost writes: when a write could not be applied (Redis down, timeout), L2 may still hold the old
 * value of that key. Rather than remember which keys, the replica stops using L2 and, once Redis
 * answers again, bumps the generation (INCR P gen): every old key becomes unreachable at once
 * and expires by itself. Other replicas learn the new generation through the invalidation
 * channel, and re-read it every few seconds and after each reconnect.
 */
const PUT_SCRIPT = `
local cur = redis.call('HGET', KEYS[1], 'v')
if cur then
  local c, n = tonumber(cur), tonumber(ARGV[1])
  -- A tombstone of the same version was written by this very Set before its commit: replace it.
  if c > n or (c == n and (ARGV[3] == '1' or redis.call('HEXISTS', KEYS[1], 't') == 0)) then return 0 end
end
redis.call('DEL', KEYS[1])
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], 'v', ARGV[1], 't', '1')
else
  redis.call('HSET', KEYS[1], 'v', ARGV[1], 'd', ARGV[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
for i = 2, #KEYS do
  redis.call('SADD', KEYS[i], ARGV[5])
  if redis.call('PTTL', KEYS[i]) < tonumber(ARGV[4]) then redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
end
return 1
`;

/** How long a tombstone outlives its Delete: longer than any promotion can take (L3 timeout + L2 timeout). */
const TOMBSTONE_MS = 30_000;

type PutCommand = (keys: number, ...args: Array<string | Buffer | number>) => Promise<number>;

export type L2Read = { kind: "hit"; entry: StoredEntry } | { kind: "miss" } | { kind: "error" };

export class L2Tier {
  private gen = "0";
  /** True when a write may have been lost: L2 is unused until the generation was bumped. */
  private needsBump = false;
  private recovering = false;
  private readonly timers: NodeJS.Timeout[] = [];
  private readonly put: PutCommand;
  /** Called after this replica bumped the generation, to tell the others. */
  onGenerationBumped?: (gen: string) => void;
  errors = 0;

  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
    private readonly timeoutMs: number,
    private readonly logger: Logger,
  ) {
    const name = "orcaCachePutV1";
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    const client = redis as any;
    if (typeof client[name] !== "function") redis.defineCommand(name, { lua: PUT_SCRIPT });
    this.put = (client[name] as PutCommand).bind(redis);
  }

  async start(): Promise<void> {
    // After a reconnect: learn the generation (Redis may have restarted empty, or another replica
    // bumped it), then bump it ourselves if a write of ours was lost meanwhile. A replica that
    // only starts, or reconnects without having lost a write, does not bump: that would empty L2
    // for everyone on every deploy.
    this.redis.on("ready", () => void this.refreshGeneration().then(() => this.recover()));
    this.timers.push(setInterval(() => void this.recover(), 1_000).unref());
    this.timers.push(setInterval(() => void this.refreshGeneration(), 3_000).unref());
    await this.refreshGeneration();
  }

  stop(): void {
    for (const t of this.timers) clearInterval(t);
  }

  /** Usable now: connected and not waiting for a generation bump. Checked before every call, so a down Redis costs nothing. */
  get available(): boolean {
    return this.redis.status === "ready" && !this.needsBump;
  }

  get connected(): boolean {
    return this.redis.status === "ready";
  }

  get generation(): string {
    return this.gen;
  }

  /** Another replica bumped the generation. */
  adoptGeneration(gen: string): void {
    // Any difference is adopted, not only increases: a restarted Redis starts counting again.
    this.gen = gen;
  }

  private async refreshGeneration(): Promise<void> {
    if (!this.connected) return;
    try {
      const value = await withTimeout(this.redis.get(`${this.prefix}gen`), Math.max(this.timeoutMs * 4, 200), "redis GET gen");
      this.adoptGeneration(value ?? "0");
    } catch {
      /* next tick */
    }
  }

  private async recover(): Promise<void> {
    if (!this.needsBump || this.recovering || !this.connected) return;
    this.recovering = true;
    try {
      const gen = await withTimeout(this.redis.incr(`${this.prefix}gen`), Math.max(this.timeoutMs * 10, 500), "redis INCR gen");
      this.gen = String(gen);
      this.needsBump = false;
      this.logger.info({ generation: this.gen }, "cache L2 in use (new generation)");
      this.onGenerationBumped?.(this.gen);
    } catch (error) {
      this.logger.debug({ err: error }, "cache L2 still unavailable");
    } finally {
      this.recovering = false;
    }
  }

  /** A write could not be applied (or was skipped): stop using L2 until the generation is bumped. */
  markLostWrite(): void {
    if (!this.needsBump) this.logger.warn("cache L2 write lost; L2 unused until Redis answers and the generation is bumped");
    this.needsBump = true;
    void this.recover();
  }

  private enc(tenant: string): string {
    return encodeURIComponent(tenant);
  }

  dataKey(tenant: string, namespace: string, key: string): string {
    return `${this.prefix}g${this.gen}:e:${this.enc(tenant)}:${namespace}:${key}`;
  }

  tagKey(tenant: string, namespace: string, tag: string): string {
    return `${this.prefix}g${this.gen}:t:${this.enc(tenant)}:${namespace}:${tag}`;
  }

  /** Reads keys of one namespace in one round trip. Errors and timeouts are "error" (a miss for the caller). */
  async read(tenant: string, namespace: string, keys: string[]): Promise<L2Read[]> {
    if (!this.available) return keys.map(() => ({ kind: "error" as const }));
    try {
      const pipeline = this.redis.pipeline();
      for (const key of keys) pipeline.hgetallBuffer(this.dataKey(tenant, namespace, key));
      const results = (await withTimeout(pipeline.exec(), this.timeoutMs, "redis read")) ?? [];
      return keys.map((key, i) => {
        const [error, hash] = results[i] ?? [new Error("no reply")];
        if (error) return { kind: "error" as const };
        const fields = hash as Record<string, Buffer>;
        if (!fields || !fields.d) return { kind: "miss" as const };
        return { kind: "hit" as const, entry: decode(tenant, namespace, key, BigInt(fields.v.toString()), fields.d) };
      });
    } catch {
      this.errors++;
      return keys.map(() => ({ kind: "error" as const }));
    }
  }

  /** Writes an entry unless Redis holds a newer version. Returns false (and disables L2) when it could not. */
  async write(entry: StoredEntry, now: number): Promise<boolean> {
    const ttl = Math.floor(entry.staleUntil - now);
    if (ttl <= 0) return true;
    if (!this.available) {
      this.markLostWrite();
      return false;
    }
    const keys = [this.dataKey(entry.tenant, entry.namespace, entry.key), ...entry.tags.map((t) => this.tagKey(entry.tenant, entry.namespace, t))];
    try {
      await withTimeout(this.put(keys.length, ...keys, entry.version.toString(), encode(entry), "0", ttl, entry.key), this.timeoutMs, "redis write");
      return true;
    } catch {
      this.errors++;
      this.markLostWrite();
      return false;
    }
  }

  /** Promotion of a value read from L3: best effort, refused by Redis when it holds a newer version or a tombstone. */
  async promote(entry: StoredEntry, now: number): Promise<void> {
    if (!this.available) return;
    const ttl = Math.floor(entry.staleUntil - now);
    if (ttl <= 0) return;
    const keys = [this.dataKey(entry.tenant, entry.namespace, entry.key), ...entry.tags.map((t) => this.tagKey(entry.tenant, entry.namespace, t))];
    try {
      await withTimeout(this.put(keys.length, ...keys, entry.version.toString(), encode(entry), "0", ttl, entry.key), this.timeoutMs, "redis promote");
    } catch {
      // A promotion that did not land leaves L2 as it was: nothing is lost.
      this.errors++;
    }
  }

  /** Tombstones keys (and drops tag sets) after a Delete/Invalidate of `version`. */
  async remove(tenant: string, namespace: string, keys: string[], version: bigint, tags: string[] = []): Promise<boolean> {
    if (keys.length === 0 && tags.length === 0) return true;
    if (!this.available) {
      this.markLostWrite();
      return false;
    }
    try {
      const pipeline = this.redis.pipeline();
      for (const key of keys) {
        // eslint-disable-next-line @typescript-eslint/no-explicit-any
        (pipeline as any).orcaCachePutV1(1, this.dataKey(tenant, namespace, key), version.toString(), "", "1", TOMBSTONE_MS, key);
      }
      for (const tag of tags) pipeline.unlink(this.tagKey(tenant, namespace, tag));
      const results = (await withTimeout(pipeline.exec(), Math.max(this.timeoutMs, 20 + keys.length / 10), "redis remove")) ?? [];
      if (results.some(([error]) => error)) throw new Error("redis remove failed");
      return true;
    } catch {
      this.errors++;
      this.markLostWrite();
      return false;
    }
  }

  /** Keys carrying a tag, from the tag set (empty on error). */
  async tagMembers(tenant: string, namespace: string, tag: string): Promise<string[]> {
    if (!this.available) return [];
    try {
      return await withTimeout(this.redis.smembers(this.tagKey(tenant, namespace, tag)), this.timeoutMs * 4, "redis SMEMBERS");
    } catch {
      return [];
    }
  }

  /**
   * Approximate entries of a namespace: a bounded SCAN of its keys (tombstones included). Bytes
   * are not read from Redis (MEMORY USAGE per key is too costly); the caller estimates them.
   */
  async approximateEntries(tenant: string, namespace: string): Promise<number | undefined> {
    if (!this.available) return undefined;
    const match = `${this.prefix}g${this.gen}:e:${this.enc(tenant)}:${namespace.replace(/[*?[\]\\]/g, "\\$&")}:*`;
    let cursor = "0";
    let count = 0;
    const deadline = Date.now() + 200;
    try {
      do {
        const [next, keys] = await withTimeout(this.redis.scan(cursor, "MATCH", match, "COUNT", 1000), this.timeoutMs * 4, "redis SCAN");
        cursor = next;
        count += keys.length;
      } while (cursor !== "0" && Date.now() < deadline);
      return count;
    } catch {
      return undefined;
    }
  }
}

/** d = 4-byte header length, JSON header, value bytes. */
function encode(entry: StoredEntry): Buffer {
  const header = Buffer.from(JSON.stringify({ c: entry.contentType, t: entry.tags, s: entry.storedAt, e: entry.expiresAt, u: entry.staleUntil }));
  const out = Buffer.allocUnsafe(4 + header.length + entry.value.byteLength);
  out.writeUInt32BE(header.length, 0);
  header.copy(out, 4);
  out.set(entry.value, 4 + header.length);
  return out;
}

function decode(tenant: string, namespace: string, key: string, version: bigint, data: Buffer): StoredEntry {
  const length = data.readUInt32BE(0);
  const header = JSON.parse(data.subarray(4, 4 + length).toString()) as { c: string; t: string[]; s: number; e: number; u: number };
  return {
    tenant,
    namespace,
    key,
    value: new Uint8Array(data.buffer, data.byteOffset + 4 + length, data.length - 4 - length),
    contentType: header.c,
    tags: header.t,
    version,
    storedAt: header.s,
    expiresAt: header.e,
    staleUntil: header.u,
  };
}
