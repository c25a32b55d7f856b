"""Fixtures: real daemons (spawned_daemon.py) and clients of them. Every test names its
entries with fresh ids, so the tests of a module share one daemon."""
from __future__ import annotations

import uuid
from typing import Iterator

import pytest

import kvferry
from spawned_daemon import SpawnedDaemon, daemon_args, daemon_pair

#: The cluster token of the daemons that transfer between each other.
TOKEN = "kvferry-pytest-token"
#: Every call's deadline in the tests: a bound on a hang, generous for a busy machine.
CALL_TIMEOUT_S = 60.0


@pytest.fixture(scope="session")
def daemon() -> Iterator[SpawnedDaemon]:
    d = SpawnedDaemon(daemon_args(), name="daemon")
    yield d
    d.stop()


@pytest.fixture
def client(daemon: SpawnedDaemon) -> Iterator[kvferry.Client]:
    with kvferry.Client(daemon.address, timeout=CALL_TIMEOUT_S) as c:
        yield c


@pytest.fixture(scope="module")
def peers() -> Iterator[tuple[SpawnedDaemon, SpawnedDaemon]]:
    """Two daemons with the same cluster token: a source and a target."""
    with daemon_pair(TOKEN, ("source daemon", "target daemon")) as pair:
        yield pair


@pytest.fixture
def source(peers) -> Iterator[kvferry.Client]:
    """A client of the first of `peers`."""
    with kvferry.Client(peers[0].address, timeout=CALL_TIMEOUT_S) as c:
        yield c


@pytest.fixture
def target(peers) -> Iterator[kvferry.Client]:
    """A client of the second of `peers`."""
    with kvferry.Client(peers[1].address, timeout=CALL_TIMEOUT_S) as c:
        yield c


@pytest.fixture
def tid() -> str:
    """A fresh transfer id."""
    return f"py-{uuid.uuid4().hex}"

