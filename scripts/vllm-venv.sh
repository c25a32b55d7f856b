#!/usr/bin/env bash
# Makes the vLLM connector's test environment (once) and prints its python's path on stdout:
# the packages of connectors/vllm/requirements-test.txt (vLLM from the registry, with the CUDA
# torch it pins and its nvidia-* libraries: ~8 GB, a few minutes). It lives outside the repo,
# in $KVFERRY_VLLM_VENV (default ~/.cache/kvferry/vllm-venv-<hash of the requirements>), so
# that clones and clean checkouts share it; kvferry and kvferry_vllm themselves are not
# installed into it (the tests put python/ and connectors/vllm/ on PYTHONPATH).
# Exit status: 0 ready; 3 the packages cannot be installed; 1 anything else.
set -euo pipefail
cd "$(dirname "$0")/.."

# KVFERRY_VLLM_REQUIREMENTS picks another vLLM (connectors/vllm/requirements-test-0.33.txt).
REQS=${KVFERRY_VLLM_REQUIREMENTS:-connectors/vllm/requirements-test.txt}
hash=$(sha256sum "$REQS" | cut -c1-12)
VENV=${KVFERRY_VLLM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/kvferry/vllm-venv-$hash}
PYTHON=${PYTHON:-python3}
INSTALL_LIMIT_S=1500
say() { echo "vllm-venv: $*" >&2; }

if [[ -x "$VENV/bin/python" && -f "$VENV/.kvferry-ready" ]]; then
  echo "$VENV/bin/python"
  exit 0
fi
mkdir -p "$(dirname "$VENV")"
# One maker at a time (two test runs on a fresh machine): the second waits for the first.
exec 9>"$VENV.lock"
flock 9
if [[ -x "$VENV/bin/python" && -f "$VENV/.kvferry-ready" ]]; then
  echo "$VENV/bin/python"
  exit 0
fi
if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating $VENV (once: vLLM and the torch it pins, ~8 GB, a few minutes)"
  if ! "$PYTHON" -m venv "$VENV" >&2; then
    say "'$PYTHON -m venv' failed: install Python's venv module (Debian: python3-venv)"
    exit 1
  fi
fi
say "installing $(grep -v '^#' "$REQS" | tr '\n' ' ')into $VENV"
if ! timeout "$INSTALL_LIMIT_S" "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    --timeout 60 --retries 2 -r "$REQS" >&2; then
  say "cannot install $REQS from the package registry (within ${INSTALL_LIMIT_S} s)"
  exit 3
fi
if ! error=$("$VENV/bin/python" -c 'import vllm, torch, pytest, grpc, google.protobuf' 2>&1); then
  say "the environment in $VENV does not import: $error"
  exit 1
fi
touch "$VENV/.kvferry-ready"
echo "$VENV/bin/python"
