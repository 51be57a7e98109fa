import { create, createFileRegistry, type DescMessage } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";

/**
 * google.rpc.BadRequest, the standard error detail for field violations. gen/ holds no
 * google/rpc types (the build generates only the mesh's own protos and health/reflection), so
 * the two messages are described here by hand: wire-compatible with error_details.proto
 * (field numbers and names as published), so any gRPC client decodes them.
 */
const file = create(FileDescriptorProtoSchema, {
  name: "orca/orchestrator/google_rpc_bad_request.proto",
  package: "google.rpc",
  syntax: "proto3",
  messageType: [
    {
      name: "BadRequest",
      field: [{ name: "field_violations", jsonName: "fieldViolations", number: 1, label: 3, type: 11, typeName: ".google.rpc.BadRequest.FieldViolation" }],
      nestedType: [
        {
          name: "FieldViolation",
          field: [
            { name: "field", jsonName: "field", number: 1, label: 1, type: 9 },
            { name: "description", jsonName: "description", number: 2, label: 1, type: 9 },
          ],
        },
      ],
    },
  ],
});

export const BadRequestSchema = createFileRegistry(file, () => undefined).getMessage("google.rpc.BadRequest") as DescMessage;

export interface FieldViolation {
  field: string;
  description: string;
}

/** INVALID_ARGUMENT listing every violation in the message and as a BadRequest detail. */
export function invalidArgument(violations: FieldViolation[]): ConnectError {
  const message = violations.map((v) => `${v.field}: ${v.description}`).join("; ");
  return new ConnectError(message, Code.InvalidArgument, undefined, [
    { desc: BadRequestSchema, value: { fieldViolations: violations } as never },
  ]);
}
