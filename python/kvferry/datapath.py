"""How part bytes travel between a client and its daemon. Client.put / Client.get go through
a DataPath; today the only one is InlinePath (kvferry.inline: bytes inside gRPC messages).
The local path (kvferry.local) has an API of its own, writers and loans, because its bytes are
views of the daemon's pool with a lifetime, not copies; Client.put_local / get_local fall back to
this one when there is no local path."""
from __future__ import annotations

from typing import Mapping, Protocol, Sequence, Union

from .types import Entry, EntryInfo

#: What a part's bytes may be: anything with the buffer protocol (bytes, bytearray,
#: memoryview, a C-contiguous numpy array, ...).
BytesLike = Union[bytes, bytearray, memoryview]


class DataPath(Protocol):
    def put(
        self, transfer_id: str, parts: Mapping[str, BytesLike], *, seal: bool,
        lease_ttl_ms: int | None, timeout: float | None,
    ) -> EntryInfo:
        """Stores the parts in order (sealing with the last one when `seal`); returns the entry
        after the last put. A failure leaves the parts already stored in place (release the
        entry to abandon it)."""
        ...

    def get(
        self, transfer_id: str, *, parts: Sequence[str], consume: bool, wait_ms: int | None,
        source: str, consume_lease_ms: int | None, timeout: float | None,
    ) -> Entry:
        """Reads the named parts (all once sealed when `parts` is empty). With `consume` it
        returns only once the daemon confirmed the entry is this reader's and dropped it."""
        ...
