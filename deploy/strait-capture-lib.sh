# shellcheck shell=bash disable=SC2034,SC2153
# (SC2034/SC2153: the CAP_ variables are set here and read by the scripts that source this file.)
# Shared by deploy/strait-iptables.sh and deploy/strait-nftables.sh: the options, their validation and
# the --help text. Both scripts accept exactly the same flags and environment variables and build the
# same capture plan; only the commands that install it differ. This file is sourced, never executed.
#
# After capture_parse_args "$@" the plan is in these variables (lists are space separated):
#   CAP_OUT_PORT CAP_IN_PORT       ports of the proxy's outbound (15001) and inbound (15006) listeners
#   CAP_UIDS CAP_GIDS              owners whose traffic is never captured (the proxy itself)
#   CAP_IN_MODE                    all | list | none
#   CAP_IN_PORTS                   with "list": the ports to capture inbound
#   CAP_IN_EXCLUDE                 with "all": the ports left alone (always holds both capture ports)
#   CAP_OUT_MODE                   all | list | none   (by destination address)
#   CAP_OUT_CIDRS4 CAP_OUT_CIDRS6  with "list": the destinations to capture, by family
#   CAP_OUT_EXCL4 CAP_OUT_EXCL6    destinations never captured, by family
#   CAP_OUT_PORTS_EXCL             destination ports never captured outbound
#   CAP_OUT_PORTS_INCL             destination ports always captured outbound (beats the address lists)
#   CAP_IPV6 CAP_DRY_RUN CAP_CLEAN 0 or 1

CAP_DEFAULT_INBOUND_EXCLUDE="15000,15001,15006,15021,15090"

# Values such as '*' go through unquoted word splitting below: no pathname expansion, ever.
set -f

capture_die() {
  echo "${CAP_PROG:-strait-capture}: $*" >&2
  echo "Try '${CAP_PROG:-strait-capture} --help'." >&2
  exit 2
}

capture_usage() {
  # $1: name of the program, $2: one line about the backend.
  cat <<EOF
Usage: $1 [options]

$2

Sends the pod's TCP traffic through the Strait sidecar, the way Istio's sidecars are wired:
outbound connections made by the workload are redirected to the proxy's outbound listener, and
connections arriving at the pod are redirected to its inbound listener. Traffic of the proxy's own
user and group, loopback traffic and the listed exceptions are left alone. Run it once per pod, in
an init container with NET_ADMIN and NET_RAW, as root. Running it again replaces the rules (it never
duplicates them); --clean removes them.

Every option can also be given by the environment variable shown; a flag beats the variable.
Lists are comma separated. '*' means "everything", an empty string means "nothing".

  -p, --outbound-capture-port PORT   outbound listener of the proxy           [STRAIT_OUTBOUND_CAPTURE_PORT, 15001]
  -z, --inbound-capture-port PORT    inbound listener of the proxy            [STRAIT_INBOUND_CAPTURE_PORT, 15006]
  -u, --proxy-uid UID[,UID...]       uids whose traffic is never captured     [STRAIT_PROXY_UID, 1337]
  -g, --proxy-gid GID[,GID...]       gids whose traffic is never captured     [STRAIT_PROXY_GID, 1337]
  -b, --inbound-ports PORTS          inbound ports to capture: '*', a list, or '' for none
                                                                              [STRAIT_INBOUND_PORTS, '*']
  -d, --exclude-inbound-ports PORTS  inbound ports never captured (with -b '*')
                                                                              [STRAIT_EXCLUDE_INBOUND_PORTS,
                                                                               $CAP_DEFAULT_INBOUND_EXCLUDE]
  -i, --outbound-cidrs CIDRS         outbound destinations to capture: '*', a list of IPv4/IPv6 CIDRs,
                                     or '' for none                           [STRAIT_OUTBOUND_CIDRS, '*']
  -x, --exclude-outbound-cidrs CIDRS outbound destinations never captured     [STRAIT_EXCLUDE_OUTBOUND_CIDRS, '']
  -o, --exclude-outbound-ports PORTS outbound destination ports never captured
                                                                              [STRAIT_EXCLUDE_OUTBOUND_PORTS, '']
  -q, --outbound-ports PORTS         outbound destination ports captured whatever -i and -x say
                                                                              [STRAIT_OUTBOUND_PORTS, '']
      --ipv6 / --no-ipv6             also capture IPv6 traffic                [STRAIT_IPV6=1|0, off]
      --dry-run                      print the commands instead of running them  [STRAIT_DRY_RUN=1]
      --clean                        remove everything this script installed, then exit
  -h, --help                         this text

Always true, whatever the options:
  * The two capture ports themselves are never captured inbound (a connection redirected to the port it
    already targets would make the proxy forward it to itself, forever).
  * Loopback destinations (127.0.0.0/8, ::1) and anything leaving through 'lo' are never captured.
  * Connections made by the proxy's uid or gid are never captured, over any interface.
  * Only TCP is captured. UDP (DNS included) is untouched.

Examples:
  $1                                  # the defaults: capture everything, IPv4 only
  $1 -d 15000,15001,15006,15021,15090,9000 -x 169.254.169.254/32 --ipv6
  $1 -b 8080,8443 -i 10.0.0.0/8       # only these inbound ports and this outbound range
  $1 --dry-run                        # show what would run
  $1 --clean                          # undo
EOF
}

# Validators. Each prints nothing and returns non-zero when the value is bad.
capture_is_port() {
  [[ $1 =~ ^[0-9]{1,5}$ ]] && ((10#$1 >= 1 && 10#$1 <= 65535))
}
capture_is_id() {
  [[ $1 =~ ^[0-9]{1,10}$ ]] && ((10#$1 <= 4294967294))
}
capture_is_cidr4() {
  local addr=${1%/*} len="" o
  [[ $1 == */* ]] && len=${1#*/}
  if [[ -n $len || $1 == */ ]]; then
    [[ $len =~ ^[0-9]{1,2}$ ]] && ((10#$len <= 32)) || return 1
  fi
  [[ $addr =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]] || return 1
  for o in "${BASH_REMATCH[@]:1}"; do ((10#$o <= 255)) || return 1; done
}
capture_is_cidr6() {
  local addr=${1%/*} len=""
  [[ $1 == */* ]] && len=${1#*/}
  if [[ -n $len || $1 == */ ]]; then
    [[ $len =~ ^[0-9]{1,3}$ ]] && ((10#$len <= 128)) || return 1
  fi
  # A loose shape check (hex groups, colons, at most one '::', an optional dotted IPv4 tail); the
  # firewall tool has the last word on anything subtler.
  [[ $addr == *:* && $addr =~ ^[0-9A-Fa-f:]*(:[0-9]{1,3}(\.[0-9]{1,3}){3})?$ ]] || return 1
  local rest=${addr#*::}
  [[ $rest == "$addr" || $rest != *::* ]]
}

# capture_split VAR VALUE: VALUE split on commas into the space separated VAR, empty items dropped,
# surrounding blanks trimmed.
capture_split() {
  local -n _out=$1
  local item items=()
  IFS=, read -r -a items <<<"$2"
  _out=""
  for item in "${items[@]}"; do
    item=${item//[[:space:]]/}
    [[ -n $item ]] && _out+="${_out:+ }$item"
  done
  return 0
}

capture_check_ports() {
  # $1: what (for messages), rest: ports
  local what=$1 p
  shift
  for p in "$@"; do
    capture_is_port "$p" || capture_die "$what: '$p' is not a port number (1-65535)"
  done
}

capture_bool() {
  case "${2,,}" in
    1 | true | yes | on) printf 1 ;;
    0 | false | no | off | "") printf 0 ;;
    *) capture_die "$1: '$2' is not a boolean (1/0, true/false)" ;;
  esac
}

capture_parse_args() {
  local out_port=${STRAIT_OUTBOUND_CAPTURE_PORT:-15001}
  local in_port=${STRAIT_INBOUND_CAPTURE_PORT:-15006}
  local uids=${STRAIT_PROXY_UID:-1337}
  local gids=${STRAIT_PROXY_GID:-1337}
  local in_ports=${STRAIT_INBOUND_PORTS-*}
  local in_excl=${STRAIT_EXCLUDE_INBOUND_PORTS-$CAP_DEFAULT_INBOUND_EXCLUDE}
  local out_cidrs=${STRAIT_OUTBOUND_CIDRS-*}
  local out_excl=${STRAIT_EXCLUDE_OUTBOUND_CIDRS-}
  local out_ports_excl=${STRAIT_EXCLUDE_OUTBOUND_PORTS-}
  local out_ports_incl=${STRAIT_OUTBOUND_PORTS-}
  CAP_IPV6=$(capture_bool STRAIT_IPV6 "${STRAIT_IPV6:-0}") || exit 2
  CAP_DRY_RUN=$(capture_bool STRAIT_DRY_RUN "${STRAIT_DRY_RUN:-0}") || exit 2
  CAP_CLEAN=0

  local opt val inline
  while (($# > 0)); do
    opt=$1
    val=""
    inline=0
    if [[ $opt == --*=* ]]; then
      # --name=value: split it into two words so both spellings take the same path below.
      val=${opt#*=}
      opt=${opt%%=*}
      inline=1
      shift
      set -- "$opt" "$val" "$@"
    fi
    case "$opt" in
      -h | --help | --ipv6 | --no-ipv6 | --dry-run | --clean)
        ((inline == 0)) || capture_die "option '$opt' takes no value"
        ;;
    esac
    case "$opt" in
      -h | --help) capture_usage "$CAP_PROG" "$CAP_BACKEND_LINE"; exit 0 ;;
      --ipv6) CAP_IPV6=1; shift; continue ;;
      --no-ipv6) CAP_IPV6=0; shift; continue ;;
      --dry-run) CAP_DRY_RUN=1; shift; continue ;;
      --clean) CAP_CLEAN=1; shift; continue ;;
      -p | --outbound-capture-port | -z | --inbound-capture-port | -u | --proxy-uid | -g | --proxy-gid | \
        -b | --inbound-ports | -d | --exclude-inbound-ports | -i | --outbound-cidrs | \
        -x | --exclude-outbound-cidrs | -o | --exclude-outbound-ports | -q | --outbound-ports)
        (($# >= 2)) || capture_die "option '$opt' needs a value"
        val=$2
        shift 2
        ;;
      --) shift; (($# == 0)) || capture_die "unexpected argument '$1'"; break ;;
      -*) capture_die "unknown option '$opt'" ;;
      *) capture_die "unexpected argument '$opt' (options take their value as the next word)" ;;
    esac
    case "$opt" in
      -p | --outbound-capture-port) out_port=$val ;;
      -z | --inbound-capture-port) in_port=$val ;;
      -u | --proxy-uid) uids=$val ;;
      -g | --proxy-gid) gids=$val ;;
      -b | --inbound-ports) in_ports=$val ;;
      -d | --exclude-inbound-ports) in_excl=$val ;;
      -i | --outbound-cidrs) out_cidrs=$val ;;
      -x | --exclude-outbound-cidrs) out_excl=$val ;;
      -o | --exclude-outbound-ports) out_ports_excl=$val ;;
      -q | --outbound-ports) out_ports_incl=$val ;;
    esac
  done

  capture_is_port "$out_port" || capture_die "outbound capture port (-p): '$out_port' is not a port number (1-65535)"
  capture_is_port "$in_port" || capture_die "inbound capture port (-z): '$in_port' is not a port number (1-65535)"
  [[ $out_port != "$in_port" ]] || capture_die "the outbound (-p) and inbound (-z) capture ports must differ (both $in_port)"
  CAP_OUT_PORT=$((10#$out_port))
  CAP_IN_PORT=$((10#$in_port))

  local id
  capture_split CAP_UIDS "$uids"
  capture_split CAP_GIDS "$gids"
  [[ -n $CAP_UIDS ]] || capture_die "proxy uid (-u) must not be empty: the proxy's own traffic would loop"
  for id in $CAP_UIDS; do capture_is_id "$id" || capture_die "proxy uid (-u): '$id' is not a numeric uid"; done
  for id in $CAP_GIDS; do capture_is_id "$id" || capture_die "proxy gid (-g): '$id' is not a numeric gid"; done

  # Inbound.
  local list p
  CAP_IN_PORTS=""
  CAP_IN_EXCLUDE=""
  in_ports=${in_ports//[[:space:]]/}
  if [[ $in_ports == "*" ]]; then
    CAP_IN_MODE=all
  elif [[ -z $in_ports ]]; then
    CAP_IN_MODE=none
  else
    CAP_IN_MODE=list
    capture_split list "$in_ports"
    # shellcheck disable=SC2086
    capture_check_ports "inbound ports (-b)" $list
    for p in $list; do
      p=$((10#$p))
      # Never redirect a capture port to the proxy: it would forward the connection to itself.
      [[ $p == "$CAP_OUT_PORT" || $p == "$CAP_IN_PORT" ]] && continue
      [[ " $CAP_IN_PORTS " == *" $p "* ]] || CAP_IN_PORTS+="${CAP_IN_PORTS:+ }$p"
    done
    [[ -n $CAP_IN_PORTS ]] || CAP_IN_MODE=none
  fi
  [[ $in_excl != *"*"* ]] || capture_die "exclude inbound ports (-d): '*' is not allowed (use -b '' to capture nothing)"
  capture_split list "$in_excl"
  # shellcheck disable=SC2086
  capture_check_ports "exclude inbound ports (-d)" $list
  for p in $list $CAP_OUT_PORT $CAP_IN_PORT; do
    p=$((10#$p))
    [[ " $CAP_IN_EXCLUDE " == *" $p "* ]] || CAP_IN_EXCLUDE+="${CAP_IN_EXCLUDE:+ }$p"
  done

  # Outbound.
  local c
  CAP_OUT_CIDRS4=""
  CAP_OUT_CIDRS6=""
  out_cidrs=${out_cidrs//[[:space:]]/}
  if [[ $out_cidrs == "*" ]]; then
    CAP_OUT_MODE=all
  elif [[ -z $out_cidrs ]]; then
    CAP_OUT_MODE=none
  else
    CAP_OUT_MODE=list
    capture_split list "$out_cidrs"
    for c in $list; do
      if capture_is_cidr4 "$c"; then
        CAP_OUT_CIDRS4+="${CAP_OUT_CIDRS4:+ }$c"
      elif capture_is_cidr6 "$c"; then
        CAP_OUT_CIDRS6+="${CAP_OUT_CIDRS6:+ }$c"
      else
        capture_die "outbound CIDRs (-i): '$c' is not an IPv4 or IPv6 address or CIDR ('*' must stand alone)"
      fi
    done
  fi
  CAP_OUT_EXCL4=""
  CAP_OUT_EXCL6=""
  capture_split list "$out_excl"
  for c in $list; do
    if capture_is_cidr4 "$c"; then
      CAP_OUT_EXCL4+="${CAP_OUT_EXCL4:+ }$c"
    elif capture_is_cidr6 "$c"; then
      CAP_OUT_EXCL6+="${CAP_OUT_EXCL6:+ }$c"
    else
      capture_die "exclude outbound CIDRs (-x): '$c' is not an IPv4 or IPv6 address or CIDR"
    fi
  done
  capture_split CAP_OUT_PORTS_EXCL "$out_ports_excl"
  # shellcheck disable=SC2086
  capture_check_ports "exclude outbound ports (-o)" $CAP_OUT_PORTS_EXCL
  capture_split CAP_OUT_PORTS_INCL "$out_ports_incl"
  # shellcheck disable=SC2086
  capture_check_ports "outbound ports (-q)" $CAP_OUT_PORTS_INCL
  return 0
}

# One line that says what the plan is, for the init container's log.
capture_summary() {
  local in out
  case $CAP_IN_MODE in
    all) in="all TCP ports except ${CAP_IN_EXCLUDE// /,}" ;;
    list) in="ports ${CAP_IN_PORTS// /,}" ;;
    none) in="nothing" ;;
  esac
  case $CAP_OUT_MODE in
    all) out="all destinations" ;;
    list) out="destinations $(echo "$CAP_OUT_CIDRS4 $CAP_OUT_CIDRS6" | xargs | tr ' ' ,)" ;;
    none) out="no destinations" ;;
  esac
  [[ -n "$CAP_OUT_EXCL4$CAP_OUT_EXCL6" ]] && out+=" except $(echo "$CAP_OUT_EXCL4 $CAP_OUT_EXCL6" | xargs | tr ' ' ,)"
  [[ -n $CAP_OUT_PORTS_EXCL ]] && out+=", never ports ${CAP_OUT_PORTS_EXCL// /,}"
  [[ -n $CAP_OUT_PORTS_INCL ]] && out+=", always ports ${CAP_OUT_PORTS_INCL// /,}"
  echo "inbound -> :$CAP_IN_PORT for $in; outbound -> :$CAP_OUT_PORT for $out;" \
    "uid ${CAP_UIDS// /,} gid ${CAP_GIDS:-none} never captured; IPv6 $( ((CAP_IPV6)) && echo on || echo off)"
}
