#!/usr/bin/env bash
# Runs test/bench/vllm-connector-bench.py (the vLLM connector's per-request cost on a CPU, or
# with BENCH_VLLM_DEVICE=cuda on an NVIDIA GPU: the environment's torch is a CUDA build) in
# the connector's environment (scripts/vllm-venv.sh: made once, then cached), with the Python
# client and the connector on PYTHONPATH, as the connector's tests have them. Its settings
# (BENCH_VLLM_* variables: DEVICE, TOKENS, ROUNDS, BOUND_S): see the .py file.
set -euo pipefail
cd "$(dirname "$0")/../.."
python=$(bash scripts/vllm-venv.sh)
PYTHONPATH="python:connectors/vllm${PYTHONPATH:+:$PYTHONPATH}" exec "$python" test/bench/vllm-connector-bench.py
