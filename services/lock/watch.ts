import type { LeaseRecord } from "./store.js";

/** One change of a resource's holders, as WatchLocks reports it. */
export interface LockEventRecord {
  type: "ACQUIRED" | "RELEASED" | "EXPIRED";
  /** Lease with `id` empty: lease ids are bearer secrets and never reach observers. */
  lease: LeaseRecord;
  occurredAt: Date;
  queueDepth: number;
  initial?: boolean;
}

interface Subscriber {
  tenant: string;
  prefix: string;
  push(event: LockEventRecord): void;
  close(error?: Error): void;
}

/**
 * Fans NOTIFY-delivered lock events out to this replica's WatchLocks streams. Every replica
 * hears every committed event (from every replica) on the LISTEN channel, in commit order, which
 * per resource is the order of the grants (they are serialized by the resource row lock).
 */
export class WatchHub {
  private readonly subscribers = new Set<Subscriber>();

  get size(): number {
    return this.subscribers.size;
  }

  publish(event: LockEventRecord): void {
    for (const sub of this.subscribers) {
      if (sub.tenant === event.lease.tenant && event.lease.resource.startsWith(sub.prefix)) sub.push(event);
    }
  }

  /**
   * A subscription as an async iterable. Events are buffered up to `maxBuffered`; a consumer that
   * falls further behind has its stream ended with `overflowError()` rather than growing memory.
   */
  subscribe(tenant: string, prefix: string, options: { maxBuffered: number; overflowError: () => Error; signal: AbortSignal }) {
    const queue: LockEventRecord[] = [];
    let wake: (() => void) | undefined;
    let ended: { error?: Error } | undefined;
    const sub: Subscriber = {
      tenant,
      prefix,
      push: (event) => {
        if (ended) return;
        if (queue.length >= options.maxBuffered) return sub.close(options.overflowError());
        queue.push(event);
        wake?.();
      },
      close: (error) => {
        if (ended) return;
        ended = { error };
        this.subscribers.delete(sub);
        wake?.();
      },
    };
    this.subscribers.add(sub);
    const onAbort = () => sub.close();
    options.signal.addEventListener("abort", onAbort, { once: true });
    const hub = this;
    return {
      close: () => sub.close(),
      async *events(): AsyncGenerator<LockEventRecord> {
        try {
          for (;;) {
            while (queue.length > 0) yield queue.shift()!;
            if (ended) {
              if (ended.error) throw ended.error;
              return;
            }
            await new Promise<void>((resolve) => (wake = resolve));
            wake = undefined;
          }
        } finally {
          options.signal.removeEventListener("abort", onAbort);
          hub.subscribers.delete(sub);
          ended ??= {};
        }
      },
    };
  }

  closeAll(): void {
    for (const sub of [...this.subscribers]) sub.close();
  }
}
