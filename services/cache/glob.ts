/**
 * Key globs for Invalidate and for near-caches (rules in cache.proto, KeySelector.pattern):
 *   '*'  any run of characters (including none and including '/')
 *   '?'  exactly one character (one Unicode code point)
 *   '[abc]', '[a-z]'  one character of a set; '[!a-z]' negates; ']' right after '[' or '[!' is literal
 *   '\x' the character x itself
 * The pattern matches the whole key. One parser feeds two translations, so the server's L1,
 * Postgres (L3) and a client's near-cache select exactly the same keys:
 *   - a JavaScript RegExp (flags "su": '.' matches newlines and whole code points),
 *   - a Postgres ARE regex in which every non-alphanumeric character is written as \UXXXXXXXX,
 *     so nothing in a key can be read as regex syntax (no LIKE escaping pitfalls, no injection).
 * We do not use picomatch: its rules are path-oriented ('*' stops at '/', extglobs, braces),
 * which is not what a cache key pattern means.
 */
type Token =
  | { kind: "literal"; char: string }
  | { kind: "any" }
  | { kind: "one" }
  | { kind: "class"; negated: boolean; items: Array<[string, string]> };

export class GlobError extends Error {}

export function parseGlob(pattern: string): Token[] {
  const chars = Array.from(pattern);
  const tokens: Token[] = [];
  for (let i = 0; i < chars.length; i++) {
    const c = chars[i];
    if (c === "*") {
      if (tokens.at(-1)?.kind !== "any") tokens.push({ kind: "any" });
    } else if (c === "?") {
      tokens.push({ kind: "one" });
    } else if (c === "\\") {
      if (i + 1 >= chars.length) throw new GlobError("ends with an unfinished escape '\\'");
      tokens.push({ kind: "literal", char: chars[++i] });
    } else if (c === "[") {
      const start = i;
      let j = i + 1;
      const negated = chars[j] === "!";
      if (negated) j++;
      const items: Array<[string, string]> = [];
      let first = true;
      let closed = false;
      for (; j < chars.length; j++) {
        let ch = chars[j];
        if (ch === "]" && !first) {
          closed = true;
          break;
        }
        first = false;
        if (ch === "\\") {
          if (j + 1 >= chars.length) break;
          ch = chars[++j];
        }
        if (chars[j + 1] === "-" && j + 2 < chars.length && chars[j + 2] !== "]") {
          let hi = chars[j + 2];
          j += 2;
          if (hi === "\\") {
            if (j + 1 >= chars.length) break;
            hi = chars[++j];
          }
          if (hi.codePointAt(0)! < ch.codePointAt(0)!) throw new GlobError(`has a reversed range '${ch}-${hi}' at position ${start}`);
          items.push([ch, hi]);
        } else {
          items.push([ch, ch]);
        }
      }
      if (!closed) throw new GlobError(`has an unclosed '[' at position ${start}`);
      tokens.push({ kind: "class", negated, items });
      i = j;
    } else {
      tokens.push({ kind: "literal", char: c });
    }
  }
  return tokens;
}

const hex = (c: string) => c.codePointAt(0)!.toString(16);

function jsChar(c: string): string {
  return `\\u{${hex(c)}}`;
}

export function globToRegExp(pattern: string): RegExp {
  let source = "^";
  for (const t of parseGlob(pattern)) {
    if (t.kind === "literal") source += jsChar(t.char);
    else if (t.kind === "any") source += ".*";
    else if (t.kind === "one") source += ".";
    else source += `[${t.negated ? "^" : ""}${t.items.map(([lo, hi]) => (lo === hi ? jsChar(lo) : `${jsChar(lo)}-${jsChar(hi)}`)).join("")}]`;
  }
  return new RegExp(`${source}$`, "su");
}

function pgChar(c: string): string {
  return /^[A-Za-z0-9]$/.test(c) ? c : `\\U${hex(c).padStart(8, "0")}`;
}

/** A Postgres ARE regex (for `key ~ $1`) equivalent to the glob. */
export function globToPostgresRegex(pattern: string): string {
  let source = "^";
  for (const t of parseGlob(pattern)) {
    if (t.kind === "literal") source += pgChar(t.char);
    else if (t.kind === "any") source += ".*";
    else if (t.kind === "one") source += ".";
    else source += `[${t.negated ? "^" : ""}${t.items.map(([lo, hi]) => (lo === hi ? pgChar(lo) : `${pgChar(lo)}-${pgChar(hi)}`)).join("")}]`;
  }
  return `${source}$`;
}

/** A matcher for a valid pattern (throws GlobError when malformed). */
export function globMatcher(pattern: string): (key: string) => boolean {
  if (pattern === "*") return () => true;
  const re = globToRegExp(pattern);
  return (key) => re.test(key);
}
