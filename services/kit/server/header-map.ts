import type { IncomingHttpHeaders, OutgoingHttpHeaders } from "node:http2";

/**
 * A WHATWG `Headers` over a plain object, for the unary gRPC fast path.
 *
 * Handlers and interceptors see `Headers` (Connect's API), but undici's implementation validates
 * and copies on every operation and the fast path would pay for two conversions per call (node
 * object -> Headers for the request, Headers -> node object for the response). HeaderMap keeps
 * close to Node's representation instead: request headers are read straight from the object
 * http2 gave us (copied only if someone writes to them), and response headers and trailers are
 * kept in a Map that is copied into the object for `stream.respond()`.
 *
 * Behaviour follows `Headers`: names are case-insensitive, values are trimmed, repeated values
 * are joined with ", " except set-cookie (see getSetCookie), iteration is sorted by name.
 * Writes reject what Node's http2 would reject when sending (invalid names, values with control
 * characters), so a bad header fails the call where it is set instead of when it is sent.
 * It is not an `instanceof Headers`; everything in connect and OTel only uses the methods.
 */
export class HeaderMap implements Headers {
  /** Headers we own: name (lowercase) -> value; set-cookie holds an array. */
  private own: Map<string, string | string[]> | undefined;
  /** Node's request headers object, read in place until the first write copies it into `own`. */
  private borrowed: IncomingHttpHeaders | undefined;

  constructor(init?: Record<string, string>) {
    if (init) for (const name in init) this.set(name, init[name]);
  }

  /** A view of an http2 request's headers (pseudo-headers such as ":path" are left out). */
  static fromIncoming(headers: IncomingHttpHeaders): HeaderMap {
    const map = new HeaderMap();
    map.borrowed = headers;
    return map;
  }

  get(name: string): string | null {
    const value = this.lookup(lower(name));
    if (value === undefined) return null;
    return typeof value === "string" ? value : value.join(", ");
  }

  has(name: string): boolean {
    return this.lookup(lower(name)) !== undefined;
  }

  set(name: string, value: string): void {
    const key = validName(name);
    const normalized = validValue(value);
    this.owned().set(key, key === "set-cookie" ? [normalized] : normalized);
  }

  append(name: string, value: string): void {
    const key = validName(name);
    const normalized = validValue(value);
    const store = this.owned();
    const existing = store.get(key);
    if (existing === undefined) store.set(key, key === "set-cookie" ? [normalized] : normalized);
    else if (typeof existing === "string") store.set(key, `${existing}, ${normalized}`);
    else existing.push(normalized);
  }

  delete(name: string): void {
    const key = validName(name);
    if (this.lookup(key) !== undefined) this.owned().delete(key);
  }

  getSetCookie(): string[] {
    const value = this.lookup("set-cookie");
    return value === undefined ? [] : typeof value === "string" ? [value] : [...value];
  }

  forEach(callback: (value: string, key: string, parent: Headers) => void, thisArg?: unknown): void {
    for (const [key, value] of this.entries()) callback.call(thisArg, value, key, this);
  }

  *entries(): HeadersIterator<[string, string]> {
    const store = this.owned();
    for (const key of [...store.keys()].sort()) {
      const value = store.get(key)!;
      if (typeof value === "string") yield [key, value];
      else if (key === "set-cookie") for (const cookie of value) yield [key, cookie];
      else yield [key, value.join(", ")];
    }
  }

  *keys(): HeadersIterator<string> {
    for (const [key] of this.entries()) yield key;
  }

  *values(): HeadersIterator<string> {
    for (const [, value] of this.entries()) yield value;
  }

  [Symbol.iterator](): HeadersIterator<[string, string]> {
    return this.entries();
  }

  /** Copies the headers into an object for `stream.respond()` or `stream.sendTrailers()`. */
  toNode(into: OutgoingHttpHeaders): OutgoingHttpHeaders {
    if (this.borrowed) this.owned();
    if (this.own) for (const [key, value] of this.own) into[key] = value;
    return into;
  }

  private lookup(key: string): string | string[] | undefined {
    if (this.own) return this.own.get(key);
    if (this.borrowed === undefined || isPseudo(key)) return undefined;
    return this.borrowed[key];
  }

  /** The owned store; a borrowed request object is copied (without pseudo-headers) first. */
  private owned(): Map<string, string | string[]> {
    if (this.own) return this.own;
    const own = new Map<string, string | string[]>();
    const borrowed = this.borrowed;
    if (borrowed) {
      for (const key in borrowed) {
        const value = borrowed[key];
        if (!isPseudo(key) && value !== undefined) own.set(key, typeof value === "string" ? value : [...value]);
      }
      this.borrowed = undefined;
    }
    return (this.own = own);
  }
}

type HeadersIterator<T> = Generator<T, undefined, undefined>;

function lower(name: string): string {
  // Names are almost always lowercase already; toLowerCase() would still copy them.
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (c >= 65 && c <= 90) return name.toLowerCase();
  }
  return name;
}

function isPseudo(name: string): boolean {
  return name.charCodeAt(0) === 58;
}

// RFC 9110 token; what Headers and Node's http2 accept as a field name.
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
// Node's http2 rejects anything outside these when sending (Headers would let some through).
const INVALID_VALUE = /[^\t\x20-\x7e\x80-\xff]/;
const SURROUNDING_WHITESPACE = /^[\t\n\r ]+|[\t\n\r ]+$/g;
// One test for the common case: nothing to trim and nothing invalid.
const NEEDS_CHECK = /^[\t\n\r ]|[\t\n\r ]$|[^\t\x20-\x7e\x80-\xff]/;

function validName(name: string): string {
  if (!TOKEN.test(name)) throw new TypeError(`invalid header name ${JSON.stringify(name)}`);
  return lower(name);
}

function validValue(value: string): string {
  const text = typeof value === "string" ? value : String(value);
  if (!NEEDS_CHECK.test(text)) return text;
  const trimmed = text.replace(SURROUNDING_WHITESPACE, "");
  if (INVALID_VALUE.test(trimmed)) throw new TypeError(`invalid header value ${JSON.stringify(trimmed)}`);
  return trimmed;
}
