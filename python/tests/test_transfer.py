"""batch_transfer between two real daemons that share a cluster token."""
from __future__ import annotations

import grpc
import pytest

import kvferry
from payloads import KiB, MiB, seeded, sha


def put_entry(client: kvferry.Client, tid: str, sizes: list[int]) -> dict[str, str]:
    parts = {f"layer.{i}": seeded(size, f"{tid}/{i}") for i, size in enumerate(sizes)}
    client.put(tid, parts)
    return {name: sha(data) for name, data in parts.items()}


def hashes(client: kvferry.Client, tid: str, consume: bool = False) -> dict[str, str]:
    return {n: sha(b) for n, b in client.get(tid, wait_ms=0, consume=consume).parts.items()}


def test_push_moves_entries_to_the_target_byte_for_byte(peers, source, target, tid: str) -> None:
    ids = [f"{tid}-{i}" for i in range(3)]
    expected = {i: put_entry(source, i, [KiB, 3 * MiB + 5, 6 * MiB]) for i in ids}
    results = source.batch_transfer(ids, peers[1].peer_address, "push")
    assert [r.transfer_id for r in results] == ids
    assert all(r.ok for r in results), results
    assert all(r.bytes == KiB + 9 * MiB + 5 for r in results)
    for i in ids:
        assert hashes(target, i, consume=True) == expected[i]
        with pytest.raises(kvferry.NotFoundError) as gone:
            source.stat(i)
        assert gone.value.reason == "transferred"


def test_push_with_keep_source_leaves_a_copy_on_both(peers, source, target, tid: str) -> None:
    expected = put_entry(source, tid, [100 * KiB])
    [result] = source.batch_transfer([tid], peers[1].peer_address, "push", keep_source=True)
    assert result.ok, result
    assert hashes(source, tid, consume=True) == expected
    assert hashes(target, tid, consume=True) == expected


def test_pull_fetches_an_entry_from_the_target(peers, source, target, tid: str) -> None:
    expected = put_entry(target, tid, [2 * MiB])
    [result] = source.batch_transfer([tid], peers[1].peer_address, "pull")
    assert result.ok, result
    assert hashes(source, tid, consume=True) == expected
    with pytest.raises(kvferry.NotFoundError):
        target.stat(tid)


def test_an_unknown_id_fails_alone_with_not_found(peers, source, target, tid: str) -> None:
    expected = put_entry(source, tid, [10 * KiB])
    missing = f"{tid}-missing"
    results = source.batch_transfer([missing, tid], peers[1].peer_address, "push")
    assert results[0].transfer_id == missing and results[0].code == grpc.StatusCode.NOT_FOUND
    assert results[1].ok, results[1]
    assert hashes(target, tid, consume=True) == expected
