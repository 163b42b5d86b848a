#!/usr/bin/env bash
# Instructions per request of Strait's hot path, under valgrind --tool=callgrind (see perf/README.md).
#
# Usage: perf/callgrind.sh [--requests N] [--clients C] [--body 0|1k|64k] [--h2] [--istio] [--keep]
#   --requests N  requests measured (default 20000), after 500 unmeasured warm-up requests
#   --clients C   concurrent keep-alive connections (default 8)
#   --body SIZE   response body from the upstream nginx: 0, 1k (default) or 64k
#   --h2          h2c downstream (h2load -m 10) instead of HTTP/1.1 (h2load --h1)
#   --istio       Istio's telemetry on: istio.metadata_exchange + istio.stats before the router, node
#                 metadata STRAIT_ISTIO_METRICS=true (an outbound sidecar: adds its peer header, records)
#   --rate R      send at R requests per second in all (h2load --rps, split over the connections) instead
#                 of as fast as possible: each request then meets an idle proxy, so the figure includes the
#                 per-wakeup work that saturation hides (batching). R should stay well under what Strait
#                 does under callgrind (~300 req/s here): 50 is a fair choice
#   --keep        keep the run directory even on success (it holds the callgrind.out file)
# Environment: STRAIT_BIN (default build/proxy/strait), CALLGRIND_TOP (functions listed, default 30).
#
# Collection is switched on only around the measured requests (callgrind_control -i on/off), so start-up
# and warm-up are not counted. Prints total instructions (Ir) / requests, then the top functions by
# self cost and by inclusive cost. The numbers are deterministic enough to compare two builds.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")

requests=20000
clients=8
body=1k
h2=0
rate=0
keep=0
istio=0
while [ $# -gt 0 ]; do
  case "$1" in
    --requests) requests=$2; shift ;;
    --clients) clients=$2; shift ;;
    --body) body=$2; shift ;;
    --h2) h2=1 ;;
    --rate) rate=$2; shift ;;
    --keep) keep=1 ;;
    --istio) istio=1 ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
    *) echo "callgrind.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$body" in 0|1k|64k) ;; *) echo "callgrind.sh: --body is 0, 1k or 64k" >&2; exit 2 ;; esac

missing=()
for t in valgrind callgrind_annotate callgrind_control h2load nginx python3 curl; do
  command -v "$t" >/dev/null 2>&1 || missing+=("$t")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "callgrind.sh: missing: ${missing[*]}; install with: $root/deploy/install-deps.sh perf" >&2
  exit 2
fi
strait=${STRAIT_BIN:-$root/build/proxy/strait}
[ -x "$strait" ] || { echo "callgrind.sh: no Strait binary at $strait (ninja -C $root/build strait)" >&2; exit 2; }

run=$(mktemp -d /tmp/strait-callgrind.XXXXXX)
chmod 755 "$run"
pids=()
cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do
    kill -TERM "$p" 2>/dev/null || true
  done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  if [ "$rc" -eq 0 ] && [ "$keep" -eq 0 ]; then rm -rf "$run"; else echo "run directory kept: $run"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

read -r up strait_port < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')

mkdir -p "$run/www" "$run/tmp"
python3 - "$run/www" <<'EOF'
import os, sys
for name, n in (("0", 0), ("1k", 1024), ("64k", 65536)):
    with open(os.path.join(sys.argv[1], name), "wb") as f:
        f.write((b"0123456789abcdef" * (n // 16 + 1))[:n])
EOF
user=""; [ "$(id -u)" -ne 0 ] || user="user root;"
cat > "$run/upstream.conf" <<EOF
$user
worker_processes 1;
pid $run/upstream.pid;
error_log $run/upstream-error.log error;
events { worker_connections 4096; }
http {
  client_body_temp_path $run/tmp/body; proxy_temp_path $run/tmp/proxy; fastcgi_temp_path $run/tmp/fcgi;
  uwsgi_temp_path $run/tmp/uwsgi; scgi_temp_path $run/tmp/scgi;
  access_log off; keepalive_requests 10000000; keepalive_timeout 300s; sendfile on;
  default_type application/octet-stream;
  server { listen 127.0.0.1:$up; root $run/www; }
}
EOF
istio_node=""; istio_filters=""
if [ "$istio" -eq 1 ]; then
  istio_node='node: {id: "sidecar~127.0.0.1~bench.perf~perf.svc.cluster.local", metadata: {WORKLOAD_NAME: bench, NAMESPACE: perf, CLUSTER_ID: Kubernetes, LABELS: {app: bench, version: v1}, STRAIT_ISTIO_METRICS: "true"}}'
  istio_filters='          - {name: istio.metadata_exchange, typed_config: {"@type": type.googleapis.com/io.istio.http.peer_metadata.Config}}
          - {name: istio.stats, typed_config: {"@type": type.googleapis.com/stats.PluginConfig}}'
fi
cat > "$run/strait.yaml" <<EOF
$istio_node
admin: {address: {socket_address: {address: 127.0.0.1, port_value: 0}}}
static_resources:
  listeners:
  - name: http
    address: {socket_address: {address: 127.0.0.1, port_value: $strait_port}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench_http
          codec_type: AUTO
          route_config:
            name: bench
            virtual_hosts:
            - {name: all, domains: ["*"], routes: [{match: {prefix: "/"}, route: {cluster: upstream_http}}]}
          http_filters:
$istio_filters
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: upstream_http
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream_http
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $up}}}}]}]
EOF

nginx -p "$run" -e "$run/upstream-error.log" -c "$run/upstream.conf" -g 'daemon off;' >"$run/upstream.log" 2>&1 &
pids+=($!)

echo "== starting Strait under callgrind (collection off until the measured requests)"
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$run/callgrind.out" \
  "$strait" -c "$run/strait.yaml" --concurrency 1 --admin-address-path "$run/admin.txt" -l error \
  --drain-time-s 1 >"$run/strait.log" 2>&1 &
vpid=$!
pids=("$vpid" "${pids[@]}")

ready=0
for _ in $(seq 600); do            # up to 60 s: start-up under valgrind is slow
  if [ -s "$run/admin.txt" ] && curl -sf -m 2 "http://$(cat "$run/admin.txt")/ready" >/dev/null 2>&1; then
    ready=1; break
  fi
  kill -0 "$vpid" 2>/dev/null || break
  sleep 0.1
done
if [ "$ready" -ne 1 ]; then
  echo "callgrind.sh: Strait did not become ready; log:" >&2; tail -20 "$run/strait.log" >&2; exit 1
fi

url="http://127.0.0.1:$strait_port/$body"
if [ "$h2" -eq 1 ]; then client=(h2load -c "$clients" -m 10); proto="h2c (h2load -c $clients -m 10)"
else client=(h2load --h1 -c "$clients"); proto="HTTP/1.1 keep-alive (h2load --h1 -c $clients)"; fi
if [ "$rate" != 0 ]; then
  per_conn=$(python3 -c "print(round($rate / $clients, 3))")
  client+=(--rps="$per_conn"); proto="$proto at $rate req/s"
fi

echo "== warm-up: 500 requests (not measured)"
timeout 300 "${client[@]}" -n 500 "$url" >"$run/warmup.txt" 2>&1 || { cat "$run/warmup.txt" >&2; exit 1; }

echo "== measuring $requests requests, $proto, body $body"
callgrind_control -i on "$vpid" >/dev/null
timeout 1800 "${client[@]}" -n "$requests" "$url" >"$run/h2load.txt" 2>&1 || { cat "$run/h2load.txt" >&2; exit 1; }
callgrind_control -d "measured" "$vpid" >/dev/null
callgrind_control -i off "$vpid" >/dev/null
grep -E '^(finished|requests|status codes)' "$run/h2load.txt"
ok=$(sed -n 's/^status codes: \([0-9]*\) 2xx.*/\1/p' "$run/h2load.txt")
[ "${ok:-0}" -eq "$requests" ] || echo "WARNING: only ${ok:-0} of $requests requests answered 2xx"

dump="$run/callgrind.out.1"       # part 1 = the explicit dump after the measured requests
[ -s "$dump" ] || { echo "callgrind.sh: no dump at $dump" >&2; exit 1; }
callgrind_annotate --inclusive=no --threshold=100 "$dump" >"$run/annotate-self.txt" 2>/dev/null || true
callgrind_annotate --inclusive=yes --threshold=100 "$dump" >"$run/annotate-inclusive.txt" 2>/dev/null || true
total=$(awk '/PROGRAM TOTALS/ {gsub(",", "", $1); t = $1} END {print t}' "$run/annotate-self.txt")
[ -n "$total" ] || { echo "callgrind.sh: no totals in $dump" >&2; exit 1; }
top=${CALLGRIND_TOP:-30}
# the function table sits between the sixth and seventh dashed rules; long C++ names are cut at 220 columns
table() { awk -v top="$top" '/^-+$/ {n++; next} n == 6 && NF > 0 && c < top {c++; print substr($0, 1, 220)}' "$1"; }
echo
echo "== $total instructions for $requests requests: $((total / requests)) Ir per request (body $body, $proto)"
echo "   (user space only: syscalls and the kernel's TCP work are not in Ir; see perf/run.sh for CPU time)"
echo
echo "== top $top functions by self cost (Ir, % of total)"
table "$run/annotate-self.txt"
echo
echo "== top $top functions by inclusive cost"
table "$run/annotate-inclusive.txt"
echo
echo "profile: $dump (use --keep to keep it; callgrind_annotate or kcachegrind to browse)"
