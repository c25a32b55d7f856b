#!/usr/bin/env bash
# Runs the Python suites against real daemons started from bin/kvferry.js (build first, as
# `npm test` does): the client's (python/tests, in the venv of scripts/python-venv.sh), then the
# vLLM connector's (connectors/vllm/tests, in the cached vLLM venv of scripts/vllm-venv.sh,
# made on the first run: ~8 GB, a few minutes). Both run even when the first fails.
# Extra arguments go to both pytest runs, e.g. `bash scripts/test-python.sh -k consume -x`.
# KVFERRY_PYTEST_JUNIT=FILE.xml: JUnit reports in FILE.xml and FILE-vllm.xml (.ci/run counts them).
# KVFERRY_SKIP_VLLM_TESTS=1 leaves the connector's suite out (a quick local run; never in CI).
set -uo pipefail
cd "$(dirname "$0")/.."
junit=${KVFERRY_PYTEST_JUNIT:-}
rc=0

python=$(bash scripts/python-venv.sh) || exit 1
"$python" -m pytest python/tests -p no:cacheprovider ${junit:+"--junitxml=$junit"} "$@" || rc=1

if [[ "${KVFERRY_SKIP_VLLM_TESTS:-}" == 1 ]]; then
  echo "test-python: the vLLM connector's suite is left out (KVFERRY_SKIP_VLLM_TESTS=1)" >&2
  exit "$rc"
fi
if ! vllm_python=$(bash scripts/vllm-venv.sh); then
  echo "test-python: no vLLM environment for the connector's suite (see above)" >&2
  exit 1
fi
PYTHONPATH="$PWD/python:$PWD/connectors/vllm" "$vllm_python" -m pytest connectors/vllm/tests -p no:cacheprovider \
  ${junit:+"--junitxml=${junit%.xml}-vllm.xml"} "$@" || rc=1
exit "$rc"
