// Server reflection from descriptor sets that `buf build` wrote at build time.
//
// Loading .proto files through proto-loader would describe map entries and field
// names wrongly for Go-based clients (grpcurl, buf curl); the binary descriptor sets
// keep the protos exactly as written. See TOOLCHAIN.md.
import { readFileSync } from "node:fs";
import type { Server } from "@grpc/grpc-js";
import { loadFileDescriptorSetFromBuffer, type PackageDefinition } from "@grpc/proto-loader";
import { ReflectionService } from "@grpc/reflection";

/** dist/descriptors/, next to dist/daemon/. */
const DESCRIPTORS = new URL("../descriptors/", import.meta.url);
export const DESCRIPTOR_SETS = ["kvferry.binpb", "health.binpb"];

/** Serves reflection on `server`, listing only the `services` it carries (and their types). */
export function addReflection(server: Server, services: readonly string[]): void {
  let definition: PackageDefinition = {};
  for (const file of DESCRIPTOR_SETS) {
    const bytes = readFileSync(new URL(file, DESCRIPTORS));
    definition = { ...definition, ...loadFileDescriptorSetFromBuffer(bytes, { keepCase: true }) };
  }
  new ReflectionService(definition, { services: [...services] }).addToServer(server);
}
