#!/usr/bin/env bash
# The fuzz targets' regression run for CI (tests/fuzz/README.md): builds every libFuzzer target with clang 16
# (ASan + UBSan) in BUILD_DIR, replays each target's regressions/ inputs once, then fuzzes it for SECONDS
# starting from its corpus and regressions. Fails (exit 1) when any target crashes, leaks, times out or
# breaks one of its checks; the input that did it is left in BUILD_DIR/fuzz-artifacts/.
#
# Usage: tests/fuzz/run-regressions.sh [BUILD_DIR] [SECONDS]   (defaults: build-fuzz-ci, 20)
# SECONDS 0 replays the corpus and regressions once and fuzzes nothing new: deterministic, for CI.
# New inputs the short runs find go to a scratch copy, never into the tree.
# Without clang-16 and libFuzzer (deploy/install-deps.sh fuzz) it says so and exits 0: a skip.
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$src/build-fuzz-ci}
secs=${2:-20}
fuzz=$src/tests/fuzz

if ! command -v clang++-16 >/dev/null 2>&1 || ! ls /usr/lib/llvm-16/lib/clang/16/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1; then
  echo "run-regressions: SKIP: clang-16 with libFuzzer is not installed (deploy/install-deps.sh fuzz)"
  exit 0
fi

targets=(h1_server_fuzz h1_client_fuzz h1_differential_fuzz h2_server_fuzz h2_client_fuzz bootstrap_fuzz xds_listener_fuzz xds_route_fuzz
         xds_cluster_fuzz xds_endpoint_fuzz xds_secret_fuzz route_fuzz path_fuzz tls_inspector_fuzz http_inspector_fuzz)

t0=$(date +%s)
export CCACHE_BASEDIR=$src CCACHE_NOHASHDIR=1
CC=clang-16 CXX=clang++-16 cmake -S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSTRAIT_FUZZ=ON -DSTRAIT_TESTS=OFF >/dev/null
ninja -C "$build" -j"${FUZZ_JOBS:-1}" strait_fuzz
t1=$(date +%s)
echo "run-regressions: build took $((t1 - t0)) s"

scratch=$build/fuzz-scratch
artifacts=$build/fuzz-artifacts
rm -rf "$scratch"
mkdir -p "$scratch" "$artifacts"
failed=()
for t in "${targets[@]}"; do
  bin=$build/tests/fuzz/$t
  dict=()
  case $t in
    h2_*) dict=(-dict="$fuzz/h2.dict") ;;
    h1_* | route_fuzz | path_fuzz | http_inspector_fuzz) dict=(-dict="$fuzz/http.dict") ;;
  esac
  dirs=("$scratch/$t")
  mkdir -p "$scratch/$t"
  [ -d "$fuzz/corpus/$t" ] && dirs+=("$fuzz/corpus/$t")
  log=$scratch/$t.log
  ok=1
  # Every kept reproducer, once each (a fixed bug that comes back fails here first).
  if [ -d "$fuzz/regressions/$t" ] && [ -n "$(ls -A "$fuzz/regressions/$t")" ]; then
    dirs+=("$fuzz/regressions/$t")
    "$bin" -rss_limit_mb=2048 -timeout=10 -artifact_prefix="$artifacts/$t-" "$fuzz/regressions/$t"/* >"$log" 2>&1 || ok=0
  fi
  if [ $ok = 1 ] && [ "$secs" -gt 0 ]; then
    "$bin" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -max_len=16384 -print_final_stats=1 \
      -artifact_prefix="$artifacts/$t-" "${dict[@]}" "${dirs[@]}" >>"$log" 2>&1 || ok=0
  elif [ $ok = 1 ]; then
    # SECONDS 0: replay the corpus once, no new inputs (deterministic: what tests/run.sh does).
    "$bin" -runs=0 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 -artifact_prefix="$artifacts/$t-" \
      "${dirs[@]}" >>"$log" 2>&1 || ok=0
  fi
  if [ $ok = 1 ]; then
    echo "run-regressions: $t ok: $(grep -E '^#[0-9]+.*(DONE|pulse)' "$log" | tail -1 | cut -c1-110)"
  else
    echo "run-regressions: $t FAILED (log $log, input in $artifacts/):"
    grep -E 'ERROR|fuzz check failed|SUMMARY' "$log" | head -5 | sed 's/^/    /'
    failed+=("$t")
  fi
done
t2=$(date +%s)
echo "run-regressions: ${#targets[@]} targets, $((t2 - t1)) s of runs, $((t2 - t0)) s in all"
if [ ${#failed[@]} -gt 0 ]; then
  echo "run-regressions: FAILED: ${failed[*]}"
  exit 1
fi
