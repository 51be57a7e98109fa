import type { JsonObject } from "@bufbuild/protobuf";
import picomatch from "picomatch";
import { isObject, TaskFailure, unknownKeys, type Plugin } from "./types.js";

/**
 * http: one request. Config: method (default GET), url, headers (string map), body (string, or
 * any JSON value sent as JSON), expected_status (a code or a list; default any 2xx),
 * max_response_bytes (default 1 MiB). Only hosts matching ORCA_ORCHESTRATOR_HTTP_ALLOWED_HOSTS
 * (globs on the host name, e.g. "api.example.com,*.internal") may be called, and redirects are
 * not followed (a redirect could leave the allowlist): this is the SSRF guard.
 * Output: {status, headers, body} with body parsed as JSON when the response says so.
 */
const METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"];
const KEYS = ["method", "url", "headers", "body", "expected_status", "max_response_bytes"];

export function httpPlugin(allowedHosts: string[]): Plugin {
  const allowed = allowedHosts.length > 0 ? picomatch(allowedHosts, { nocase: true }) : () => false;
  const checkUrl = (raw: unknown): string | undefined => {
    if (typeof raw !== "string") return "url: required string";
    let url: URL;
    try {
      url = new URL(raw);
    } catch {
      return `url: not a URL`;
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") return "url: scheme must be http or https";
    if (!allowed(url.hostname)) return `url: host "${url.hostname}" is not on the allowlist (ORCA_ORCHESTRATOR_HTTP_ALLOWED_HOSTS)`;
    return undefined;
  };
  return {
    name: "http",
    validate(config, isDynamic) {
      const errors = unknownKeys(config, KEYS);
      if (!isDynamic("url")) {
        const e = checkUrl(config.url);
        if (e) errors.push(e);
      }
      if (config.method !== undefined && !isDynamic("method") && !METHODS.includes(String(config.method).toUpperCase())) errors.push(`method: one of ${METHODS.join(", ")}`);
      if (config.headers !== undefined && !isDynamic("headers") && !isObject(config.headers)) errors.push("headers: must be an object of strings");
      const es = config.expected_status;
      if (es !== undefined && !isDynamic("expected_status") && !(typeof es === "number" || (Array.isArray(es) && es.every((x) => typeof x === "number")))) {
        errors.push("expected_status: a status code or a list of codes");
      }
      return errors;
    },
    async execute({ config, signal }) {
      const method = String(config.method ?? "GET").toUpperCase();
      const headers: Record<string, string> = {};
      if (isObject(config.headers)) for (const [k, v] of Object.entries(config.headers)) headers[k] = String(v);
      let body: string | undefined;
      if (config.body !== undefined && config.body !== null && method !== "GET" && method !== "HEAD") {
        if (typeof config.body === "string") body = config.body;
        else {
          body = JSON.stringify(config.body);
          headers["content-type"] ??= "application/json";
        }
      }
      let res: Response;
      try {
        res = await fetch(String(config.url), { method, headers, body, signal, redirect: "manual" });
      } catch (error) {
        if (signal.aborted) throw error;
        throw new TaskFailure("http.network", (error as Error).message);
      }
      const max = typeof config.max_response_bytes === "number" ? config.max_response_bytes : 1024 * 1024;
      const buf = Buffer.from(await res.arrayBuffer());
      const text = buf.subarray(0, max).toString("utf8");
      const expected = config.expected_status;
      const ok = expected === undefined ? res.status >= 200 && res.status < 300 : Array.isArray(expected) ? expected.includes(res.status) : expected === res.status;
      if (!ok) throw new TaskFailure("http.status", `unexpected status ${res.status} from ${method} ${String(config.url)}: ${text.slice(0, 500)}`);
      let parsed: unknown = text;
      if ((res.headers.get("content-type") ?? "").includes("json") && buf.length <= max) {
        try {
          parsed = JSON.parse(text);
        } catch {
          parsed = text;
        }
      }
      return { status: res.status, headers: Object.fromEntries(res.headers), body: parsed as JsonObject, truncated: buf.length > max };
    },
  };
}
