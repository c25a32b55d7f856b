"""Fixtures: two real daemons (python/tests/spawned_daemon.py) that transfer between each other,
and vLLM instances (harness.py) whose connectors use them."""
from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "python" / "tests"))

import kvferry  # noqa: E402
from spawned_daemon import SpawnedDaemon, daemon_pair  # noqa: E402

TOKEN = "kvferry-vllm-pytest"
CALL_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def daemons() -> Iterator[tuple[SpawnedDaemon, SpawnedDaemon]]:
    """The prefill node's daemon and the decode node's."""
    with daemon_pair(TOKEN, ("prefill daemon", "decode daemon"), pool="256MiB") as pair:
        yield pair


@pytest.fixture
def clients(daemons) -> Iterator[tuple[kvferry.Client, kvferry.Client]]:
    with kvferry.Client(daemons[0].address, timeout=CALL_TIMEOUT_S) as a, kvferry.Client(daemons[1].address, timeout=CALL_TIMEOUT_S) as b:
        yield a, b
        # Every test leaves both daemons empty.
        left = [e.transfer_id for e in a.entries()], [e.transfer_id for e in b.entries()]
        assert left == ([], []), f"entries left in the daemons (prefill, decode): {left}"


@pytest.fixture
def tid() -> str:
    return f"kvf-{uuid.uuid4()}"
