import { createRegistry, toBinary, type DescFile, type DescService, type Registry } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import { ServerReflection as ReflectionV1 } from "../../../gen/grpc/reflection/v1/reflection_pb.js";
import { ServerReflection as ReflectionV1Alpha } from "../../../gen/grpc/reflection/v1alpha/reflection_pb.js";

/**
 * gRPC server reflection (grpc.reflection.v1 and v1alpha), answered from the descriptors that
 * protobuf-es generated, so grpcurl and `buf curl` work without .proto files. The two versions
 * share their message shapes, so one resolver serves both.
 */

const NOT_FOUND = 5;
const INVALID_ARGUMENT = 3;

type ReflectionRequestShape = {
  host: string;
  messageRequest:
    | { case: "fileByFilename" | "fileContainingSymbol" | "allExtensionNumbersOfType" | "listServices"; value: string }
    | { case: "fileContainingExtension"; value: { containingType: string; extensionNumber: number } }
    | { case: undefined; value?: undefined };
};

export class ReflectionIndex {
  private readonly registry: Registry;
  private readonly files = new Map<string, DescFile>();
  readonly serviceNames: string[];

  constructor(services: DescService[]) {
    for (const service of services) this.addFile(service.file);
    this.registry = createRegistry(...this.files.values());
    this.serviceNames = [...new Set(services.map((s) => s.typeName))].sort();
  }

  private addFile(file: DescFile): void {
    if (this.files.has(file.proto.name)) return;
    this.files.set(file.proto.name, file);
    for (const dep of file.dependencies) this.addFile(dep);
  }

  /**
   * The requested file (always), then its transitive dependencies not yet sent on this stream,
   * as grpc-go's reflection server does.
   */
  private fileWithDeps(file: DescFile, sent: Set<string>): Uint8Array[] {
    const out: Uint8Array[] = [];
    const queue = [file];
    while (queue.length > 0) {
      const current = queue.shift()!;
      if (out.length === 0 || !sent.has(current.proto.name)) {
        sent.add(current.proto.name);
        out.push(toBinary(FileDescriptorProtoSchema, current.proto));
      }
      queue.push(...current.dependencies.filter((dep) => !sent.has(dep.proto.name)));
    }
    return out;
  }

  private fileOfSymbol(symbol: string): DescFile | undefined {
    const direct = this.registry.get(symbol);
    if (direct) return direct.file;
    // A method, field or enum value: look up its parent.
    const parent = symbol.slice(0, Math.max(0, symbol.lastIndexOf(".")));
    const owner = parent ? this.registry.get(parent) : undefined;
    if (owner?.kind === "service" && owner.methods.some((m) => m.name === symbol.slice(parent.length + 1))) return owner.file;
    if (owner?.kind === "message" && owner.fields.some((f) => f.name === symbol.slice(parent.length + 1))) return owner.file;
    return undefined;
  }

  // The response is built as a plain object, valid for both v1 and v1alpha schemas.
  answer(req: ReflectionRequestShape, sent: Set<string>) {
    const base = { validHost: req.host, originalRequest: req };
    const error = (errorCode: number, errorMessage: string) => ({
      ...base,
      messageResponse: { case: "errorResponse" as const, value: { errorCode, errorMessage } },
    });
    const files = (file: DescFile | undefined, what: string) =>
      file
        ? { ...base, messageResponse: { case: "fileDescriptorResponse" as const, value: { fileDescriptorProto: this.fileWithDeps(file, sent) } } }
        : error(NOT_FOUND, `${what} not found`);
    const request = req.messageRequest;
    switch (request.case) {
      case "listServices":
        return {
          ...base,
          messageResponse: { case: "listServicesResponse" as const, value: { service: this.serviceNames.map((name) => ({ name })) } },
        };
      case "fileByFilename":
        return files(this.files.get(request.value), `file "${request.value}"`);
      case "fileContainingSymbol":
        return files(this.fileOfSymbol(request.value), `symbol "${request.value}"`);
      case "fileContainingExtension": {
        const message = this.registry.getMessage(request.value.containingType);
        const extension = message ? this.registry.getExtensionFor(message, request.value.extensionNumber) : undefined;
        return files(extension?.file, `extension ${request.value.extensionNumber} of "${request.value.containingType}"`);
      }
      case "allExtensionNumbersOfType": {
        const message = this.registry.getMessage(request.value);
        if (!message) return error(NOT_FOUND, `type "${request.value}" not found`);
        const numbers: number[] = [];
        for (const type of this.registry) {
          if (type.kind === "extension" && type.extendee.typeName === message.typeName) numbers.push(type.number);
        }
        return {
          ...base,
          messageResponse: {
            case: "allExtensionNumbersResponse" as const,
            value: { baseTypeName: message.typeName, extensionNumber: numbers.sort((a, b) => a - b) },
          },
        };
      }
      default:
        return error(INVALID_ARGUMENT, "empty reflection request");
    }
  }
}

export const REFLECTION_SERVICES = [ReflectionV1, ReflectionV1Alpha] as const;

export function reflectionHandlers(index: ReflectionIndex): {
  v1: ServiceImpl<typeof ReflectionV1>;
  v1alpha: ServiceImpl<typeof ReflectionV1Alpha>;
} {
  async function* serve(requests: AsyncIterable<ReflectionRequestShape>) {
    const sent = new Set<string>();
    for await (const req of requests) yield index.answer(req, sent);
  }
  return {
    v1: { serverReflectionInfo: (requests) => serve(requests as AsyncIterable<ReflectionRequestShape>) as never },
    v1alpha: { serverReflectionInfo: (requests) => serve(requests as AsyncIterable<ReflectionRequestShape>) as never },
  };
}
