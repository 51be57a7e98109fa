import { describe, expect, it, vi } from "vitest";

describe("call scope", () => {
  it("is entered only once something in the process reads it (an outgoing client's propagation)", async () => {
    vi.resetModules(); // a fresh module: no reader yet in this copy
    const { callScope, readCallScope } = await import("../../services/kit/call-scope.js");
    const info = { correlationId: "corr-1" };
    // Before: the function runs, with its arguments, but no scope is entered.
    expect(callScope.run(info, (a: number, b: string) => [a, b, callScope.getStore()], 1, "x")).toEqual([1, "x", undefined]);
    readCallScope();
    expect(callScope.run(info, (a: number, b: string) => [a, b, callScope.getStore()], 1, "x")).toEqual([1, "x", info]);
    // ... and it follows the call across awaits.
    const seen = await callScope.run(info, async () => {
      await new Promise((resolve) => setTimeout(resolve, 1));
      return callScope.getStore();
    });
    expect(seen).toBe(info);
  });

  it("is read by every client the kit's factory makes", async () => {
    vi.resetModules();
    const { callScope } = await import("../../services/kit/call-scope.js");
    const { createOrcaTransport } = await import("../../services/kit/clients/factory.js");
    const info = { correlationId: "corr-2" };
    expect(callScope.run(info, () => callScope.getStore())).toBeUndefined();
    createOrcaTransport({ baseUrl: "http://127.0.0.1:9" });
    expect(callScope.run(info, () => callScope.getStore())).toBe(info);
  });
});
