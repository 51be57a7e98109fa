import { createFileRegistry, fromBinary, type DescFile, type DescService, type MessageInitShape } from "@bufbuild/protobuf";
import * as wkt from "@bufbuild/protobuf/wkt";
import { FileDescriptorProtoSchema, type FileDescriptorProto } from "@bufbuild/protobuf/wkt";
import { ConnectError, createClient, type Transport } from "@connectrpc/connect";
import {
  ServerReflection,
  type ServerReflectionRequest,
  type ServerReflectionRequestSchema,
  type ServerReflectionResponse,
} from "../../../gen/grpc/reflection/v1/reflection_pb.js";

/**
 * Service descriptors of any gRPC server, fetched with server reflection (grpc.reflection.v1,
 * what grpcurl and `buf curl --reflect` use), so the grpc plugin can call services that Orca has
 * no generated code for. A service's files (and their imports, asked for by name when the server
 * did not send them) become a registry; the result is cached per target and service.
 */
const MAX_CACHED = 1_000;

export class ReflectionResolver {
  private readonly cache = new Map<string, { expiresAt: number; service: DescService }>();

  constructor(
    private readonly transportFor: (target: string) => Transport,
    private readonly options: { ttlMs: number; timeoutMs: number } = { ttlMs: 300_000, timeoutMs: 10_000 },
  ) {}

  /** The service, or a ReflectionError saying why not (not served, reflection off, unreachable). */
  async service(target: string, serviceName: string, signal: AbortSignal): Promise<DescService> {
    const key = `${target}\u0000${serviceName}`;
    const cached = this.cache.get(key);
    if (cached && cached.expiresAt > Date.now()) return cached.service;
    const service = await this.fetch(target, serviceName, signal);
    // Bounded: with templated targets or services there could be many; the oldest go first.
    if (this.cache.size >= MAX_CACHED) this.cache.delete(this.cache.keys().next().value!);
    this.cache.set(key, { expiresAt: Date.now() + this.options.ttlMs, service });
    return service;
  }

  private async fetch(target: string, serviceName: string, signal: AbortSignal): Promise<DescService> {
    const client = createClient(ServerReflection, this.transportFor(target));
    // One stream per question: resolution is rare (cached), and it keeps the exchange simple.
    const ask = async (request: MessageInitShape<typeof ServerReflectionRequestSchema>): Promise<FileDescriptorProto[]> => {
      let response: ServerReflectionResponse | undefined;
      try {
        const requests = (async function* () {
          yield request;
        })();
        for await (const res of client.serverReflectionInfo(requests, { signal, timeoutMs: this.options.timeoutMs })) {
          response = res;
          break;
        }
      } catch (error) {
        const e = ConnectError.from(error);
        throw new ReflectionError(e.code, `server reflection on ${target} failed: ${e.rawMessage}`);
      }
      const answer = response?.messageResponse;
      if (answer?.case === "errorResponse") throw new ReflectionError(answer.value.errorCode, `${target}: ${answer.value.errorMessage || "reflection error"}`);
      if (answer?.case !== "fileDescriptorResponse") throw new ReflectionError(2, `${target} sent no file descriptors for ${describe(request)}`);
      return answer.value.fileDescriptorProto.map((bytes) => fromBinary(FileDescriptorProtoSchema, bytes));
    };

    const files = new Map<string, FileDescriptorProto>();
    const first = await ask({ messageRequest: { case: "fileContainingSymbol", value: serviceName } });
    if (first.length === 0) throw new ReflectionError(5, `${target} does not serve ${serviceName}`);
    for (const file of first) files.set(file.name, file);
    // Imports the server did not send along, by name (bounded: a hostile server could go on).
    for (let asked = 0; ; asked++) {
      const missing = [...files.values()].flatMap((f) => f.dependency).find((name) => !files.has(name) && !WELL_KNOWN.has(name));
      if (missing === undefined) break;
      if (asked >= 100) throw new ReflectionError(8, `${target}: ${serviceName} imports more than 100 files`);
      for (const file of await ask({ messageRequest: { case: "fileByFilename", value: missing } })) files.set(file.name, file);
      if (!files.has(missing)) throw new ReflectionError(5, `${target} did not send ${missing}, imported by ${serviceName}'s files`);
    }
    let service: DescService | undefined;
    try {
      const registry = createFileRegistry(first[0], (name) => files.get(name) ?? WELL_KNOWN.get(name));
      service = registry.getService(serviceName);
    } catch (error) {
      throw new ReflectionError(3, `${target} sent descriptors that do not build: ${(error as Error).message}`);
    }
    if (!service) throw new ReflectionError(5, `${target} does not serve ${serviceName}`);
    return service;
  }
}

/** A reflection failure with the gRPC code that best describes it. */
export class ReflectionError extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

function describe(request: MessageInitShape<typeof ServerReflectionRequestSchema>): string {
  const m = request.messageRequest as ServerReflectionRequest["messageRequest"] | undefined;
  return m?.case ? `${m.case} ${String(m.value)}` : "the request";
}

/** google/protobuf/*.proto from protobuf-es, for servers that leave the well-known types out. */
const WELL_KNOWN = new Map<string, DescFile>(
  Object.values(wkt)
    .filter((value): value is DescFile => typeof value === "object" && value !== null && (value as { kind?: string }).kind === "file")
    .map((file) => [file.proto.name, file]),
);
