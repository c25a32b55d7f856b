"""Stat, list, release, and what the daemon says about itself."""
from __future__ import annotations

import pytest

import kvferry


def test_stat_describes_the_entry_and_every_part(client: kvferry.Client, tid: str) -> None:
    client.put(tid, {"a": b"x" * 10, "b": b"y" * 300}, lease_ttl_ms=600_000)
    info = client.stat(tid)
    assert info.transfer_id == tid
    assert info.state is kvferry.EntryState.SEALED
    assert info.bytes == 310
    assert info.part_count == 2
    assert sorted(info.parts, key=lambda p: p.name) == [
        kvferry.PartInfo("a", 10, True), kvferry.PartInfo("b", 300, True),
    ]
    assert 0 < info.lease_remaining_ms <= 600_000
    client.release(tid)


def test_list_filters_by_state(client: kvferry.Client, tid: str) -> None:
    open_id, sealed_id = f"{tid}-open", f"{tid}-sealed"
    client.put(open_id, {"a": b"1"}, seal=False)
    client.put(sealed_id, {"a": b"1"})
    try:
        open_ids = {e.transfer_id for e in client.entries(state=kvferry.EntryState.OPEN)}
        sealed_ids = {e.transfer_id for e in client.entries(state=kvferry.EntryState.SEALED)}
        all_ids = {e.transfer_id for e in client.entries()}
        assert open_id in open_ids and open_id not in sealed_ids
        assert sealed_id in sealed_ids and sealed_id not in open_ids
        assert {open_id, sealed_id} <= all_ids
    finally:
        client.release(open_id)
        client.release(sealed_id)


def test_list_pages_through_every_entry(client: kvferry.Client, tid: str) -> None:
    ids = [f"{tid}-{i}" for i in range(5)]
    for i in ids:
        client.put(i, {"a": b"1"})
    try:
        seen: list[str] = []
        token = ""
        while True:
            page = client.list(page_size=2, page_token=token)
            assert len(page.entries) <= 2
            seen += [e.transfer_id for e in page.entries]
            token = page.next_page_token
            if not token:
                break
        assert set(ids) <= set(seen)
        assert len(seen) == len(set(seen))
    finally:
        for i in ids:
            client.release(i)


def test_server_info_reports_the_pool_and_counts_puts(client: kvferry.Client, daemon, tid: str) -> None:
    before = client.server_info()
    client.put(tid, {"a": b"1", "b": b"2"})
    after = client.server_info()
    assert after.node_id == daemon.node_id
    assert after.pool_capacity == 64 << 20
    assert after.counters["puts"] == before.counters["puts"] + 2
    client.release(tid)


def test_list_nodes_names_this_daemon_with_its_peer_address(client: kvferry.Client, daemon) -> None:
    nodes = client.list_nodes()
    assert nodes.backend == "embedded"
    me = [n for n in nodes.nodes if n.node_id == daemon.node_id]
    assert len(me) == 1
    assert me[0].peer_address == daemon.peer_address
    assert me[0].client_address == daemon.address
