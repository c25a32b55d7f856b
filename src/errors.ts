// Every error kvferry raises. No gRPC here: the layers below the daemon (store, config,
// engine, metadata) throw these classes and know nothing of it; the one table between
// these classes and gRPC status codes is src/grpc-errors.ts.

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
