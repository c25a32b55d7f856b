// Request decoding that keeps out-of-range numbers the caller's fault.
//
// The generated code maps uint64 to a JS number and throws during deserialization
// for values above 2^53, which grpc-js can only report as INTERNAL. A declared part
// size is the one uint64 a client sends; here it saturates instead, so the store
// refuses it as a part that can never fit (OUT_OF_RANGE).
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import { KvFerryService, PutStreamHeader, PutStreamRequest } from "../gen/kvferry/v1/kvferry.js";

function saturate(value: bigint | string): number {
  const n = BigInt(value);
  return n > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER + 1 : Number(n);
}

function decodeHeader(bytes: Uint8Array): PutStreamHeader {
  const reader = new BinaryReader(bytes);
  const header = PutStreamHeader.create();
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (field === 1 && wireType === WireType.LengthDelimited) header.transferId = reader.string();
    else if (field === 2 && wireType === WireType.LengthDelimited) header.part = reader.string();
    else if (field === 3 && wireType === WireType.Varint) header.size = saturate(reader.uint64());
    else if (field === 4 && wireType === WireType.Varint) header.seal = reader.bool();
    else if (field === 5 && wireType === WireType.Varint) header.leaseTtlMs = reader.int32();
    else reader.skip(wireType);
  }
  return header;
}

export function decodePutStreamRequest(bytes: Buffer): PutStreamRequest {
  try {
    return PutStreamRequest.decode(bytes);
  } catch (err) {
    if (!String(err).includes("MAX_SAFE_INTEGER")) throw err;
  }
  const reader = new BinaryReader(bytes);
  const request: PutStreamRequest = {};
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (field === 1 && wireType === WireType.LengthDelimited) request.header = decodeHeader(reader.bytes());
    else if (field === 2 && wireType === WireType.LengthDelimited) request.chunk = Buffer.from(reader.bytes());
    else reader.skip(wireType);
  }
  return request;
}

/** The client API's service definition, with the decoder above for PutStream. */
export const KvFerryServiceDefinition = {
  ...KvFerryService,
  putStream: { ...KvFerryService.putStream, requestDeserialize: decodePutStreamRequest },
} as typeof KvFerryService;
