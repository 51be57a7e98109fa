import { createHmac } from "node:crypto";

/**
 * Webhook signing, shared by the sender and the receivers' verify helper so both sides compute
 * exactly the same thing: HMAC-SHA256 with the destination's secret over `${t}.${body}` (t in
 * decimal unix seconds, body the raw bytes), lower-case hex, sent as
 * `Orca-Signature: t=<t>,v1=<hex>`.
 */
export const SIGNATURE_HEADER = "orca-signature";
export const DELIVERY_HEADER = "orca-delivery";
export const EVENT_HEADER = "orca-event";

export function computeSignature(secret: string | Buffer, timestamp: number, body: string | Buffer): string {
  const mac = createHmac("sha256", secret);
  mac.update(`${timestamp}.`);
  mac.update(body);
  return mac.digest("hex");
}

export function signatureHeader(secret: string | Buffer, timestamp: number, body: string | Buffer): string {
  return `t=${timestamp},v1=${computeSignature(secret, timestamp, body)}`;
}
