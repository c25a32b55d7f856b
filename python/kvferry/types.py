"""What the client's calls return: plain, immutable values converted from the wire messages
(kvferry._gen), so callers never handle protobuf objects."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Mapping

import grpc

from ._gen import kvferry_pb2 as pb
from ._gen import node_pb2 as node_pb


class EntryState(enum.Enum):
    """The lifecycle of an entry: OPEN accepts parts; SEALED is complete."""

    UNSPECIFIED = pb.ENTRY_STATE_UNSPECIFIED
    OPEN = pb.ENTRY_STATE_OPEN
    SEALED = pb.ENTRY_STATE_SEALED

    @classmethod
    def _missing_(cls, value: object) -> EntryState:
        return cls.UNSPECIFIED  # a state a newer daemon added


@dataclass(frozen=True)
class PartInfo:
    name: str
    size: int
    #: False while a streamed part is still arriving.
    complete: bool

    @classmethod
    def from_pb(cls, m: pb.PartInfo) -> PartInfo:
        return cls(m.name, m.size, m.complete)


@dataclass(frozen=True)
class EntryInfo:
    """One entry as the daemon describes it. After a put, `parts` lists only the part just
    stored and `part_count` counts them all (see PutResponse in the proto)."""

    transfer_id: str
    state: EntryState
    parts: tuple[PartInfo, ...]
    bytes: int
    lease_remaining_ms: int
    created_at_ms: int
    last_access_ms: int
    readers: int
    writers: int
    part_count: int

    @classmethod
    def from_pb(cls, m: pb.EntryInfo) -> EntryInfo:
        return cls(
            transfer_id=m.transfer_id, state=EntryState(m.state),
            parts=tuple(PartInfo.from_pb(p) for p in m.parts), bytes=m.bytes,
            lease_remaining_ms=m.lease_remaining_ms, created_at_ms=m.created_at_ms,
            last_access_ms=m.last_access_ms, readers=m.readers, writers=m.writers,
            part_count=m.part_count,
        )


@dataclass(frozen=True)
class Entry:
    """What a get returns: the entry and the bytes of the parts read, by name (each a
    bytearray the part's chunks were received into; it compares equal to bytes)."""

    info: EntryInfo
    parts: Mapping[str, bytearray]


@dataclass(frozen=True)
class EntryPage:
    """One page of List; `next_page_token` is empty on the last page."""

    entries: tuple[EntryInfo, ...]
    next_page_token: str


_STATUS_BY_NUMBER = {c.value[0]: c for c in grpc.StatusCode}


@dataclass(frozen=True)
class TransferResult:
    """One entry's outcome in a BatchTransfer."""

    transfer_id: str
    code: grpc.StatusCode
    message: str
    bytes: int
    micros: int

    @property
    def ok(self) -> bool:
        return self.code == grpc.StatusCode.OK

    @classmethod
    def from_pb(cls, m: pb.TransferResult) -> TransferResult:
        return cls(m.transfer_id, _STATUS_BY_NUMBER.get(m.code, grpc.StatusCode.UNKNOWN), m.message, m.bytes, m.micros)


@dataclass(frozen=True)
class ServerInfo:
    version: str
    node_id: str
    uptime_ms: int
    pool_capacity: int
    bytes_used: int
    entries: int
    #: The daemon's lifetime counters by name (puts, gets, evictions, consumed, ...).
    counters: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_pb(cls, m: pb.GetServerInfoResponse) -> ServerInfo:
        counters = {f.name: getattr(m.counters, f.name) for f in m.counters.DESCRIPTOR.fields}
        return cls(m.version, m.node_id, m.uptime_ms, m.pool_capacity, m.bytes_used, m.entries, counters)


@dataclass(frozen=True)
class NodeInfo:
    """A node as the daemon's metadata backend knows it."""

    node_id: str
    hostname: str
    client_address: str
    #: What another daemon's batch_transfer names as target.
    peer_address: str
    data_address: str
    pool_bytes: int
    pool_used_bytes: int
    version: str

    @classmethod
    def from_pb(cls, m: node_pb.NodeInfo) -> NodeInfo:
        return cls(m.node_id, m.hostname, m.client_address, m.peer_address, m.data_address,
                   m.pool_bytes, m.pool_used_bytes, m.version)


@dataclass(frozen=True)
class Nodes:
    """ListNodes: the backend ("embedded", "etcd", "redis", "http"), where it is, the nodes."""

    backend: str
    where: str
    nodes: tuple[NodeInfo, ...]
