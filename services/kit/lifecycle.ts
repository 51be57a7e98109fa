import type { Logger } from "./telemetry/logger.js";

/**
 * Runs `shutdown` once on SIGTERM or SIGINT (Kubernetes sends SIGTERM, a terminal Ctrl-C), then
 * exits. A second signal exits at once, for a human who does not want to wait for the drain.
 */
export function exitOnSignals(logger: Logger, shutdown: () => Promise<void>): void {
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      logger.warn({ signal }, "second signal: exiting without waiting for the drain");
      process.exit(1);
    }
    stopping = true;
    logger.info({ signal }, "draining: health NOT_SERVING, refusing new calls, finishing in-flight calls");
    shutdown().then(
      () => {
        logger.info("stopped");
        process.exit(0);
      },
      (error: unknown) => {
        logger.error({ err: error }, "shutdown failed");
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", onSignal);
  process.on("SIGINT", onSignal);
}
