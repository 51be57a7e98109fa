import { setTimeout as sleep } from "node:timers/promises";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Health, HealthCheckResponse_ServingStatus as Serving } from "../../gen/health/v1/health_pb.js";
import { Status } from "./rules.js";

/**
 * Probers: the only transport code of the Monitor's domain. One prober per target, owned by the
 * engine, which gets plain results through two callbacks.
 *
 * gRPC targets (why this shape): status comes from a grpc.health.v1 Watch stream because it
 * reports NOT_SERVING the moment a server starts draining (the kit flips health first on
 * SIGTERM), far sooner than an interval-based poll. Latency and error-rate samples come from a
 * Check call every interval in both modes (the contract), since a long-lived stream has no
 * per-probe latency. While the Watch stream is not connected (Unimplemented, or broken and
 * waiting to reconnect) the Check result is the status: that is the fallback to polling. A
 * server answering Watch with UNIMPLEMENTED is never asked again; a broken stream is retried
 * every interval. Probes use their own plain transport per target, not the mesh client factory:
 * retries or a circuit breaker would hide exactly what a probe must see.
 */
export interface ProbeSpec {
  kind: "grpc" | "http";
  address: string;
  service: string;
  tls: boolean;
  url: string;
  expectedStatus: number;
  intervalMs: number;
  timeoutMs: number;
}

export interface ProbeResult {
  /** HealthStatus enum number. */
  status: number;
  /** Round-trip ms; null when the probe got no answer. */
  latencyMs: number | null;
  detail: string;
  at: Date;
}

export interface ProbeCallbacks {
  /** A Check/GET finished. `status` is the target's effective status (the Watch's while it is connected). */
  onSample(sample: ProbeResult, status: { status: number; detail: string }): void;
  /** The Watch stream reported a (new) status. */
  onWatchStatus(status: number, detail: string): void;
}

function fromServing(value: Serving): { status: number; detail: string } {
  switch (value) {
    case Serving.SERVING:
      return { status: Status.SERVING, detail: "SERVING" };
    case Serving.NOT_SERVING:
      return { status: Status.NOT_SERVING, detail: "NOT_SERVING" };
    case Serving.SERVICE_UNKNOWN:
      return { status: Status.NOT_SERVING, detail: "SERVICE_UNKNOWN" };
    default:
      return { status: Status.UNKNOWN, detail: "UNKNOWN" };
  }
}

/** An error of a Check call as a status: no answer is UNREACHABLE, an answer that is an error is NOT_SERVING. */
function fromGrpcError(error: unknown): { status: number; detail: string; answered: boolean } {
  const ce = ConnectError.from(error);
  switch (ce.code) {
    case Code.NotFound:
      return { status: Status.NOT_SERVING, detail: "SERVICE_UNKNOWN", answered: true };
    case Code.Unavailable:
    case Code.DeadlineExceeded:
    case Code.Canceled:
    case Code.Unknown:
    case Code.Internal:
      return { status: Status.UNREACHABLE, detail: `${Code[ce.code]}: ${ce.rawMessage}`.slice(0, 500), answered: false };
    default:
      return { status: Status.NOT_SERVING, detail: `${Code[ce.code]}: ${ce.rawMessage}`.slice(0, 500), answered: true };
  }
}

export class TargetProber {
  private readonly controller = new AbortController();
  private client?: Client<typeof Health>;
  private watchStatus: { status: number; detail: string } | undefined;
  private kick?: () => void;

  constructor(
    private readonly spec: ProbeSpec,
    private readonly callbacks: ProbeCallbacks,
  ) {}

  start(): void {
    this.signal.addEventListener("abort", () => this.kick?.(), { once: true });
    if (this.spec.kind === "grpc") {
      const transport = createGrpcTransport({ baseUrl: `${this.spec.tls ? "https" : "http"}://${this.spec.address}` });
      this.client = createClient(Health, transport);
      void this.watchLoop();
    }
    void this.sampleLoop();
  }

  stop(): void {
    this.controller.abort();
  }

  private get signal(): AbortSignal {
    return this.controller.signal;
  }

  private async sampleLoop(): Promise<void> {
    while (!this.signal.aborted) {
      const started = performance.now();
      const sample = this.spec.kind === "grpc" ? await this.checkOnce() : await this.httpOnce();
      if (this.signal.aborted) return;
      const effective = this.watchStatus ?? { status: sample.status, detail: sample.detail };
      try {
        this.callbacks.onSample(sample, effective);
      } catch {
        // The engine logs its own failures; a callback error must not stop probing.
      }
      const wait = Math.max(0, this.spec.intervalMs - (performance.now() - started));
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, wait);
        this.kick = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.kick = undefined;
    }
  }

  private async checkOnce(): Promise<ProbeResult> {
    const started = performance.now();
    try {
      const response = await this.client!.check({ service: this.spec.service }, { timeoutMs: this.spec.timeoutMs, signal: this.signal });
      const mapped = fromServing(response.status);
      return { ...mapped, latencyMs: performance.now() - started, at: new Date() };
    } catch (error) {
      const mapped = fromGrpcError(error);
      return { status: mapped.status, detail: mapped.detail, latencyMs: mapped.answered ? performance.now() - started : null, at: new Date() };
    }
  }

  private async httpOnce(): Promise<ProbeResult> {
    const started = performance.now();
    const expected = this.spec.expectedStatus || 200;
    // One timer per probe; stop() aborts an in-flight probe through the same controller.
    const probe = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      probe.abort();
    }, this.spec.timeoutMs);
    const onStop = () => probe.abort();
    this.signal.addEventListener("abort", onStop, { once: true });
    try {
      const response = await fetch(this.spec.url, { method: "GET", redirect: "manual", signal: probe.signal, headers: { "user-agent": "orca-monitor" } });
      const latencyMs = performance.now() - started;
      await response.body?.cancel().catch(() => undefined);
      const ok = response.status === expected;
      return { status: ok ? Status.SERVING : Status.NOT_SERVING, detail: `HTTP ${response.status}`, latencyMs, at: new Date() };
    } catch (error) {
      const cause = error instanceof Error && error.cause instanceof Error ? `: ${error.cause.message}` : "";
      const detail = timedOut ? `timeout after ${this.spec.timeoutMs}ms` : `${error instanceof Error ? error.message : String(error)}${cause}`;
      return { status: Status.UNREACHABLE, detail: detail.slice(0, 500), latencyMs: null, at: new Date() };
    } finally {
      clearTimeout(timer);
      this.signal.removeEventListener("abort", onStop);
    }
  }

  private async watchLoop(): Promise<void> {
    while (!this.signal.aborted) {
      try {
        for await (const message of this.client!.watch({ service: this.spec.service }, { signal: this.signal })) {
          const mapped = fromServing(message.status);
          const changed = this.watchStatus?.status !== mapped.status;
          this.watchStatus = mapped;
          if (changed) this.callbacks.onWatchStatus(mapped.status, `watch: ${mapped.detail}`);
        }
        // The server ended the stream (e.g. its maximum stream duration): reconnect at once.
        this.watchStatus = undefined;
      } catch (error) {
        this.watchStatus = undefined;
        if (this.signal.aborted) return;
        if (ConnectError.from(error).code === Code.Unimplemented) return; // poll Check only, from now on
        // Broken stream: let a Check decide the status right away, and retry Watch after an interval.
        this.kick?.();
        await sleep(this.spec.intervalMs, undefined, { signal: this.signal }).catch(() => undefined);
      }
    }
  }
}
