import { timingSafeEqual } from "node:crypto";
import { DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, computeSignature } from "./signing.js";

/**
 * Verify helper for receivers of the Monitor's webhooks (exported for users' services).
 *
 *   const verifier = new WebhookVerifier({ secrets: [process.env.OPS_SECRET!, process.env.OPS_SECRET_OLD!] });
 *   const result = verifier.verify({ headers: req.headers, body: rawBodyBuffer });
 *   if (!result.ok) return res.writeHead(result.reason === "replay_cache_full" ? 503 : 401).end(result.reason);
 *
 * Checks, in this order: the headers are present and well formed; `t` is inside the replay window
 * (default 300 s either way, so a captured request cannot be replayed later); the HMAC matches one
 * of the accepted secrets (several during rotation; compared with crypto.timingSafeEqual so the
 * comparison time does not leak how many bytes matched); the `Orca-Delivery` id was not accepted
 * before (replay inside the window). The body MUST be the raw bytes received, not re-serialized
 * JSON.
 *
 * Replay memory is bounded: ids are remembered until their timestamp leaves the window (after
 * that the window check rejects them anyway), at most `maxRemembered` at a time. When the memory
 * is full of ids that are all still inside the window we reject with `replay_cache_full` rather
 * than forget one (forgetting would reopen a replay hole); only genuinely signed deliveries can
 * fill it, and the Monitor retries a 503 with backoff, by which time old ids have expired.
 */
export type WebhookRejection =
  | "missing_signature"
  | "malformed_signature"
  | "missing_delivery_id"
  | "stale_timestamp"
  | "bad_signature"
  | "replayed"
  | "replay_cache_full";

export type WebhookVerification =
  | { ok: true; deliveryId: string; event: string; timestamp: number }
  | { ok: false; reason: WebhookRejection };

export interface WebhookVerifierOptions {
  /** Accepted signing secrets: the current one first, then older ones during rotation. */
  secrets: ReadonlyArray<string | Uint8Array>;
  /** Replay window in seconds, either way from now (default 300). */
  toleranceSeconds?: number;
  /** Most delivery ids remembered at once (default 10 000). */
  maxRemembered?: number;
  /** Clock in ms (tests). */
  now?: () => number;
}

type HeaderSource = Headers | Record<string, string | string[] | undefined>;

function header(headers: HeaderSource, name: string): string | undefined {
  if (typeof (headers as Headers).get === "function") return (headers as Headers).get(name) ?? undefined;
  const record = headers as Record<string, string | string[] | undefined>;
  const value = record[name] ?? Object.entries(record).find(([k]) => k.toLowerCase() === name)?.[1];
  return Array.isArray(value) ? value[0] : value;
}

/** Parses `t=<unix s>,v1=<hex>[,v1=<hex>...]`; undefined if malformed. */
export function parseSignatureHeader(value: string): { timestamp: number; signatures: Buffer[] } | undefined {
  let timestamp: number | undefined;
  const signatures: Buffer[] = [];
  for (const part of value.split(",")) {
    const eq = part.indexOf("=");
    if (eq < 0) return undefined;
    const key = part.slice(0, eq).trim();
    const val = part.slice(eq + 1).trim();
    if (key === "t") {
      if (!/^\d{1,12}$/.test(val) || timestamp !== undefined) return undefined;
      timestamp = Number(val);
    } else if (key === "v1") {
      if (!/^[0-9a-f]{64}$/.test(val)) return undefined;
      signatures.push(Buffer.from(val, "hex"));
    }
    // Unknown schemes (a future v2) are ignored, as receivers should.
  }
  if (timestamp === undefined || signatures.length === 0) return undefined;
  return { timestamp, signatures };
}

export class WebhookVerifier {
  private readonly secrets: Array<string | Uint8Array>;
  private readonly toleranceSeconds: number;
  private readonly maxRemembered: number;
  private readonly now: () => number;
  /** delivery id -> unix second after which the window check alone rejects it. Insertion order = expiry order (roughly). */
  private readonly seen = new Map<string, number>();

  constructor(options: WebhookVerifierOptions) {
    if (options.secrets.length === 0) throw new Error("WebhookVerifier needs at least one secret");
    this.secrets = [...options.secrets];
    this.toleranceSeconds = options.toleranceSeconds ?? 300;
    this.maxRemembered = options.maxRemembered ?? 10_000;
    this.now = options.now ?? Date.now;
  }

  verify(request: { headers: HeaderSource; body: string | Uint8Array }): WebhookVerification {
    const signature = header(request.headers, SIGNATURE_HEADER);
    if (!signature) return { ok: false, reason: "missing_signature" };
    const parsed = parseSignatureHeader(signature);
    if (!parsed) return { ok: false, reason: "malformed_signature" };
    const deliveryId = header(request.headers, DELIVERY_HEADER);
    if (!deliveryId) return { ok: false, reason: "missing_delivery_id" };
    const nowSeconds = Math.floor(this.now() / 1000);
    if (Math.abs(nowSeconds - parsed.timestamp) > this.toleranceSeconds) return { ok: false, reason: "stale_timestamp" };

    const body = typeof request.body === "string" ? Buffer.from(request.body, "utf8") : Buffer.from(request.body);
    let matched = false;
    // Every secret against every signature, without stopping early on a match.
    for (const secret of this.secrets) {
      const expected = Buffer.from(computeSignature(typeof secret === "string" ? secret : Buffer.from(secret), parsed.timestamp, body), "hex");
      for (const candidate of parsed.signatures) {
        if (candidate.length === expected.length && timingSafeEqual(candidate, expected)) matched = true;
      }
    }
    if (!matched) return { ok: false, reason: "bad_signature" };

    // Only authentic deliveries reach the replay memory, so forged ids cannot fill it.
    this.expire(nowSeconds);
    if (this.seen.has(deliveryId)) return { ok: false, reason: "replayed" };
    if (this.seen.size >= this.maxRemembered) return { ok: false, reason: "replay_cache_full" };
    this.seen.set(deliveryId, parsed.timestamp + this.toleranceSeconds);
    return { ok: true, deliveryId, event: header(request.headers, EVENT_HEADER) ?? "", timestamp: parsed.timestamp };
  }

  /** Lets a delivery id through again (call it when your handling failed and you want the retry). */
  forget(deliveryId: string): void {
    this.seen.delete(deliveryId);
  }

  /** Number of delivery ids currently remembered. */
  get remembered(): number {
    return this.seen.size;
  }

  private expire(nowSeconds: number): void {
    for (const [id, until] of this.seen) {
      if (until < nowSeconds) this.seen.delete(id);
      // Insertion order is roughly expiry order; stop at the first live entry (amortized O(1)).
      else break;
    }
  }
}

/** One-shot check without replay memory (signature and window only). */
export function verifyWebhookSignature(options: {
  secrets: ReadonlyArray<string | Uint8Array>;
  signatureHeader: string | undefined;
  body: string | Uint8Array;
  toleranceSeconds?: number;
  now?: () => number;
}): WebhookVerification {
  const verifier = new WebhookVerifier({ secrets: options.secrets, toleranceSeconds: options.toleranceSeconds, now: options.now });
  return verifier.verify({ headers: { [SIGNATURE_HEADER]: options.signatureHeader, [DELIVERY_HEADER]: "one-shot" }, body: options.body });
}
