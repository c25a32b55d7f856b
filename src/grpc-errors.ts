// The one table between kvferry's error classes (src/errors.ts) and gRPC status codes,
// both ways: the daemon answers a failed call with `toGrpcError`, and a client of the
// daemon's APIs (the typed client, a daemon calling a peer) gets the class back with
// `errorFromStatus` / `errorFromServiceError`. A NOT_FOUND carries its removal reason in
// the `kvferry-reason` metadata key.
import { Metadata, status as GrpcStatus, type ServiceError, type StatusObject } from "@grpc/grpc-js";
import {
  AbortedError, AlreadyExistsError, CancelledError, ConfigError, DeadlineExceededError, FailedPreconditionError,
  InternalError, InvalidArgumentError, KvferryError, NotFoundError, OutOfRangeError, PermissionDeniedError,
  type RemovalReason, ResourceExhaustedError, UnauthenticatedError, UnavailableError,
} from "./errors.js";

/** The metadata key of a NOT_FOUND's removal reason (evicted, expired, released, consumed, ...). */
const REASON_KEY = "kvferry-reason";

const STATUS_OF = new Map<Function, GrpcStatus>([
  [InvalidArgumentError, GrpcStatus.INVALID_ARGUMENT],
  [NotFoundError, GrpcStatus.NOT_FOUND],
  [AlreadyExistsError, GrpcStatus.ALREADY_EXISTS],
  [FailedPreconditionError, GrpcStatus.FAILED_PRECONDITION],
  [ResourceExhaustedError, GrpcStatus.RESOURCE_EXHAUSTED],
  [OutOfRangeError, GrpcStatus.OUT_OF_RANGE],
  [DeadlineExceededError, GrpcStatus.DEADLINE_EXCEEDED],
  [UnavailableError, GrpcStatus.UNAVAILABLE],
  [AbortedError, GrpcStatus.ABORTED],
  [CancelledError, GrpcStatus.CANCELLED],
  [PermissionDeniedError, GrpcStatus.PERMISSION_DENIED],
  [UnauthenticatedError, GrpcStatus.UNAUTHENTICATED],
  [ConfigError, GrpcStatus.INVALID_ARGUMENT],
  [InternalError, GrpcStatus.INTERNAL],
]);

/** The gRPC status for an error; anything that is not a KvferryError is INTERNAL. */
export function grpcStatusOf(err: unknown): GrpcStatus {
  if (err instanceof KvferryError) {
    return STATUS_OF.get(err.constructor) ?? GrpcStatus.INTERNAL;
  }
  return GrpcStatus.INTERNAL;
}

/** The KvferryError class for a gRPC status, for clients that want typed errors back. */
export function errorFromStatus(code: GrpcStatus, message: string): KvferryError {
  switch (code) {
    case GrpcStatus.INVALID_ARGUMENT: {
      const colon = message.indexOf(": ");
      return colon > 0
        ? new InvalidArgumentError(message.slice(0, colon), message.slice(colon + 2))
        : new InvalidArgumentError("request", message);
    }
    case GrpcStatus.NOT_FOUND: return new NotFoundError(message);
    case GrpcStatus.ALREADY_EXISTS: return new AlreadyExistsError(message);
    case GrpcStatus.FAILED_PRECONDITION: return new FailedPreconditionError(message);
    case GrpcStatus.RESOURCE_EXHAUSTED: return new ResourceExhaustedError(message);
    case GrpcStatus.OUT_OF_RANGE: return new OutOfRangeError(message);
    case GrpcStatus.DEADLINE_EXCEEDED: return new DeadlineExceededError(message);
    case GrpcStatus.UNAVAILABLE: return new UnavailableError(message);
    case GrpcStatus.ABORTED: return new AbortedError(message);
    case GrpcStatus.CANCELLED: return new CancelledError(message);
    case GrpcStatus.PERMISSION_DENIED: return new PermissionDeniedError(message);
    case GrpcStatus.UNAUTHENTICATED: return new UnauthenticatedError(message);
    default: return new InternalError(message);
  }
}

export interface GrpcError extends Partial<StatusObject> {
  code: GrpcStatus;
  details: string;
  message: string;
}

/** Any error as the status object a grpc-js callback or stream takes. */
export function toGrpcError(err: unknown): GrpcError {
  const code = grpcStatusOf(err);
  const details = err instanceof Error ? err.message : String(err);
  const metadata = new Metadata();
  // A machine-readable reason for NOT_FOUND (evicted, expired, released, consumed).
  if (err instanceof NotFoundError && err.reason !== undefined) metadata.set(REASON_KEY, err.reason);
  return { code, details, message: details, metadata };
}

/** A failed call's ServiceError as the KvferryError class its code stands for, with a NOT_FOUND's reason. */
export function errorFromServiceError(err: ServiceError): KvferryError {
  const e = errorFromStatus(err.code, err.details);
  const reason = err.metadata?.get(REASON_KEY)[0];
  if (e instanceof NotFoundError && typeof reason === "string") {
    return new NotFoundError(err.details, reason as RemovalReason);
  }
  return e;
}
