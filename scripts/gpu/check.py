#!/usr/bin/env python3
"""Checks the environment scripts/gpu/unpack.sh made (run with its PYTHONPATH): that vLLM's
server, engine core, GPU worker, Llama, the TRITON_ATTN backend and the KV-connector factory
import, that `vllm serve`'s app builds, that kvferry's client and vLLM connector import, and, on
a GPU, that a kernel of vLLM's _C runs and gives the right numbers. Exit status 0 when all did."""
from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import sys
import time
import traceback

MODULES = """
vllm.entrypoints.openai.api_server
vllm.entrypoints.cli.main
vllm.entrypoints.cli.serve
vllm.v1.engine.core
vllm.v1.engine.async_llm
vllm.v1.executor.uniproc_executor
vllm.v1.executor.multiproc_executor
vllm.v1.worker.gpu_worker
vllm.v1.worker.gpu_model_runner
vllm.model_executor.models.llama
vllm.model_executor.model_loader.default_loader
vllm.v1.attention.backends.triton_attn
vllm.v1.attention.backends.fa_utils
vllm.v1.core.sched.scheduler
vllm.v1.structured_output
vllm.distributed.kv_transfer.kv_connector.factory
vllm.entrypoints.openai.chat_completion.serving
vllm.entrypoints.openai.completion.serving
vllm.entrypoints.generate.api_router
kvferry
kvferry_vllm.connector
""".split()

failed: list[str] = []


def step(name, fn):
    t = time.monotonic()
    try:
        fn()
        print(f"ok    {name} ({time.monotonic() - t:.1f} s)", flush=True)
    except BaseException as e:  # noqa: BLE001 - report everything, go on
        failed.append(name)
        print(f"FAIL  {name}: {type(e).__name__}: {e}", flush=True)
        if os.environ.get("KVF_CHECK_TRACE"):
            traceback.print_exc()


def versions():
    names = ["torch", "triton", "transformers", "tokenizers", "huggingface-hub", "numpy", "grpcio", "protobuf", "vllm"]
    have = {}
    for n in names:
        try:
            have[n] = md.version(n)
        except md.PackageNotFoundError:
            have[n] = "-"
    print("python", sys.version.split()[0], " ".join(f"{k}={v}" for k, v in have.items()), flush=True)
    g = have["grpcio"]
    if g != "-" and tuple(int(x) for x in g.split(".")[:2]) < (1, 80):
        raise RuntimeError(f"grpcio {g} is older than the 1.80.1 python/kvferry's stubs need")


def requirements():
    """Warns (does not fail) where a shipped package's declared needs are not met by what is
    here (the image's versions included): the first place to look when an import fails. vLLM's
    own list is skipped: pack.sh leaves much of it out on purpose."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    site = os.path.realpath(os.environ.get("KVF_SITE", "/tmp/kvf/site"))
    shipped = [d for d in md.distributions() if os.path.realpath(str(d.locate_file(""))).startswith(site)
               and canonicalize_name(d.metadata["Name"]) != "vllm"]
    known_left_out = {"supervisor"}  # model-hosting-container-standards' process manager: not imported
    notes = []
    for d in shipped:
        for r in d.requires or []:
            req = Requirement(r)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            if canonicalize_name(req.name) in known_left_out:
                continue
            try:
                have = md.version(req.name)
            except md.PackageNotFoundError:
                notes.append(f"{d.metadata['Name']} needs {req}: not installed")
                continue
            if req.specifier and not req.specifier.contains(have, prereleases=True):
                notes.append(f"{d.metadata['Name']} needs {req}: {have} here")
    for n in sorted(set(notes)):
        print(f"      warning: {n}")


def build_app():
    from vllm.entrypoints.openai.api_server import build_app
    from vllm.entrypoints.openai.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    args = make_arg_parser(FlexibleArgumentParser()).parse_args(
        ["--model", "/nonexistent", "--attention-backend", "TRITON_ATTN", "--kv-transfer-config",
         '{"kv_connector":"KvferryConnector","kv_role":"kv_both","kv_connector_module_path":"kvferry_vllm.connector"}']
    )
    app = build_app(args, ("generate",))
    assert len(app.routes) > 10, app.routes


def triton_attn():
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    cls = AttentionBackendEnum.TRITON_ATTN.get_class()
    assert cls.get_name() == "TRITON_ATTN", cls.get_name()


def kernel():
    import torch

    if not torch.cuda.is_available():
        print("      (no GPU here: kernel check skipped)")
        return
    from vllm import _custom_ops as ops

    torch.manual_seed(0)
    x = torch.randn(64, 4096, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(4096, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(x)
    ops.rms_norm(out, x, w, 1e-6)
    ref = (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6) * w.float()).to(x.dtype)
    torch.cuda.synchronize()
    err = (out.float() - ref.float()).abs().max().item()
    assert err < 0.1, f"rms_norm differs from torch by {err}"
    print(f"      {torch.cuda.get_device_name()}: vllm _C rms_norm ok (max diff {err:.3g})")


step("versions", versions)
step("declared needs of the shipped packages", requirements)
for m in MODULES:
    step(f"import {m}", lambda m=m: importlib.import_module(m))
step("vllm serve app (build_app)", build_app)
step("TRITON_ATTN backend class", triton_attn)
step("a kernel of vllm._C on the GPU", kernel)
print("check:", "all ok" if not failed else f"{len(failed)} failed: {', '.join(failed)}", flush=True)
sys.exit(1 if failed else 0)
