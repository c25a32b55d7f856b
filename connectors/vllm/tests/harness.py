"""A vLLM instance without a model: vLLM's real Scheduler (which makes the connector's scheduler
half through vLLM's own factory, from a real VllmConfig) and the connector's worker half made by
the same factory, driven step by step exactly as vLLM's engine core and GPU model runner call
them (kv_connector_model_runner_mixin.py), with the KV cache as CPU tensors in vLLM's layout.

The "model" writes, for each scheduled token, a KV value that depends only on the prompt, the
layer and the position (`kv_value`): a prefill and a decode of the same prompt compute the same
bytes, so a decode whose KV was loaded holds exactly what the prefill saved — and a block it
neither loaded nor computed holds zeros."""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

from vllm import SamplingParams  # noqa: E402
from vllm.config import (  # noqa: E402
    CacheConfig, DeviceConfig, KVTransferConfig, ModelConfig, SchedulerConfig, VllmConfig,
)
from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory  # noqa: E402
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole  # noqa: E402
from vllm.utils.hashing import sha256 as vllm_sha256  # noqa: E402
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash  # noqa: E402
from vllm.v1.core.sched.scheduler import Scheduler  # noqa: E402
from vllm.v1.kv_cache_interface import (  # noqa: E402
    FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec, KVCacheTensor,
)
from vllm.v1.outputs import KVConnectorOutput, ModelRunnerOutput  # noqa: E402
from vllm.v1.request import Request, RequestStatus  # noqa: E402
from vllm.v1.structured_output import StructuredOutputManager  # noqa: E402

#: A 7B-like geometry, scaled down: layers, KV heads, head size.
LAYERS, HEADS, HEAD = 4, 2, 16
BLOCK = 16
DTYPE = torch.float16


def model_dir(root: Path, layers: int = LAYERS) -> Path:
    """A local model directory with only a config.json (the scheduler needs no weights)."""
    d = root / f"tiny-llama-{layers}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HEADS * HEAD * 2,
        "intermediate_size": 128, "num_hidden_layers": layers, "num_attention_heads": HEADS * 2,
        "num_key_value_heads": HEADS, "head_dim": HEAD, "vocab_size": 1000, "max_position_embeddings": 8192,
        "torch_dtype": "float16", "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
        "tie_word_embeddings": False,
    }))
    return d


def kv_value(prompt: tuple[int, ...], layer: int, positions: range) -> torch.Tensor:
    """The KV of `positions` of `prompt` in `layer`: [len, HEADS, 2*HEAD], K and V packed."""
    digest = hashlib.sha256(repr((prompt, layer)).encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
    full = torch.randn(len(prompt) + 64, HEADS, 2 * HEAD, generator=g).to(DTYPE)
    return full[positions.start:positions.stop]


def kv_caches(num_blocks: int, layer_names: list[str], layout: str) -> dict[str, torch.Tensor]:
    """Zeroed caches with vLLM's logical shape [blocks, heads, block_size, 2*head] (K/V packed)
    in the physical order `layout` ("NHD": tokens outside heads, vLLM's default; "HND")."""
    out = {}
    for name in layer_names:
        if layout == "NHD":
            t = torch.zeros(num_blocks, BLOCK, HEADS, 2 * HEAD, dtype=DTYPE).permute(0, 2, 1, 3)
        else:
            t = torch.zeros(num_blocks, HEADS, BLOCK, 2 * HEAD, dtype=DTYPE)
        out[name] = t
    return out


def kv_cache_tensor(page: int, num_blocks: int, name: str) -> KVCacheTensor:
    """One layer's own allocation, in the version's terms (0.33 placed layers by strides)."""
    fields = KVCacheTensor.__dataclass_fields__
    if "shared_by" in fields:  # 0.26
        return KVCacheTensor(size=page * num_blocks, shared_by=[name])
    return KVCacheTensor(size=page * num_blocks, layers=[name], layer_stride=page * num_blocks, block_stride=page)


def configs(
    root: Path, role: str, daemon: str, *, extra: dict[str, Any] | None = None, num_blocks: int = 1024,
    layers: int = LAYERS, failure_policy: str = "fail", max_batched_tokens: int = 2048,
) -> tuple[VllmConfig, KVCacheConfig]:
    """A real VllmConfig naming KvferryConnector, and the KV cache config of its layers."""
    model = ModelConfig(model=str(model_dir(root, layers)), skip_tokenizer_init=True, dtype="float16", max_model_len=4096, seed=0)
    transfer = KVTransferConfig(
        kv_connector="KvferryConnector", kv_connector_module_path="kvferry_vllm.connector", kv_role=role,
        kv_connector_extra_config={"kvferry_daemon": daemon, "call_timeout_s": 60, **(extra or {})},
        kv_load_failure_policy=failure_policy,
    )
    config = VllmConfig(
        model_config=model,
        cache_config=CacheConfig(block_size=BLOCK, enable_prefix_caching=True),
        scheduler_config=SchedulerConfig(
            max_num_seqs=16, max_num_batched_tokens=max_batched_tokens, max_model_len=4096,
            enable_chunked_prefill=True, is_encoder_decoder=False,
        ),
        kv_transfer_config=transfer,
        device_config=DeviceConfig("cpu"),
    )
    names = [f"model.layers.{i}.self_attn.attn" for i in range(layers)]
    spec = FullAttentionSpec(block_size=BLOCK, num_kv_heads=HEADS, head_size=HEAD, dtype=DTYPE)
    page = spec.page_size_bytes
    kv_config = KVCacheConfig(
        num_blocks=num_blocks,
        kv_cache_tensors=[kv_cache_tensor(page, num_blocks, n) for n in names],
        kv_cache_groups=[KVCacheGroupSpec(names, spec)],
    )
    return config, kv_config


@dataclass
class Instance:
    """One vLLM instance: its scheduler, its worker's connector, its KV cache."""

    role: str
    scheduler: Scheduler
    worker: Any
    kv: dict[str, torch.Tensor]
    layer_names: list[str]
    prompts: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: Every EngineCoreOutput seen, by request id.
    outputs: dict[str, list[Any]] = field(default_factory=dict)
    #: Each request's blocks when it last ran (their contents stay after it finished, until
    #: vLLM hands the blocks to another request: tests size the cache so it does not).
    block_ids: dict[str, list[int]] = field(default_factory=dict)
    #: Prompt tokens each request computed itself (the rest it loaded, or found cached).
    computed: dict[str, int] = field(default_factory=dict)
    steps: int = 0

    @classmethod
    def make(
        cls, root: Path, role: str, daemon: str, *, extra: dict[str, Any] | None = None, num_blocks: int = 1024,
        layout: str = "NHD", layers: int = LAYERS, failure_policy: str = "fail", max_batched_tokens: int = 2048,
    ) -> Instance:
        config, kv_config = configs(root, role, daemon, extra=extra, num_blocks=num_blocks, layers=layers,
                                    failure_policy=failure_policy, max_batched_tokens=max_batched_tokens)
        names = list(kv_config.kv_cache_groups[0].layer_names)
        config.cache_config.num_gpu_blocks = num_blocks
        init_none_hash(vllm_sha256)
        scheduler = Scheduler(
            vllm_config=config, kv_cache_config=kv_config, structured_output_manager=StructuredOutputManager(config),
            block_size=BLOCK,
        )
        worker = KVConnectorFactory.create_connector(config, KVConnectorRole.WORKER, kv_config)
        kv = kv_caches(num_blocks, names, layout)
        worker.register_kv_caches(kv)
        inst = cls(role, scheduler, worker, kv, names)
        inst._hasher = get_request_block_hasher(BLOCK, vllm_sha256)
        return inst

    # -- requests ----------------------------------------------------------------------------

    def add(self, req_id: str, prompt: list[int], params: dict[str, Any] | None, max_tokens: int = 1) -> Request:
        sp = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, extra_args={"kv_transfer_params": params} if params else None)
        req = Request(req_id, list(prompt), sp, None, block_hasher=self._hasher)
        self.prompts[req_id] = tuple(prompt)
        self.scheduler.add_request(req)
        return req

    def abort(self, req_id: str) -> None:
        self.scheduler.finish_requests([req_id], RequestStatus.FINISHED_ABORTED)

    # -- one engine step, as the engine core and the model runner run it ---------------------

    def step(self) -> bool:
        """One step; whether it scheduled anything."""
        self.steps += 1
        so = self.scheduler.schedule()
        w = self.worker
        w.bind_connector_metadata(so.kv_connector_metadata)
        w.start_load_kv(None)
        positions = self._scheduled_positions(so)
        for layer, name in enumerate(self.layer_names):
            w.wait_for_layer_load(name)
            self._forward_layer(layer, name, positions)
            w.save_kv_layer(name, self.kv[name], object())
        w.wait_for_save()
        sending, recving = w.get_finished(so.finished_req_ids)
        invalid = w.get_block_ids_with_load_errors()
        w.clear_connector_metadata()
        req_ids, sampled = [], []
        for rid, (start, stop, _) in positions.items():
            req_ids.append(rid)
            req = self.scheduler.requests[rid]
            # A token is sampled when the step reaches the end of what the request has so far.
            sampled.append([7] if stop >= req.num_tokens else [])
        out = ModelRunnerOutput(
            req_ids=req_ids, req_id_to_index={r: i for i, r in enumerate(req_ids)}, sampled_token_ids=sampled,
            kv_connector_output=KVConnectorOutput(finished_sending=sending, finished_recving=recving, invalid_block_ids=invalid),
        )
        for engine_outputs in self.scheduler.update_from_output(so, out).values():
            for o in engine_outputs.outputs:
                self.outputs.setdefault(o.request_id, []).append(o)
        return bool(positions)

    def _scheduled_positions(self, so: Any) -> dict[str, tuple[int, int, list[int]]]:
        """req_id -> (first position, end, its blocks) computed in this step."""
        out = {}
        for rid, n in so.num_scheduled_tokens.items():
            req = self.scheduler.requests[rid]
            # schedule() already advanced num_computed_tokens past this step's tokens.
            start = req.num_computed_tokens - n
            blocks = self.scheduler.kv_cache_manager.get_block_ids(rid)[0]
            self.block_ids[rid] = list(blocks)
            out[rid] = (start, start + n, blocks)
        return out

    def _forward_layer(self, layer: int, name: str, positions: dict[str, tuple[int, int, list[int]]]) -> None:
        kv = self.kv[name]
        for rid, (start, stop, blocks) in positions.items():
            prompt = self.prompts[rid]
            stop_p = min(stop, len(prompt))
            if start >= stop_p:
                continue
            if layer == 0:
                self.computed[rid] = self.computed.get(rid, 0) + stop_p - start
            values = kv_value(prompt, layer, range(start, stop_p))
            for p in range(start, stop_p):
                kv[blocks[p // BLOCK], :, p % BLOCK, :] = values[p - start]

    def run(self, until: Any, bound_s: float = 120.0, poll_s: float = 0.005) -> None:
        """Steps until `until()` holds. Loads finish in background threads, so a step may find
        nothing to schedule: it waits `poll_s` then. `bound_s` bounds a hang, not the speed."""
        deadline = time.monotonic() + bound_s
        while not until():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.role}: not done within {bound_s} s ({self.steps} steps)")
            if not self.step():
                time.sleep(poll_s)

    def finished(self, req_id: str) -> Any | None:
        """The request's last output once it finished (None before)."""
        outs = self.outputs.get(req_id, [])
        return outs[-1] if outs and outs[-1].finish_reason is not None else None

    def blocks_of(self, req_id: str, num_tokens: int) -> dict[str, torch.Tensor]:
        """The request's blocks holding its first `num_tokens` tokens, per layer (a copy), with the
        slots past num_tokens in the last block zeroed."""
        ids = self.block_ids[req_id][: -(-num_tokens // BLOCK)]
        out = {}
        for name in self.layer_names:
            t = self.kv[name][torch.tensor(ids, dtype=torch.long)].clone()
            tail = num_tokens % BLOCK
            if tail:
                t[-1, :, tail:, :] = 0
            out[name] = t
        return out

    def expected_blocks(self, req_id: str) -> dict[str, torch.Tensor]:
        """What blocks_of(req_id, len(prompt)) must hold: the model's KV of the prompt."""
        prompt = self.prompts[req_id]
        n = -(-len(prompt) // BLOCK)
        out = {}
        for layer, name in enumerate(self.layer_names):
            t = torch.zeros(n, HEADS, BLOCK, 2 * HEAD, dtype=DTYPE)
            values = kv_value(prompt, layer, range(0, len(prompt)))
            for p in range(len(prompt)):
                t[p // BLOCK, :, p % BLOCK, :] = values[p]
            out[name] = t
        return out

    def close(self) -> None:
        self.worker.shutdown()
        if self.scheduler.connector is not None:
            self.scheduler.connector.shutdown()
