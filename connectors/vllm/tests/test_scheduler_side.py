"""The scheduler half's state machine alone: requests, block lists and scheduler outputs shaped
as vLLM's (only the fields the connector reads), and a link that records what it would release."""
from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from kvferry_vllm.compat import RequestStatus
from kvferry_vllm.scheduler_side import SchedulerSide

BS = 4


class Link:
    """Records releases instead of calling a daemon."""

    def __init__(self) -> None:
        self.released: list[str] = []
        self.source = {"source_node": "127.0.0.1:7001", "source_node_id": "node-a"}

    def learn_source(self) -> None:
        pass

    def release_later(self, transfer_id: str, why: str) -> None:
        self.released.append(transfer_id)


@dataclass
class Req:
    request_id: str
    num_prompt_tokens: int
    kv_transfer_params: dict | None
    status: RequestStatus = RequestStatus.WAITING


@dataclass
class Blocks:
    ids: list[int]

    def get_block_ids(self) -> tuple[list[int], ...]:
        return (self.ids,)


def out(new=(), cached=(), tokens=None, resumed=()):
    """A SchedulerOutput: new = [(req_id, block_ids, num_computed)], cached = [(req_id, new_block_ids, num_computed)]."""
    return SimpleNamespace(
        scheduled_new_reqs=[SimpleNamespace(req_id=r, block_ids=(b,), num_computed_tokens=c) for r, b, c in new],
        scheduled_cached_reqs=SimpleNamespace(
            req_ids=[r for r, _, _ in cached], new_block_ids=[(b,) if b is not None else None for _, b, _ in cached],
            num_computed_tokens=[c for _, _, c in cached], resumed_req_ids=set(resumed),
        ),
        num_scheduled_tokens=tokens or {},
    )


@pytest.fixture
def side():
    return SchedulerSide(Link(), BS, layerwise=False)


def prefill(rid="p", n=10, tid="t-1"):
    return Req(rid, n, {"do_remote_decode": True, "do_remote_prefill": False, "transfer_id": tid})


def decode(rid="d", n=10, tid="t-1", source="127.0.0.1:7001"):
    return Req(rid, n, {"do_remote_prefill": True, "transfer_id": tid, "source_node": source})


def test_prefill_is_saved_in_the_step_that_completes_its_prompt(side):
    r = prefill(n=10)
    assert side.get_num_new_matched_tokens(r, 0) == (0, False)
    side.update_state_after_alloc(r, Blocks([5, 6]), 0)
    m = side.build_connector_meta(out(new=[("p", [5, 6], 0)], tokens={"p": 8}))
    assert m.saves == []  # chunked: 8 of 10 tokens
    m = side.build_connector_meta(out(cached=[("p", [9], 8)], tokens={"p": 2}))
    assert [(s.transfer_id, s.block_ids, s.num_tokens) for s in m.saves] == [("t-1", (5, 6, 9), 10)]
    # Never again, and handed on when it finishes normally.
    assert side.build_connector_meta(out(cached=[("p", None, 10)], tokens={"p": 1})).saves == []
    r.status = RequestStatus.FINISHED_LENGTH_CAPPED
    assert side.request_finished(r, [5, 6, 9]) == (False, {
        "transfer_id": "t-1", "do_remote_prefill": True, "do_remote_decode": False,
        "source_node": "127.0.0.1:7001", "source_node_id": "node-a",
    })
    assert side.link.released == []


def test_a_prefill_resumed_after_preemption_saves_its_new_blocks(side):
    r = prefill(n=10)
    side.update_state_after_alloc(r, Blocks([1, 2]), 0)
    side.build_connector_meta(out(new=[("p", [1, 2], 0)], tokens={"p": 8}))
    m = side.build_connector_meta(out(cached=[("p", [7, 8, 9], 0)], tokens={"p": 10}, resumed=["p"]))
    assert m.saves[0].block_ids == (7, 8, 9)


def test_only_the_prompts_blocks_are_saved(side):
    r = prefill(n=5)
    side.update_state_after_alloc(r, Blocks([1, 2, 3]), 0)
    m = side.build_connector_meta(out(new=[("p", [1, 2, 3], 0)], tokens={"p": 5}))
    assert m.saves[0].block_ids == (1, 2)


@pytest.mark.parametrize("status,released", [
    (RequestStatus.FINISHED_ABORTED, True), (RequestStatus.FINISHED_ERROR, True),
])
def test_a_prefill_that_ends_otherwise_releases_what_it_saved(side, status, released):
    r = prefill()
    side.update_state_after_alloc(r, Blocks([1, 2, 3]), 0)
    side.build_connector_meta(out(new=[("p", [1, 2, 3], 0)], tokens={"p": 10}))
    r.status = status
    assert side.request_finished(r, [1, 2, 3]) == (False, None)
    assert side.link.released == ["t-1"]


def test_a_prefill_aborted_before_its_save_releases_nothing(side):
    r = prefill()
    side.update_state_after_alloc(r, Blocks([1, 2]), 0)
    side.build_connector_meta(out(new=[("p", [1, 2], 0)], tokens={"p": 8}))
    r.status = RequestStatus.FINISHED_ABORTED
    assert side.request_finished(r, [1, 2]) == (False, None)
    assert side.link.released == []


@pytest.mark.parametrize("params", [None, {}, {"do_remote_prefill": False}, {"do_remote_prefill": True, "transfer_id": "has space"},
                                    {"do_remote_prefill": True, "transfer_id": 12}, {"do_remote_prefill": True}])
def test_a_request_without_usable_params_loads_nothing(side, params):
    assert side.get_num_new_matched_tokens(Req("d", 10, params), 0) == (0, False)


def test_decode_announces_the_uncached_prompt_and_loads_into_its_new_blocks(side):
    r = decode(n=10)
    # 4 tokens (one block) found in vLLM's own prefix cache.
    assert side.get_num_new_matched_tokens(r, 4) == (6, True)
    side.update_state_after_alloc(r, Blocks([11, 12, 13]), 6)
    assert r.kv_transfer_params["do_remote_prefill"] is False
    m = side.build_connector_meta(out())
    [load] = m.loads
    assert (load.transfer_id, load.source, load.first_block, load.block_ids, load.num_tokens, load.sync) == (
        "t-1", "127.0.0.1:7001", 1, (12, 13), 10, False)
    assert side.build_connector_meta(out()).loads == []
    side.update_connector_output(SimpleNamespace(finished_recving={"d"}))
    r.status = RequestStatus.FINISHED_LENGTH_CAPPED
    assert side.request_finished(r, [11, 12, 13]) == (False, None)
    assert side.link.released == []


def test_layerwise_leaves_the_last_prompt_token_to_compute():
    side = SchedulerSide(Link(), BS, layerwise=True)
    assert side.get_num_new_matched_tokens(decode(n=10), 0) == (9, False)
    assert side.get_num_new_matched_tokens(decode("d2", n=1), 0) == (0, False)


def test_a_decode_aborted_while_loading_cancels_its_load(side):
    r = decode()
    side.get_num_new_matched_tokens(r, 0)
    side.update_state_after_alloc(r, Blocks([1, 2, 3]), 10)
    side.build_connector_meta(out())
    r.status = RequestStatus.FINISHED_ABORTED
    assert side.request_finished(r, [1, 2, 3]) == (False, None)
    assert side.build_connector_meta(out()).cancels == ["d"]
    assert side.link.released == []  # the worker releases it once its load stopped


def test_a_decode_that_ends_before_its_load_releases_the_entry(side):
    r = decode()
    side.get_num_new_matched_tokens(r, 0)  # announced, never given blocks
    r.status = RequestStatus.FINISHED_ABORTED
    side.request_finished(r, [])
    assert side.link.released == ["t-1"]
    never_seen = decode("d2", tid="t-2")  # rejected before the scheduler asked
    never_seen.status = RequestStatus.FINISHED_ABORTED
    side.request_finished(never_seen, [])
    assert side.link.released == ["t-1", "t-2"]


def test_a_decode_with_nothing_to_load_releases_the_entry(side):
    r = decode(n=10)
    side.get_num_new_matched_tokens(r, 10)
    side.update_state_after_alloc(r, Blocks([1, 2, 3]), 0)
    assert side.link.released == ["t-1"] and side.build_connector_meta(out()).loads == []
