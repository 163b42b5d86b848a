#!/usr/bin/env bash
# The mesh demo: `run.sh up|check [--json]|down` (see README.md beside it). Needs root, iptables, curl,
# node/npm (the control plane) and Debian's python3 with python3-yaml and python3-pytest.
set -euo pipefail
exec /usr/bin/python3 "$(dirname "$(readlink -f "$0")")/demo.py" "$@"
