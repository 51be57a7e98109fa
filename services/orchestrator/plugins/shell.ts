import { spawn } from "node:child_process";
import { basename } from "node:path";
import { isObject, TaskFailure, unknownKeys, type Plugin } from "./types.js";

/**
 * shell: runs one allowlisted command as argv (never through a shell, so no injection through
 * arguments). Config: command (must be on ORCA_ORCHESTRATOR_SHELL_ALLOWED_COMMANDS, by exact
 * path or by name), args (list of strings), env (string map, added to a minimal PATH-only
 * environment), stdin (string), timeout_ms (default: the attempt's start-to-close; killed with
 * SIGKILL on timeout or abort). stdout/stderr are captured up to
 * ORCA_ORCHESTRATOR_SHELL_MAX_OUTPUT_BYTES each. Output: {exit_code, stdout, stderr, truncated}.
 * A non-zero exit fails the attempt with kind `shell.exit`.
 */
const KEYS = ["command", "args", "env", "stdin", "timeout_ms"];

export function shellPlugin(allowedCommands: string[], maxOutputBytes: number): Plugin {
  const allowed = (cmd: string) => allowedCommands.includes(cmd) || (!cmd.includes("/") && allowedCommands.some((a) => basename(a) === cmd && !a.includes("/")));
  return {
    name: "shell",
    validate(config, isDynamic) {
      const errors = unknownKeys(config, KEYS);
      if (!isDynamic("command")) {
        if (typeof config.command !== "string" || config.command === "") errors.push("command: required string");
        else if (!allowed(config.command)) errors.push(`command: "${config.command}" is not on the allowlist (ORCA_ORCHESTRATOR_SHELL_ALLOWED_COMMANDS)`);
      }
      if (config.args !== undefined && !isDynamic("args") && !(Array.isArray(config.args) && config.args.every((a) => typeof a === "string"))) errors.push("args: a list of strings");
      if (config.env !== undefined && !isDynamic("env") && !isObject(config.env)) errors.push("env: an object of strings");
      if (config.timeout_ms !== undefined && !isDynamic("timeout_ms") && !(typeof config.timeout_ms === "number" && config.timeout_ms > 0)) errors.push("timeout_ms: a positive number");
      return errors;
    },
    execute({ config, signal }) {
      return new Promise((resolve, reject) => {
        const env: Record<string, string> = { PATH: process.env.PATH ?? "/usr/bin:/bin" };
        if (isObject(config.env)) for (const [k, v] of Object.entries(config.env)) env[k] = String(v);
        const child = spawn(String(config.command), (config.args as string[] | undefined) ?? [], { env, stdio: ["pipe", "pipe", "pipe"], signal, killSignal: "SIGKILL" });
        const out = { stdout: [] as Buffer[], stderr: [] as Buffer[], size: { stdout: 0, stderr: 0 }, truncated: false };
        for (const stream of ["stdout", "stderr"] as const) {
          child[stream].on("data", (chunk: Buffer) => {
            const room = maxOutputBytes - out.size[stream];
            if (room <= 0) return void (out.truncated = true);
            if (chunk.length > room) out.truncated = true;
            out[stream].push(chunk.subarray(0, room));
            out.size[stream] += Math.min(room, chunk.length);
          });
        }
        const timer = typeof config.timeout_ms === "number" ? setTimeout(() => child.kill("SIGKILL"), config.timeout_ms) : undefined;
        let timedOut = false;
        if (timer) timer.unref();
        child.on("error", (error) => {
          clearTimeout(timer);
          if (signal.aborted) reject(error);
          else reject(new TaskFailure("shell.spawn", error.message));
        });
        child.on("close", (code, sig) => {
          clearTimeout(timer);
          if (signal.aborted) return reject(signal.reason ?? new Error("aborted"));
          timedOut = sig === "SIGKILL";
          const result = {
            exit_code: code ?? -1,
            stdout: Buffer.concat(out.stdout).toString("utf8"),
            stderr: Buffer.concat(out.stderr).toString("utf8"),
            truncated: out.truncated,
          };
          if (timedOut) return reject(new TaskFailure("shell.timeout", `command killed after ${String(config.timeout_ms)} ms`));
          if (code !== 0) return reject(new TaskFailure("shell.exit", `exit code ${code ?? sig}: ${result.stderr.slice(0, 1000)}`));
          resolve(result);
        });
        if (typeof config.stdin === "string") child.stdin.end(config.stdin);
        else child.stdin.end();
      });
    },
  };
}
