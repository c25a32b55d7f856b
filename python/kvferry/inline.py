"""The inline data path: part bytes travel inside gRPC messages. A part up to
STREAM_THRESHOLD bytes goes in one unary Put, a larger one through PutStream in PUT_CHUNK
pieces; reads use GetStream, whatever the size, and reassemble each part."""
from __future__ import annotations

from typing import Iterator, Mapping, Sequence

from ._gen import kvferry_pb2 as pb
from ._rpc import Deadline, Rpc, typed_errors
from .consume import confirm_with_retries
from .datapath import BytesLike
from .types import Entry, EntryInfo

#: Parts at or below this size go in one unary Put; larger ones are streamed (as in src/client/client.ts).
STREAM_THRESHOLD = 4 << 20
#: Bytes per PutStream message.
PUT_CHUNK = 1 << 20


def _flat(data: BytesLike) -> memoryview:
    """The bytes of a buffer, without a copy. Raises TypeError for a buffer that is not contiguous."""
    view = memoryview(data)
    if not view.c_contiguous:
        raise TypeError("a part must be a contiguous buffer")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


class InlinePath:
    """Puts and gets through the client API's own messages (kvferry.datapath.DataPath)."""

    def __init__(self, rpc: Rpc) -> None:
        self._rpc = rpc

    def put(
        self, transfer_id: str, parts: Mapping[str, BytesLike], *, seal: bool = True,
        lease_ttl_ms: int | None = None, timeout: float | None = None,
    ) -> EntryInfo:
        deadline = self._rpc.deadline(timeout)
        items = list(parts.items())
        if not items:
            if not seal:
                raise ValueError("put needs at least one part, or seal=True")
            req = pb.SealRequest(transfer_id=transfer_id)
            with typed_errors():
                return EntryInfo.from_pb(self._rpc.stub.Seal(req, timeout=deadline.remaining()).entry)
        *first, (last_name, last_data) = items
        for name, data in first:
            self._put_part(transfer_id, name, _flat(data), False, lease_ttl_ms, deadline)
        return EntryInfo.from_pb(self._put_part(transfer_id, last_name, _flat(last_data), seal, lease_ttl_ms, deadline))

    def _put_part(
        self, transfer_id: str, name: str, view: memoryview, seal: bool,
        lease_ttl_ms: int | None, deadline: Deadline,
    ) -> pb.EntryInfo:
        with typed_errors():
            if view.nbytes <= STREAM_THRESHOLD:
                # protobuf takes bytes: a bytes part goes as is, any other buffer is copied once.
                obj = view.obj
                data = obj if isinstance(obj, bytes) and len(obj) == view.nbytes else view.tobytes()
                req = pb.PutRequest(transfer_id=transfer_id, part=name, data=data, seal=seal,
                                    lease_ttl_ms=lease_ttl_ms)
                return self._rpc.stub.Put(req, timeout=deadline.remaining()).entry
            header = pb.PutStreamHeader(transfer_id=transfer_id, part=name, size=view.nbytes, seal=seal,
                                        lease_ttl_ms=lease_ttl_ms)
            return self._rpc.stub.PutStream(_put_messages(header, view), timeout=deadline.remaining()).entry

    def get(
        self, transfer_id: str, *, parts: Sequence[str] = (), consume: bool = False,
        wait_ms: int | None = None, source: str = "", consume_lease_ms: int | None = None,
        timeout: float | None = None, chunk_size: int = 0,
    ) -> Entry:
        req = pb.GetStreamRequest(
            transfer_id=transfer_id, parts=list(parts), consume=consume, wait_ms=wait_ms,
            chunk_size=chunk_size, source=source, consume_lease_ms=consume_lease_ms,
        )
        info: pb.EntryInfo | None = None
        token = ""
        got: dict[str, bytearray] = {}
        call = self._rpc.stub.GetStream(req, timeout=self._rpc.deadline(timeout).remaining())
        try:
            with typed_errors():
                for msg in call:
                    if msg.HasField("entry"):
                        info = msg.entry
                    token = msg.consume_token or token
                    if msg.part:
                        buf = got.get(msg.part)
                        if buf is None:
                            buf = got[msg.part] = bytearray(msg.part_size)
                        buf[msg.offset:msg.offset + len(msg.chunk)] = msg.chunk
        finally:
            call.cancel()  # a no-op once the stream ended; stops it when reading failed here
        if info is None:
            raise RuntimeError(f"GetStream of {transfer_id!r} ended without an entry")
        # The stream ended with OK: every byte is here. Only a confirmed consume makes them ours.
        if consume:
            confirm_with_retries(self._rpc, transfer_id, token)
        return Entry(EntryInfo.from_pb(info), got)


def _put_messages(header: pb.PutStreamHeader, view: memoryview) -> Iterator[pb.PutStreamRequest]:
    """The PutStream messages: the header, then the part's bytes in PUT_CHUNK pieces. gRPC
    pulls them as flow control allows, so at most a few chunks are copied at a time."""
    yield pb.PutStreamRequest(header=header)
    for offset in range(0, view.nbytes, PUT_CHUNK):
        yield pb.PutStreamRequest(chunk=view[offset:offset + PUT_CHUNK].tobytes())
