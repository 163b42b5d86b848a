#!/usr/bin/env bash
# The whole suite under AddressSanitizer + UndefinedBehaviorSanitizer (issue 16): builds strait and the unit
# tests with clang 16 and both sanitizers in BUILD_DIR, then runs CTest and every integration test against
# the sanitized binary. Any sanitizer report fails: the unit test that made it (ASan/UBSan exit non-zero),
# or the integration test during which a strait process wrote it (conftest.py's _no_sanitizer_reports, the
# fleet's stop). Tests marked `unsanitized` (memory, CPU or timing figures) are skipped with their reason.
#
# Usage: tests/run-sanitized.sh [BUILD_DIR] [extra pytest args]   (default BUILD_DIR: build-asan)
#
# The build uses the fuzz targets' configuration (STRAIT_FUZZ: clang-16, RelWithDebInfo, ASan + UBSan with
# -fno-sanitize-recover, plus libFuzzer's coverage instrumentation): every library object is then the same
# compile as tests/fuzz/run-regressions.sh's, so ccache hands them over and CI compiles our code under the
# sanitizers once, not twice. The coverage counters cost some run time (nothing links libFuzzer here, the
# callbacks are the sanitizer runtime's no-ops) and change no behaviour.
# Without clang-16 and its sanitizer runtimes (deploy/install-deps.sh fuzz) it says so and exits 0: a skip.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$src/build-asan}
[ $# -gt 0 ] && shift
case $build in /*) ;; *) build=$PWD/$build ;; esac

if ! command -v clang++-16 >/dev/null 2>&1 || ! ls /usr/lib/llvm-16/lib/clang/16/lib/linux/libclang_rt.asan-x86_64.a >/dev/null 2>&1; then
  echo "run-sanitized: SKIP: clang-16 with the sanitizer runtimes is not installed (deploy/install-deps.sh fuzz)"
  exit 0
fi

t0=$(date +%s)
export CCACHE_BASEDIR=$src CCACHE_NOHASHDIR=1
CC=clang-16 CXX=clang++-16 cmake -S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSTRAIT_FUZZ=ON -DSTRAIT_TESTS=ON >/dev/null
ninja -C "$build" -j"${SAN_JOBS:-2}" strait strait_unit_tests
t1=$(date +%s)
echo "run-sanitized: build took $((t1 - t0)) s"

# Reports: any error stops the process (halt_on_error; UBSan is built with -fno-sanitize-recover), leaks
# are checked at exit. Stacks get file:line from llvm-16's llvm-symbolizer (deploy/install-deps.sh fuzz;
# without it they are module+offset: `addr2line -f -C -i -e build-asan/proxy/strait 0xOFFSET`).
# Third-party leaks we accept are in tests/sanitizers/lsan.supp, each with its reason.
san_common="halt_on_error=1:print_stacktrace=1"
if [ -x /usr/lib/llvm-16/bin/llvm-symbolizer ]; then
  export ASAN_SYMBOLIZER_PATH=/usr/lib/llvm-16/bin/llvm-symbolizer UBSAN_SYMBOLIZER_PATH=/usr/lib/llvm-16/bin/llvm-symbolizer
fi
export ASAN_OPTIONS="$san_common:detect_leaks=1:abort_on_error=0:check_initialization_order=1:detect_stack_use_after_return=0"
export UBSAN_OPTIONS="$san_common"
export LSAN_OPTIONS="suppressions=$src/tests/sanitizers/lsan.supp:print_suppressions=0"

echo "== sanitized unit tests (ctest, ASan+UBSan)"
# A unit test failure does not stop the integration stage: one run shows everything that is red.
rc=0
(cd "$build" && ctest --output-on-failure --timeout 300) || rc=$?
t2=$(date +%s)
echo "run-sanitized: unit tests took $((t2 - t1)) s (ctest exit $rc)"

echo "== sanitized integration tests (pytest, ASan+UBSan)"
# Each strait process writes its reports to report.<pid> here; the harness fails the test that made one.
reports=$build/sanitizer-reports
rm -rf "$reports"
mkdir -p "$reports"
chmod 1777 "$reports"  # the pod tests run strait as uid 1337 (netns_pods.py)
export ASAN_OPTIONS="$ASAN_OPTIONS:log_path=$reports/report"
export UBSAN_OPTIONS="$UBSAN_OPTIONS:log_path=$reports/report"
# ASan's shadow memory and its 256 MiB free quarantine sit in strait's RSS, so the flood tests' 100 MiB VmHWM
# ceiling (test_http_hardening.py) becomes 1 GiB here: still a stop for a runaway, while their protocol
# checks run under the sanitizers. Tests whose point is the memory figure are skipped (`unsanitized`).
export STRAIT_TEST_RSS_LIMIT_MIB=1024
# --durations: the slowest tests, for whoever budgets CI time.
STRAIT_SANITIZED=1 STRAIT_SANITIZER_LOG_DIR="$reports" STRAIT_BIN="$build/proxy/strait" \
  /usr/bin/python3 -m pytest "$src/tests/integration" -q --durations=20 "$@" || rc=1
t3=$(date +%s)
echo "run-sanitized: integration tests took $((t3 - t2)) s; $((t3 - t0)) s in all"
if [ -n "$(ls -A "$reports")" ]; then
  echo "run-sanitized: sanitizer reports in $reports:"
  ls -l "$reports"
  rc=1
fi
exit $rc
