import { PGlite } from "@electric-sql/pglite";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GlobError, globMatcher, globToPostgresRegex, parseGlob } from "../../services/cache/glob.js";

/** The key glob rules (cache.proto KeySelector.pattern), identical in JavaScript and in Postgres. */
const keys = ["user:1", "user:10", "user:x", "a*b", "a.b", "a\\b", "x/y/z", "ünïcode", "[x]", "line\nbreak", "a%b", "a_b", ""].filter(Boolean);
const cases: Array<[string, string[]]> = [
  ["*", keys],
  ["user:?", ["user:1", "user:x"]],
  ["user:*", ["user:1", "user:10", "user:x"]],
  ["user:[0-9]", ["user:1"]],
  ["user:[!0-9]", ["user:x"]],
  ["a\\*b", ["a*b"]],
  ["a?b", ["a*b", "a.b", "a\\b", "a%b", "a_b"]],
  ["a%b", ["a%b"]],
  ["a_b", ["a_b"]],
  ["a\\\\b", ["a\\b"]],
  ["x/*", ["x/y/z"]],
  ["ü*", ["ünïcode"]],
  ["[[]x]", ["[x]"]],
  ["line?break", ["line\nbreak"]],
  ["*.*", ["a.b"]],
];

describe("key globs", () => {
  let pg: PGlite;
  beforeAll(async () => {
    pg = await PGlite.create();
  });
  afterAll(async () => {
    await pg.close();
  });

  it.each(cases)("%s selects the same keys in JavaScript and in Postgres", async (pattern, expected) => {
    const match = globMatcher(pattern);
    expect(keys.filter(match).sort()).toEqual([...expected].sort());
    const result = await pg.query<{ k: string }>("select k from unnest($1::text[]) as k where k ~ $2", [keys, globToPostgresRegex(pattern)]);
    expect(result.rows.map((r) => r.k).sort()).toEqual([...expected].sort());
  });

  it("rejects malformed patterns with a reason", () => {
    expect(() => parseGlob("a[bc")).toThrow(GlobError);
    expect(() => parseGlob("a[bc")).toThrow(/unclosed '\[' at position 1/);
    expect(() => parseGlob("abc\\")).toThrow(/unfinished escape/);
    expect(() => parseGlob("[z-a]")).toThrow(/reversed range/);
  });
});
