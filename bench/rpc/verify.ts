import * as http2 from "node:http2";
import { fromBinary } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { EchoResponseSchema, EchoService } from "../../gen/orca/testing/v1/echo_pb.js";
import { ECHO_PATH, benchPayload } from "./common.js";

/**
 * Checks a server once before it is loaded, because h2load only sees HTTP status 200 and not
 * grpc-status: (1) a real Connect gRPC client call, with a deadline, returns the echo; (2) the
 * exact bytes h2load will send, posted with h2load's headers, get grpc-status 0 and the echo.
 * Throws with what is wrong.
 */
export async function verifyServer(baseUrl: string, requestFrame: Buffer, payloadBytes: number): Promise<void> {
  const expected = benchPayload(payloadBytes);
  const sameBytes = (a: Uint8Array) => Buffer.from(a).equals(Buffer.from(expected));

  const transport = createGrpcTransport({ baseUrl });
  const client = createClient(EchoService, transport);
  const response = await client.echo({ payload: expected }, { timeoutMs: 5000 });
  if (!sameBytes(response.payload)) throw new Error("Connect gRPC client: the response payload differs from the request's");

  const raw = await rawCall(baseUrl, requestFrame);
  if (raw.status !== 200) throw new Error(`raw call: HTTP status ${raw.status}`);
  if (raw.grpcStatus !== "0") throw new Error(`raw call: grpc-status ${raw.grpcStatus} (${raw.grpcMessage ?? ""})`);
  if (raw.body.length < 5 || raw.body.readUInt32BE(1) !== raw.body.length - 5 || raw.body[0] !== 0) {
    throw new Error("raw call: the response body is not one uncompressed gRPC message");
  }
  if (!sameBytes(fromBinary(EchoResponseSchema, raw.body.subarray(5)).payload)) {
    throw new Error("raw call: the response payload differs from the request's");
  }
}

interface RawResult {
  status: number;
  grpcStatus?: string;
  grpcMessage?: string;
  body: Buffer;
}

/** One unary gRPC POST over node:http2 with the same headers h2load sends. */
function rawCall(baseUrl: string, frame: Buffer): Promise<RawResult> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(baseUrl);
    session.once("error", reject);
    const req = session.request({
      ":method": "POST",
      ":path": ECHO_PATH,
      "content-type": "application/grpc",
      te: "trailers",
    });
    const chunks: Buffer[] = [];
    let status = 0;
    let grpcStatus: string | undefined;
    let grpcMessage: string | undefined;
    const readStatus = (headers: http2.IncomingHttpHeaders) => {
      if (headers["grpc-status"] !== undefined) grpcStatus = String(headers["grpc-status"]);
      if (headers["grpc-message"] !== undefined) grpcMessage = decodeURIComponent(String(headers["grpc-message"]));
    };
    req.once("response", (headers) => {
      status = Number(headers[":status"]);
      readStatus(headers); // trailers-only responses carry the status here
    });
    req.once("trailers", readStatus);
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.once("error", reject);
    req.once("end", () => {
      session.close();
      resolve({ status, grpcStatus, grpcMessage, body: Buffer.concat(chunks) });
    });
    req.end(frame);
  });
}
