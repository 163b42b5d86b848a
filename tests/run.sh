#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite: unit tests through CTest, then the
# integration tests that drive the real binary with real peers (some need root: network namespaces and
# iptables; they skip with a reason otherwise).
# Usage: tests/run.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh test
# Every build type must compile: the Release binary (what the image ships) first, then the test build.
cmake -S . -B build-release -G Ninja -DCMAKE_BUILD_TYPE=Release -DSTRAIT_TESTS=OFF >/dev/null
ninja -C build-release strait
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C build
echo "== unit tests (ctest)"
(cd build && ctest --output-on-failure --timeout 120)
echo "== fuzz regressions (tests/fuzz: the libFuzzer targets under ASan+UBSan replay their corpus and regressions)"
deploy/install-deps.sh fuzz
FUZZ_JOBS=2 tests/fuzz/run-regressions.sh "$PWD/build-fuzz-ci" 0
echo "== integration tests (pytest, Debian's python3)"
STRAIT_BIN="$PWD/build/proxy/strait" /usr/bin/python3 -m pytest tests/integration -q "$@"
echo "== clang-tidy (tests/clang-tidy.sh: the checks of .clang-tidy over proxy/, xds/client/, filters/, certs/)"
# Reads the fuzz build's compile_commands.json (clang's flags; its generated headers are built).
tests/clang-tidy.sh "$PWD/build-fuzz-ci" 2
# The whole suite under ASan+UBSan (tests/run-sanitized.sh) is not a stage yet: it is not green (issue 16,
# the c-ares leak under gRPC and the failures listed in the report) and took 43 min on a loaded machine.
# To run it: SAN_JOBS=2 tests/run-sanitized.sh "$PWD/build-asan"
