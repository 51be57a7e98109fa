import { pino, type Logger } from "pino";
import type { LogLevel } from "../config.js";

export type { Logger };

/**
 * JSON logs, one object per line. Authorization and cookie headers are redacted wherever they
 * appear, so a log line never carries a credential.
 */
export function createLogger(options: { level: LogLevel; service?: string; destination?: pino.DestinationStream }): Logger {
  return pino(
    {
      level: options.level,
      base: options.service ? { service: options.service } : {},
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: ["*.authorization", "*.cookie", "*.token", "*.secret", "*.password"], censor: "[redacted]" },
      formatters: { level: (label) => ({ level: label }) },
    },
    options.destination,
  );
}
