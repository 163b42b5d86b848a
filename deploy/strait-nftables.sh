#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR disable=SC2153
# strait-nftables.sh: the nftables twin of strait-iptables.sh. Same flags, same environment variables,
# same capture plan (see that script's header for the reasoning about the proxy's uid, loopback and
# an application calling its own pod IP); only the mechanism differs:
#
#   * Everything lives in one table, "inet strait", which serves IPv4 and IPv6 at once (nat in the inet
#     family needs Linux 5.2 or later). With IPv6 off, the two base chains return IPv6 packets first.
#   * The whole table is replaced in one nft transaction ("table; delete table; table {...}"), so a
#     second run swaps the rules atomically and never duplicates them, and no packet ever sees half a
#     rule set. --clean deletes the table.
#   * Nothing else on the machine is touched: other tables (iptables-nft's "ip nat", kube-proxy's, ...)
#     keep their rules. Do not also run strait-iptables.sh in the same pod: the first nat rule that
#     redirects a connection wins, and two sets of rules only make that harder to read.
#
#   table inet strait
#     chain prerouting  (nat, hook prerouting, priority -100): tcp -> STRAIT_INBOUND
#     chain output      (nat, hook output, priority -100):     tcp -> STRAIT_OUTPUT
#     chain STRAIT_INBOUND      excluded ports return, the rest -> STRAIT_IN_REDIRECT (or listed ports only)
#     chain STRAIT_IN_REDIRECT  redirect to :15006
#     chain STRAIT_OUTPUT       proxy uid/gid, lo, loopback addresses, -o ports return; -q ports,
#                               -x/-i address lists -> STRAIT_REDIRECT
#     chain STRAIT_REDIRECT     redirect to :15001
set -euo pipefail

self=$(readlink -f "${BASH_SOURCE[0]}")
here=$(dirname "$self")
CAP_PROG=$(basename "$0")
# shellcheck disable=SC2034 # read by strait-capture-lib.sh (--help)
CAP_BACKEND_LINE="Backend: nftables, one table 'inet strait' (IPv4 and IPv6; Linux 5.2 or later) with the chains
STRAIT_INBOUND, STRAIT_IN_REDIRECT, STRAIT_OUTPUT and STRAIT_REDIRECT, replaced atomically on every
run. The command run is \$STRAIT_NFT (default nft)."
lib=""
for cand in "${STRAIT_CAPTURE_LIB:-}" "$here/strait-capture-lib.sh" "$here/../lib/strait/strait-capture-lib.sh"; do
  if [[ -n $cand && -r $cand ]]; then lib=$cand; break; fi
done
[[ -n $lib ]] || { echo "$CAP_PROG: cannot find strait-capture-lib.sh next to $self (or set STRAIT_CAPTURE_LIB)" >&2; exit 2; }
# shellcheck source=strait-capture-lib.sh
. "$lib"

capture_parse_args "$@"

NFT=${STRAIT_NFT:-nft}
TABLE="inet strait"

# set_of "a b c": "{ a, b, c }" (nft anonymous set syntax).
set_of() {
  local items joined
  read -r -a items <<<"$1"
  joined=$(IFS=,; echo "${items[*]}")
  printf '{ %s }' "${joined//,/, }"
}

ruleset() {
  local skip6=""
  ((CAP_IPV6)) || skip6=$'\t\tmeta nfproto ipv6 return\n'
  cat <<EOF
table $TABLE
delete table $TABLE
table $TABLE {
	chain prerouting {
		type nat hook prerouting priority -100; policy accept;
${skip6}$([[ $CAP_IN_MODE == none ]] && echo "		# inbound capture is off (-b '')" || echo "		meta l4proto tcp jump STRAIT_INBOUND")
	}
	chain output {
		type nat hook output priority -100; policy accept;
${skip6}$([[ $CAP_OUT_MODE == none && -z $CAP_OUT_PORTS_INCL ]] && echo "		# outbound capture is off (-i '' and no -q)" || echo "		meta l4proto tcp jump STRAIT_OUTPUT")
	}
	chain STRAIT_INBOUND {
EOF
  case $CAP_IN_MODE in
    all)
      printf '\t\ttcp dport %s return\n' "$(set_of "$CAP_IN_EXCLUDE")"
      printf '\t\tjump STRAIT_IN_REDIRECT\n'
      ;;
    list) printf '\t\ttcp dport %s jump STRAIT_IN_REDIRECT\n' "$(set_of "$CAP_IN_PORTS")" ;;
  esac
  cat <<EOF
	}
	chain STRAIT_IN_REDIRECT {
		meta l4proto tcp redirect to :$CAP_IN_PORT
	}
	chain STRAIT_OUTPUT {
		# The proxy's own connections, on every interface (its inbound forwards to the pod IP go over lo).
		meta skuid $(set_of "$CAP_UIDS") return
EOF
  [[ -z $CAP_GIDS ]] || printf '\t\tmeta skgid %s return\n' "$(set_of "$CAP_GIDS")"
  printf '\t\t# Loopback, including an application calling its own pod IP.\n'
  printf '\t\toifname "lo" return\n'
  printf '\t\tip daddr 127.0.0.0/8 return\n'
  printf '\t\tip6 daddr ::1 return\n'
  [[ -z $CAP_OUT_PORTS_EXCL ]] || printf '\t\ttcp dport %s return\n' "$(set_of "$CAP_OUT_PORTS_EXCL")"
  [[ -z $CAP_OUT_PORTS_INCL ]] || printf '\t\ttcp dport %s jump STRAIT_REDIRECT\n' "$(set_of "$CAP_OUT_PORTS_INCL")"
  [[ -z $CAP_OUT_EXCL4 ]] || printf '\t\tip daddr %s return\n' "$(set_of "$CAP_OUT_EXCL4")"
  [[ -z $CAP_OUT_EXCL6 ]] || printf '\t\tip6 daddr %s return\n' "$(set_of "$CAP_OUT_EXCL6")"
  case $CAP_OUT_MODE in
    all) printf '\t\tjump STRAIT_REDIRECT\n' ;;
    list)
      [[ -z $CAP_OUT_CIDRS4 ]] || printf '\t\tip daddr %s jump STRAIT_REDIRECT\n' "$(set_of "$CAP_OUT_CIDRS4")"
      [[ -z $CAP_OUT_CIDRS6 ]] || printf '\t\tip6 daddr %s jump STRAIT_REDIRECT\n' "$(set_of "$CAP_OUT_CIDRS6")"
      ;;
  esac
  cat <<EOF
	}
	chain STRAIT_REDIRECT {
		meta l4proto tcp redirect to :$CAP_OUT_PORT
	}
}
EOF
}

clean_ruleset() {
  printf 'table %s\ndelete table %s\n' "$TABLE" "$TABLE"
}

if ((CAP_CLEAN)); then
  rules=$(clean_ruleset)
else
  rules=$(ruleset)
fi

if ((CAP_DRY_RUN)); then
  if ((CAP_CLEAN)); then echo "# $CAP_PROG --clean"; else echo "# $CAP_PROG: $(capture_summary)"; fi
  printf "%s -f - <<'EOF'\n%s\nEOF\n" "$NFT" "$rules"
  exit 0
fi

command -v "$NFT" >/dev/null 2>&1 ||
  { echo "$CAP_PROG: '$NFT' not found: install the nftables package (or set STRAIT_NFT)" >&2; exit 1; }
if ! err=$("$NFT" list tables 2>&1 >/dev/null); then
  echo "$CAP_PROG: cannot use nftables with $NFT (root with NET_ADMIN and NET_RAW is needed): $err" >&2
  exit 1
fi
if ! err=$(printf '%s\n' "$rules" | "$NFT" -f - 2>&1); then
  echo "$CAP_PROG: nft rejected the rules: $err" >&2
  exit 1
fi
if ((CAP_CLEAN)); then
  echo "$CAP_PROG: removed table $TABLE"
else
  echo "$CAP_PROG: $(capture_summary)"
  "$NFT" list table "${TABLE% *}" "${TABLE#* }"
fi
