import { fork, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import type { ChildMessage, ServerKind } from "../rpc/common.js";

/**
 * The foundation's baseline servers (bench/rpc/server.ts: bare node:http2, @grpc/grpc-js, the
 * kit), each started in a child process of its own so that it does not share an event loop with
 * the load generator. Works from the compiled dist/ (server.js) and under tsx (server.ts).
 */

export interface ServerChild {
  process: ChildProcess;
  port: number;
  /** The child's process.cpuUsage(), its main thread's CPU (Linux) and, for the kit, bytes of log written. */
  cpu(): Promise<{ usage: NodeJS.CpuUsage; mainThreadUs?: number; logBytes?: number }>;
  stop(): Promise<void>;
}

export interface ServerChildOptions {
  /** Extra node flags, e.g. --cpu-prof. */
  execArgv?: string[];
  env?: NodeJS.ProcessEnv;
  readyTimeoutMs?: number;
}

function serverScript(): { script: string; execArgv: string[] } {
  const compiled = fileURLToPath(new URL("../rpc/server.js", import.meta.url));
  if (existsSync(compiled)) return { script: compiled, execArgv: [] };
  return { script: fileURLToPath(new URL("../rpc/server.ts", import.meta.url)), execArgv: ["--import", "tsx"] };
}

export function startServerChild(kind: ServerKind, options: ServerChildOptions = {}): Promise<ServerChild> {
  const { script, execArgv } = serverScript();
  const child = fork(script, [kind], {
    execArgv: [...execArgv, ...(options.execArgv ?? [])],
    env: options.env ?? process.env,
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const readyTimeoutMs = options.readyTimeoutMs ?? 30_000;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${kind}: the server did not report ready within ${readyTimeoutMs / 1000} s`));
    }, readyTimeoutMs);
    const exitedEarly = (code: number | null) => {
      clearTimeout(timer);
      reject(new Error(`${kind}: the server exited (code ${code}) before it was ready`));
    };
    child.once("exit", exitedEarly);
    child.once("message", (message: ChildMessage) => {
      if (message.type !== "ready") return;
      clearTimeout(timer);
      child.off("exit", exitedEarly);
      resolve({
        process: child,
        port: message.port,
        cpu: () =>
          new Promise((resolveCpu, rejectCpu) => {
            // A server that died mid-benchmark fails the run instead of leaving it waiting.
            const onExit = (code: number | null, signal: string | null) => {
              child.off("message", onMessage);
              rejectCpu(new Error(`${kind}: the server exited (${signal ?? `code ${code}`}) during the benchmark`));
            };
            const onMessage = (reply: ChildMessage) => {
              if (reply.type !== "cpu") return;
              child.off("message", onMessage);
              child.off("exit", onExit);
              resolveCpu({ usage: reply.usage, mainThreadUs: reply.mainThreadUs, logBytes: reply.logBytes });
            };
            child.on("message", onMessage);
            child.once("exit", onExit);
            if (child.exitCode !== null || child.signalCode !== null) return onExit(child.exitCode, child.signalCode);
            child.send({ type: "cpu" });
          }),
        stop: async () => {
          if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
          const killer = setTimeout(() => child.kill("SIGKILL"), 5000);
          await exited;
          clearTimeout(killer);
        },
      });
    });
  });
}
