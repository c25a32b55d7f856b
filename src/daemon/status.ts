// Turns any error into the status object a grpc-js callback or stream takes.
// The error → code table itself lives in src/errors.ts.
import { Metadata, status, type StatusObject } from "@grpc/grpc-js";
import { grpcStatusOf, NotFoundError } from "../errors.js";

export interface GrpcError extends Partial<StatusObject> {
  code: status;
  details: string;
  message: string;
}

export function toGrpcError(err: unknown): GrpcError {
  const code = grpcStatusOf(err);
  const details = err instanceof Error ? err.message : String(err);
  const metadata = new Metadata();
  // A machine-readable reason for NOT_FOUND (evicted, expired, released, consumed).
  if (err instanceof NotFoundError && err.reason !== undefined) metadata.set("kvferry-reason", err.reason);
  return { code, details, message: details, metadata };
}
