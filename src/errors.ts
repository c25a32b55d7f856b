// Every error kvferry raises, and the one table from error to gRPC status.
//
// Layers below the daemon (store, config, engine) throw these classes and know
// nothing of gRPC; src/daemon/ maps them onto status codes with `grpcStatusOf`.
import { status as GrpcStatus } from "@grpc/grpc-js";

/** Base of every kvferry error. `retryable` marks failures a caller may retry as is. */
export abstract class KvferryError extends Error {
  readonly retryable: boolean = false;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A request field holds a value the daemon refuses. `field` names it. */
export class InvalidArgumentError extends KvferryError {
  constructor(readonly field: string, message: string) {
    super(`${field}: ${message}`);
  }
}

/** Why an entry is gone; remembered for a while so callers learn what happened. */
export type RemovalReason = "consumed" | "released" | "evicted" | "expired" | "transferred" | "incomplete";

/** No such entry or part. `reason` says why, when the entry existed recently. */
export class NotFoundError extends KvferryError {
  constructor(message: string, readonly reason?: RemovalReason) {
    super(message);
  }
}

export class AlreadyExistsError extends KvferryError {}

/** The entry is in a state that refuses the operation (e.g. a put to a sealed entry). */
export class FailedPreconditionError extends KvferryError {}

/** Not enough room, or a bounded queue is full. Worth retrying later. */
export class ResourceExhaustedError extends KvferryError {
  override readonly retryable = true;
}

/** The request can never succeed with this daemon's limits (a part larger than the pool). */
export class OutOfRangeError extends KvferryError {}

/** A wait ran out before the thing waited for happened. */
export class DeadlineExceededError extends KvferryError {
  override readonly retryable = true;
}

/**
 * The operation lost to a concurrent one, or what it needs was abandoned: an entry that
 * another reader holds exclusively (its outcome is not known yet), or an entry that can
 * never be complete because a part was abandoned after its seal was asked for.
 */
export class AbortedError extends KvferryError {}

/** A peer or service could not be reached. */
export class UnavailableError extends KvferryError {
  override readonly retryable = true;
}

/** The metadata backend could not be reached at start-up. The CLI exits with code 3. */
export class MetadataUnavailableError extends UnavailableError {}

/** A peer failed to prove the cluster token (a wrong proof or call MAC), or could not prove its own. */
export class PermissionDeniedError extends KvferryError {}

/**
 * A peer API call without a valid session (none, unknown, expired, or a call counter seen
 * before): the caller authenticates again (OpenSession, ConfirmSession) and retries.
 */
export class UnauthenticatedError extends KvferryError {}

/** The caller went away or the daemon is shutting down. */
export class CancelledError extends KvferryError {}

/** A daemon-side failure that is not the caller's fault. */
export class InternalError extends KvferryError {}

/**
 * A child service (a daemon, simulator or proxy that a launcher started) did not come to
 * serve: it exited first (`exit` says how: "exit code 1", "killed by SIGKILL") or the wait
 * ran out (`timedOut`). `service` names it by its role ("prefill daemon"); `lastLines` are
 * its last lines of output, stdout and stderr, oldest first (also in the message).
 */
export class ServiceStartError extends KvferryError {
  constructor(
    readonly service: string,
    readonly timedOut: boolean,
    readonly exit: string,
    readonly lastLines: readonly string[],
    message: string,
  ) {
    super(message);
  }
}

/** A configuration value is wrong. Raised at start-up; the CLI exits with code 2. */
export class ConfigError extends KvferryError {
  constructor(
    readonly source: string,
    readonly key: string,
    readonly value: unknown,
    readonly expected: string,
  ) {
    super(`${source}: ${key}: got ${describeValue(value)}, expected ${expected}`);
  }
}

function describeValue(value: unknown): string {
  if (value === undefined) return "nothing";
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

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
