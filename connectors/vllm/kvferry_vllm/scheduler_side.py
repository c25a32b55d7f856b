"""The scheduler half: which requests save their KV, which load it, and what is released when
a request ends. It keeps no tensors; the worker half (worker_side.py) does the copies.

A request takes part when its kv_transfer_params carry a `transfer_id` (the proxy's: vLLM's
own request ids differ between instances) and
  - `do_remote_decode: true` (a prefill): its blocks are saved in the step that completes its
    prompt; when it finishes, request_finished returns the kv_transfer_params a decode needs;
    a prefill that ends otherwise (aborted, error) has its entry released;
  - `do_remote_prefill: true` (a decode): its prompt's KV is announced as external tokens, the
    worker loads it into the blocks vLLM allocated (async: between steps; layerwise: within
    the step); a request that ends before its load started (rejected, aborted while waiting)
    has the entry released, one that ends while loading has its load cancelled (the worker
    releases the entry).

    prefill:  update_state_after_alloc ─▶ build_connector_meta (prompt complete: SaveSpec)
              ─▶ request_finished ─▶ {transfer_id, do_remote_prefill, source_node...}
    decode:   get_num_new_matched_tokens (announced) ─▶ update_state_after_alloc (blocks)
              ─▶ build_connector_meta (LoadSpec) ─▶ update_connector_output (finished_recving)
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from .compat import RequestStatus
from .daemon_link import DaemonLink
from .metadata import KvferryMetadata, LoadSpec, SaveSpec

log = logging.getLogger("kvferry_vllm")

#: The daemon's transfer ids: 1-256 printable ASCII characters without spaces.
TRANSFER_ID = re.compile(r"^[\x21-\x7e]{1,256}$")
#: How a prefill may end and still hand its KV on.
_HANDED_ON = (RequestStatus.FINISHED_LENGTH_CAPPED, RequestStatus.FINISHED_STOPPED)


def transfer_id_of(params: dict[str, Any] | None) -> str | None:
    """The request's transfer_id, or None (logged) when its kv_transfer_params have none usable."""
    tid = (params or {}).get("transfer_id")
    if isinstance(tid, str) and TRANSFER_ID.match(tid):
        return tid
    log.warning("kvferry: kv_transfer_params.transfer_id: expected 1-256 printable ASCII characters, got %r: KV not transferred", tid)
    return None


def blocks_for(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


@dataclass
class _Save:
    transfer_id: str
    num_tokens: int
    block_ids: list[int] = field(default_factory=list)
    sent: bool = False


@dataclass
class _Load:
    transfer_id: str
    source: str
    #: Tokens vLLM found in its own prefix cache (whole blocks).
    num_local: int


class SchedulerSide:
    def __init__(self, link: DaemonLink, block_size: int, layerwise: bool) -> None:
        self.link = link
        self.block_size = block_size
        self.layerwise = layerwise
        self._saves: dict[str, _Save] = {}
        #: Decodes announced in get_num_new_matched_tokens, not yet given blocks.
        self._announced: dict[str, _Load] = {}
        self._loads: list[LoadSpec] = []
        #: Decodes whose load the worker was told of and has not reported finished.
        self._loading: dict[str, str] = {}
        self._cancels: list[str] = []

    # -- decode ------------------------------------------------------------------------------

    def get_num_new_matched_tokens(self, request: Any, num_computed_tokens: int) -> tuple[int, bool]:
        params = request.kv_transfer_params
        if not params or not params.get("do_remote_prefill"):
            return 0, False
        rid = request.request_id
        if rid not in self._announced:
            tid = transfer_id_of(params)
            if tid is None:
                return 0, False
            source = params.get("source_node") or params.get("source_node_id") or ""
            self._announced[rid] = _Load(tid, source if isinstance(source, str) else "", num_computed_tokens)
        self._announced[rid].num_local = num_computed_tokens
        # Layerwise, the step that loads must compute a token: the last prompt token stays local.
        count = request.num_prompt_tokens - num_computed_tokens - (1 if self.layerwise else 0)
        if count <= 0:
            return 0, False
        return count, not self.layerwise

    def _update_decode(self, request: Any, blocks: Any, num_external_tokens: int) -> None:
        params = request.kv_transfer_params
        rid = request.request_id
        load = self._announced.pop(rid, None)
        if load is None:
            return
        params["do_remote_prefill"] = False  # loaded once, whatever happens next
        if num_external_tokens == 0:
            # vLLM had it all (or had no room to load): the entry is nobody's.
            self.link.release_later(load.transfer_id, "not needed: the prompt was cached here")
            return
        first = load.num_local // self.block_size
        last = blocks_for(request.num_prompt_tokens, self.block_size)
        ids = blocks.get_block_ids()[0][first:last]
        self._loads.append(LoadSpec(rid, load.transfer_id, load.source, first, tuple(ids), request.num_prompt_tokens, self.layerwise))

    # -- prefill -----------------------------------------------------------------------------

    def update_state_after_alloc(self, request: Any, blocks: Any, num_external_tokens: int) -> None:
        params = request.kv_transfer_params
        if not params:
            return
        if params.get("do_remote_prefill"):
            self._update_decode(request, blocks, num_external_tokens)
        elif params.get("do_remote_decode") and request.request_id not in self._saves:
            tid = transfer_id_of(params)
            if tid is not None:
                self._saves[request.request_id] = _Save(tid, request.num_prompt_tokens)

    def build_connector_meta(self, scheduler_output: Any) -> KvferryMetadata:
        meta = KvferryMetadata(loads=self._loads, cancels=self._cancels)
        self._loads, self._cancels = [], []
        for spec in meta.loads:
            self._loading[spec.req_id] = spec.transfer_id
        scheduled = scheduler_output.num_scheduled_tokens
        for new in scheduler_output.scheduled_new_reqs:
            save = self._saves.get(new.req_id)
            if save is not None and not save.sent:
                save.block_ids = list(new.block_ids[0])
                self._maybe_save(new.req_id, save, new.num_computed_tokens + scheduled.get(new.req_id, 0), meta)
        cached = scheduler_output.scheduled_cached_reqs
        resumed = _resumed(cached)
        for i, rid in enumerate(cached.req_ids):
            save = self._saves.get(rid)
            if save is None or save.sent:
                continue
            new_ids = cached.new_block_ids[i]
            if rid in resumed:
                save.block_ids = list(new_ids[0]) if new_ids else []
            elif new_ids:
                save.block_ids.extend(new_ids[0])
            self._maybe_save(rid, save, cached.num_computed_tokens[i] + scheduled.get(rid, 0), meta)
        return meta

    def _maybe_save(self, rid: str, save: _Save, computed_after_step: int, meta: KvferryMetadata) -> None:
        if computed_after_step < save.num_tokens:
            return  # a chunked prefill: its prompt completes in a later step
        n = blocks_for(save.num_tokens, self.block_size)
        meta.saves.append(SaveSpec(rid, save.transfer_id, tuple(save.block_ids[:n]), save.num_tokens))
        save.sent = True

    # -- both --------------------------------------------------------------------------------

    def update_connector_output(self, output: Any) -> None:
        for rid in getattr(output, "finished_recving", None) or ():
            self._loading.pop(rid, None)

    def request_finished(self, request: Any, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        rid = request.request_id
        save = self._saves.pop(rid, None)
        if save is not None:
            self.link.learn_source()  # for the next ones, if the daemon was down at the start
            if save.sent and request.status in _HANDED_ON:
                return False, {
                    "transfer_id": save.transfer_id, "do_remote_prefill": True, "do_remote_decode": False, **self.link.source,
                }
            if save.sent:
                self.link.release_later(save.transfer_id, f"the prefill ended {request.status.name}")
            return False, None
        load = self._announced.pop(rid, None)
        if rid in self._loading:
            self._cancels.append(rid)  # the worker stops and releases the entry
        elif load is not None or (request.kv_transfer_params or {}).get("do_remote_prefill"):
            tid = load.transfer_id if load else transfer_id_of(request.kv_transfer_params)
            if tid is not None:
                self.link.release_later(tid, f"the decode ended {request.status.name} before loading")
            if request.kv_transfer_params:
                request.kv_transfer_params["do_remote_prefill"] = False
        return False, None


def _resumed(cached: Any) -> set[str]:
    """The cached requests resumed from preemption (their new_block_ids are all their blocks)."""
    ids = getattr(cached, "resumed_req_ids", None)
    if ids is not None:
        return set(ids)
    flags = getattr(cached, "resumed_from_preemption", None) or ()
    return {rid for rid, f in zip(cached.req_ids, flags) if f}
