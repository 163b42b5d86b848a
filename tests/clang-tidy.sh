#!/usr/bin/env bash
# clang-tidy (Debian's clang-tidy-16) with the checks of the top-level .clang-tidy over the C++ we own:
# proxy/, xds/client/, filters/, certs/ (and their headers). Generated protobuf code, llhttp, the tests and
# the fuzz targets are not checked. Every finding is an error (WarningsAsErrors), so the script exits 1 on any.
#
# Usage: tests/clang-tidy.sh [BUILD_DIR] [JOBS]   (defaults: build-asan, 2)
# BUILD_DIR must be configured (its compile_commands.json is read) and have its generated protobuf headers
# (ninja strait_api, which any build of strait does first). Any configuration works; clang's (the sanitized
# or fuzz build) matches the tool best. Without clang-tidy-16 (deploy/install-deps.sh fuzz) it says so and
# exits 0: a skip.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$src/build-asan}
jobs=${2:-2}
case $build in /*) ;; *) build=$PWD/$build ;; esac

if ! command -v clang-tidy-16 >/dev/null 2>&1 || ! command -v run-clang-tidy-16 >/dev/null 2>&1; then
  echo "clang-tidy: SKIP: clang-tidy-16 is not installed (deploy/install-deps.sh fuzz)"
  exit 0
fi
if [ ! -f "$build/compile_commands.json" ]; then
  echo "clang-tidy: no $build/compile_commands.json: configure and build $build first" >&2
  exit 2
fi

# The sources we own that the build compiles (run-clang-tidy matches these regexes against the entries of
# compile_commands.json); headers are checked through them.
files="^$src/(proxy|xds/client|filters|certs)/.*\\.cc\$"
t0=$(date +%s)
log=$build/clang-tidy.log
rc=0
run-clang-tidy-16 -clang-tidy-binary "$(command -v clang-tidy-16)" -p "$build" -j "$jobs" -quiet \
  -config-file="$src/.clang-tidy" -header-filter="^$src/(proxy|xds/client|filters|certs)/" "$files" \
  >"$log" 2>&1 || rc=$?
t1=$(date +%s)
n=$(grep -cE '^/.*: (warning|error): .*\[[a-z]+-[a-z-]+(,[a-z-]+)*\]$' "$log" || true)
echo "clang-tidy: $(grep -c '"file"' "$build/compile_commands.json" | tr -d ' ') entries in the database, $n findings, $((t1 - t0)) s (-j$jobs)"
if [ $rc -ne 0 ] || [ "$n" -gt 0 ]; then
  grep -E '^/.*: (warning|error): ' "$log" | sort -u | head -100
  echo "clang-tidy: FAILED (full output in $log)"
  exit 1
fi
