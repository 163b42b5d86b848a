#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR disable=SC2153
# strait-iptables.sh: send a pod's TCP traffic through the Strait sidecar with iptables (nat table).
# Runs in the pod's init container (root, NET_ADMIN + NET_RAW) before the workload starts. See --help
# for the options; deploy/strait-nftables.sh does the same with nft.
#
# Layout (nat table; the same for ip6tables with ::1 for loopback):
#
#   PREROUTING  -p tcp -j STRAIT_INBOUND            connections arriving at the pod
#   STRAIT_INBOUND   -p tcp --dport <excluded> -j RETURN    (with -b '*': one per excluded port,
#                    -p tcp -j STRAIT_IN_REDIRECT            then everything else)
#                    (with -b LIST: -p tcp --dport <port> -j STRAIT_IN_REDIRECT, one per port)
#   STRAIT_IN_REDIRECT  -p tcp -j REDIRECT --to-ports 15006
#
#   OUTPUT      -p tcp -j STRAIT_OUTPUT             connections the pod opens
#   STRAIT_OUTPUT    -m owner --uid-owner 1337 -j RETURN     the proxy's own traffic, on every interface
#                    -m owner --gid-owner 1337 -j RETURN
#                    -o lo -j RETURN                         loopback, and the pod's own IP (see below)
#                    -d 127.0.0.0/8 -j RETURN
#                    -p tcp --dport <-o port> -j RETURN
#                    -p tcp --dport <-q port> -j STRAIT_REDIRECT
#                    -d <-x cidr> -j RETURN
#                    -j STRAIT_REDIRECT                      (or -d <-i cidr> -j STRAIT_REDIRECT each)
#   STRAIT_REDIRECT  -p tcp -j REDIRECT --to-ports 15001
#
# Why the proxy's uid returns unconditionally, even over lo: Strait's inbound listener forwards each
# connection to its original destination, the pod's own IP and port, as uid 1337. The kernel routes
# that connection over lo. If any rule redirected uid 1337's loopback traffic (Istio sends the
# proxy's own loopback traffic to the inbound chain, and escapes its inbound forwarding with a
# special source address, 127.0.0.6, that Strait does not use), the forwarded connection would land on
# 15006 again and loop. So the first rules of STRAIT_OUTPUT let everything the proxy sends go as is.
#
# An application that connects to its own pod IP: that connection also leaves through lo, and the
# "-o lo -j RETURN" rule lets it through untouched, as if there were no mesh. It is never captured
# outbound and, because locally delivered loopback traffic does not pass PREROUTING's nat rules, it is
# never captured inbound either. The alternative (capture it outbound) would work too, since the
# outbound proxy reconnects as uid 1337 straight to the application, but it would only add a hop
# that can apply no policy. A connection to the pod's own Service IP is a different case: it does not
# go to lo first, so it is captured outbound like any other, and the proxy's upstream connection to
# the pod's IP then goes over lo, uncaptured, straight to the application. Inbound policy for such
# hairpin calls (mTLS to oneself) needs the proxy to mark its inbound forwards (e.g. a fixed source
# address such as 127.0.0.6) before the proxy's other loopback traffic can be sent to STRAIT_INBOUND.
set -euo pipefail

self=$(readlink -f "${BASH_SOURCE[0]}")
here=$(dirname "$self")
CAP_PROG=$(basename "$0")
# shellcheck disable=SC2034 # read by strait-capture-lib.sh (--help)
CAP_BACKEND_LINE="Backend: iptables and ip6tables, nat table, chains STRAIT_INBOUND, STRAIT_IN_REDIRECT,
STRAIT_OUTPUT and STRAIT_REDIRECT. The commands run are \$STRAIT_IPTABLES and \$STRAIT_IP6TABLES
(default iptables and ip6tables; set them to iptables-legacy/ip6tables-legacy on nodes that use the
legacy backend)."
lib=""
for cand in "${STRAIT_CAPTURE_LIB:-}" "$here/strait-capture-lib.sh" "$here/../lib/strait/strait-capture-lib.sh"; do
  if [[ -n $cand && -r $cand ]]; then lib=$cand; break; fi
done
[[ -n $lib ]] || { echo "$CAP_PROG: cannot find strait-capture-lib.sh next to $self (or set STRAIT_CAPTURE_LIB)" >&2; exit 2; }
# shellcheck source=strait-capture-lib.sh
. "$lib"

capture_parse_args "$@"

IPT4=${STRAIT_IPTABLES:-iptables}
IPT6=${STRAIT_IP6TABLES:-ip6tables}
CHAINS=(STRAIT_INBOUND STRAIT_IN_REDIRECT STRAIT_OUTPUT STRAIT_REDIRECT)

# x CMD ARGS...: run one firewall command, or print it with --dry-run. -w waits for the xtables lock
# instead of failing when another tool holds it.
x() {
  local cmd=$1
  shift
  if ((CAP_DRY_RUN)); then
    echo "$cmd -w 5 $*"
  else
    "$cmd" -w 5 "$@"
  fi
}

# check_tool CMD FAMILY: the command exists and can read the nat table (root, NET_ADMIN, the kernel's
# nat support). Dies with the reason otherwise.
check_tool() {
  local cmd=$1 fam=$2 err
  command -v "$cmd" >/dev/null 2>&1 ||
    { echo "$CAP_PROG: '$cmd' not found: install the iptables package (or set STRAIT_IP${fam#IPv}TABLES)" >&2; exit 1; }
  if ! err=$("$cmd" -w 5 -t nat -S 2>&1 >/dev/null); then
    echo "$CAP_PROG: cannot read the $fam nat table with $cmd (root with NET_ADMIN and NET_RAW is needed): $err" >&2
    exit 1
  fi
}

# clean CMD: remove every jump to our chains from PREROUTING and OUTPUT, then our chains. Safe when
# nothing is installed.
clean() {
  local cmd=$1 hook line chain
  if ((CAP_DRY_RUN)); then
    echo "# remove what an earlier run installed (each of these fails harmlessly when absent)"
    x "$cmd" -t nat -D PREROUTING -p tcp -j STRAIT_INBOUND
    x "$cmd" -t nat -D OUTPUT -p tcp -j STRAIT_OUTPUT
    for chain in "${CHAINS[@]}"; do x "$cmd" -t nat -F "$chain"; done
    for chain in "${CHAINS[@]}"; do x "$cmd" -t nat -X "$chain"; done
    return 0
  fi
  for hook in PREROUTING OUTPUT; do
    # Delete by the exact spec iptables prints, so a jump added with other matches goes too.
    while read -r line; do
      [[ $line == "-A $hook "* && $line =~ -j\ STRAIT_[A-Z_]+($| ) ]] || continue
      read -r -a spec <<<"${line#-A "$hook" }"
      "$cmd" -w 5 -t nat -D "$hook" "${spec[@]}"
    done < <("$cmd" -w 5 -t nat -S "$hook")
  done
  for chain in "${CHAINS[@]}"; do
    if "$cmd" -w 5 -t nat -S "$chain" >/dev/null 2>&1; then "$cmd" -w 5 -t nat -F "$chain"; fi
  done
  for chain in "${CHAINS[@]}"; do
    if "$cmd" -w 5 -t nat -S "$chain" >/dev/null 2>&1; then "$cmd" -w 5 -t nat -X "$chain"; fi
  done
}

# install CMD 4|6: the rules for one family.
install() {
  local cmd=$1 fam=$2 chain p c id loopback cidrs_excl cidrs_incl
  if [[ $fam == 4 ]]; then
    loopback=127.0.0.0/8
    cidrs_excl=$CAP_OUT_EXCL4
    cidrs_incl=$CAP_OUT_CIDRS4
  else
    loopback=::1/128
    cidrs_excl=$CAP_OUT_EXCL6
    cidrs_incl=$CAP_OUT_CIDRS6
  fi
  ((CAP_DRY_RUN)) && echo "# IPv$fam"
  for chain in "${CHAINS[@]}"; do x "$cmd" -t nat -N "$chain"; done
  x "$cmd" -t nat -A STRAIT_REDIRECT -p tcp -j REDIRECT --to-ports "$CAP_OUT_PORT"
  x "$cmd" -t nat -A STRAIT_IN_REDIRECT -p tcp -j REDIRECT --to-ports "$CAP_IN_PORT"

  # Inbound.
  case $CAP_IN_MODE in
    all)
      for p in $CAP_IN_EXCLUDE; do x "$cmd" -t nat -A STRAIT_INBOUND -p tcp --dport "$p" -j RETURN; done
      x "$cmd" -t nat -A STRAIT_INBOUND -p tcp -j STRAIT_IN_REDIRECT
      ;;
    list)
      for p in $CAP_IN_PORTS; do x "$cmd" -t nat -A STRAIT_INBOUND -p tcp --dport "$p" -j STRAIT_IN_REDIRECT; done
      ;;
  esac
  [[ $CAP_IN_MODE == none ]] || x "$cmd" -t nat -A PREROUTING -p tcp -j STRAIT_INBOUND

  # Outbound. Order matters: the proxy's own traffic and loopback first, whatever the lists say.
  for id in $CAP_UIDS; do x "$cmd" -t nat -A STRAIT_OUTPUT -m owner --uid-owner "$id" -j RETURN; done
  for id in $CAP_GIDS; do x "$cmd" -t nat -A STRAIT_OUTPUT -m owner --gid-owner "$id" -j RETURN; done
  x "$cmd" -t nat -A STRAIT_OUTPUT -o lo -j RETURN
  x "$cmd" -t nat -A STRAIT_OUTPUT -d "$loopback" -j RETURN
  for p in $CAP_OUT_PORTS_EXCL; do x "$cmd" -t nat -A STRAIT_OUTPUT -p tcp --dport "$p" -j RETURN; done
  for p in $CAP_OUT_PORTS_INCL; do x "$cmd" -t nat -A STRAIT_OUTPUT -p tcp --dport "$p" -j STRAIT_REDIRECT; done
  for c in $cidrs_excl; do x "$cmd" -t nat -A STRAIT_OUTPUT -d "$c" -j RETURN; done
  case $CAP_OUT_MODE in
    all) x "$cmd" -t nat -A STRAIT_OUTPUT -j STRAIT_REDIRECT ;;
    list) for c in $cidrs_incl; do x "$cmd" -t nat -A STRAIT_OUTPUT -d "$c" -j STRAIT_REDIRECT; done ;;
  esac
  if [[ $CAP_OUT_MODE != none || -n $CAP_OUT_PORTS_INCL ]]; then
    x "$cmd" -t nat -A OUTPUT -p tcp -j STRAIT_OUTPUT
  fi
}

if ((CAP_DRY_RUN)); then
  if ((CAP_CLEAN)); then echo "# $CAP_PROG --clean"; else echo "# $CAP_PROG: $(capture_summary)"; fi
else
  check_tool "$IPT4" IPv4
  ((CAP_IPV6 == 0)) || check_tool "$IPT6" IPv6
fi

# IPv6 rules of an earlier run are removed even when this run leaves IPv6 alone, when ip6tables works.
v6_present=0
if ((CAP_DRY_RUN == 0 && CAP_IPV6 == 0)) && command -v "$IPT6" >/dev/null 2>&1 &&
  "$IPT6" -w 5 -t nat -S >/dev/null 2>&1; then
  v6_present=1
fi

clean "$IPT4"
if ((CAP_IPV6 || v6_present)); then clean "$IPT6"; fi
if ((CAP_CLEAN)); then
  ((CAP_DRY_RUN)) || echo "$CAP_PROG: removed the STRAIT_ chains and jumps"
  exit 0
fi

install "$IPT4" 4
((CAP_IPV6 == 0)) || install "$IPT6" 6

if ((CAP_DRY_RUN == 0)); then
  echo "$CAP_PROG: $(capture_summary)"
  "$IPT4" -w 5 -t nat -S | grep -E 'STRAIT_' || true
  if ((CAP_IPV6)); then "$IPT6" -w 5 -t nat -S | grep -E 'STRAIT_' || true; fi
fi
