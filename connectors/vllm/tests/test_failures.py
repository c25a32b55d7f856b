"""What goes wrong between a prefill and a decode: each failure is a load error that vLLM's
kv_load_failure_policy handles (recompute: the decode computes the prompt itself and its blocks
are still right; fail: the request ends in error), and nothing is left in either daemon (the
`clients` fixture checks both after every test)."""
from __future__ import annotations

import time
import uuid

import pytest
import torch

from harness import Instance
from test_roundtrip import prefill_all, prompts

PROMPT = prompts(1, seed=7)[0]


@pytest.fixture
def make(tmp_path, daemons, clients):
    made = []

    def make_(role: str, daemon: str | int, **kw) -> Instance:
        inst = Instance.make(tmp_path, role, daemon if isinstance(daemon, str) else daemons[daemon].address, **kw)
        made.append(inst)
        return inst

    yield make_
    for inst in made:
        inst.close()


def decode_params(tid: str, source: str = "") -> dict:
    return {"do_remote_prefill": True, "do_remote_decode": False, "transfer_id": tid, **({"source_node": source} if source else {})}


def assert_recomputed(d: Instance, rid: str, prompt: list[int]) -> None:
    """The decode computed the whole prompt itself, and its blocks hold the model's KV."""
    assert d.computed[rid] == len(prompt), d.computed
    got, want = d.blocks_of(rid, len(prompt)), d.expected_blocks(rid)
    for name in got:
        assert torch.equal(got[name], want[name]), name


def test_missing_entry_is_a_load_error_and_recompute_policy_computes_the_prompt(make):
    d = make("kv_consumer", 1, failure_policy="recompute", extra={"load_wait_ms": 300})
    d.add("d0", PROMPT, decode_params(f"kvf-{uuid.uuid4()}"), max_tokens=2)
    d.run(lambda: d.finished("d0"))
    assert d.finished("d0").finish_reason.name == "LENGTH"
    assert_recomputed(d, "d0", PROMPT)


def test_missing_entry_with_fail_policy_ends_the_request_in_error(make):
    d = make("kv_consumer", 1, failure_policy="fail", extra={"load_wait_ms": 300})
    d.add("d0", PROMPT, decode_params(f"kvf-{uuid.uuid4()}"), max_tokens=2)
    d.run(lambda: d.finished("d0"))
    assert d.finished("d0").finish_reason.name == "ERROR"


def test_decode_daemon_down_is_a_load_error(make):
    # Nothing listens on port 1: the daemon of this node is down.
    d = make("kv_consumer", "127.0.0.1:1", failure_policy="recompute", extra={"call_timeout_s": 5})
    d.add("d0", PROMPT, decode_params(f"kvf-{uuid.uuid4()}"), max_tokens=2)
    d.run(lambda: d.finished("d0"))
    assert_recomputed(d, "d0", PROMPT)


def test_prefill_daemon_down_still_answers_and_the_decode_recomputes(make, daemons):
    p = make("kv_producer", "127.0.0.1:1", extra={"call_timeout_s": 5})
    tid = f"kvf-{uuid.uuid4()}"
    p.add("p0", PROMPT, {"do_remote_decode": True, "transfer_id": tid})
    p.run(lambda: p.finished("p0"))
    d = make("kv_consumer", 1, failure_policy="recompute", extra={"load_wait_ms": 300})
    d.add("d0", PROMPT, decode_params(tid, daemons[0].peer_address), max_tokens=2)
    d.run(lambda: d.finished("d0"))
    assert_recomputed(d, "d0", PROMPT)


def test_late_entry_is_waited_for(make, daemons, clients):
    """The decode asks before the prefill saved (a push still on its way): its load waits."""
    tid = f"kvf-{uuid.uuid4()}"
    d = make("kv_consumer", 1, extra={"load_wait_ms": 60_000})
    d.add("d0", PROMPT, decode_params(tid), max_tokens=2)
    d.step()  # the load starts and waits in the daemon
    p = make("kv_producer", 0)
    p.add("p0", PROMPT, {"do_remote_decode": True, "transfer_id": tid})
    p.run(lambda: p.finished("p0"))
    assert clients[0].batch_transfer([tid], daemons[1].peer_address)[0].ok
    d.run(lambda: d.finished("d0"))
    assert d.computed["d0"] == 1


@pytest.mark.parametrize("what", ["layers", "tokens"])
def test_mismatched_producer_is_refused_and_its_entry_released(make, daemons, clients, what, caplog):
    p = make("kv_producer", 0, layers=2 if what == "layers" else 4)
    params = prefill_all(p, [PROMPT])["p0"]
    d = make("kv_consumer", 1, failure_policy="recompute")
    # The decode's prompt differs from the prefill's by one token when `what` is "tokens".
    prompt = PROMPT + [5] if what == "tokens" else PROMPT
    d.add("d0", prompt, decode_params(params["transfer_id"], daemons[0].peer_address), max_tokens=2)
    d.run(lambda: d.finished("d0"))
    assert_recomputed(d, "d0", prompt)
    expected = "the producer's layers is 2 layers" if what == "layers" else f"holds the KV of {len(PROMPT)} tokens"
    assert any(expected in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_decode_aborted_while_loading_releases_the_entry(make, daemons, clients):
    tid = f"kvf-{uuid.uuid4()}"
    d = make("kv_consumer", 1, extra={"load_wait_ms": 60_000})
    d.add("d0", PROMPT, decode_params(tid), max_tokens=2)
    d.step()  # loading: waiting for the entry
    d.abort("d0")
    d.step()  # the cancel reaches the worker
    p = make("kv_producer", 0)
    p.add("p0", PROMPT, {"do_remote_decode": True, "transfer_id": tid})
    p.run(lambda: p.finished("p0"))
    assert clients[0].batch_transfer([tid], daemons[1].peer_address)[0].ok
    # The load gets the entry, sees the cancel, gives it back and releases it; vLLM frees the
    # request's blocks once the worker reports it finished.
    d.run(lambda: "d0" not in d.scheduler.requests)
    d.worker._worker.link.drain(60)
    assert d.scheduler.kv_cache_manager.block_pool.get_num_free_blocks() == d.scheduler.kv_cache_manager.block_pool.num_gpu_blocks - 1


def test_rejected_decode_releases_the_pushed_entry(make, daemons, clients):
    p = make("kv_producer", 0)
    params = prefill_all(p, [PROMPT])["p0"]
    assert clients[0].batch_transfer([params["transfer_id"]], daemons[1].peer_address)[0].ok
    d = make("kv_consumer", 1)
    # Aborted before it was ever scheduled (vLLM's frontend rejected it, or the client left).
    d.add("d0", PROMPT, decode_params(params["transfer_id"]), max_tokens=2)
    d.abort("d0")
    d.scheduler.connector._link.drain(60)
    assert [e.transfer_id for e in clients[1].entries()] == []


def test_prefill_aborted_after_its_save_releases_the_entry(make, clients):
    p = make("kv_producer", 0)
    tid = f"kvf-{uuid.uuid4()}"
    p.add("p0", PROMPT, {"do_remote_decode": True, "transfer_id": tid}, max_tokens=50)
    p.run(lambda: p.steps >= 3)
    assert clients[0].stat(tid).state.name == "SEALED"
    p.abort("p0")
    p.scheduler.connector._link.drain(60)
    assert [e.transfer_id for e in clients[0].entries()] == []


def test_chunked_prefill_saves_once_its_prompt_is_complete(make, daemons, clients):
    """A prompt longer than a step's token budget is saved in the step that completes it."""
    long_prompt = prompts(1, seed=11)[0] * 3
    p = make("kv_producer", 0, max_batched_tokens=128)
    params = prefill_all(p, [long_prompt])["p0"]
    assert p.steps > 1
    d = make("kv_consumer", 1)
    d.add("d0", long_prompt, decode_params(params["transfer_id"], daemons[0].peer_address), max_tokens=2)
    d.run(lambda: d.finished("d0"))
    assert d.computed["d0"] == 1
    got, want = d.blocks_of("d0", len(long_prompt)), d.expected_blocks("d0")
    for name in got:
        assert torch.equal(got[name], want[name]), name
