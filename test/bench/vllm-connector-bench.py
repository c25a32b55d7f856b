# Benchmark of the vLLM connector's per-request cost on a CPU, or on a GPU (not part of npm test).
#
#   npm run bench:vllm
#   BENCH_VLLM_DEVICE=cuda npm run bench:vllm      (on a machine with an NVIDIA GPU)
#   (or: PYTHONPATH=python:connectors/vllm "$(bash scripts/vllm-venv.sh)" test/bench/vllm-connector-bench.py)
#
# One daemon on 127.0.0.1 (pool 2 GiB, more for longer prompts); two connector worker halves made by vLLM's own
# KVConnectorFactory (role WORKER, as vLLM's model runner makes them), each with a KV cache
# of a 7B-shaped model: 32 layers, 8 KV heads, head size 128, fp16, blocks of 16 tokens, in
# vLLM's logical layout [blocks, heads, 16, 2*128] with the physical NHD order (tokens outside
# heads, vLLM's default), in host memory or (BENCH_VLLM_DEVICE=cuda) on the GPU. For prompts
# of 512 and 8192 tokens (BENCH_VLLM_TOKENS), ROUNDS times each:
#   save  the producer saves one request's blocks of all 32 layers, as the model runner calls
#         it (bind the step's metadata, start_load_kv, save_kv_layer per layer, wait_for_save):
#         reserve, copies into the mapped pool, commits, until wait_for_save returns;
#   load  the consumer loads that entry into other block ids (an async load: start_load_kv,
#         then get_finished polled until it names the request): lend, copies, return.
# Beside them, in each round, memcpy of the same bytes in this process (torch: a contiguous
# tensor copied into another, preallocated one): the floor of either way is one copy. On a
# GPU the floor is instead the same bytes copied between the GPU and pinned host memory
# (torch's copy_ with non_blocking=True, then torch.cuda.synchronize()): device to host
# (D2H) beside the save, host to device (H2D) beside the load. Then
# where the time goes: the save by phase, and apart, the connector's own copy functions
# (into and out of the pool, no RPC) and its RPCs (Reserve, a Commit per layer, Lend,
# ReturnLoan; no copy). Medians of the rounds (a first round warms up, and checks that the
# consumer's blocks hold the producer's bytes). Every loop is bounded in count (ROUNDS) and
# in time (BOUND_S per prompt length and per profile; WAIT_S per load).
#
# On a GPU (BENCH_VLLM_DEVICE=cuda) the connector pins the daemon's pool itself
# (cudaHostRegister of its mapping, in register_kv_caches); the machine line says whether
# that worked for each worker (else its copies go through pageable memory). Every timing
# includes the device's work: the connector waits for its copies (wait_for_save on the
# commits' CUDA events, a load's thread on its stream) and the bench synchronizes the device
# before and at the end of each timed piece. The profile's copies use the workers' own
# clients, whose mappings of the pool are the pinned ones.
#
# Environment: BENCH_VLLM_DEVICE (cpu, the default, or cuda), BENCH_VLLM_TOKENS (prompt
# lengths, default 512,8192; BENCH_VLLM_PROMPTS is the older name), BENCH_VLLM_ROUNDS (5),
# BENCH_VLLM_BOUND_S (120). Memory: about 6 GiB at 8192 tokens (two KV caches of 1.1 GiB,
# the pool, the memcpy buffers); on a GPU the caches and a 1 GiB buffer are in GPU memory,
# and the reference's 1 GiB buffer is pinned host memory.
from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
import uuid
from statistics import median
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python" / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # not its warnings about the config, on stdout

import torch  # noqa: E402
import vllm  # noqa: E402
from vllm.config import (  # noqa: E402
    CacheConfig, DeviceConfig, KVTransferConfig, ModelConfig, SchedulerConfig, VllmConfig,
)
from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory  # noqa: E402
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole  # noqa: E402
from vllm.v1.kv_cache_interface import (  # noqa: E402
    FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec, KVCacheTensor,
)

import kvferry  # noqa: E402
from kvferry_vllm.geometry import META_PART, Geometry, copy_in, copy_out, host_views, ids_tensor, layer_part  # noqa: E402
from kvferry_vllm.metadata import KvferryMetadata, LoadSpec, SaveSpec  # noqa: E402
from spawned_daemon import SpawnedDaemon, daemon_args  # noqa: E402

#: The 7B shape: layers, KV heads, head size, tokens per block, dtype.
LAYERS, HEADS, HEAD, BLOCK = 32, 8, 128, 16
DTYPE = torch.float16
#: One block of one layer: K and V of BLOCK tokens, every head (64 KiB).
BLOCK_BYTES = HEADS * BLOCK * 2 * HEAD * DTYPE.itemsize
#: Where the KV caches are: "cpu" (host memory) or "cuda" (the current GPU).
DEVICE = os.environ.get("BENCH_VLLM_DEVICE", "cpu").strip().lower() or "cpu"
if DEVICE not in ("cpu", "cuda"):
    sys.exit(f"BENCH_VLLM_DEVICE={DEVICE!r}: want cpu or cuda")
CUDA = DEVICE == "cuda"
PROMPTS = tuple(int(n) for n in (os.environ.get("BENCH_VLLM_TOKENS") or os.environ.get("BENCH_VLLM_PROMPTS") or "512,8192").split(","))
ROUNDS = int(os.environ.get("BENCH_VLLM_ROUNDS", 5))
#: Bounds on a hang and on a slow machine, not on speed: a prompt length stops taking rounds
#: after this long (it reports the rounds it has), and one load waits at most WAIT_S.
BOUND_S = float(os.environ.get("BENCH_VLLM_BOUND_S", 120))
WAIT_S = 60.0
#: How often a load's end is looked for (vLLM's engine asks get_finished once a step).
POLL_S = 0.001
#: The daemon's pool: room for the longest prompt's entry twice over, at least 2 GiB.
POOL_MIB = max(2048, 2 * LAYERS * -(-max(PROMPTS) // BLOCK) * BLOCK_BYTES >> 20)
#: Blocks in each cache beyond the longest prompt's (block ids are drawn from all of them).
SLACK_BLOCKS = 64

GB = 1e9
MiB = 1 << 20


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def sync() -> None:
    """Waits until the GPU has done all the work queued on it (cuda mode; a CPU's copies are
    done when they return)."""
    if CUDA:
        torch.cuda.synchronize()


# -- one worker, as vLLM makes it ------------------------------------------------------------


def model_dir(root: Path) -> Path:
    """A local model directory with only a config.json (a worker's connector needs no weights)."""
    d = root / "llama-7b-shape"
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
        "intermediate_size": 14336, "num_hidden_layers": LAYERS, "num_attention_heads": 32,
        "num_key_value_heads": HEADS, "head_dim": HEAD, "vocab_size": 32000, "max_position_embeddings": 16384,
        "torch_dtype": "float16", "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
        "tie_word_embeddings": False,
    }))
    return d


def make_worker(root: Path, role: str, daemon: str, num_blocks: int) -> tuple[Any, dict[str, torch.Tensor]]:
    """A connector's worker half made by vLLM's factory from a real VllmConfig (as
    connectors/vllm/tests/harness.py makes it), with its KV cache registered."""
    max_len = max(PROMPTS) + BLOCK
    config = VllmConfig(
        model_config=ModelConfig(model=str(model_dir(root)), skip_tokenizer_init=True, dtype="float16", max_model_len=max_len, seed=0),
        cache_config=CacheConfig(block_size=BLOCK, enable_prefix_caching=True),
        scheduler_config=SchedulerConfig(
            max_num_seqs=16, max_num_batched_tokens=max_len, max_model_len=max_len, enable_chunked_prefill=True,
            is_encoder_decoder=False,
        ),
        kv_transfer_config=KVTransferConfig(
            kv_connector="KvferryConnector", kv_connector_module_path="kvferry_vllm.connector", kv_role=role,
            kv_connector_extra_config={"kvferry_daemon": daemon, "call_timeout_s": 60},
        ),
        device_config=DeviceConfig(DEVICE),
    )
    names = [f"model.layers.{i}.self_attn.attn" for i in range(LAYERS)]
    spec = FullAttentionSpec(block_size=BLOCK, num_kv_heads=HEADS, head_size=HEAD, dtype=DTYPE)
    kv_config = KVCacheConfig(
        num_blocks=num_blocks,
        kv_cache_tensors=[KVCacheTensor(size=spec.page_size_bytes * num_blocks, shared_by=[n]) for n in names],
        kv_cache_groups=[KVCacheGroupSpec(names, spec)],
    )
    worker = KVConnectorFactory.create_connector(config, KVConnectorRole.WORKER, kv_config)
    # vLLM's logical shape [blocks, heads, block_size, 2*head] over the physical NHD order.
    kv = {n: torch.zeros(num_blocks, BLOCK, HEADS, 2 * HEAD, dtype=DTYPE, device=DEVICE).permute(0, 2, 1, 3) for n in names}
    worker.register_kv_caches(kv)  # on a GPU, the connector pins its mapping of the pool here
    return worker, kv


# -- one request's save and load, as vLLM's model runner drives them --------------------------


def save(worker: Any, kv: dict[str, torch.Tensor], spec: SaveSpec) -> dict[str, float]:
    """The step that completes the prompt of `spec`'s request: seconds, in all and by phase
    (the first layer's save_kv_layer reserves the entry; wait_for_save waits for the commits).
    On a GPU, save_kv_layer only queues a layer's copies; wait_for_save waits for them (each
    commit waits for its layers' CUDA event), and the synchronize after it makes sure."""
    worker.bind_connector_metadata(KvferryMetadata(saves=[spec]))
    sync()  # no earlier work (filling or clearing a cache) in the timing
    t0 = time.perf_counter()
    worker.start_load_kv(None)
    names = list(kv)
    worker.save_kv_layer(names[0], kv[names[0]], None)
    t1 = time.perf_counter()
    for name in names[1:]:
        worker.save_kv_layer(name, kv[name], None)
    t2 = time.perf_counter()
    worker.wait_for_save()
    sync()
    t3 = time.perf_counter()
    worker.clear_connector_metadata()
    return {"total": t3 - t0, "first_layer": t1 - t0, "other_layers": t2 - t1, "wait_for_save": t3 - t2}


def load(worker: Any, spec: LoadSpec) -> float:
    """An async load of `spec`, from start_load_kv until get_finished names the request: seconds.
    On a GPU the connector's loader thread synchronizes its stream before it reports the
    request finished; the synchronize after that makes sure."""
    worker.bind_connector_metadata(KvferryMetadata(loads=[spec]))
    sync()  # the loader copies on a stream of its own, which would not wait for work queued before
    t0 = time.perf_counter()
    worker.start_load_kv(None)
    deadline = t0 + WAIT_S
    while True:
        _, recving = worker.get_finished(set())
        if recving and spec.req_id in recving:
            break
        if time.perf_counter() > deadline:
            raise RuntimeError(f"load of {spec.transfer_id} not finished within {WAIT_S} s")
        time.sleep(POLL_S)
    sync()
    took = time.perf_counter() - t0
    worker.clear_connector_metadata()
    errors = worker.get_block_ids_with_load_errors()
    if errors:
        raise RuntimeError(f"load of {spec.transfer_id} failed for {len(errors)} blocks (the connector's log says why)")
    return took


class Memcpy:
    """The reference: a contiguous tensor of `nbytes` copied into another, preallocated one."""

    def __init__(self, nbytes: int) -> None:
        self.src = torch.empty(nbytes, dtype=torch.uint8).random_()
        self.dst = torch.empty_like(self.src)
        self.dst.copy_(self.src)  # warm: the pages of dst are faulted in

    def __call__(self) -> float:
        return timed(lambda: self.dst.copy_(self.src))


class PinnedCopies:
    """The reference on a GPU: `nbytes` copied between a tensor on the GPU and one in pinned
    host memory (one cudaMemcpyAsync each way through torch, waited for): D2H, the floor of a
    save, and H2D, the floor of a load."""

    def __init__(self, nbytes: int) -> None:
        self.dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_()
        self.host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        self.d2h()  # warm, both ways
        self.h2d()

    def d2h(self) -> float:
        sync()
        t = time.perf_counter()
        self.host.copy_(self.dev, non_blocking=True)
        torch.cuda.synchronize()
        return time.perf_counter() - t

    def h2d(self) -> float:
        sync()
        t = time.perf_counter()
        self.dev.copy_(self.host, non_blocking=True)
        torch.cuda.synchronize()
        return time.perf_counter() - t


def same_blocks(a: dict[str, torch.Tensor], a_ids: list[int], b: dict[str, torch.Tensor], b_ids: list[int]) -> bool:
    """Whether the blocks a_ids of every layer of `a` hold, bit for bit, the blocks b_ids of `b`."""
    device = next(iter(a.values())).device
    ia, ib = torch.tensor(a_ids, device=device), torch.tensor(b_ids, device=device)
    return all(torch.equal(a[n].index_select(0, ia).view(torch.int16), b[n].index_select(0, ib).view(torch.int16)) for n in a)


# -- where the time goes: copies alone, RPCs alone ----------------------------------------------


def profile(save_client: kvferry.Client, load_client: kvferry.Client, kv_out: dict[str, torch.Tensor], kv_in: dict[str, torch.Tensor],
            ids_out: list[int], ids_in: list[int], rounds: int) -> dict[str, float]:
    """Median seconds of the pieces of one save and one load of these blocks, done apart: the
    connector's copy functions for all layers into / out of a reservation in the pool (no RPC
    in the timing), and the RPCs of a save (Reserve, a Commit per layer, the last sealing)
    and of a load (Lend, ReturnLoan consuming). Each runs on the kind of thread the connector
    runs it on: a save's on the caller's (vLLM's forward), a load's on a thread of its own
    (the connector's loader; on a busy machine torch's parallel copies differ between the two).
    On a GPU the copies are timed until the device has done them (synchronize), and go through
    `save_client`'s / `load_client`'s mapping of the pool: pass the workers' own clients, whose
    mappings the connector pinned."""
    g = Geometry.of(kv_out, None, BLOCK)
    names = list(kv_out)
    device = next(iter(kv_out.values())).device
    parts = {META_PART: 64, **{layer_part(i): len(ids_out) * g.block_bytes for i in range(LAYERS)}}
    src_ids, dst_ids = ids_tensor(ids_out, device), ids_tensor(ids_in, device)

    def save_pieces(tid: str) -> dict[str, float]:
        sync()
        t0 = time.perf_counter()
        writer = save_client.reserve_local(tid, parts)
        t1 = time.perf_counter()
        for i, name in enumerate(names):
            copy_out(kv_out[name], g, src_ids, host_views(writer.views(layer_part(i))))
        sync()  # the copies are in the pool before anything is committed
        t2 = time.perf_counter()
        writer.write(META_PART, b"{}".ljust(64))
        for i in range(LAYERS):
            writer.commit([layer_part(i)] + ([META_PART] if i == 0 else []), seal=i == LAYERS - 1)
        t3 = time.perf_counter()
        return {"reserve": t1 - t0, "copy_out": t2 - t1, "commits": t3 - t2}

    def load_pieces(tid: str) -> dict[str, float]:
        sync()
        t0 = time.perf_counter()
        loan = load_client.get_local(tid, consume=True)
        t1 = time.perf_counter()
        for i, name in enumerate(names):
            copy_in(kv_in[name], g, dst_ids, host_views(loan.parts[layer_part(i)]), 0)
        sync()  # the loan's memory is read until here
        t2 = time.perf_counter()
        loan.release(consumed=True)
        t3 = time.perf_counter()
        return {"lend": t1 - t0, "copy_in": t2 - t1, "return": t3 - t2}

    got: list[dict[str, float]] = []
    deadline = time.monotonic() + BOUND_S
    with ThreadPoolExecutor(1, thread_name_prefix="bench-load") as loader:
        for r in range(rounds + 1):
            if r > 1 and time.monotonic() > deadline:
                break
            tid = f"bench-profile-{uuid.uuid4()}"
            pieces = save_pieces(tid)
            pieces.update(loader.submit(load_pieces, tid).result(WAIT_S))
            if r > 0:  # round 0 warms up
                got.append(pieces)
    return {k: median([p[k] for p in got]) for k in got[0]}


# -- the run -----------------------------------------------------------------------------------


def machine(pinned: dict[str, bool]) -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    line = (f"{os.cpu_count()} cores ({model}), torch {torch.__version__} with {torch.get_num_threads()} threads, "
            f"vLLM {vllm.__version__}, Python {platform.python_version()}")
    if CUDA:
        pins = ", ".join(f"{role} {'yes' if ok else 'NO (pageable copies: see its warning)'}" for role, ok in pinned.items())
        line += f"; GPU {torch.cuda.get_device_name()} (CUDA {torch.version.cuda}); the pool pinned by the connector (cudaHostRegister): {pins}"
    return line


@dataclass
class Row:
    """One prompt length's results: median seconds (and the rounds they are medians of)."""

    tokens: int
    blocks: int
    nbytes: int
    rounds: int
    save: dict[str, float]
    load: float
    #: The reference beside the save and beside the load: memcpy both (CPU), D2H and H2D (GPU).
    ref_save: float
    ref_load: float
    pieces: dict[str, float]


def run_prompt(client: kvferry.Client, producer: Any, kv_p: dict[str, torch.Tensor], consumer: Any, kv_c: dict[str, torch.Tensor],
               tokens: int, gen: torch.Generator) -> Row:
    # The profile's copies go through the pool as the connector maps it: on a GPU, the
    # workers' own clients' mappings (which the connector pinned), not the bench's.
    save_client = producer._worker.link.client if CUDA else client
    load_client = consumer._worker.link.client if CUDA else client
    n = -(-tokens // BLOCK)
    num_blocks = next(iter(kv_p.values())).shape[0]
    # Scattered block ids, as a busy vLLM's free-block queue hands them out (0 is its null
    # block), other ones on the consumer's side.
    ids_p = (torch.randperm(num_blocks - 1, generator=gen)[:n] + 1).tolist()
    ids_c = (torch.randperm(num_blocks - 1, generator=gen)[:n] + 1).tolist()
    nbytes = LAYERS * n * BLOCK_BYTES
    ref = PinnedCopies(nbytes) if CUDA else Memcpy(nbytes)
    saves: list[dict[str, float]] = []
    loads: list[float] = []
    refs_save: list[float] = []
    refs_load: list[float] = []
    deadline = time.monotonic() + BOUND_S
    for r in range(ROUNDS + 1):
        if time.monotonic() > deadline:
            break
        req, tid = f"req-{tokens}-{r}", f"bench-{uuid.uuid4()}"
        # Beside the save and the load, so that a busy machine slows all of them.
        m_save = m_load = ref.d2h() if CUDA else ref()
        s = save(producer, kv_p, SaveSpec(req, tid, tuple(ids_p), tokens))
        info = client.stat(tid)  # the connector logs a failed save, it does not raise
        if info.state != kvferry.EntryState.SEALED or info.bytes < nbytes:
            raise RuntimeError(f"save of {tid}: the entry is {info.state.name} with {info.bytes} bytes, want sealed with {nbytes}")
        if CUDA:
            m_load = ref.h2d()
        ld = load(consumer, LoadSpec(req, tid, "", 0, tuple(ids_c), tokens, sync=False))
        if r == 0:  # round 0 warms up, and checks the bytes
            if not same_blocks(kv_p, ids_p, kv_c, ids_c):
                raise RuntimeError(f"{tokens} tokens: the consumer's blocks differ from the producer's")
            for t in kv_c.values():
                t.zero_()
            continue
        saves.append(s)
        loads.append(ld)
        refs_save.append(m_save)
        refs_load.append(m_load)
    del ref
    if not saves:
        raise RuntimeError(f"{tokens} tokens: no measured round within {BOUND_S} s")
    pieces = profile(save_client, load_client, kv_p, kv_c, ids_p, ids_c, len(saves))
    return Row(tokens, n, nbytes, len(saves), {k: median([s[k] for s in saves]) for k in saves[0]}, median(loads),
               median(refs_save), median(refs_load), pieces)


def main() -> None:
    if CUDA and not torch.cuda.is_available():
        sys.exit(f"BENCH_VLLM_DEVICE=cuda: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU")
    num_blocks = -(-max(PROMPTS) // BLOCK) + SLACK_BLOCKS
    rows: list[Row] = []
    load_before = os.getloadavg()[0]
    daemon = SpawnedDaemon(daemon_args(pool=f"{POOL_MIB}MiB"), name="bench daemon")
    client = producer = consumer = None
    pinned: dict[str, bool] = {}
    try:
        client = kvferry.Client(daemon.address, timeout=60)
        with tempfile.TemporaryDirectory(prefix="kvferry-vllm-bench-") as tmp:
            producer, kv_p = make_worker(Path(tmp), "kv_producer", daemon.address, num_blocks)
            consumer, kv_c = make_worker(Path(tmp), "kv_consumer", daemon.address, num_blocks)
        # The producer's cache holds random bytes, so that a load's result is checkable.
        for t in kv_p.values():
            t.view(torch.int16).random_()
        gen = torch.Generator().manual_seed(7)
        for tokens in PROMPTS:
            rows.append(run_prompt(client, producer, kv_p, consumer, kv_c, tokens, gen))
        left = [e.transfer_id for e in client.entries()]
        if left:
            raise RuntimeError(f"entries left in the daemon: {left}")
        # Whether each worker's mapping of the pool is pinned (read before shutdown unregisters it).
        pinned = {"producer": producer._worker._registered_ptr is not None, "consumer": consumer._worker._registered_ptr is not None}
    finally:
        for w in (producer, consumer):
            if w is not None:
                w.shutdown()
        if client is not None:
            client.close()
        daemon.stop()
    report(rows, (load_before, os.getloadavg()[0]), pinned)


def report(rows: list[Row], load_avg: tuple[float, float], pinned: dict[str, bool]) -> None:
    ms = lambda s: f"{s * 1e3:.1f}"  # noqa: E731
    gbs = lambda nbytes, s: f"{nbytes / s / GB:.2f}"  # noqa: E731
    where = "KV caches on the GPU" if CUDA else "KV caches in host memory"
    print(f"vLLM connector (KvferryConnector, worker role), one request: {LAYERS} layers, {HEADS} KV heads, head size {HEAD}, "
          f"fp16, blocks of {BLOCK} tokens, NHD, {where}; one daemon on 127.0.0.1 (pool {POOL_MIB} MiB)")
    print(f"machine: {machine(pinned)}; load average {load_avg[0]:.1f} before, {load_avg[1]:.1f} after (a busy machine slows copies)")
    if CUDA:
        print("median of the rounds (in brackets); x D2H / x H2D: the connector's GB/s over that of the same bytes copied from the GPU")
        print("into pinned host memory (beside the save) / from it to the GPU (beside the load): torch copy_, then synchronize")
        table = [("prompt", "bytes", "save ms", "save GB/s", "load ms", "load GB/s", "D2H GB/s", "H2D GB/s", "save x D2H", "load x H2D")]
        for r in rows:
            table.append((
                f"{r.tokens} ({r.rounds})", f"{r.nbytes / MiB:.0f} MiB", ms(r.save["total"]), gbs(r.nbytes, r.save["total"]),
                ms(r.load), gbs(r.nbytes, r.load), gbs(r.nbytes, r.ref_save), gbs(r.nbytes, r.ref_load),
                f"{r.ref_save / r.save['total']:.2f}", f"{r.ref_load / r.load:.2f}",
            ))
    else:
        print("median of the rounds (in brackets); x memcpy: the connector's GB/s over memcpy's of the same bytes, measured beside it")
        table = [("prompt", "bytes", "save ms", "save GB/s", "load ms", "load GB/s", "memcpy GB/s", "save x memcpy", "load x memcpy")]
        for r in rows:
            table.append((
                f"{r.tokens} ({r.rounds})", f"{r.nbytes / MiB:.0f} MiB", ms(r.save["total"]), gbs(r.nbytes, r.save["total"]),
                ms(r.load), gbs(r.nbytes, r.load), gbs(r.nbytes, r.ref_save),
                f"{r.ref_save / r.save['total']:.2f}", f"{r.ref_load / r.load:.2f}",
            ))
    print_table(table)
    print("where the time goes, median ms. The save in the connector by phase: its first save_kv_layer (Reserve, the meta")
    print("part, layer 0's copy), the other layers' save_kv_layer (copies; commits run meanwhile on its thread),")
    print("wait_for_save (the commits left). Then each piece alone: the connector's copy functions for all layers")
    print("(copy_out into the pool, copy_in from it; no RPC), and its RPCs (no copy): Reserve, a Commit per layer, Lend, ReturnLoan.")
    if CUDA:
        print("On the GPU a save_kv_layer only queues its layer's copies (wait_for_save waits for the device), and copy_out /")
        print("copy_in are timed until the device has done them, through the workers' (pinned) mappings of the pool.")
    table = [("prompt", "1st layer", "other layers", "wait_for_save", "copy_out", "Reserve", f"{LAYERS} Commits", "copy_in", "Lend", "ReturnLoan")]
    for r in rows:
        p = r.pieces
        table.append((
            str(r.tokens), ms(r.save["first_layer"]), ms(r.save["other_layers"]), ms(r.save["wait_for_save"]),
            ms(p["copy_out"]), ms(p["reserve"]), ms(p["commits"]), ms(p["copy_in"]), ms(p["lend"]), ms(p["return"]),
        ))
    print_table(table)


def print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for k, r in enumerate(rows):
        print("  " + "  ".join(c.rjust(w) for c, w in zip(r, widths)))
        if k == 0:
            print("  " + "  ".join("-" * w for w in widths))


if __name__ == "__main__":
    main()
