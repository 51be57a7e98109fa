import { setTimeout as sleep } from "node:timers/promises";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { EchoService } from "../../../gen/orca/testing/v1/echo_pb.js";
import { callInfoKey } from "../call-scope.js";
import { InvalidArgumentError } from "../errors.js";

/** The kit's conformance and benchmark service (proto/orca/testing/v1/echo.proto). */
export const echoHandlers: ServiceImpl<typeof EchoService> = {
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
    return { payload: req.payload, correlationId: ctx.values.get(callInfoKey)?.correlationId ?? "" };
  },
  async *echoStream(req, ctx) {
    if (req.repeat > 1000) throw new InvalidArgumentError("repeat", "must be at most 1000");
    for (let index = 0; index < req.repeat; index++) {
      if (index > 0 && req.delayMs > 0) await sleep(req.delayMs, undefined, { signal: ctx.signal });
      yield { payload: req.payload, index };
    }
  },
};
