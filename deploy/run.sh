#!/usr/bin/env bash
# Installs what is missing, builds, and runs strait. With no arguments it runs the embedded sidecar
# default (capture listeners 15001/15006, admin on 127.0.0.1:15000); any arguments go to strait.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh build
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C build strait
exec build/proxy/strait "$@"
