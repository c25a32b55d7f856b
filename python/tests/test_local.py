"""The local path from Python: the daemon's pool mapped here, entries written and read in
place — real daemons, real client processes (README "The local path")."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import textwrap
import time
import uuid

import pytest

import kvferry
from kvferry.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError, UnavailableError
from conftest import CALL_TIMEOUT_S, TOKEN
from payloads import MiB, seeded, sha
from spawned_daemon import REPO, SpawnedDaemon, daemon_args


def fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def big() -> SpawnedDaemon:
    d = SpawnedDaemon(daemon_args(pool="640MiB"), name="640 MiB daemon")
    yield d
    d.stop()


@pytest.mark.parametrize("size", [1, 4096, 4097, 3 * MiB + 5, 32 * MiB])
def test_round_trip_by_hash_mixed_with_inline(client: kvferry.Client, size: int) -> None:
    data = seeded(size, f"py-local-{size}")
    tid = fresh("py-lp")
    client.put_local(tid, {"layer.0": data, "layer.1": b"tail"})
    inline = client.get(tid)  # read inline what was written locally
    assert sha(inline.parts["layer.0"]) == sha(data)
    with client.get_local(tid, consume=True) as loan:  # and in place, consuming
        assert sha(loan.bytes("layer.0")) == sha(data)
        assert bytes(loan.bytes("layer.1")) == b"tail"
    with pytest.raises(NotFoundError) as gone:
        client.stat(tid)
    assert gone.value.reason == "consumed"
    # Written inline, read in place.
    tid2 = fresh("py-in")
    client.put(tid2, {"p": data[: 4 * MiB]})
    with client.get_local(tid2, consume=True) as loan:
        assert sha(loan.bytes("p")) == sha(data[: 4 * MiB])


def test_512_mib_in_place(big: SpawnedDaemon) -> None:
    with kvferry.Client(big.address, timeout=CALL_TIMEOUT_S) as c:
        data = os.urandom(512 * MiB)
        c.put_local("py-big", {"kv": data})
        with c.get_local("py-big", consume=True) as loan:
            assert sha(loan.bytes("kv")) == sha(data)
        assert c.server_info().bytes_used == 0


def test_part_by_part_and_a_short_commit(client: kvferry.Client) -> None:
    tid = fresh("py-pbp")
    w = client.reserve_local(tid, {"layer.0": 1000, "layer.1": 2000})
    w.write("layer.0", seeded(1000, "l0"))
    w.commit(["layer.0"])
    assert sha(client.get(tid, parts=["layer.0"], wait_ms=0).parts["layer.0"]) == sha(seeded(1000, "l0"))
    with pytest.raises(InvalidArgumentError) as short:
        client._rpc.unary(client._rpc.stub.Commit, kvferry_pb().CommitRequest(
            reservation_id=w.reservation_id, parts=[kvferry_pb().CommittedPart(name="layer.1", bytes=1999)], seal=True), None)
    assert "parts[0].bytes" in str(short.value)
    with pytest.raises(FailedPreconditionError):  # never sealed, layer.1 never readable
        client.get_local(tid, wait_ms=0)
    # No part left: the reservation ended with that commit (its lapse will not drop layer.0).
    with pytest.raises(NotFoundError):
        w.abort()
    assert sha(client.get(tid, parts=["layer.0"], wait_ms=0).parts["layer.0"]) == sha(seeded(1000, "l0"))
    client.release(tid)
    with pytest.raises(NotFoundError):
        client.stat(tid)


def kvferry_pb():
    from kvferry._gen import kvferry_pb2

    return kvferry_pb2


def test_numpy_views_are_the_pool(client: kvferry.Client) -> None:
    numpy = pytest.importorskip("numpy")
    tid = fresh("py-np")
    w = client.reserve_local(tid, {"k": 4096})
    arr = w.numpy("k", numpy.float32)
    arr[:] = numpy.arange(1024, dtype=numpy.float32)  # written in place, no copy
    w.commit(seal=True)
    with client.get_local(tid) as loan:
        got = loan.numpy("k", numpy.float32)
        assert got.tolist() == list(range(1024))
        assert bytes(loan.bytes("k")) == numpy.arange(1024, dtype=numpy.float32).tobytes()


CHILD = textwrap.dedent("""
    import sys, time
    import kvferry
    c = kvferry.Client(sys.argv[1], timeout=60)
    w = c.reserve_local("py-kill-reserved", {"p": 8 << 20}, reservation_ttl_ms=2000)
    w.views("p")[0][:] = b"\\x07" * (8 << 20)
    loan = c.get_local("py-kill-kept", consume=True, loan_ttl_ms=2000)
    print("held", len(loan.bytes("p")), flush=True)
    time.sleep(600)
""")


def test_a_client_killed_holding_a_reservation_and_a_loan(client: kvferry.Client, daemon: SpawnedDaemon) -> None:
    kept = seeded(5 * MiB, "py-kept")
    client.put_local("py-kill-kept", {"p": kept})
    before = client.server_info().bytes_used
    child = subprocess.Popen([sys.executable, "-c", CHILD, daemon.address], stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        assert line.strip() == f"held {5 * MiB}"
        assert client.server_info().bytes_used > before
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    end = time.monotonic() + 30
    while client.server_info().bytes_used != before and time.monotonic() < end:
        time.sleep(0.2)
    assert client.server_info().bytes_used == before
    with pytest.raises(NotFoundError):
        client.stat("py-kill-reserved")
    with client.get_local("py-kill-kept", consume=True) as loan:
        assert sha(loan.bytes("p")) == sha(kept)


def test_another_uid_is_refused_with_the_reason() -> None:
    d = SpawnedDaemon(daemon_args() + ["--local-allowed-gids", "4242"], name="daemon allowing gid 4242")
    try:
        code = textwrap.dedent(f"""
            import kvferry
            from kvferry.errors import UnavailableError
            c = kvferry.Client({d.address!r}, timeout=60)
            try:
                c.local_pool()
                print("mapped")
            except UnavailableError as e:
                print("refused:", e)
        """)
        # An interpreter `nobody` can run (the venv's may link into root's home), with this
        # package and the venv's site-packages on its path.
        python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
        path = os.pathsep.join([str(REPO / "python"), sysconfig.get_paths()["purelib"]])
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, user=65534, group=65534, extra_groups=[],
                             env={**os.environ, "HOME": "/tmp", "PYTHONPATH": path}, cwd="/", timeout=120)
        assert "refused:" in out.stdout, out.stdout + out.stderr
        assert "uid 65534 (gid 65534) is not the daemon's uid" in out.stdout
    finally:
        d.stop()


def test_without_a_local_path_it_goes_inline() -> None:
    d = SpawnedDaemon(daemon_args() + ["--local-socket", "none"], name="daemon without a local path")
    try:
        with kvferry.Client(d.address, timeout=CALL_TIMEOUT_S) as c:
            with pytest.raises(UnavailableError):
                c.local_pool()
            data = seeded(3 * MiB, "py-inline")
            c.put_local("py-inl", {"p": data})
            with c.get_local("py-inl") as loan:
                assert sha(loan.bytes("p")) == sha(data)
    finally:
        d.stop()


def test_pushed_to_another_daemon_and_read_there_in_place(source: kvferry.Client, target: kvferry.Client, peers) -> None:
    data = seeded(24 * MiB + 3, "py-moved")
    tid = fresh("py-moved")
    source.put_local(tid, {"layer.0": data})
    results = source.batch_transfer([tid], peers[1].peer_address, "push")
    assert [r.ok for r in results] == [True], results
    with target.get_local(tid, consume=True) as loan:
        assert sha(loan.bytes("layer.0")) == sha(data)


def test_daemon_restarted_at_the_same_address_maps_the_new_pool() -> None:
    """A client that mapped a daemon's pool, after that daemon restarted on the same port
    (the same default socket path), maps the new pool: no reservation or loan left behind."""
    first = SpawnedDaemon(daemon_args(), name="first daemon")
    port = first.address.rsplit(":", 1)[1]
    second = None
    try:
        with kvferry.Client(first.address, timeout=CALL_TIMEOUT_S) as writer, \
                kvferry.Client(first.address, timeout=CALL_TIMEOUT_S) as reader:
            writer.put_local("py-before", {"p": b"before"})
            reader.get_local("py-before").release()
            first.stop()
            args = daemon_args()
            args[args.index("--listen") + 1] = f"127.0.0.1:{port}"
            second = SpawnedDaemon(args, name="second daemon")
            writer.put_local("py-after", {"p": b"after"})
            with reader.get_local("py-after", consume=True) as loan:
                assert bytes(loan.bytes("p")) == b"after"
            with pytest.raises(NotFoundError):
                writer.stat("py-after")
            assert writer.server_info().bytes_used == 0
    finally:
        first.stop()
        if second is not None:
            second.stop()
