"""A prefill instance saves KV through kvferry, two real daemons move it (push or pull), a decode
instance loads it into other block ids: the decode's blocks equal the prefill's, byte for byte."""
from __future__ import annotations

import random
import uuid
import zlib

import pytest
import torch

from harness import Instance


def prompts(n: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, 1000) for _ in range(rng.randrange(5, 300))] for _ in range(n)]


@pytest.fixture
def make(tmp_path, daemons, clients):
    made = []

    def make_(role: str, node: int, **kw) -> Instance:
        inst = Instance.make(tmp_path, role, daemons[node].address, **kw)
        made.append(inst)
        return inst

    yield make_
    for inst in made:
        inst.close()


def prefill_all(p: Instance, batch: list[list[int]]) -> dict[str, dict]:
    """Prefills every prompt (max_tokens 1, as the proxy sends it); their kv_transfer_params."""
    ids = {}
    for i, prompt in enumerate(batch):
        tid = f"kvf-{uuid.uuid4()}"
        p.add(f"p{i}", prompt, {"do_remote_decode": True, "do_remote_prefill": False, "transfer_id": tid})
        ids[f"p{i}"] = tid
    p.run(lambda: all(p.finished(r) for r in ids))
    out = {}
    for rid, tid in ids.items():
        params = p.finished(rid).kv_transfer_params
        assert params is not None and params["transfer_id"] == tid and params["do_remote_prefill"] is True
        out[rid] = params
    return out


@pytest.mark.parametrize("mode,load_mode,layout", [
    ("push", "async", "NHD"),
    ("pull", "async", "HND"),
    ("push", "layerwise", "HND"),
    ("pull", "layerwise", "NHD"),
])
def test_decode_blocks_equal_prefill_blocks(make, daemons, clients, mode, load_mode, layout):
    p = make("kv_producer", 0)
    d = make("kv_consumer", 1, extra={"load_mode": load_mode}, layout=layout)
    batch = prompts(6, seed=zlib.crc32(f"{mode}/{load_mode}/{layout}".encode()))  # the same prompts every run
    params = prefill_all(p, batch)
    if mode == "push":
        results = clients[0].batch_transfer([pp["transfer_id"] for pp in params.values()], daemons[1].peer_address, "push")
        assert [r.ok for r in results] == [True] * len(batch), results
    # Different block ids on the decode side: it has other requests' blocks taken first.
    d.add("warm", list(range(1, 70)), None, max_tokens=1)
    d.run(lambda: d.finished("warm"))
    for i, prompt in enumerate(batch):
        decode_params = {**params[f"p{i}"], "do_remote_prefill": True, "do_remote_decode": False}
        if mode == "push":
            decode_params.pop("source_node", None)
            decode_params.pop("source_node_id", None)
        d.add(f"d{i}", prompt, decode_params, max_tokens=3)
    d.run(lambda: all(d.finished(f"d{i}") for i in range(len(batch))))
    for i, prompt in enumerate(batch):
        got = d.blocks_of(f"d{i}", len(prompt))
        want = d.expected_blocks(f"d{i}")
        for name in got:
            assert torch.equal(got[name].view(torch.uint8), want[name].view(torch.uint8)), f"d{i} {name}"
        # It loaded the prompt's KV and computed only the last prompt token.
        assert d.computed[f"d{i}"] == 1, d.computed
