#!/usr/bin/env bash
# Installs every Debian 12 package Strait needs to build, run and test.
# Usage: deploy/install-deps.sh [build|test|perf|fuzz]   (default: test)
#   build  - compiler toolchain and libraries only
#   test   - build + the real peers the integration tests drive
#   perf   - test + the side-by-side benchmark peers (HAProxy, nginx, wrk, ...)
#   fuzz   - build + clang 16 with libFuzzer and the sanitizer runtimes (tests/fuzz/README.md), and
#            python3-h2 for tests/fuzz/make_seeds.py; clang-tidy-16 for tests/clang-tidy.sh, llvm-16 for
#            llvm-symbolizer (file:line in sanitizer reports; tests/run-sanitized.sh uses the same clang)
# Packages already present are skipped, so re-running is cheap.
set -euo pipefail
what=${1:-test}

# The -dev packages also carry the .a archives the static build (cmake -DSTRAIT_STATIC=ON) links:
# libgrpc-dev has libgrpc.a, libgpr.a, libupb.a and libaddress_sorting.a, libuv1-dev libuv_a.a,
# zlib1g-dev libz.a (gRPC and protobuf need it; named here because the static link takes it directly).
build_pkgs=(
  build-essential cmake ninja-build ccache pkg-config
  libuv1-dev node-llhttp libnghttp2-dev libssl-dev libc-ares-dev
  libprotobuf-dev protobuf-compiler libgrpc++-dev protobuf-compiler-grpc
  libabsl-dev libre2-dev libyaml-cpp-dev catch2 zlib1g-dev
)
test_pkgs=(
  curl nghttp2-client iptables iproute2 python3 python3-grpcio python3-h2
  python3-pytest python3-yaml prometheus procps netcat-openbsd nftables nginx wrk tcpdump openssl
  buildah python3-jsonpatch python3-prometheus-client python3-protobuf
  chromium  # test_live_graph.py loads the admin page in headless Chromium (issue 15)
)
perf_pkgs=(wrk haproxy nginx gnuplot-nox iperf3 valgrind openssl)
fuzz_pkgs=(clang-16 libclang-rt-16-dev clang-tidy-16 llvm-16 python3-h2 python3-yaml)

pkgs=("${build_pkgs[@]}")
case "$what" in
  build) ;;
  test) pkgs+=("${test_pkgs[@]}") ;;
  perf) pkgs+=("${test_pkgs[@]}" "${perf_pkgs[@]}") ;;
  fuzz) pkgs+=("${fuzz_pkgs[@]}") ;;
  *) echo "install-deps.sh: unknown set '$what' (build|test|perf|fuzz)" >&2; exit 2 ;;
esac

missing=()
# Node and npm run the test xDS management server; the machine's own Node (which bundles npm) is
# kept when present, Debian's is installed otherwise.
if [ "$what" != build ] && ! command -v npm >/dev/null 2>&1; then pkgs+=(nodejs npm); fi
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#pkgs[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
