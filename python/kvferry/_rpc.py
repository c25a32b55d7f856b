"""The client's one place that calls gRPC: the stub, the deadline of a call, and the
mapping of every failure to the typed errors of kvferry.errors."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

import grpc

from ._gen import kvferry_pb2_grpc
from .errors import error_from_rpc_error

R = TypeVar("R")


@contextmanager
def typed_errors() -> Iterator[None]:
    """Raises a failed call's grpc.RpcError as its kvferry error (the RpcError is its cause)."""
    try:
        yield
    except grpc.RpcError as err:
        raise error_from_rpc_error(err) from err


class Deadline:
    """The end of an operation that may take several calls: each gets what is left.
    `None` seconds: no deadline."""

    def __init__(self, seconds: float | None) -> None:
        self._end = None if seconds is None else time.monotonic() + seconds

    def remaining(self) -> float | None:
        # Past the end: a tiny positive timeout, so the call fails DEADLINE_EXCEEDED at once.
        return None if self._end is None else max(self._end - time.monotonic(), 0.001)


class Rpc:
    """The stub of kvferry.v1.KvFerry on one channel, with the client's default timeout."""

    def __init__(self, channel: grpc.Channel, default_timeout: float | None) -> None:
        self.stub = kvferry_pb2_grpc.KvFerryStub(channel)
        self.default_timeout = default_timeout

    def deadline(self, timeout: float | None) -> Deadline:
        """The deadline of an operation: `timeout` seconds, or the client's default when None."""
        return Deadline(self.default_timeout if timeout is None else timeout)

    def unary(self, method: Callable[..., R], request: object, timeout: float | None) -> R:
        """One unary call, `timeout` seconds at most (None: the client's default)."""
        with typed_errors():
            return method(request, timeout=self.deadline(timeout).remaining())
