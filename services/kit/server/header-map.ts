import type { IncomingHttpHeaders, OutgoingHttpHeaders } from "node:http2";

/**
 * A WHATWG `Headers` over a plain object, for the unary gRPC fast path.
 *
 * Handlers and interceptors see `Headers` (Connect's API), but undici's implementation validates
 * and copies on every operation and the fast path would pay for two conversions per call (node
 * object -> Headers for the request, Headers -> node object for the response). HeaderMap keeps
 * Node's representation instead: request headers are read straight from the object http2 gave
 * us (copied only if someone writes to them), and response headers and trailers are built in an
 * object that goes to `stream.respond()` as is.
 *
 * Behaviour follows `Headers`: names are case-insensitive, values are trimmed, repeated values
 * are joined with ", " except set-cookie (see getSetCookie), iteration is sorted by name.
 * Writes reject what Node's http2 would reject when sending (invalid names, values with control
 * characters), so a bad header fails the call where it is set instead of when it is sent.
 * It is not an `instanceof Headers`; everything in connect and OTel only uses the methods.
 */
export class HeaderMap implements Headers {
  /** name (lowercase) -> value; set-cookie holds an array. May be Node's own request object. */
  private store: Record<string, string | string[]>;
  /** True while `store` is Node's request headers object: copy it before the first write. */
  private borrowed: boolean;

  constructor(init?: Record<string, string>) {
    this.store = Object.create(null) as Record<string, string | string[]>;
    this.borrowed = false;
    if (init) for (const name in init) this.set(name, init[name]);
  }

  /** A view of an http2 request's headers (pseudo-headers such as ":path" are left out). */
  static fromIncoming(headers: IncomingHttpHeaders): HeaderMap {
    const map = new HeaderMap();
    map.store = headers as Record<string, string | string[]>;
    map.borrowed = true;
    return map;
  }

  get(name: string): string | null {
    const value = this.store[lower(name)];
    if (value === undefined || isPseudo(name)) return null;
    return typeof value === "string" ? value : value.join(", ");
  }

  has(name: string): boolean {
    return this.store[lower(name)] !== undefined && !isPseudo(name);
  }

  set(name: string, value: string): void {
    const key = validName(name);
    const normalized = validValue(value);
    this.own()[key] = key === "set-cookie" ? [normalized] : normalized;
  }

  append(name: string, value: string): void {
    const key = validName(name);
    const normalized = validValue(value);
    const store = this.own();
    const existing = store[key];
    if (existing === undefined) store[key] = key === "set-cookie" ? [normalized] : normalized;
    else if (typeof existing === "string") store[key] = `${existing}, ${normalized}`;
    else existing.push(normalized);
  }

  delete(name: string): void {
    const key = validName(name);
    if (this.store[key] !== undefined) delete this.own()[key];
  }

  getSetCookie(): string[] {
    const value = this.store["set-cookie"];
    return value === undefined ? [] : typeof value === "string" ? [value] : [...value];
  }

  forEach(callback: (value: string, key: string, parent: Headers) => void, thisArg?: unknown): void {
    for (const [key, value] of this.entries()) callback.call(thisArg, value, key, this);
  }

  *entries(): HeadersIterator<[string, string]> {
    for (const key of this.sortedNames()) {
      const value = this.store[key];
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
    const store = this.store;
    for (const key in store) {
      if (key.charCodeAt(0) !== 58 /* ":" */) into[key] = store[key];
    }
    return into;
  }

  private sortedNames(): string[] {
    const names: string[] = [];
    for (const key in this.store) if (key.charCodeAt(0) !== 58) names.push(key);
    return names.sort();
  }

  private own(): Record<string, string | string[]> {
    if (this.borrowed) {
      const copy = Object.create(null) as Record<string, string | string[]>;
      for (const key in this.store) {
        const value = this.store[key];
        if (key.charCodeAt(0) !== 58 && value !== undefined) copy[key] = typeof value === "string" ? value : [...value];
      }
      this.store = copy;
      this.borrowed = false;
    }
    return this.store;
  }
}

type HeadersIterator<T> = Generator<T, undefined, undefined>;

function lower(name: string): string {
  // Names are almost always lowercase already; toLowerCase() would still copy them.
  return /[A-Z]/.test(name) ? name.toLowerCase() : name;
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
