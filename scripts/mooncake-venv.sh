#!/usr/bin/env bash
# Makes (once) a Python virtual environment holding Mooncake's own transfer engine
# (PyPI: mooncake-transfer-engine-non-cuda, TCP transport, no GPU) for the tests and benches
# that drive a real Mooncake engine, and prints its python's path on stdout.
# Cached outside the repository in $KVFERRY_MOONCAKE_VENV (default
# ~/.cache/kvferry/mooncake-VERSION): later runs only check that it still imports.
# The engine loads libibverbs.so.1 even for TCP: `node scripts/setup.mjs --test` installs it
# (Debian: libibverbs1).
# Exit status: 0 ready; 3 the package cannot be installed (registry unreachable, no wheel for
# this Python or platform); 1 anything else (no venv module, installed but does not import).
set -euo pipefail

PACKAGE=mooncake-transfer-engine-non-cuda
VERSION=0.3.13.post1
VENV=${KVFERRY_MOONCAKE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/kvferry/mooncake-$VERSION}
PYTHON=${PYTHON:-python3}
# A registry that does not answer counts as "cannot install": bounded, not retried for long.
INSTALL_LIMIT_S=300
say() { echo "mooncake-venv: $*" >&2; }

if [[ ! -x "$VENV/bin/python" ]]; then
  # Made beside its place and renamed into it, so an interrupted or concurrent run never
  # leaves a half-made environment where the next run looks (only bin/python is used, which
  # works from wherever the environment lies).
  mkdir -p "$(dirname "$VENV")"
  tmp=$(mktemp -d "$VENV.partial-XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  say "creating $VENV with $PACKAGE==$VERSION (once; a few minutes)"
  if ! "$PYTHON" -m venv "$tmp" >&2; then
    say "'$PYTHON -m venv' failed: install Python's venv module (Debian: python3-venv)"
    exit 1
  fi
  if ! timeout "$INSTALL_LIMIT_S" "$tmp/bin/python" -m pip install --quiet --disable-pip-version-check \
      --timeout 30 --retries 1 "$PACKAGE==$VERSION" >&2; then
    say "cannot install $PACKAGE==$VERSION for $("$tmp/bin/python" --version 2>&1) from the package registry (within ${INSTALL_LIMIT_S} s)"
    exit 3
  fi
  mv -T "$tmp" "$VENV" 2>/dev/null || true # another run may have put one there first: keep it
fi

if ! error=$("$VENV/bin/python" -c 'from mooncake.engine import TransferEngine' 2>&1); then
  say "$PACKAGE in $VENV does not import: $error"
  [[ "$error" == *libibverbs* ]] && say "install libibverbs1 (node scripts/setup.mjs --test does, as root)"
  exit 1
fi
echo "$VENV/bin/python"
