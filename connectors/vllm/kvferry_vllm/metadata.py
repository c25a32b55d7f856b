"""What the scheduler half tells the worker half each step (pickled into SchedulerOutput)."""
from __future__ import annotations

from dataclasses import dataclass, field

from .compat import KVConnectorMetadata


@dataclass(frozen=True)
class SaveSpec:
    """A prefill whose prompt is complete in this step: save its blocks under transfer_id."""

    req_id: str
    transfer_id: str
    #: The request's blocks holding its prompt's KV, in token order.
    block_ids: tuple[int, ...]
    num_tokens: int


@dataclass(frozen=True)
class LoadSpec:
    """A decode whose prompt's KV is to be loaded from the entry transfer_id."""

    req_id: str
    transfer_id: str
    #: The daemon to pull the entry from when it is not here yet ("" when pushed).
    source: str
    #: The entry's block that goes into block_ids[0] (blocks before it were cached here).
    first_block: int
    #: The blocks to fill with the entry's blocks first_block, first_block + 1, ...
    block_ids: tuple[int, ...]
    #: The request's prompt length (the entry must hold its KV).
    num_tokens: int
    #: Loaded within this step's forward (layer by layer) rather than between steps.
    sync: bool


@dataclass
class KvferryMetadata(KVConnectorMetadata):
    saves: list[SaveSpec] = field(default_factory=list)
    loads: list[LoadSpec] = field(default_factory=list)
    #: Requests whose load is to stop (aborted while loading).
    cancels: list[str] = field(default_factory=list)
