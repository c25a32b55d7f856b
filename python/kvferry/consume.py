"""Confirming a consuming read (ConfirmConsume), as the TypeScript client does: only after the
confirmation succeeds are the bytes the reader's own; a confirmation whose reply was lost is
sent again (the daemon takes a repeat with the same token as done)."""
from __future__ import annotations

from ._gen import kvferry_pb2 as pb
from ._rpc import Rpc
from .errors import DeadlineExceededError, UnavailableError

#: Attempts of a confirmation whose reply was lost.
CONFIRM_ATTEMPTS = 3
#: Deadline of one attempt, seconds.
CONFIRM_TIMEOUT_S = 10.0


def confirm_consume(rpc: Rpc, transfer_id: str, consume_token: str, timeout: float | None = None) -> int:
    """One ConfirmConsume; returns the bytes the daemon freed."""
    req = pb.ConfirmConsumeRequest(transfer_id=transfer_id, consume_token=consume_token)
    return rpc.unary(rpc.stub.ConfirmConsume, req, timeout).bytes_freed


def confirm_with_retries(rpc: Rpc, transfer_id: str, consume_token: str) -> None:
    """Confirms, retrying only failures that may have lost the reply (deadline, unavailable).
    Any other failure (FAILED_PRECONDITION: the hold lapsed and the entry was given back)
    is raised: the bytes read are not the reader's."""
    for attempt in range(1, CONFIRM_ATTEMPTS + 1):
        try:
            confirm_consume(rpc, transfer_id, consume_token, CONFIRM_TIMEOUT_S)
            return
        except (DeadlineExceededError, UnavailableError):
            if attempt == CONFIRM_ATTEMPTS:
                raise
