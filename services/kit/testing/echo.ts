import { setTimeout as sleep } from "node:timers/promises";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { EchoService } from "../../../gen/orca/testing/v1/echo_pb.js";
import { callInfoKey } from "../call-scope.js";
import { InvalidArgumentError } from "../errors.js";

/**
 * The kit's conformance and benchmark service (proto/orca/testing/v1/echo.proto).
 * With `correlationIdInResponse: false` it answers with an empty correlation_id, as a server
 * without correlation ids does (the grpc-js server of bench:rpc), so that both send the same
 * bytes; the kit still sends the id in the x-request-id header.
 */
export function createEchoHandlers(options: { correlationIdInResponse: boolean }): ServiceImpl<typeof EchoService> {
  const { correlationIdInResponse } = options;
  return {
    async echo(req, ctx) {
      if (req.delayMs > 0) await sleep(req.delayMs, undefined, { signal: ctx.signal });
      if (req.throwUnexpected) throw new Error("boom: an unexpected failure with a secret stack");
      if (req.failWithCode !== 0) {
        if (req.failWithCode < 1 || req.failWithCode > 16) throw new InvalidArgumentError("fail_with_code", "must be 1-16");
        throw new ConnectError(req.failWithMessage, req.failWithCode as Code, { "x-echo-error": "yes" });
      }
      const echoHeader = ctx.requestHeader.get("x-echo");
      if (echoHeader !== null) {
        ctx.responseHeader.set("x-echo", echoHeader);
        ctx.responseTrailer.set("x-echo-trailer", echoHeader);
      }
      const correlationId = correlationIdInResponse ? (ctx.values.get(callInfoKey)?.correlationId ?? "") : "";
      return { payload: req.payload, correlationId };
    },
    async *echoStream(req, ctx) {
      if (req.repeat > 1000) throw new InvalidArgumentError("repeat", "must be at most 1000");
      for (let index = 0; index < req.repeat; index++) {
        if (index > 0 && req.delayMs > 0) await sleep(req.delayMs, undefined, { signal: ctx.signal });
        yield { payload: req.payload, index };
      }
    },
  };
}

export const echoHandlers: ServiceImpl<typeof EchoService> = createEchoHandlers({ correlationIdInResponse: true });
