#!/usr/bin/env bash
# Side-by-side benchmark of Strait against direct, HAProxy 2.6 and nginx 1.22 (see perf/README.md).
#
# Usage: perf/run.sh [--quick|--full] [--out DIR] [--keep] [--figures throughput,latency,h2,tcp,mtls]
#   --quick    3 interleaved rounds, short runs: about 4 minutes (default)
#   --full     5 interleaved rounds, wrk 10 s, fixed-rate 30 s, h2 10 s, iperf3 5 s, s_time 5 s:
#              about 45 minutes
#   --out DIR  where the report goes (default perf/results): <DATE>-<mode>.md, .csv and -*.png
#   --keep     keep the temporary run directory (generated configs, logs, per-request latency logs)
#   --static-bin BIN  also measure this static strait (cmake -DSTRAIT_STATIC=ON) in the idle-memory section
#   --idle-only       only the idle-memory section (perf/idle_memory.py): <DATE>-idle.md and .csv, ~1 minute
#   --no-idle         skip the idle-memory section
# Environment: STRAIT_BIN (default build/proxy/strait), STRAIT_STATIC_BIN (as --static-bin), PROXY_CPU
#   (default 0), CLIENT_CPU (default 1), PERF_NICE (e.g. -10: run every peer and client under
#   nice -n -10 on a busy shared machine; needs root).
#
# The idle-memory section (VmRSS, PSS, private and anonymous memory of Strait dynamic and static, HAProxy
# and nginx, on the embedded default and with Strait connected to the Node test xDS server) runs first,
# with nothing else started, and is appended to the report as "## Idle memory".
#
# Installs nothing: it names what is missing and the command that installs it.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")

mode=quick
out="$here/results"
extra=()
idle=yes
static_bin=${STRAIT_STATIC_BIN:-}
keep_idle=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) mode=quick ;;
    --full) mode=full ;;
    --out) [ $# -ge 2 ] || { echo "run.sh: --out needs a directory" >&2; exit 2; }; out=$2; shift ;;
    --out=*) out=${1#--out=} ;;
    --keep) extra+=(--keep); keep_idle=(--keep) ;;
    --figures) [ $# -ge 2 ] || { echo "run.sh: --figures needs a list" >&2; exit 2; }
               extra+=(--figures "$2"); shift ;;
    --figures=*) extra+=(--figures "${1#--figures=}") ;;
    --static-bin) [ $# -ge 2 ] || { echo "run.sh: --static-bin needs a binary" >&2; exit 2; }
                  static_bin=$2; shift ;;
    --static-bin=*) static_bin=${1#--static-bin=} ;;
    --idle-only) idle=only ;;
    --no-idle) idle=no ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done

# tool -> Debian package that provides it
declare -A pkg=([wrk]=wrk [h2load]=nghttp2-client [haproxy]=haproxy [nginx]=nginx
                [gnuplot]=gnuplot-nox [iperf3]=iperf3 [taskset]=util-linux [python3]=python3
                [openssl]=openssl)
missing=()
pkgs=()
# openssl: the mesh CA (certs/strait-ca.sh) and `openssl s_time` for the mTLS figure
for t in wrk h2load haproxy nginx gnuplot iperf3 taskset python3 openssl; do
  command -v "$t" >/dev/null 2>&1 || { missing+=("$t (${pkg[$t]})"); pkgs+=("${pkg[$t]}"); }
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "perf/run.sh: missing: ${missing[*]}" >&2
  echo "install them with:  $root/deploy/install-deps.sh perf   (or: apt-get install ${pkgs[*]})" >&2
  exit 2
fi
case "$(haproxy -v 2>&1 | head -1)" in *" 2.6."*) ;; *) echo "note: not HAProxy 2.6: $(haproxy -v 2>&1 | head -1)" ;; esac
case "$(nginx -v 2>&1)" in *"/1.22."*) ;; *) echo "note: not nginx 1.22: $(nginx -v 2>&1)" ;; esac

strait=${STRAIT_BIN:-$root/build/proxy/strait}
if [ ! -x "$strait" ]; then
  echo "perf/run.sh: no Strait binary at $strait" >&2
  echo "build it with 'ninja -C $root/build strait', or point STRAIT_BIN at a binary" >&2
  exit 2
fi

pcpu=${PROXY_CPU:-0}
ccpu=${CLIENT_CPU:-1}
for c in "$pcpu" "$ccpu"; do
  if ! taskset -c "$c" true 2>/dev/null; then
    echo "perf/run.sh: cannot pin to CPU $c (this machine: $(nproc) CPUs); set PROXY_CPU / CLIENT_CPU" >&2
    exit 2
  fi
done
[ "$pcpu" != "$ccpu" ] || echo "note: proxy and clients share CPU $pcpu; figures will not mean much"
if [ -n "${PERF_NICE:-}" ]; then extra+=(--nice "$PERF_NICE"); fi

if [ -n "$static_bin" ] && [ ! -x "$static_bin" ]; then
  echo "perf/run.sh: no static Strait binary at $static_bin" >&2
  echo "build it with cmake -DSTRAIT_STATIC=ON (README, \"Static build\")" >&2
  exit 2
fi
mkdir -p "$out"
day=$(date +%F)

# Idle memory first, while nothing else of ours runs. idle_memory.py stops what it started (by PID).
idle_md=""
if [ "$idle" != no ]; then
  idle_args=(--strait "$strait" "${keep_idle[@]}")
  [ -z "$static_bin" ] || idle_args+=(--static-bin "$static_bin")
  if [ "$idle" = only ]; then
    idle_md="$out/$day-idle.md"
    python3 "$here/idle_memory.py" "${idle_args[@]}" --out "$idle_md" --csv "$out/$day-idle.csv" >/dev/null
    echo "idle memory: $idle_md, $out/$day-idle.csv"
    exit 0
  fi
  idle_md=$(mktemp /tmp/strait-idle-section.XXXXXX)
  trap 'rm -f "$idle_md"' EXIT
  python3 "$here/idle_memory.py" "${idle_args[@]}" --out "$idle_md" --csv "$out/$day-$mode-idle.csv" \
    >/dev/null || { echo "perf/run.sh: the idle-memory section failed; going on without it" >&2; : > "$idle_md"; }
fi

# bench.py stops every process it started (by PID) on exit, error, SIGINT, SIGTERM and SIGHUP.
# It runs as a child (not exec'd) so that the idle section can be appended; signals are passed on.
python3 "$here/bench.py" --mode "$mode" --out "$out" --strait "$strait" --date "$day" \
  --proxy-cpu "$pcpu" --client-cpu "$ccpu" "${extra[@]}" &
bench_pid=$!
trap 'kill -TERM "$bench_pid" 2>/dev/null' TERM HUP INT
while :; do
  rc=0
  wait "$bench_pid" || rc=$?
  kill -0 "$bench_pid" 2>/dev/null || break
done
trap - TERM HUP INT
if [ -n "$idle_md" ] && [ -s "$idle_md" ]; then
  for report in "$out/$day-$mode.md" "$out/$day-$mode-aborted.md"; do
    if [ -f "$report" ]; then
      { echo; cat "$idle_md"; echo; echo "Raw idle-memory numbers: \`$day-$mode-idle.csv\`."; } >> "$report"
      echo "idle memory: appended to $report"
    fi
  done
fi
exit "$rc"
