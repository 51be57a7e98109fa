import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setImmediate as nextTurn } from "node:timers/promises";
import { describe, expect, it } from "vitest";
import { createLogger } from "../../services/kit/telemetry/logger.js";
import { waitFor } from "../support/wait.js";

const repo = join(import.meta.dirname, "../..");

function jsonLines(text: string): Record<string, unknown>[] {
  return text.split("\n").filter(Boolean).map((line) => JSON.parse(line) as Record<string, unknown>);
}

describe("logger", () => {
  it("writes every line to a file, whole and in order, across many event-loop turns", async () => {
    const file = join(mkdtempSync(join(tmpdir(), "orca-log-")), "out.log");
    const logger = createLogger({ level: "info", service: "t", destination: file });
    for (let turn = 0; turn < 20; turn++) {
      for (let i = 0; i < 50; i++) logger.info({ seq: turn * 50 + i, text: "µ-ü-✓" }, "line");
      await nextTurn();
    }
    await waitFor("1000 lines in the file", () => jsonLines(readFileSync(file, "utf8")).length === 1000);
    const lines = jsonLines(readFileSync(file, "utf8"));
    expect(lines.map((l) => l.seq)).toEqual(Array.from({ length: 1000 }, (_, i) => i));
    expect(lines.every((l) => l.service === "t" && l.msg === "line" && l.text === "µ-ü-✓")).toBe(true);
  });

  it("writes lines longer than its encoding chunk whole, between short ones", async () => {
    const file = join(mkdtempSync(join(tmpdir(), "orca-log-")), "out.log");
    const logger = createLogger({ level: "info", destination: file });
    const long = "ü".repeat(100_000); // 200 KB of UTF-8, more than one 64 KiB chunk
    logger.info({ seq: 0 }, "short");
    logger.info({ seq: 1, long }, "long");
    logger.info({ seq: 2 }, "short");
    await nextTurn();
    logger.info({ seq: 3, long }, "long");
    await waitFor("4 lines in the file", () => jsonLines(readFileSync(file, "utf8")).length === 4);
    const lines = jsonLines(readFileSync(file, "utf8"));
    expect(lines.map((l) => l.seq)).toEqual([0, 1, 2, 3]);
    expect(lines[1].long).toBe(long);
    expect(lines[3].long).toBe(long);
  });

  it("still redacts credentials in lines written to a file", async () => {
    const file = join(mkdtempSync(join(tmpdir(), "orca-log-")), "out.log");
    const logger = createLogger({ level: "info", destination: file });
    logger.info({ headers: { authorization: "Bearer secret-token" } }, "call");
    await waitFor("the line in the file", () => readFileSync(file, "utf8").includes("call"));
    expect(readFileSync(file, "utf8")).not.toContain("secret-token");
    expect(jsonLines(readFileSync(file, "utf8"))[0]).toMatchObject({ headers: { authorization: "[redacted]" } });
  });

  it("flushes the lines of the current turn to stdout when the process exits at once", () => {
    const script = `
      import { createLogger } from "./services/kit/telemetry/logger.ts";
      const logger = createLogger({ level: "info", service: "exit" });
      for (let i = 0; i < 500; i++) logger.info({ seq: i }, "before exit");
      process.exit(0);
    `;
    const out = execFileSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], { cwd: repo, encoding: "utf8" });
    expect(jsonLines(out).map((l) => l.seq)).toEqual(Array.from({ length: 500 }, (_, i) => i));
  });
});
