"""The KV geometry of one worker, read from the tensors vLLM registers, and the copies between
vLLM's paged cache and an entry's parts.

Each layer's tensor is indexed by block along one dimension (dimension 0 in vLLM's layouts
since the K/V packing; dimension 1 in the older (2, num_blocks, ...) one): it is the dimension
whose size is the cache's number of blocks. A block is copied with index operations along it
(`index_select` / `index_copy_`), so that the physical order of the other dimensions (NHD,
HND, K and V packed or apart) never matters: the entry holds each block in the logical order
of the remaining dimensions, and a consumer with another physical layout of the same logical
shape loads it correctly.

An entry holds one part per layer, `layer.<i>`, with the request's blocks of that layer in
order, and a part `meta`: the producer's geometry and token count (JSON), which the consumer
compares with its own before it copies a byte."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

#: The format of the `meta` part; a consumer refuses another.
META_FORMAT = "kvferry-vllm-kv/1"
META_PART = "meta"


def layer_part(i: int) -> str:
    return f"layer.{i}"


class GeometryError(ValueError):
    """The registered KV caches, or an entry's meta, cannot be used."""


@dataclass(frozen=True)
class Geometry:
    layers: tuple[str, ...]
    #: The dimension of each layer's tensor that indexes blocks.
    block_dim: int
    #: One block of one layer, in the logical order of the other dimensions.
    block_shape: tuple[int, ...]
    dtype: torch.dtype
    #: Tokens per block.
    block_size: int

    @property
    def block_bytes(self) -> int:
        n = torch.empty((), dtype=self.dtype).element_size()
        for d in self.block_shape:
            n *= d
        return n

    @classmethod
    def of(cls, kv_caches: Mapping[str, torch.Tensor], num_blocks: int | None, block_size: int) -> Geometry:
        """The geometry of vLLM's registered caches (`{layer_name: tensor}`), all layers alike."""
        if not kv_caches:
            raise GeometryError("no KV cache tensors were registered")
        names = tuple(kv_caches)
        first = kv_caches[names[0]]
        for name in names[1:]:
            t = kv_caches[name]
            if t.shape != first.shape or t.dtype != first.dtype:
                raise GeometryError(
                    f"layer {name} has KV shape {tuple(t.shape)} {t.dtype}, layer {names[0]} "
                    f"{tuple(first.shape)} {first.dtype}: layers of different shapes (hybrid models) are not supported"
                )
        dims = [d for d, size in enumerate(first.shape) if size == num_blocks] if num_blocks else []
        block_dim = dims[0] if dims else 0
        shape = tuple(int(s) for i, s in enumerate(first.shape) if i != block_dim)
        return cls(names, block_dim, shape, first.dtype, int(block_size))

    def describe(self, num_tokens: int, num_blocks: int) -> dict[str, Any]:
        """The entry's `meta` part (as JSON)."""
        return {
            "format": META_FORMAT,
            "layers": list(self.layers),
            "block_shape": list(self.block_shape),
            "dtype": str(self.dtype).removeprefix("torch."),
            "block_size": self.block_size,
            "num_tokens": num_tokens,
            "num_blocks": num_blocks,
        }

    def check(self, meta: Mapping[str, Any]) -> None:
        """Raises GeometryError naming the first difference between an entry's meta and this worker."""
        if meta.get("format") != META_FORMAT:
            raise GeometryError(f"the entry's format is {meta.get('format')!r}, this connector reads {META_FORMAT!r}")
        mine = self.describe(0, 0)
        for key in ("block_size", "dtype", "block_shape", "layers"):
            if meta.get(key) != mine[key]:
                theirs, ours = meta.get(key), mine[key]
                if key == "layers" and isinstance(theirs, list):
                    theirs, ours = f"{len(theirs)} layers {theirs[:2]}…", f"{len(ours)} layers {ours[:2]}…"
                raise GeometryError(f"the producer's {key} is {theirs}, this consumer's {ours}: a different model or configuration")


def encode_meta(meta: Mapping[str, Any]) -> bytes:
    return json.dumps(meta, separators=(",", ":")).encode()


def decode_meta(data: bytes | memoryview) -> dict[str, Any]:
    try:
        meta = json.loads(bytes(data))
    except ValueError as err:
        raise GeometryError(f"the entry's meta part is not JSON: {err}") from None
    if not isinstance(meta, dict):
        raise GeometryError("the entry's meta part is not a JSON object")
    return meta


def ids_tensor(block_ids: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(list(block_ids), dtype=torch.long, device=device)


def gather(kv: torch.Tensor, g: Geometry, ids: torch.Tensor) -> torch.Tensor:
    """The blocks `ids` of one layer, contiguous, in the entry's order ([n, *block_shape])."""
    picked = kv.index_select(g.block_dim, ids)
    return (picked if g.block_dim == 0 else picked.movedim(g.block_dim, 0)).contiguous()


def scatter(kv: torch.Tensor, g: Geometry, ids: torch.Tensor, blocks: torch.Tensor) -> None:
    """Writes `blocks` ([n, *block_shape], on kv's device) into the blocks `ids` of one layer."""
    if kv.device.type == "cpu":
        # A copy per run of consecutive ids: index_copy_ manages a third of that on a CPU.
        at = 0
        for start, n in runs(ids.tolist()):
            kv.narrow(g.block_dim, start, n).copy_(blocks[at:at + n] if g.block_dim == 0 else blocks[at:at + n].movedim(0, g.block_dim))
            at += n
        return
    kv.index_copy_(g.block_dim, ids, blocks if g.block_dim == 0 else blocks.movedim(0, g.block_dim))


def runs(ids: Sequence[int]) -> list[tuple[int, int]]:
    """(first id, count) of each run of consecutive ids, in order."""
    out: list[tuple[int, int]] = []
    for i in ids:
        if out and out[-1][0] + out[-1][1] == i:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((i, 1))
    return out


def host_views(views: Sequence[memoryview]) -> list[torch.Tensor]:
    """Byte tensors over a part's views of the pool (no copy)."""
    return [torch.frombuffer(v, dtype=torch.uint8) for v in views if len(v)]


def copy_out(kv: torch.Tensor, g: Geometry, ids: torch.Tensor, dst: Sequence[torch.Tensor]) -> None:
    """Copies the blocks `ids` of one layer into a part (its byte tensors in the pool, in order).
    On a GPU the copies are queued on the current stream (the caller synchronises)."""
    if len(dst) == 1 and g.block_dim == 0 and kv.device.type == "cpu":
        # Straight from the cache into the pool: one copy.
        out = dst[0].view(g.dtype).view(len(ids), *g.block_shape)
        torch.index_select(kv, 0, ids, out=out)
        return
    flat = gather(kv, g, ids).view(-1).view(torch.uint8)
    at = 0
    for d in dst:
        d.copy_(flat[at:at + d.numel()], non_blocking=True)
        at += d.numel()


def copy_in(kv: torch.Tensor, g: Geometry, ids: torch.Tensor, src: Sequence[torch.Tensor], skip_blocks: int) -> None:
    """Copies a part (its byte tensors in the pool), less its first `skip_blocks` blocks, into
    the blocks `ids` of one layer."""
    if len(src) == 1:
        host = src[0]
    else:
        host = torch.cat(list(src))
    blocks = host.view(g.dtype).view(-1, *g.block_shape)[skip_blocks:skip_blocks + len(ids)]
    if kv.device.type != "cpu":
        blocks = blocks.to(kv.device, non_blocking=True)
    scatter(kv, g, ids, blocks)
