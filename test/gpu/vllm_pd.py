#!/usr/bin/env python3
"""Real vLLM disaggregated on one GPU through kvferry (issue 13), end to end, from nothing:

  1. a tiny Llama-architecture model made on the spot (random weights, GQA) with a word-level
     tokenizer trained locally (no hub);
  2. two kvferry daemons, a producer and a consumer `vllm serve` with KvferryConnector, a plain
     `vllm serve` as the reference, and `kvferry proxy` in front (push);
  3. prompts of mixed lengths, greedy, completions and chat, streamed and not, through the
     proxy and to the reference: the token ids must be equal; the daemons must end empty;
  4. time to first token through the proxy vs the reference, and where the time goes.

    python3 test/gpu/vllm_pd.py --out DIR [--work DIR] [--node PATH] [--prompts 50]

Everything listens on 127.0.0.1. The model and every process's log live in --work; --out gets
results.json and logs.tgz (the device tool brings back a few files only). Exit status 0 when
every output matched and nothing was left, 1 otherwise."""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORDS = 3000


def build_model(d: Path, layers: int, hidden: int, heads: int, kv_heads: int, seed: int) -> list[str]:
    """Saves a random Llama and its tokenizer in `d`; returns the tokenizer's plain words."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = sorted({"".join(rng.choice(letters) for _ in range(rng.randint(2, 7))) for _ in range(WORDS * 2)})[:WORDS]
    corpus = [" ".join(rng.choice(words) for _ in range(20)) for _ in range(2000)] + words
    specials = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=specials, vocab_size=WORDS + len(specials) + 64))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    fast.save_pretrained(d)
    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=8192,
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(d)
    return words


class Procs:
    """The processes started, stopped together (SIGTERM, then SIGKILL)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.out / f"{name}.log", "w")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True)
        self.procs.append((name, p))
        return p

    def stop(self) -> None:
        for _, p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for _, p in reversed(self.procs):
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)

    def stop_one(self, name: str) -> None:
        for n, p in self.procs:
            if n == name and p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        self.procs = [(n, p) for n, p in self.procs if n != name]

    def check(self) -> None:
        for name, p in self.procs:
            if p.poll() is not None:
                tail = (self.out / f"{name}.log").read_text(errors="replace").splitlines()[-30:]
                raise RuntimeError(f"{name} exited with {p.returncode}:\n  " + "\n  ".join(tail))


def wait_http(url: str, procs: Procs, bound_s: float, what: str) -> None:
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        procs.check()
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{what} not ready at {url} within {bound_s} s")


def post(url: str, body: dict, timeout: float = 300) -> tuple[dict, float]:
    """A non-streamed request: its JSON and its time."""
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=timeout) as r:
        data = json.loads(r.read())
    return data, time.perf_counter() - t0


def stream(url: str, body: dict, timeout: float = 300) -> tuple[list[int], str, float]:
    """A streamed request: its token ids, text and time to the first token."""
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    t0 = time.perf_counter()
    ttft = None
    ids: list[int] = []
    text = ""
    with urllib.request.urlopen(req, timeout=timeout) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            for c in chunk.get("choices", []):
                got = c.get("token_ids") or []
                piece = c.get("text") if "text" in c else (c.get("delta") or {}).get("content") or ""
                if (got or piece) and ttft is None:
                    ttft = time.perf_counter() - t0
                ids += got
                text += piece or ""
    return ids, text, ttft if ttft is not None else float("nan")


def ids_of(data: dict) -> list[int]:
    c = data["choices"][0]
    return list(c.get("token_ids") or [])


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def metric_sum_count(text: str, name: str) -> tuple[float, float]:
    s = sum(float(m.group(1)) for m in re.finditer(rf"^{name}_sum(?:{{[^}}]*}})? (\S+)$", text, re.M))
    c = sum(float(m.group(1)) for m in re.finditer(rf"^{name}_count(?:{{[^}}]*}})? (\S+)$", text, re.M))
    return s, c


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/kvf-pd"))
    ap.add_argument("--node", default=os.environ.get("KVFERRY_NODE", "node"))
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--gpu-share", type=float, default=0.25)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--transfer", default="push,pull", help="the proxy's transfer modes, run one after the other")
    ap.add_argument("--dtype", default="float32", help="of every instance: in bfloat16 a random model's near-tied logits flip with the kernels' rounding")
    ap.add_argument("--vllm-args", default="--enforce-eager")
    args = ap.parse_args()
    final: Path = args.out
    final.mkdir(parents=True, exist_ok=True)
    out: Path = args.work
    out.mkdir(parents=True, exist_ok=True)
    model = out / "model"
    t0 = time.perf_counter()
    words = build_model(model, args.layers, 512, 8, 2, seed=1)
    print(f"model: {model} ({time.perf_counter() - t0:.1f} s)", flush=True)

    procs = Procs(out)
    kvf = [args.node, str(REPO / "bin" / "kvferry.js")]
    env_py = {"PYTHONPATH": os.pathsep.join([str(REPO / "python"), str(REPO / "connectors" / "vllm"), os.environ.get("PYTHONPATH", "")]),
              "HF_HUB_OFFLINE": "1", "NO_PRETTY": "1", "PYTHONUNBUFFERED": "1",
              # FlashInfer is not shipped (scripts/gpu): its sampler would import it.
              "VLLM_USE_FLASHINFER_SAMPLER": "0"}
    results: dict = {"dtype": args.dtype}
    try:
        for i, (client, peer, data, metrics) in enumerate([(50051, 50061, 50071, 50081), (50052, 50062, 50072, 50082)]):
            procs.start(f"daemon-{'ab'[i]}", kvf + [
                "daemon", "--listen", f"127.0.0.1:{client}", "--peer-listen", f"127.0.0.1:{peer}", "--data-listen", f"127.0.0.1:{data}",
                "--kv-buffer-size", "2GiB", "--cluster-token", "kvferry-gpu-run", "--metrics-listen", f"127.0.0.1:{metrics}",
                "--node-id", f"node-{'ab'[i]}",
            ])
        for port in (50081, 50082):
            wait_http(f"http://127.0.0.1:{port}/health", procs, 120, "daemon")
        vllm = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--dtype", args.dtype,
                "--max-model-len", "8192", "--gpu-memory-utilization", str(args.gpu_share), "--seed", "0",
                "--attention-backend", "TRITON_ATTN", *args.vllm_args.split()]

        def connector(role: str, daemon: int) -> list[str]:
            return ["--kv-transfer-config", json.dumps({
                "kv_connector": "KvferryConnector", "kv_connector_module_path": "kvferry_vllm.connector", "kv_role": role,
                "kv_connector_extra_config": {"kvferry_daemon": f"127.0.0.1:{daemon}"},
            })]

        # One at a time: each takes its share of the GPU's free memory.
        for name, port, extra in [("vllm-reference", 8300, []), ("vllm-producer", 8100, connector("kv_producer", 50051)),
                                  ("vllm-consumer", 8200, connector("kv_consumer", 50052))]:
            t = time.perf_counter()
            procs.start(name, vllm + ["--port", str(port), *extra], env_py)
            wait_http(f"http://127.0.0.1:{port}/health", procs, 600, name)
            print(f"{name} up in {time.perf_counter() - t:.0f} s", flush=True)
        done_saves = done_loads = 0
        for k, mode in enumerate(args.transfer.split(",")):
            rng = random.Random(2 + k)  # other prompts per mode: no prefix-cache hits from the last
            lengths = [16, 4000] + [int(16 * (250 ** rng.random())) for _ in range(args.prompts - 2)]
            cases = []
            for i, n in enumerate(lengths):
                text = " ".join(rng.choice(words) for _ in range(n))
                chat, streamed = i % 2 == 1, (i // 2) % 2 == 1
                cases.append((i, n, chat, streamed, text))
            procs.start(f"proxy-{mode}", kvf + ["proxy", "--listen", "127.0.0.1:8000", "--prefill", "http://127.0.0.1:8100=127.0.0.1:50051",
                                        "--decode", "http://127.0.0.1:8200=127.0.0.1:50052", "--transfer", mode])
            wait_http("http://127.0.0.1:8000/health", procs, 60, "proxy")

            matched = 0
            mismatches = []
            ttft = {"proxy": [], "reference": []}
            for i, n, chat, streamed, text in cases:
                common = {"model": str(model), "max_tokens": args.max_tokens, "temperature": 0, "ignore_eos": True, "return_token_ids": True}
                if chat:
                    path, body = "/v1/chat/completions", {**common, "messages": [{"role": "user", "content": text}]}
                else:
                    path, body = "/v1/completions", {**common, "prompt": text}
                got = {}
                for who, base in (("reference", "http://127.0.0.1:8300"), ("proxy", "http://127.0.0.1:8000")):
                    if streamed:
                        ids, _, first = stream(base + path, {**body, "stream": True})
                        ttft[who].append(first)
                    else:
                        data, _ = post(base + path, body)
                        ids = ids_of(data)
                    got[who] = ids
                ok = got["proxy"] == got["reference"] and len(got["reference"]) == args.max_tokens
                matched += ok
                if not ok:
                    mismatches.append({"case": i, "tokens": n, "chat": chat, "stream": streamed, "proxy": got["proxy"], "reference": got["reference"]})
                print(f"case {i:2d} {n:5d} words {'chat' if chat else 'completion':10s} {'stream' if streamed else 'whole':6s} {'ok' if ok else 'DIFFERENT'}", flush=True)

            time.sleep(2)  # releases are not waited for by the proxy's answer
            entries = {}
            for name, port in (("a", 50081), ("b", 50082)):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                    text = r.read().decode()
                m = re.findall(r"^kvferry_daemon_entries(?:\{[^}]*\})? (\S+)$", text, re.M)
                entries[name] = sum(float(x) for x in m)
                (out / f"daemon-{name}-{mode}.metrics").write_text(text)
            with urllib.request.urlopen("http://127.0.0.1:8000/metrics", timeout=10) as r:
                proxy_metrics = r.read().decode()
            (out / f"proxy-{mode}.metrics").write_text(proxy_metrics)
            prefill_s, prefill_n = metric_sum_count(proxy_metrics, "kvferry_proxy_prefill_duration_seconds")
            push_s, push_n = metric_sum_count(proxy_metrics, "kvferry_proxy_kv_transfer_seconds")
            saves = [float(x) for x in re.findall(r"kvferry: saved \S+: \d+ tokens, \S+ MiB in (\S+) ms", (out / "vllm-producer.log").read_text())]
            loads = [float(x) for x in re.findall(r"kvferry: loaded \S+: \d+ tokens, \S+ MiB in (\S+) ms", (out / "vllm-consumer.log").read_text())]
            seen_saves, seen_loads = len(saves), len(loads)
            saves, loads = saves[done_saves:], loads[done_loads:]
            done_saves, done_loads = seen_saves, seen_loads
            results[mode] = {
                "cases": len(cases), "matched": matched, "mismatches": mismatches[:5], "entries_left": entries,
                "ttft_ms": {who: {"p50": pct(v, 0.5) * 1e3, "p99": pct(v, 0.99) * 1e3} for who, v in ttft.items() if v},
                "mean_ms": {
                    "prefill_call": prefill_s / prefill_n * 1e3 if prefill_n else None,
                    "push": push_s / push_n * 1e3 if push_n else None,
                    "save_first_layer_to_seal": statistics.mean(saves) if saves else None,
                    "load": statistics.mean(loads) if loads else None,
                },
            }
            procs.stop_one(f"proxy-{mode}")
    except Exception as err:
        results["error"] = str(err)
        raise
    finally:
        procs.stop()
        (final / "results.json").write_text(json.dumps(results, indent=1))
        subprocess.run(["tar", "czf", str(final / "logs.tgz"), "-C", str(out), *[p.name for p in out.iterdir() if p.suffix in (".log", ".metrics")]])
        for name in ("vllm-producer", "vllm-consumer"):
            f = out / f"{name}.log"
            if f.exists():
                lines = [ln for ln in f.read_text(errors="replace").splitlines() if "kvferry" in ln or "Error" in ln or "error" in ln][-8:]
                print(f"--- {name}: {len(lines)} lines with kvferry/error (last)\n  " + "\n  ".join(ln[:300] for ln in lines), flush=True)
    print(json.dumps(results, indent=1))
    modes = [v for v in results.values() if isinstance(v, dict)]
    return 0 if modes and all(m["matched"] == m["cases"] and not any(m["entries_left"].values()) for m in modes) else 1


if __name__ == "__main__":
    sys.exit(main())
