"""Inline puts and gets: the bytes come back as they went in, whatever their size and type."""
from __future__ import annotations

import threading
import time

import pytest

import kvferry
from payloads import KiB, MiB, seeded, sha

# Around the client's unary/streamed boundary (4 MiB) and the daemon's 1 MiB stream chunks.
SIZES = [0, 1, 4 * KiB + 3, 1 * MiB, 4 * MiB, 4 * MiB + 1, 9 * MiB + 7]


@pytest.mark.parametrize("size", SIZES)
def test_a_part_comes_back_with_the_hash_it_was_put_with(client: kvferry.Client, tid: str, size: int) -> None:
    data = seeded(size, tid)
    client.put(tid, {"layer.0": data})
    got = client.get(tid, wait_ms=0, consume=True)
    assert list(got.parts) == ["layer.0"]
    assert len(got.parts["layer.0"]) == size
    assert sha(got.parts["layer.0"]) == sha(data)


def test_an_entry_of_several_parts_comes_back_part_by_part(client: kvferry.Client, tid: str) -> None:
    sizes = {"layer.0": 3 * KiB, "layer.1": 5 * MiB + 11, "hidden": 17}
    parts = {name: seeded(size, f"{tid}/{name}") for name, size in sizes.items()}
    info = client.put(tid, parts)
    assert info.state is kvferry.EntryState.SEALED
    assert info.part_count == 3
    got = client.get(tid, wait_ms=0, consume=True)
    assert {n: sha(b) for n, b in got.parts.items()} == {n: sha(b) for n, b in parts.items()}
    assert got.info.bytes == sum(sizes.values())


def test_bytearray_and_memoryview_parts_are_stored_as_their_bytes(client: kvferry.Client, tid: str) -> None:
    raw = seeded(6 * MiB, tid)
    parts = {"array": bytearray(raw[:1000]), "view": memoryview(raw)[1000:], "ints": memoryview(raw[:64]).cast("I")}
    client.put(tid, parts)
    got = client.get(tid, wait_ms=0)
    assert got.parts["array"] == raw[:1000]
    assert sha(got.parts["view"]) == sha(raw[1000:])
    assert got.parts["ints"] == raw[:64]
    client.release(tid)


def test_a_get_of_named_parts_returns_only_those(client: kvferry.Client, tid: str) -> None:
    client.put(tid, {"a": b"first", "b": b"second", "c": b"third"})
    got = client.get(tid, parts=["c", "a"], wait_ms=0)
    assert dict(got.parts) == {"c": b"third", "a": b"first"}
    client.release(tid)


def test_a_put_with_seal_false_leaves_the_entry_open_until_sealed(client: kvferry.Client, tid: str) -> None:
    assert client.put(tid, {"a": b"1"}, seal=False).state is kvferry.EntryState.OPEN
    assert client.put(tid, {"b": b"2"}, seal=False).state is kvferry.EntryState.OPEN
    assert client.seal(tid).state is kvferry.EntryState.SEALED
    assert client.get(tid, wait_ms=0, consume=True).parts == {"a": b"1", "b": b"2"}


def test_a_get_waits_for_a_part_that_is_put_later(client: kvferry.Client, daemon, tid: str) -> None:
    client.put(tid, {"early": b"here"}, seal=False)

    def writer() -> None:
        time.sleep(2)  # most likely after the get below began to wait; the outcome is the same either way
        with kvferry.Client(daemon.address, timeout=60) as other:
            other.put(tid, {"late": b"arrived"})

    t = threading.Thread(target=writer)
    t.start()
    try:
        got = client.get(tid, parts=["late"], wait_ms=90_000, timeout=120)
    finally:
        t.join(120)
    assert got.parts == {"late": b"arrived"}
    client.release(tid)
