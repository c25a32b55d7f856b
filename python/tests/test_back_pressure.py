"""A full pool answers RESOURCE_EXHAUSTED after the put deadline, and frees room on release."""
from __future__ import annotations

from typing import Iterator

import pytest

import kvferry
from payloads import MiB
from spawned_daemon import SpawnedDaemon, daemon_args

#: The daemon's put deadline here: how long a put waits for room before it fails.
PUT_DEADLINE_MS = 2_000


@pytest.fixture(scope="module")
def small() -> Iterator[SpawnedDaemon]:
    d = SpawnedDaemon(daemon_args(pool="8MiB") + ["--put-deadline-ms", str(PUT_DEADLINE_MS)], name="8 MiB daemon")
    yield d
    d.stop()


def test_a_put_that_finds_no_room_raises_resource_exhausted_and_fits_after_a_release(small: SpawnedDaemon, tid: str) -> None:
    with kvferry.Client(small.address, timeout=60) as c:
        # An open entry is never evicted: it holds 6 of the 8 MiB.
        c.put(f"{tid}-held", {"a": bytes(6 * MiB)}, seal=False)
        with pytest.raises(kvferry.ResourceExhaustedError) as err:
            c.put(tid, {"b": bytes(4 * MiB)})
        assert err.value.retryable
        c.release(f"{tid}-held")
        c.put(tid, {"b": bytes(4 * MiB)})
        assert c.stat(tid).bytes == 4 * MiB
        c.release(tid)
