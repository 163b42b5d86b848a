#!/usr/bin/env bash
# What the fixed library stack costs in RSS before Strait does anything: an empty program (it prints its
# PID and sleeps) linked against no libraries, against the data-plane libraries, and against those plus
# gRPC, each measured (VmRSS, RssFile, RssAnon) one second after it starts. Compare with Strait's idle RSS
# in the perf/run.sh report.
#
# Usage: perf/rss_floor.sh        (needs g++ and the -dev packages deploy/install-deps.sh build installs)
set -euo pipefail
work=$(mktemp -d /tmp/strait-rss-floor.XXXXXX)
trap 'rm -rf "$work"' EXIT
cat > "$work/empty.cc" <<'CC'
#include <unistd.h>
#include <cstdio>
int main() { std::printf("%d\n", static_cast<int>(getpid())); std::fflush(stdout); sleep(3); return 0; }
CC
data_plane=(-luv -lnghttp2 -lssl -lcrypto -lre2 -lyaml-cpp -lprotobuf)
with_grpc=(-lgrpc++ -lgrpc -lgpr "${data_plane[@]}")
build() {  # name, libraries...
  local name=$1; shift
  g++ -O2 "$work/empty.cc" -o "$work/$name" -Wl,--no-as-needed "$@"
}
build none
build data_plane "${data_plane[@]}"
build with_grpc "${with_grpc[@]}"
printf '%-12s %10s %10s %10s\n' program VmRSS_kB RssFile_kB RssAnon_kB
for name in none data_plane with_grpc; do
  "$work/$name" > "$work/$name.pid" &
  sleep 1
  pid=$(cat "$work/$name.pid")
  awk -v n="$name" '/^VmRSS/ {r=$2} /^RssFile/ {f=$2} /^RssAnon/ {a=$2} END {printf "%-12s %10s %10s %10s\n", n, r, f, a}' \
    "/proc/$pid/status"
  wait "$pid"
done
echo "(data_plane: libuv, nghttp2, OpenSSL, RE2, yaml-cpp, protobuf; with_grpc adds gRPC C++ for xDS)"
