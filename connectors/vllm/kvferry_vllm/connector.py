"""KvferryConnector: vLLM's KV connector (v1 API) on the kvferry daemon of this node.

    vllm serve MODEL --kv-transfer-config '{"kv_connector": "KvferryConnector",
        "kv_connector_module_path": "kvferry_vllm.connector", "kv_role": "kv_producer",
        "kv_connector_extra_config": {"kvferry_daemon": "127.0.0.1:50051"}}'

vLLM makes one instance in its scheduler (role SCHEDULER: scheduler_side.py) and one in each
worker (role WORKER: worker_side.py); this class only hands each call to its half. Settings:
settings.py; README.md of connectors/vllm."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from .compat import KVConnectorBase_V1, KVConnectorRole
from .daemon_link import DaemonLink
from .metadata import KvferryMetadata
from .scheduler_side import SchedulerSide
from .settings import SettingsError, load
from .worker_side import WorkerSide

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.kv_cache_interface import KVCacheConfig

log = logging.getLogger("kvferry_vllm")


def _log_where_vllm_logs() -> None:
    """The connector's records go to vLLM's handlers, at vLLM's level (vLLM configures only its
    own logger; records still propagate, as pytest's caplog expects)."""
    vllm_log = logging.getLogger("vllm")
    if log.handlers or not vllm_log.handlers:
        return
    for h in vllm_log.handlers:
        log.addHandler(h)
    log.setLevel(vllm_log.getEffectiveLevel())


class KvferryConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config: VllmConfig, role: KVConnectorRole, kv_cache_config: KVCacheConfig | None = None) -> None:
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        _log_where_vllm_logs()
        transfer = vllm_config.kv_transfer_config
        parallel = vllm_config.parallel_config
        for what, size in (("tensor_parallel_size", parallel.tensor_parallel_size), ("pipeline_parallel_size", parallel.pipeline_parallel_size)):
            if size != 1:
                raise SettingsError(what, size, "1: kvferry's connector moves one worker's KV per instance (parallel workers are not supported yet)")
        settings = load(transfer.kv_connector_extra_config)
        block_size = _block_size(vllm_config, kv_cache_config)
        self._link = DaemonLink(settings)
        self._scheduler: SchedulerSide | None = None
        self._worker: WorkerSide | None = None
        if role == KVConnectorRole.SCHEDULER:
            self._scheduler = SchedulerSide(self._link, block_size, layerwise=settings.load_mode == "layerwise")
        else:
            num_blocks = getattr(kv_cache_config, "num_blocks", None)
            self._worker = WorkerSide(self._link, num_blocks, block_size)

    # -- worker ------------------------------------------------------------------------------

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        assert self._worker is not None
        self._worker.register_kv_caches(kv_caches)

    def _meta(self) -> KvferryMetadata:
        meta = self._get_connector_metadata()
        assert isinstance(meta, KvferryMetadata)
        return meta

    def start_load_kv(self, forward_context: Any, **kwargs: Any) -> None:
        assert self._worker is not None
        self._worker.start_load_kv(self._meta())

    def wait_for_layer_load(self, layer_name: str) -> None:
        assert self._worker is not None
        self._worker.wait_for_layer_load(layer_name)

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any, **kwargs: Any) -> None:
        assert self._worker is not None
        self._worker.save_kv_layer(self._meta(), layer_name, kv_layer)

    def wait_for_save(self) -> None:
        assert self._worker is not None
        self._worker.wait_for_save()

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        assert self._worker is not None
        return self._worker.get_finished()

    def get_block_ids_with_load_errors(self) -> set[int]:
        assert self._worker is not None
        return self._worker.get_block_ids_with_load_errors()

    def shutdown(self) -> None:
        if self._worker is not None:
            self._worker.shutdown()
        self._link.close()

    # -- scheduler ---------------------------------------------------------------------------

    def get_num_new_matched_tokens(self, request: Any, num_computed_tokens: int) -> tuple[int | None, bool]:
        assert self._scheduler is not None
        return self._scheduler.get_num_new_matched_tokens(request, num_computed_tokens)

    def update_state_after_alloc(self, request: Any, blocks: Any, num_external_tokens: int) -> None:
        assert self._scheduler is not None
        self._scheduler.update_state_after_alloc(request, blocks, num_external_tokens)

    def build_connector_meta(self, scheduler_output: Any) -> KvferryMetadata:
        assert self._scheduler is not None
        return self._scheduler.build_connector_meta(scheduler_output)

    def update_connector_output(self, connector_output: Any) -> None:
        assert self._scheduler is not None
        self._scheduler.update_connector_output(connector_output)

    def request_finished(self, request: Any, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        assert self._scheduler is not None
        return self._scheduler.request_finished(request, block_ids)


def _block_size(vllm_config: Any, kv_cache_config: Any) -> int:
    groups = getattr(kv_cache_config, "kv_cache_groups", None) or []
    if len(groups) > 1:
        raise SettingsError("kv_cache_groups", len(groups), "1 KV cache group (hybrid models are not supported)")
    if groups:
        return int(groups[0].kv_cache_spec.block_size)
    return int(vllm_config.cache_config.block_size)
