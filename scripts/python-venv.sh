#!/usr/bin/env bash
# Makes the Python client's virtual environment (once) and prints its python's path on stdout:
# the package `kvferry` from python/ installed editable, with pytest and grpcio-tools (the
# stub generator, scripts/gen-python.py). Lives in $KVFERRY_PYTHON_VENV (default python/.venv,
# ignored by git). A later run only compares a stamp (pyproject.toml and the pins below) and
# returns at once; a changed stamp installs again into the same environment.
# Exit status: 0 ready; 3 the packages cannot be installed (registry unreachable, no wheel);
# 1 anything else (no venv module, installed but does not import).
set -euo pipefail
cd "$(dirname "$0")/.."

# Keep GRPC_TOOLS in step with the versions python/kvferry/_gen/ names (a new one changes the
# stubs: run `npm run gen:python` and commit them) and with pyproject.toml's lower bounds.
# 1.80.1 makes protobuf 6.31.1 gencode: the stubs must import inside vLLM's environment, whose
# dependencies (nvidia-cutlass-dsl) hold protobuf below 7, and a runtime may not be older than
# the gencode (a newer major is fine).
GRPC_TOOLS=1.80.1
PYTEST=9.2.0
# The local path's zero-copy arrays are tested with numpy.
NUMPY=2.2.6
VENV=${KVFERRY_PYTHON_VENV:-$PWD/python/.venv}
PYTHON=${PYTHON:-python3}
INSTALL_LIMIT_S=300
say() { echo "python-venv: $*" >&2; }

stamp="grpcio-tools==$GRPC_TOOLS pytest==$PYTEST numpy==$NUMPY $(sha256sum python/pyproject.toml | cut -c1-16) $PWD"
if [[ -x "$VENV/bin/python" && -f "$VENV/.kvferry-stamp" && "$(cat "$VENV/.kvferry-stamp")" == "$stamp" ]]; then
  echo "$VENV/bin/python"
  exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating $VENV (once; a minute or so)"
  if ! "$PYTHON" -m venv "$VENV" >&2; then
    say "'$PYTHON -m venv' failed: install Python's venv module (Debian: python3-venv)"
    exit 1
  fi
fi
say "installing kvferry (editable), pytest==$PYTEST, grpcio-tools==$GRPC_TOOLS, numpy==$NUMPY into $VENV"
if ! timeout "$INSTALL_LIMIT_S" "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    --timeout 30 --retries 1 -e ./python "pytest==$PYTEST" "grpcio-tools==$GRPC_TOOLS" "numpy==$NUMPY" >&2; then
  say "cannot install the packages from the package registry (within ${INSTALL_LIMIT_S} s)"
  exit 3
fi
if ! error=$("$VENV/bin/python" -c 'import kvferry, grpc_tools, pytest, numpy' 2>&1); then
  say "the environment in $VENV does not import: $error"
  exit 1
fi
echo "$stamp" > "$VENV/.kvferry-stamp"
echo "$VENV/bin/python"
