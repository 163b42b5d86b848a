#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite: unit tests through CTest (GCC), the
# fuzz targets' regressions, then unit and integration tests again against a clang ASan+UBSan build
# (the integration tests drive the real binary with real peers; some need root: network namespaces and
# iptables; they skip with a reason otherwise), the tests that measure memory or CPU on the GCC build,
# and clang-tidy.
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
echo "== the whole suite under ASan+UBSan (tests/run-sanitized.sh: CTest and every integration test, clang 16)"
# Its library objects are the fuzz build's compiles (same flags), so ccache hands them over. The
# integration tests run once, here, against the sanitized binary: running them on the GCC build as well
# would put CI near its 90 minutes on this 2-core machine. A sanitizer report fails the test that made it.
SAN_JOBS=2 tests/run-sanitized.sh "$PWD/build-asan" "$@"
echo "== integration tests that measure memory, CPU or timing (marked unsanitized), on the GCC build"
STRAIT_BIN="$PWD/build/proxy/strait" /usr/bin/python3 -m pytest tests/integration -q -m unsanitized "$@"
echo "== clang-tidy (tests/clang-tidy.sh: the checks of .clang-tidy over proxy/, xds/client/, filters/, certs/)"
# Reads the fuzz build's compile_commands.json (clang's flags; its generated headers are built).
tests/clang-tidy.sh "$PWD/build-fuzz-ci" 2
