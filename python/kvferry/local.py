"""The local path: a client on the daemon's node maps the daemon's pool (the memfd its local
socket hands out, after the kernel vouched for the client's uid) and writes and reads entries
in place; Reserve / Commit / Lend / ReturnLoan only say where (README "The local path").

The views handed out are memoryviews of the shared mapping: valid until the writer commits or
aborts, or the loan is released. With numpy or torch installed, `LocalLoan.numpy` /
`LocalLoan.torch` (and the same on LocalWriter) are zero-copy arrays over them. A GPU engine
copies device memory straight into a writer's view: register the pool once for pinned DMA,
e.g. `torch.cuda.cudart().cudaHostRegister(ptr, size, 0)` with `ptr` the address of
`LocalPool.memory` (`ctypes.addressof(ctypes.c_char.from_buffer(pool.mapping))`).

Same-uid clients are trusted like the engine itself: the mapping is the whole pool, and a
client can damage any entry's bytes through it (never the daemon's bookkeeping, which is not
in it)."""
from __future__ import annotations

import json
import mmap
import os
import socket
from typing import Any, Iterable, Mapping, Sequence

from ._gen import kvferry_pb2 as pb
from ._rpc import Rpc
from .datapath import BytesLike
from .errors import FailedPreconditionError, UnavailableError
from .types import EntryInfo

#: How long the local socket may take to answer, in seconds.
SOCKET_TIMEOUT_S = 5.0
#: The longest line the daemon sends on the local socket.
MAX_LINE = 4096


def _receive_pool(path: str) -> tuple[dict[str, Any], int]:
    """Connects to the daemon's local socket; its header line and the pool's fd (-1 if refused)."""
    fd = -1
    data = b""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(SOCKET_TIMEOUT_S)
        try:
            s.connect(path)
            while b"\n" not in data and len(data) < MAX_LINE:
                chunk, fds, _flags, _addr = socket.recv_fds(s, MAX_LINE, 1)
                for extra in fds:
                    if fd < 0:
                        fd = extra
                    else:
                        os.close(extra)
                if not chunk:
                    break
                data += chunk
        except OSError as err:
            if fd >= 0:
                os.close(fd)
            raise UnavailableError(f"cannot reach the local socket {path}: {err}") from err
    line, newline, _ = data.partition(b"\n")
    if not newline:
        if fd >= 0:
            os.close(fd)
        raise UnavailableError(f"the local socket {path} closed without a complete answer")
    return json.loads(line), fd


class LocalPool:
    """The daemon's pool mapped into this process (shared with the daemon)."""

    def __init__(self, pool_id: str, socket_path: str, mapping: mmap.mmap) -> None:
        self.pool_id = pool_id
        self.socket_path = socket_path
        self.mapping = mapping
        #: The whole pool.
        self.memory = memoryview(mapping)

    @classmethod
    def open(cls, rpc: Rpc, address: str, timeout: float | None) -> LocalPool:
        """Maps the pool of the daemon `rpc` talks to. Raises UnavailableError saying why when
        there is no local path to it (it serves none, runs on another host, refuses this uid)."""
        info = rpc.unary(rpc.stub.GetServerInfo, pb.GetServerInfoRequest(), timeout)
        local = info.local
        if not local.socket:
            raise UnavailableError(f"the daemon at {address} serves no local path")
        header, fd = _receive_pool(local.socket)
        if not header.get("ok") or fd < 0:
            if fd >= 0:
                os.close(fd)
            raise UnavailableError(f"the daemon at {address} refused its local path: {header.get('reason', 'no reason given')}")
        try:
            if header.get("poolId") != local.pool_id:
                raise UnavailableError(f"{local.socket} serves another daemon's pool than the one at {address} (on another host?)")
            # MAP_POPULATE: the pool's pages are mapped now, not faulted in one by one by the first copies.
            mapping = mmap.mmap(fd, os.fstat(fd).st_size, mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0), mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        return cls(local.pool_id, local.socket, mapping)

    def views(self, part: pb.PartExtents) -> list[memoryview]:
        """A part's extents in the pool, in order (one view for a part in one extent)."""
        return [self.memory[e.offset:e.offset + e.length] for e in part.extents]

    def check_pool(self, pool_id: str) -> None:
        if pool_id != self.pool_id:
            raise FailedPreconditionError(f"the daemon's pool changed (it restarted): extents of pool {pool_id}, mapped {self.pool_id}")

    def close(self) -> None:
        """Unmaps the pool once no view of it is left (views keep it mapped until then)."""
        self.memory.release()
        try:
            self.mapping.close()
        except BufferError:
            pass  # views still exported: unmapped when they are gone


def _scatter(views: Sequence[memoryview], data: BytesLike) -> None:
    src = memoryview(data).cast("B")
    at = 0
    for v in views:
        n = min(len(v), len(src) - at)
        v[:n] = src[at:at + n]
        at += n


def _as_numpy(view: memoryview, dtype: Any) -> Any:
    import numpy  # optional: only when asked for

    return numpy.frombuffer(view, dtype=dtype)


def _as_torch(view: memoryview, dtype: Any) -> Any:
    import torch  # optional: only when asked for

    return torch.frombuffer(view, dtype=dtype)


def _single(views: Sequence[memoryview], name: str) -> memoryview:
    if len(views) != 1:
        raise FailedPreconditionError(f"part {name} lies in {len(views)} extents of the pool: use its views one by one")
    return views[0]


class LocalWriter:
    """One reservation: write its parts' views, then commit (part by part if you like) or abort."""

    def __init__(self, rpc: Rpc, pool: LocalPool, transfer_id: str, reservation_id: str, parts: Iterable[pb.PartExtents]) -> None:
        self._rpc = rpc
        self._pool = pool
        self.transfer_id = transfer_id
        self.reservation_id = reservation_id
        self._parts = {p.name: p for p in parts}

    def views(self, name: str) -> list[memoryview]:
        part = self._parts.get(name)
        if part is None:
            raise FailedPreconditionError(f"{name} is not an uncommitted part of reservation {self.reservation_id}")
        return self._pool.views(part)

    def numpy(self, name: str, dtype: Any = "uint8") -> Any:
        """A zero-copy numpy array over a part that lies in one extent."""
        return _as_numpy(_single(self.views(name), name), dtype)

    def torch(self, name: str, dtype: Any = None) -> Any:
        """A zero-copy CPU tensor over a part that lies in one extent (copy a GPU tensor into it)."""
        import torch

        return _as_torch(_single(self.views(name), name), dtype or torch.uint8)

    def write(self, name: str, data: BytesLike) -> None:
        """Copies `data` (the part's whole size) into the part's views."""
        size = self._parts[name].size if name in self._parts else None
        if size is not None and memoryview(data).nbytes != size:
            raise FailedPreconditionError(f"part {name}: {memoryview(data).nbytes} bytes for a part of {size}")
        _scatter(self.views(name), data)

    def commit(self, names: Sequence[str] | None = None, *, seal: bool = False, timeout: float | None = None) -> EntryInfo:
        """Makes the written parts readable (every part left when `names` is None)."""
        chosen = list(self._parts) if names is None else list(names)
        req = pb.CommitRequest(
            reservation_id=self.reservation_id,
            parts=[pb.CommittedPart(name=n, bytes=self._parts[n].size if n in self._parts else 0) for n in chosen],
            seal=seal,
        )
        res = self._rpc.unary(self._rpc.stub.Commit, req, timeout)
        for n in chosen:
            self._parts.pop(n, None)
        return EntryInfo.from_pb(res.entry)

    def abort(self, timeout: float | None = None) -> None:
        """Gives back what is not committed; the entry goes unless it is sealed."""
        self._parts.clear()
        self._rpc.unary(self._rpc.stub.Abort, pb.AbortRequest(reservation_id=self.reservation_id), timeout)


class LocalLoan:
    """An entry's parts, read in place until released. Use as a context manager (released,
    and a consuming loan consumed, on a clean exit; given back on an exception)."""

    def __init__(self, info: EntryInfo, parts: Mapping[str, list[memoryview]], release: Any) -> None:
        self.info = info
        #: Each part's views of the pool (or, read inline, one view of a copy).
        self.parts = parts
        self._release = release
        self._released = False

    def bytes(self, name: str) -> memoryview:
        """A part's bytes: the view itself when it lies in one extent, else a copy."""
        views = self.parts[name]
        return views[0] if len(views) == 1 else memoryview(b"".join(views))

    def numpy(self, name: str, dtype: Any = "uint8") -> Any:
        return _as_numpy(_single(self.parts[name], name), dtype)

    def torch(self, name: str, dtype: Any = None) -> Any:
        import torch

        return _as_torch(_single(self.parts[name], name), dtype or torch.uint8)

    def release(self, consumed: bool = True) -> None:
        """Ends the loan; its views must not be used after. A consuming loan drops the entry
        when `consumed` (every byte is the reader's now), else gives it back."""
        if self._released:
            return
        self._released = True
        self._release(consumed)

    def __enter__(self) -> LocalLoan:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.release(consumed=exc_type is None)
