#!/usr/bin/env bash
# Installs the test xDS server's Node dependencies (exact versions from package-lock.json) when they
# are missing or older than the lock file. Needs node and npm (deploy/install-deps.sh test).
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v npm >/dev/null 2>&1; then
  echo "xds_server/setup.sh: npm not found (run deploy/install-deps.sh test)" >&2
  exit 1
fi
stamp=node_modules/.package-lock.json
if [ ! -f "$stamp" ] || [ package-lock.json -nt "$stamp" ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
