"""Consuming gets: exactly one reader takes an entry, and only once the daemon confirmed it."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

import kvferry
from payloads import seeded, sha


def test_a_consuming_get_takes_the_entry_exactly_once(client: kvferry.Client, tid: str) -> None:
    data = seeded(100_000, tid)
    client.put(tid, {"kv": data})
    got = client.get(tid, consume=True, wait_ms=0)
    assert sha(got.parts["kv"]) == sha(data)
    with pytest.raises(kvferry.NotFoundError) as second:
        client.get(tid, consume=True, wait_ms=0)
    assert second.value.reason == "consumed"
    with pytest.raises(kvferry.NotFoundError):
        client.stat(tid)


def test_a_plain_get_leaves_the_entry_for_the_consumer(client: kvferry.Client, tid: str) -> None:
    client.put(tid, {"kv": b"abc"})
    assert client.get(tid, wait_ms=0).parts == {"kv": b"abc"}
    assert client.get(tid, wait_ms=0).parts == {"kv": b"abc"}
    assert client.get(tid, consume=True, wait_ms=0).parts == {"kv": b"abc"}


def test_of_concurrent_consumers_exactly_one_gets_the_entry(client: kvferry.Client, daemon, tid: str) -> None:
    client.put(tid, {"kv": seeded(2 << 20, tid)})
    consumed_before = client.server_info().counters["consumed"]

    def consume(_: int):
        with kvferry.Client(daemon.address, timeout=120) as c:
            try:
                return c.get(tid, consume=True, wait_ms=60_000)
            except kvferry.NotFoundError as err:
                return err

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(consume, range(4)))
    winners = [o for o in outcomes if isinstance(o, kvferry.Entry)]
    losers = [o for o in outcomes if isinstance(o, kvferry.NotFoundError)]
    assert len(winners) == 1 and len(losers) == 3, outcomes
    assert {e.reason for e in losers} == {"consumed"}
    assert client.server_info().counters["consumed"] == consumed_before + 1


def test_a_confirmation_with_a_wrong_token_is_refused_and_the_entry_stays(client: kvferry.Client, tid: str) -> None:
    client.put(tid, {"kv": b"abc"})
    with pytest.raises(kvferry.FailedPreconditionError):
        client.confirm_consume(tid, "not-the-token")
    assert client.stat(tid).state is kvferry.EntryState.SEALED
    client.release(tid)
