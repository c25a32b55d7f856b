#!/usr/bin/env bash
# Runs the Python client's pytest suite (python/tests/, against real daemons started from
# bin/kvferry.js: build first, as `npm test` does) in the venv of scripts/python-venv.sh.
# Extra arguments go to pytest, e.g. `bash scripts/test-python.sh -k consume -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
python=$(bash scripts/python-venv.sh)
exec "$python" -m pytest python/tests -p no:cacheprovider "$@"
