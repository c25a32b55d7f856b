"""Every error the client raises for a failed call, and the one table from gRPC status codes
to these classes. They mirror the daemon's own classes (src/errors.ts) and its table
(src/grpc-errors.ts): the same names, the same codes, `retryable` on the same ones.

A failed call raises the class its status code stands for, with the daemon's message; the
grpc.RpcError it came from is its `__cause__`.
"""
from __future__ import annotations

import grpc

#: The trailing-metadata key of a NOT_FOUND's removal reason (consumed, released, evicted, ...).
REASON_KEY = "kvferry-reason"


class KvferryError(Exception):
    """Base of every kvferry error. `retryable` marks failures a caller may retry as is."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    retryable = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgumentError(KvferryError):
    """A request field holds a value the daemon refuses. `field` names it."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, message: str) -> None:
        super().__init__(message)
        # The daemon writes "field: what is wrong" (src/errors.ts); as the TypeScript client
        # does, a message without that shape names the request.
        field, sep, _ = message.partition(": ")
        self.field = field if sep and field else "request"


class NotFoundError(KvferryError):
    """No such entry or part. `reason` says why, when the entry existed recently
    ("consumed", "released", "evicted", "expired", "transferred", "incomplete")."""

    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class AlreadyExistsError(KvferryError):
    """The part is already there."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPreconditionError(KvferryError):
    """The entry is in a state that refuses the operation (e.g. a put to a sealed entry)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhaustedError(KvferryError):
    """Not enough room, or a bounded queue is full. Worth retrying later."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    retryable = True


class OutOfRangeError(KvferryError):
    """The request can never succeed with this daemon's limits (a part larger than the pool)."""

    code = grpc.StatusCode.OUT_OF_RANGE


class DeadlineExceededError(KvferryError):
    """A wait ran out (the call's deadline, or the daemon's own) before it was done."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    retryable = True


class AbortedError(KvferryError):
    """Lost to a concurrent operation (another reader holds the entry and its outcome is not
    known yet), or the entry can never be complete (a part was abandoned after the seal)."""

    code = grpc.StatusCode.ABORTED


class UnavailableError(KvferryError):
    """The daemon (or a peer it needed) could not be reached."""

    code = grpc.StatusCode.UNAVAILABLE
    retryable = True


class PermissionDeniedError(KvferryError):
    code = grpc.StatusCode.PERMISSION_DENIED


class UnauthenticatedError(KvferryError):
    code = grpc.StatusCode.UNAUTHENTICATED


class CancelledError(KvferryError):
    """The call was cancelled, or the daemon is shutting down."""

    code = grpc.StatusCode.CANCELLED


class InternalError(KvferryError):
    """A daemon-side failure that is not the caller's fault (and any status not listed here)."""

    code = grpc.StatusCode.INTERNAL


_CLASS_OF: dict[grpc.StatusCode, type[KvferryError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError, NotFoundError, AlreadyExistsError, FailedPreconditionError,
        ResourceExhaustedError, OutOfRangeError, DeadlineExceededError, AbortedError,
        UnavailableError, PermissionDeniedError, UnauthenticatedError, CancelledError, InternalError,
    )
}


def error_from_status(code: grpc.StatusCode, message: str, reason: str | None = None) -> KvferryError:
    """The class for a status code (InternalError for one the daemon does not use)."""
    cls = _CLASS_OF.get(code, InternalError)
    if cls is NotFoundError:
        return NotFoundError(message, reason)
    return cls(message)


def error_from_rpc_error(err: grpc.RpcError) -> KvferryError:
    """A failed call as its typed error, with a NOT_FOUND's removal reason."""
    code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
    details = err.details() if callable(getattr(err, "details", None)) else None
    reason = None
    trailing = err.trailing_metadata() if callable(getattr(err, "trailing_metadata", None)) else None
    for key, value in trailing or ():
        if key == REASON_KEY:
            reason = value if isinstance(value, str) else value.decode()
    typed = error_from_status(code, details or str(code), reason)
    typed.__cause__ = err
    return typed
