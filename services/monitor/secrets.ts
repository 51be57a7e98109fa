import { readFileSync } from "node:fs";

/**
 * Webhook signing secrets are referenced, never stored: `env:NAME` (an environment variable of
 * the Monitor process) or `file:/path` (a mounted Kubernetes Secret; trailing newline trimmed).
 * Resolved at every send, so rotating the secret needs no rule change.
 */
export interface SecretSource {
  /** The secret, or undefined when the reference names nothing (unset variable, missing file). */
  resolve(ref: string): string | undefined;
}

export const SECRET_REF = /^(env:[A-Za-z_][A-Za-z0-9_]*|file:\/.+)$/;

export function defaultSecretSource(env: Record<string, string | undefined> = process.env): SecretSource {
  return {
    resolve(ref) {
      if (!SECRET_REF.test(ref)) return undefined;
      if (ref.startsWith("env:")) {
        const value = env[ref.slice(4)];
        return value === undefined || value === "" ? undefined : value;
      }
      try {
        const value = readFileSync(ref.slice(5), "utf8").replace(/\r?\n$/, "");
        return value === "" ? undefined : value;
      } catch {
        return undefined;
      }
    },
  };
}
