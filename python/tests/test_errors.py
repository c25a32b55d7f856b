"""Failed calls raise the class their status code stands for, with the daemon's message."""
from __future__ import annotations

import socket

import grpc
import pytest

import kvferry
from kvferry.errors import error_from_status
from payloads import MiB


def test_stat_of_an_unknown_entry_raises_not_found_naming_it(client: kvferry.Client, tid: str) -> None:
    with pytest.raises(kvferry.NotFoundError) as err:
        client.stat(tid)
    assert tid in str(err.value)
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    assert isinstance(err.value.__cause__, grpc.RpcError)
    assert err.value.retryable is False


def test_a_released_entry_is_not_found_with_the_reason(client: kvferry.Client, tid: str) -> None:
    client.put(tid, {"kv": b"x" * 1000})
    assert client.release(tid) > 0
    with pytest.raises(kvferry.NotFoundError) as err:
        client.get(tid, wait_ms=0)
    assert err.value.reason == "released"


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.put("", {"p": b"1"}), "transfer_id"),
        (lambda c: c.put("has space", {"p": b"1"}), "transfer_id"),
        (lambda c: c.put("py-invalid-part", {"": b"1"}), "part"),
        (lambda c: c.put("py-invalid-ttl", {"p": b"1"}, lease_ttl_ms=-5), "lease_ttl_ms"),
        (lambda c: c.batch_transfer([], "127.0.0.1:1"), "transfer_ids"),
    ],
    ids=["empty transfer_id", "transfer_id with a space", "empty part", "negative lease", "empty batch"],
)
def test_an_invalid_request_raises_invalid_argument_naming_the_field(client: kvferry.Client, call, field: str) -> None:
    with pytest.raises(kvferry.InvalidArgumentError) as err:
        call(client)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ")


def test_a_part_put_twice_raises_already_exists(client: kvferry.Client, tid: str) -> None:
    client.put(tid, {"a": b"1"}, seal=False)
    with pytest.raises(kvferry.AlreadyExistsError):
        client.put(tid, {"a": b"2"}, seal=False)
    client.release(tid)


def test_a_put_to_a_sealed_entry_raises_failed_precondition(client: kvferry.Client, tid: str) -> None:
    client.put(tid, {"a": b"1"})
    with pytest.raises(kvferry.FailedPreconditionError):
        client.put(tid, {"b": b"2"})
    client.release(tid)


def test_a_part_larger_than_the_pool_raises_out_of_range(client: kvferry.Client, tid: str) -> None:
    with pytest.raises(kvferry.OutOfRangeError):
        client.put(tid, {"huge": bytes(65 * MiB)})  # the test daemon's pool is 64 MiB


def test_a_call_past_its_deadline_raises_deadline_exceeded(client: kvferry.Client, tid: str) -> None:
    # Nothing ever puts the entry: the get waits until the call's own deadline.
    with pytest.raises(kvferry.DeadlineExceededError) as err:
        client.get(tid, wait_ms=600_000, timeout=2)
    assert err.value.retryable


def test_a_daemon_that_is_not_there_raises_unavailable() -> None:
    with socket.socket() as s:  # a port nobody listens on (bound, closed)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with kvferry.Client(f"127.0.0.1:{port}", timeout=30) as c, pytest.raises(kvferry.UnavailableError):
        c.server_info()


@pytest.mark.parametrize("code", [c for c in grpc.StatusCode if c not in (grpc.StatusCode.OK,)])
def test_every_status_code_has_a_class_that_carries_it(code: grpc.StatusCode) -> None:
    err = error_from_status(code, "msg")
    assert isinstance(err, kvferry.KvferryError)
    # Codes the daemon never answers with (UNKNOWN, UNIMPLEMENTED, DATA_LOSS) read as INTERNAL.
    expected = code if code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.DATA_LOSS) else grpc.StatusCode.INTERNAL
    assert err.code == expected
    assert str(err) == "msg"
