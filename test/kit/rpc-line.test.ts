import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { describe, expect, it } from "vitest";
import { createLogger, scalarLineLogger, type Logger } from "../../services/kit/telemetry/logger.js";
import { RpcLine } from "../../services/kit/telemetry/rpc-line.js";
import { waitFor } from "../support/wait.js";

// RpcLine writes the kit's per-call line as bytes; pino is the reference for every byte of it.

function logFile(): string {
  return join(mkdtempSync(join(tmpdir(), "orca-rpc-line-")), "out.log");
}

function lines(file: string): string[] {
  return readFileSync(file, "utf8").split("\n").filter(Boolean);
}

/** The kit's rpc logger for one method and code, as CallTelemetry makes it. */
function rpcChild(logger: Logger, code = "OK"): Logger {
  return scalarLineLogger(logger).child({ method: "orca.testing.v1.EchoService/Echo", code });
}

const withoutTime = (line: string) => line.replace(/"time":"[^"]*"/, '"time":"T"');

describe("RpcLine", () => {
  it("writes exactly what pino writes for the same fields, for many durations and both levels", async () => {
    const file = logFile();
    // A service name that needs escaping and multi-byte UTF-8: the bindings are pino's own text.
    const logger = createLogger({ level: "info", service: 'bänch "x"', destination: file });
    const child = rpcChild(logger);
    const line = new RpcLine(child);
    const micros = [0, 1, 7, 10, 99, 100, 999, 1000, 1001, 1010, 1100, 12_345, 100_500, 999_999, 1_000_000, 86_400_000_000];
    for (let i = 0; i < 200; i++) micros.push(Math.floor(Math.random() * 10 ** (1 + (i % 10))));
    const id = "0b8f3c2e-5d3a-4f7e-9a1b-2c3d4e5f6a7b";
    for (const [i, value] of micros.entries()) {
      const error = i % 5 === 0;
      if (error) line.error(value, id);
      else line.info(value, id);
      if (error) child.error({ durationMs: value / 1000, correlationId: id }, "rpc");
      else child.info({ durationMs: value / 1000, correlationId: id }, "rpc");
    }
    await waitFor("every line in the file", () => lines(file).length === micros.length * 2);
    const written = lines(file).map(withoutTime);
    for (let i = 0; i < micros.length; i++) expect(written[2 * i]).toBe(written[2 * i + 1]);
    expect(JSON.parse(lines(file)[0])).toMatchObject({ level: "error", service: 'bänch "x"', durationMs: 0, msg: "rpc" });
    expect(lines(file).every((text) => /"time":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"/.test(text))).toBe(true);
  });

  it("leaves ids that need escaping to pino, so they are escaped and nothing half-written stays", async () => {
    const file = logFile();
    const logger = createLogger({ level: "info", destination: file });
    const line = new RpcLine(rpcChild(logger));
    const ids = ["plain-id", 'quo"te', "new\nline", "ünïcode", "back\\slash", "after-the-odd-ones"];
    for (const id of ids) line.info(1500, id);
    await waitFor("every line in the file", () => lines(file).length === ids.length);
    expect(lines(file).map((text) => JSON.parse(text).correlationId)).toEqual(ids);
    expect(lines(file).map((text) => JSON.parse(text).durationMs)).toEqual(ids.map(() => 1.5));
  });

  it("keeps its lines in order with the logger's other lines", async () => {
    const file = logFile();
    const logger = createLogger({ level: "info", destination: file });
    const line = new RpcLine(rpcChild(logger));
    logger.info("before");
    line.info(1, "a");
    logger.info({ n: 1 }, "between");
    line.error(2, "b");
    await waitFor("4 lines", () => lines(file).length === 4);
    expect(lines(file).map((text) => JSON.parse(text).msg)).toEqual(["before", "rpc", "between", "rpc"]);
  });

  it("follows the logger's level: at warn, info lines are dropped and error lines kept", async () => {
    const file = logFile();
    const logger = createLogger({ level: "warn", destination: file });
    const line = new RpcLine(rpcChild(logger, "Internal"));
    line.info(1, "dropped");
    line.error(2, "kept");
    logger.warn("marker");
    await waitFor("2 lines", () => lines(file).length === 2);
    expect(lines(file).map((text) => JSON.parse(text).correlationId ?? JSON.parse(text).msg)).toEqual(["kept", "marker"]);
  });

  it("goes through pino for destinations other than the kit's file and stdout batcher", () => {
    const received: string[] = [];
    const destination = new Writable({
      write(chunk: Buffer, _encoding, done) {
        received.push(chunk.toString());
        done();
      },
    });
    const logger = createLogger({ level: "info", service: "s", destination });
    new RpcLine(rpcChild(logger)).info(2500, "id-1");
    expect(received).toHaveLength(1);
    expect(JSON.parse(received[0])).toMatchObject({ service: "s", code: "OK", durationMs: 2.5, correlationId: "id-1", msg: "rpc" });
  });

  it("goes through pino for a logger with a message prefix, which the template check leaves alone", async () => {
    const file = logFile();
    const logger = rpcChild(createLogger({ level: "info", destination: file })).child({}, { msgPrefix: "[p] " });
    const line = new RpcLine(logger);
    line.info(1, "a");
    line.info(2, "b");
    await waitFor("2 lines", () => lines(file).length === 2);
    expect(lines(file).map((text) => JSON.parse(text).msg)).toEqual(["[p] rpc", "[p] rpc"]);
  });
});
