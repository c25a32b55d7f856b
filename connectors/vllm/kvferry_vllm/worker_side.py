"""The worker half: copies KV between vLLM's paged cache and the local daemon's pool, in place
(the Python client's local path: the pool is mapped here; a GPU cache copies straight into it).

Saving (a prefill): in the step that completes a request's prompt, its entry is reserved at the
first layer's save_kv_layer (parts `meta` and `layer.<i>`), each layer's blocks are copied into
`layer.<i>` as the layer finishes and committed by a background thread (so the daemon has the
first layers while the last compute), the last commit seals the entry; wait_for_save waits
for the commits, so that the prefill's answer leaves only once its KV is sealed.

Loading (a decode): start_load_kv hands each load to a loader thread, which borrows the entry
(Lend, consuming; waiting for a push in flight or pulling from the prefill's daemon), checks
the producer's geometry, copies it layer by layer into the request's blocks and consumes it.
Async loads are reported in get_finished when done; layerwise ones are waited for, layer by
layer, in wait_for_layer_load. A load that fails (no entry in time, a daemon down, another
model's KV) reports its blocks in get_block_ids_with_load_errors, so that vLLM's
kv_load_failure_policy applies, and releases the entry; a cancelled one releases it too."""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

import kvferry

from .daemon_link import DaemonLink
from .geometry import (
    META_PART, Geometry, GeometryError, copy_in, copy_out, decode_meta, encode_meta, host_views, ids_tensor, layer_part,
)
from .metadata import KvferryMetadata, LoadSpec, SaveSpec

log = logging.getLogger("kvferry_vllm")

#: Loads that may run at once (each may wait for its entry).
LOADERS = 4


class _Cancelled(Exception):
    pass


@dataclass
class _Saving:
    spec: SaveSpec
    writer: kvferry.LocalWriter | None
    ids: torch.Tensor
    failed: bool = False
    started: float = field(default_factory=time.perf_counter)


@dataclass
class Stats:
    """What this worker moved, for logs and benches: bytes and the wall time from the first
    layer's copy to the sealing commit (saves) / from the loan to the last copy (loads)."""

    saves: int = 0
    save_bytes: int = 0
    save_s: float = 0.0
    loads: int = 0
    load_bytes: int = 0
    load_s: float = 0.0

    def gbps(self, what: str) -> float:
        n, s = (self.save_bytes, self.save_s) if what == "save" else (self.load_bytes, self.load_s)
        return n / s / 1e9 if s > 0 else 0.0


@dataclass
class _Loading:
    spec: LoadSpec
    layers: list[threading.Event]
    events: list[Any]  # CUDA events per layer (None on a CPU)
    cancelled: threading.Event = field(default_factory=threading.Event)
    failed: bool = False


class WorkerSide:
    def __init__(self, link: DaemonLink, num_blocks: int | None, block_size: int) -> None:
        self.link = link
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.geometry: Geometry | None = None
        self.kv: dict[str, torch.Tensor] = {}
        #: Where the KV caches live (all layers on one device).
        self.device = torch.device("cpu")
        self._index: dict[str, int] = {}
        self._pool: kvferry.LocalPool | None = None
        self._registered_ptr: int | None = None
        self._lock = threading.Lock()
        self._saving: list[_Saving] = []
        self._commits: queue.Queue[tuple[Any, _Saving, list[str], bool] | None] = queue.Queue()
        self._committer = threading.Thread(target=self._commit_loop, name="kvferry-commit", daemon=True)
        self._committer.start()
        self._loader = ThreadPoolExecutor(LOADERS, thread_name_prefix="kvferry-load")
        self._loading: dict[str, _Loading] = {}
        self._step_sync: list[_Loading] = []
        self._finished_recving: set[str] = set()
        self._load_errors: set[int] = set()
        self.stats = Stats()

    # -- set-up ------------------------------------------------------------------------------

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        self.kv = dict(kv_caches)
        self.geometry = Geometry.of(self.kv, self.num_blocks, self.block_size)
        self.device = next(iter(self.kv.values())).device
        self._index = {name: i for i, name in enumerate(self.geometry.layers)}
        log.info(
            "kvferry: %d layers, blocks of %s %s (%d bytes each), daemon %s (%s)", len(self.kv), self.geometry.block_shape,
            self.geometry.dtype, self.geometry.block_bytes, self.link.settings.daemon, self.link.settings.daemon_from,
        )
        try:
            self.pool()
        except kvferry.KvferryError as err:
            log.warning("kvferry: no local path to the daemon yet (tried again at each transfer): %s", err)

    def pool(self) -> kvferry.LocalPool:
        """The daemon's pool mapped here (mapped again after a daemon restart), pinned for a GPU."""
        with self._lock:
            pool = self.link.client.local_pool()
            if pool is not self._pool:
                self._pool = pool
                self._pin(pool)
            return pool

    def _pin(self, pool: kvferry.LocalPool) -> None:
        if self.device.type != "cuda":
            return
        import ctypes

        if self._registered_ptr is not None:  # the daemon restarted: the old pool is not ours any more
            torch.cuda.cudart().cudaHostUnregister(self._registered_ptr)
            self._registered_ptr = None
        ptr = ctypes.addressof(ctypes.c_char.from_buffer(pool.mapping))
        rc = torch.cuda.cudart().cudaHostRegister(ptr, len(pool.mapping), 0)
        if int(rc) != 0:
            log.warning("kvferry: cudaHostRegister of the pool failed (%s): copies go through pageable memory", rc)
        else:
            self._registered_ptr = ptr

    # -- saving ------------------------------------------------------------------------------

    def save_kv_layer(self, meta: KvferryMetadata, layer_name: str, kv_layer: torch.Tensor) -> None:
        if not meta.saves or self.geometry is None:
            return
        g = self.geometry
        i = self._index.get(layer_name)
        if i is None:
            return
        if not self._saving:
            self._saving = [self._open(spec, kv_layer.device) for spec in meta.saves]
        for s in self._saving:
            if s.failed or s.writer is None:
                continue
            try:
                copy_out(kv_layer, g, s.ids, host_views(s.writer.views(layer_part(i))))
            except Exception as err:
                self._save_failed(s, f"copying layer {layer_name}: {err}")
                continue
            names = [layer_part(i)] + ([META_PART] if i == 0 else [])
            event = None
            if kv_layer.is_cuda:
                event = torch.cuda.Event()
                event.record()
            self._commits.put((event, s, names, i == len(g.layers) - 1))

    def _open(self, spec: SaveSpec, device: torch.device) -> _Saving:
        g = self.geometry
        assert g is not None
        s = _Saving(spec, None, ids_tensor(spec.block_ids, device))
        meta = encode_meta(g.describe(spec.num_tokens, len(spec.block_ids)))
        parts = {META_PART: len(meta), **{layer_part(i): len(spec.block_ids) * g.block_bytes for i in range(len(g.layers))}}
        try:
            self.pool()
            s.writer = self.link.client.reserve_local(spec.transfer_id, parts, lease_ttl_ms=self.link.settings.lease_ttl_ms)
            s.writer.write(META_PART, meta)
        except kvferry.KvferryError as err:
            self._save_failed(s, f"reserving {sum(parts.values())} bytes: {err}")
        return s

    def _save_failed(self, s: _Saving, why: str) -> None:
        if s.failed:
            return
        s.failed = True
        log.error("kvferry: the KV of %s (request %s) is not saved: %s", s.spec.transfer_id, s.spec.req_id, why)
        if s.writer is not None:
            try:
                s.writer.abort()
            except kvferry.KvferryError:
                pass
            self.link.release_later(s.spec.transfer_id, "its save failed")

    def _commit_loop(self) -> None:
        """Commits what the layers copied: everything queued by then in one Commit per entry
        (a round trip costs about as much as a layer's copy on a small prompt)."""
        while (job := self._commits.get()) is not None:
            batch = [job]
            stop = False
            while True:
                try:
                    more = self._commits.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            by_entry: dict[int, list[tuple[Any, _Saving, list[str], bool]]] = {}
            for j in batch:
                by_entry.setdefault(id(j[1]), []).append(j)
            for jobs in by_entry.values():
                s = jobs[0][1]
                names = [n for j in jobs for n in j[2]]
                seal = any(j[3] for j in jobs)
                try:
                    if s.failed or s.writer is None:
                        continue
                    if jobs[-1][0] is not None:
                        jobs[-1][0].synchronize()  # the copies ran in order on one stream
                    s.writer.commit(names, seal=seal)
                    if seal:
                        self._saved(s)
                except Exception as err:
                    self._save_failed(s, f"committing {names[0]}: {err}")
            for _ in batch:
                self._commits.task_done()
            if stop:
                self._commits.task_done()
                return

    def _saved(self, s: _Saving) -> None:
        g = self.geometry
        assert g is not None
        n = len(s.spec.block_ids) * g.block_bytes * len(g.layers)
        took = time.perf_counter() - s.started
        with self._lock:
            self.stats.saves += 1
            self.stats.save_bytes += n
            self.stats.save_s += took
        log.info("kvferry: saved %s: %d tokens, %.1f MiB in %.1f ms (%.2f GB/s)", s.spec.transfer_id, s.spec.num_tokens,
                 n / 2**20, took * 1e3, n / took / 1e9 if took else 0)

    def wait_for_save(self) -> None:
        if self._saving:
            self._commits.join()
            self._saving = []

    # -- loading -----------------------------------------------------------------------------

    def start_load_kv(self, meta: KvferryMetadata) -> None:
        for rid in meta.cancels:
            job = self._loading.get(rid)
            if job is not None:
                job.cancelled.set()
        self._step_sync = []
        n = len(self.geometry.layers) if self.geometry else 0
        cuda = self.device.type == "cuda"
        for spec in meta.loads:
            job = _Loading(spec, [threading.Event() for _ in range(n)], [torch.cuda.Event() if cuda else None for _ in range(n)])
            with self._lock:
                self._loading[spec.req_id] = job
            if spec.sync:
                self._step_sync.append(job)
            self._loader.submit(self._load, job)

    def wait_for_layer_load(self, layer_name: str) -> None:
        i = self._index.get(layer_name)
        if i is None:
            return
        bound = self.link.settings.load_wait_ms / 1000 + 2 * self.link.settings.call_timeout_s
        for job in self._step_sync:
            if not job.layers[i].wait(bound):
                self._load_failed(job, f"layer {layer_name} not loaded within {bound:.0f} s")
            elif job.events[i] is not None and not job.failed:
                torch.cuda.current_stream().wait_event(job.events[i])

    def _load(self, job: _Loading) -> None:
        spec = job.spec
        g = self.geometry
        try:
            if g is None:
                raise GeometryError("no KV caches registered")
            self.pool()
            loan = self.link.client.get_local(
                spec.transfer_id, consume=True, wait_ms=self.link.settings.load_wait_ms, source=spec.source,
            )
            started = time.perf_counter()
            try:
                self._copy_in(job, g, loan)
            except BaseException:
                loan.release(consumed=False)
                raise
            took = time.perf_counter() - started
            loan.release(consumed=True)
            n = len(spec.block_ids) * g.block_bytes * len(g.layers)
            with self._lock:
                self.stats.loads += 1
                self.stats.load_bytes += n
                self.stats.load_s += took
            log.info("kvferry: loaded %s: %d tokens, %.1f MiB in %.1f ms (%.2f GB/s)", spec.transfer_id, spec.num_tokens,
                     n / 2**20, took * 1e3, n / took / 1e9 if took else 0)
        except _Cancelled:
            log.info("kvferry: load of %s (request %s) cancelled", spec.transfer_id, spec.req_id)
            self.link.release_later(spec.transfer_id, "its load was cancelled")
        except Exception as err:
            self._load_failed(job, str(err))
            if not isinstance(err, kvferry.NotFoundError):
                self.link.release_later(spec.transfer_id, "its load failed")
        finally:
            for e in job.layers:
                e.set()
            with self._lock:
                self._loading.pop(spec.req_id, None)
                if not spec.sync:
                    self._finished_recving.add(spec.req_id)

    def _copy_in(self, job: _Loading, g: Geometry, loan: kvferry.LocalLoan) -> None:
        spec = job.spec
        meta = decode_meta(loan.bytes(META_PART))
        g.check(meta)
        if meta.get("num_tokens") != spec.num_tokens:
            raise GeometryError(f"the entry holds the KV of {meta.get('num_tokens')} tokens, this request's prompt has {spec.num_tokens}")
        if meta.get("num_blocks", 0) < spec.first_block + len(spec.block_ids):
            raise GeometryError(f"the entry holds {meta.get('num_blocks')} blocks, the request needs {spec.first_block + len(spec.block_ids)}")
        ids = ids_tensor(spec.block_ids, self.device)
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            for i, name in enumerate(g.layers):
                if job.cancelled.is_set():
                    raise _Cancelled()
                copy_in(self.kv[name], g, ids, host_views(loan.parts[layer_part(i)]), spec.first_block)
                if job.events[i] is not None:
                    job.events[i].record(stream)
                job.layers[i].set()
        if stream is not None:
            stream.synchronize()  # the loan's memory is read until here

    def _load_failed(self, job: _Loading, why: str) -> None:
        with self._lock:
            if job.failed:
                return
            job.failed = True
            self._load_errors.update(job.spec.block_ids)
        log.error("kvferry: cannot load the KV of %s (request %s): %s", job.spec.transfer_id, job.spec.req_id, why)

    def get_finished(self) -> tuple[set[str] | None, set[str] | None]:
        with self._lock:
            done, self._finished_recving = self._finished_recving, set()
        return None, (done or None)

    def get_block_ids_with_load_errors(self) -> set[int]:
        with self._lock:
            errors, self._load_errors = self._load_errors, set()
        return errors

    def shutdown(self) -> None:
        for job in list(self._loading.values()):
            job.cancelled.set()
        self._loader.shutdown(wait=True)
        self._commits.put(None)
        self._committer.join(self.link.settings.call_timeout_s)
        if self._registered_ptr is not None:
            torch.cuda.cudart().cudaHostUnregister(self._registered_ptr)
            self._registered_ptr = None
