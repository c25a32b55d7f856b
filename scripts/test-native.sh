#!/usr/bin/env bash
# The native engine's own tests (GoogleTest), built without Node.js: cmake + g++.
# Installs cmake and libgtest-dev with apt when run as root and they are missing.
# Writes the GoogleTest JSON report to $1 (default native/build/gtest.json).
# The suite includes the data plane's fuzz run (native/test/fuzz/, built with ASan + UBSan):
# WireFuzz.* fuzzes from native/test/fuzz/corpus for $KVFERRY_FUZZ_SECONDS (default 25;
# 0 replays the corpus only) and fails on a crash, saving the input next to the binary.
set -euo pipefail
cd "$(dirname "$0")/.."
report="${1:-native/build/gtest.json}"
if ! command -v cmake >/dev/null || [ ! -e /usr/include/gtest/gtest.h ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y -qq cmake libgtest-dev >/dev/null
  else
    echo "the native tests need cmake and libgtest-dev: apt-get install cmake libgtest-dev" >&2
    exit 1
  fi
fi
cmake -S native -B native/build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build native/build -j2 --target engine_tests
mkdir -p "$(dirname "$report")"
native/build/engine_tests --gtest_brief=1 --gtest_output="json:$report"
