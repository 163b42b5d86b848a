#!/usr/bin/env bash
# What the fixed library stack costs in RSS before Strait does anything: an empty program (it prints its
# PID and sleeps) linked against no libraries, against the data-plane libraries, and against those plus
# gRPC, each measured (VmRSS, RssFile, RssAnon) one second after it starts. Compare with Strait's idle RSS
# in the perf/run.sh report.
#
# The static case: the same empty program linked with -static, alone and with the whole library stack
# from Debian's .a archives (--whole-archive, so every library's static initialisers run, as they do when
# the shared libraries are loaded; --gc-sections then drops what those do not reach). With
# --static-bin BIN (or STRAIT_STATIC_BIN) it also starts that static strait on its embedded default and
# with an xDS bootstrap connected to the Node test control plane, and breaks its memory down by mapping
# (/proc/PID/smaps), by thread, and by the archive each resident page of the binary came from (the
# linker map strait.map that the static build writes beside the binary, and /proc/PID/pagemap).
#
# Usage: perf/rss_floor.sh [--static-bin BIN]   (needs g++ and the -dev packages deploy/install-deps.sh
#                                                build installs)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
static_bin=${STRAIT_STATIC_BIN:-}
while [ $# -gt 0 ]; do
  case "$1" in
    --static-bin) [ $# -ge 2 ] || { echo "rss_floor.sh: --static-bin needs a binary" >&2; exit 2; }
                  static_bin=$2; shift ;;
    --static-bin=*) static_bin=${1#--static-bin=} ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
    *) echo "rss_floor.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
  shift
done
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

# Static: the archives strait's static build links (top-level CMakeLists.txt, STRAIT_STATIC).
L=/usr/lib/x86_64-linux-gnu
absl=()
for l in $(pkg-config --static --libs-only-l grpc++ | tr ' ' '\n' | sed -n 's/^-l\(absl_.*\)/\1/p' | sort -u); do
  absl+=("$L/lib$l.a")
done
static_data_plane=("$L/libuv_a.a" "$L/libnghttp2.a" "$L/libssl.a" "$L/libcrypto.a" "$L/libre2.a" "$L/libyaml-cpp.a"
                   "$L/libprotobuf.a" "$L/libcares.a" "$L/libz.a" "${absl[@]}")
static_with_grpc=("$L/libgrpc++.a" "$L/libgrpc.a" "$L/libgpr.a" "$L/libupb.a" "$L/libaddress_sorting.a"
                  "${static_data_plane[@]}")
build_static() {  # name, archives...
  local name=$1; shift
  # --allow-multiple-definition: libgrpc.a and libupb.a both carry upb's descriptor tables.
  g++ -O2 -static "$work/empty.cc" -o "$work/$name" -Wl,--gc-sections -Wl,--allow-multiple-definition \
    -Wl,--whole-archive "$@" -Wl,--no-whole-archive -latomic -lpthread -ldl -lrt 2> "$work/$name.link.txt" || {
      cat "$work/$name.link.txt" >&2; exit 1; }
}
build_static static_none
build_static static_data_plane "${static_data_plane[@]}"
build_static static_with_grpc "${static_with_grpc[@]}"

printf '%-18s %10s %10s %10s %10s %12s\n' program VmRSS_kB RssFile_kB RssAnon_kB Pss_kB file_size_kB
for name in none data_plane with_grpc static_none static_data_plane static_with_grpc; do
  "$work/$name" > "$work/$name.pid" &
  sleep 1
  pid=$(cat "$work/$name.pid")
  pss=$(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup")
  size=$(( $(stat -c %s "$work/$name") / 1024 ))
  awk -v n="$name" -v p="$pss" -v s="$size" '/^VmRSS/ {r=$2} /^RssFile/ {f=$2} /^RssAnon/ {a=$2}
    END {printf "%-18s %10s %10s %10s %10s %12s\n", n, r, f, a, p, s}' "/proc/$pid/status"
  wait "$pid"
done
echo "(data_plane: libuv, nghttp2, OpenSSL, RE2, yaml-cpp, protobuf; with_grpc adds gRPC C++ for xDS;"
echo " static_*: the same from the .a archives, plus c-ares, zlib and abseil, linked whole with -static)"
echo "glibc functions the static stack links that would need NSS or dlopen at run time (link warnings):"
sed -n "s/.*warning: Using '\([a-z_]*\)'.*/  \1/p" "$work/static_with_grpc.link.txt" | sort -u

if [ -n "$static_bin" ]; then
  [ -x "$static_bin" ] || { echo "rss_floor.sh: no static strait at $static_bin" >&2; exit 2; }
  echo
  echo "== a running static strait ($static_bin), broken down"
  python3 "$here/idle_memory.py" --static-bin "$static_bin" --peers strait-static --rounds 1 --breakdown \
    --out "$work/breakdown.md" >/dev/null
  cat "$work/breakdown.md"
fi
