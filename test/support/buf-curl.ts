import { execFile } from "node:child_process";
import { promisify } from "node:util";

const run = promisify(execFile);

/** Runs the buf CLI that npm installed (node_modules/.bin/buf) with `curl` and the given args. */
export async function runBufCurl(args: string[]): Promise<string> {
  const { stdout } = await run("node_modules/.bin/buf", ["curl", ...args], { timeout: 20_000 });
  return stdout;
}
