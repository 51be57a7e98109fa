import type { DescMethod, DescService } from "@bufbuild/protobuf";
import { create } from "@bufbuild/protobuf";
import { ConnectError, type Transport } from "@connectrpc/connect";
import { createClient } from "@connectrpc/connect";

/**
 * Calls any method of any service with one request message (built from `init`), whatever its
 * kind, and returns the resulting error (or undefined on success). For sweeping tests.
 */
export async function callAny(
  transport: Transport,
  service: DescService,
  method: DescMethod,
  init: Record<string, unknown>,
  headers: Record<string, string>,
  timeoutMs = 5_000,
): Promise<ConnectError | undefined> {
  const client = createClient(service, transport) as unknown as Record<string, (...args: unknown[]) => unknown>;
  const fn = client[method.localName];
  const message = create(method.input, init as never);
  const options = { headers, timeoutMs };
  try {
    switch (method.methodKind) {
      case "unary":
        await fn(message, options);
        break;
      case "server_streaming":
        for await (const _ of fn(message, options) as AsyncIterable<unknown>) break;
        break;
      case "client_streaming":
        await fn((async function* () { yield message; })(), options);
        break;
      case "bidi_streaming":
        for await (const _ of fn((async function* () { yield message; })(), options) as AsyncIterable<unknown>) break;
        break;
    }
    return undefined;
  } catch (error) {
    return ConnectError.from(error);
  }
}
