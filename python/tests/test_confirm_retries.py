"""The confirmation of a consuming get is sent again only when its reply may have been lost.
(A lost reply cannot be produced on purpose against a real daemon: the call is faked here.)"""
from __future__ import annotations

import grpc
import pytest

import kvferry
from kvferry.consume import CONFIRM_ATTEMPTS, confirm_with_retries
from kvferry.errors import error_from_status


class FakeRpc:
    """An Rpc whose ConfirmConsume fails with the given codes, then succeeds."""

    def __init__(self, failures: list[grpc.StatusCode]) -> None:
        self.failures = failures
        self.calls = 0
        self.stub = self

    def ConfirmConsume(self) -> None:  # only its identity is used, by unary()
        raise AssertionError("not called directly")

    def unary(self, method, request, timeout):
        assert method == self.ConfirmConsume and request.consume_token == "tok"
        self.calls += 1
        if self.failures:
            raise error_from_status(self.failures.pop(0), "failed")
        return type("Reply", (), {"bytes_freed": 3})()


@pytest.mark.parametrize("lost", [grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE])
def test_a_confirmation_whose_reply_was_lost_is_sent_again(lost: grpc.StatusCode) -> None:
    rpc = FakeRpc([lost] * (CONFIRM_ATTEMPTS - 1))
    confirm_with_retries(rpc, "t", "tok")
    assert rpc.calls == CONFIRM_ATTEMPTS


def test_a_confirmation_lost_every_time_raises_after_the_last_attempt() -> None:
    rpc = FakeRpc([grpc.StatusCode.UNAVAILABLE] * CONFIRM_ATTEMPTS)
    with pytest.raises(kvferry.UnavailableError):
        confirm_with_retries(rpc, "t", "tok")
    assert rpc.calls == CONFIRM_ATTEMPTS


def test_a_refused_confirmation_is_not_retried() -> None:
    rpc = FakeRpc([grpc.StatusCode.FAILED_PRECONDITION])
    with pytest.raises(kvferry.FailedPreconditionError):
        confirm_with_retries(rpc, "t", "tok")
    assert rpc.calls == 1
