"""kvferry: the Python client of the kvferry daemon (KV-cache transfer for disaggregated LLM
serving).

    with kvferry.Client("127.0.0.1:50051", timeout=30) as c:
        c.put("req-1", {"layer.0": k0, "layer.1": k1})        # sealed with the last part
        got = c.get("req-1", consume=True, wait_ms=10_000)    # exactly once in the cluster
        got.parts["layer.0"]
"""
from .client import Client
from .errors import (
    AbortedError, AlreadyExistsError, CancelledError, DeadlineExceededError, FailedPreconditionError,
    InternalError, InvalidArgumentError, KvferryError, NotFoundError, OutOfRangeError,
    PermissionDeniedError, ResourceExhaustedError, UnauthenticatedError, UnavailableError,
)
from .local import LocalLoan, LocalPool, LocalWriter
from .types import Entry, EntryInfo, EntryPage, EntryState, NodeInfo, Nodes, PartInfo, ServerInfo, TransferResult

__all__ = [
    "Client", "LocalLoan", "LocalPool", "LocalWriter",
    "Entry", "EntryInfo", "EntryPage", "EntryState", "NodeInfo", "Nodes", "PartInfo", "ServerInfo", "TransferResult",
    "KvferryError", "AbortedError", "AlreadyExistsError", "CancelledError", "DeadlineExceededError",
    "FailedPreconditionError", "InternalError", "InvalidArgumentError", "NotFoundError", "OutOfRangeError",
    "PermissionDeniedError", "ResourceExhaustedError", "UnauthenticatedError", "UnavailableError",
]
