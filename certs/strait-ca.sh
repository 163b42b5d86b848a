#!/usr/bin/env bash
# strait-ca.sh: a small mesh CA on the openssl CLI, for tests and the demo (not for production keys).
#
#   strait-ca.sh root --dir DIR [--trust-domain cluster.local] [--days 3650] [--ec|--rsa] [--force]
#       DIR/root-cert.pem, DIR/root-key.pem: a self-signed CA (ECDSA P-256 unless --rsa: RSA 2048),
#       basicConstraints critical CA:TRUE, keyUsage critical keyCertSign,cRLSign; DIR/trust-domain
#       remembers the trust domain for `workload`. An existing root is kept unless --force.
#   strait-ca.sh intermediate --dir DIR --out OUTDIR [--days 365] [--rsa]
#       OUTDIR/ca-cert.pem, ca-key.pem: an intermediate CA (pathlen 0) signed by DIR's root;
#       OUTDIR/cert-chain.pem = ca-cert.pem + root cert; OUTDIR/root-cert.pem = copy of the root.
#   strait-ca.sh workload --dir DIR --out OUTDIR --ns NS --sa SA [--trust-domain TD]
#                [--seconds N | --days N] [--not-before-offset-seconds N] [--dns NAME]... [--rsa]
#                [--ca-dir CADIR]
#       OUTDIR/cert-chain.pem: the leaf, then the intermediate (CADIR/ca-cert.pem) when --ca-dir is given;
#       OUTDIR/key.pem: the leaf key; OUTDIR/root-cert.pem: a copy of DIR/root-cert.pem (trust anchor).
#       The leaf: ECDSA P-256 (RSA 2048 with --rsa), subject O=strait, URI SAN
#       spiffe://TD/ns/NS/sa/SA (+ DNS SANs), extendedKeyUsage serverAuth,clientAuth, keyUsage critical
#       digitalSignature (+keyEncipherment for RSA), basicConstraints CA:FALSE, a random serial.
#       TD defaults to DIR/trust-domain, else cluster.local. Signed by CADIR's intermediate when given,
#       else by DIR's root.
#       Lifetime: notBefore = now + offset (--not-before-offset-seconds, default 0); notAfter = notBefore
#       + --seconds N, or + --days N (default 1 day). An offset of -7200 with --seconds 3600 gives a
#       certificate that expired an hour ago.
#   strait-ca.sh show FILE
#       The first certificate in FILE: subject, serial, notBefore, notAfter, one line per URI and DNS SAN.
#
# Writing outputs: every file is written in a temporary directory inside the output directory (same
# file system) and then renamed into place, so no reader ever sees a partly written file. Renaming two
# files is not atomic as a pair, though: a watcher may see the new key with the old chain for an
# instant. The order is therefore fixed: root-cert.pem, then key.pem, then cert-chain.pem last, so the
# last change event always leaves a matching pair. Strait checks that a certificate and its key match
# when it (re)loads them and keeps serving the old pair when they do not, then picks the new pair up on
# the next event.
#
# Needs: openssl (1.1.1 or 3.x; Debian 12 ships 3.0, whose `x509 -req` has no -not_before/-not_after,
# so leaf and intermediate certificates are issued with `openssl ca -startdate/-enddate`), GNU date.
set -euo pipefail

PROG=$(basename "$0")

die() {
  echo "$PROG: $*" >&2
  exit 1
}

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
  exit 2
}

is_int() { [[ "$1" =~ ^-?[0-9]+$ ]]; }

# Generates a private key (PKCS#8 PEM) into $2: "ec" (P-256) or "rsa" (2048 bits).
gen_key() {
  local kind=$1 out=$2
  if [[ "$kind" == rsa ]]; then
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$out" 2>/dev/null
  else
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -pkeyopt ec_param_enc:named_curve \
      -out "$out" 2>/dev/null
  fi
  chmod 600 "$out"
}

# An instant as openssl ca wants it: YYYYMMDDHHMMSSZ (UTC), from seconds since the epoch.
asn1_time() { date -u -d "@$1" +%Y%m%d%H%M%SZ; }

TMP=""
cleanup() { [[ -n "$TMP" && -d "$TMP" ]] && rm -rf -- "$TMP"; return 0; }
trap cleanup EXIT

# Makes a private temporary directory inside $1 (created if needed) and sets TMP to it.
make_tmp_in() {
  mkdir -p -- "$1"
  TMP=$(mktemp -d "$(cd -- "$1" && pwd -P)/.strait-ca.XXXXXX")
  chmod 700 "$TMP"
}

# Installs $TMP/$1 as $2/$1 with mode $3 (rename within one file system: atomic per file).
install_file() {
  local name=$1 dir=$2 mode=$3
  chmod "$mode" "$TMP/$name"
  mv -f -- "$TMP/$name" "$dir/$name"
}

# Writes an `openssl ca` configuration with a throw-away database in $TMP/ca.
# $1: extensions section body (one "key = value" per line) for the issued certificate.
write_ca_config() {
  local ext_body=$1
  mkdir -p "$TMP/ca/new"
  : >"$TMP/ca/index.txt"
  echo 01 >"$TMP/ca/serial"  # unused with -rand_serial, but openssl ca insists on the setting
  cat >"$TMP/ca/openssl.cnf" <<EOF
[ ca ]
default_ca = strait_ca

[ strait_ca ]
database = $TMP/ca/index.txt
serial = $TMP/ca/serial
new_certs_dir = $TMP/ca/new
default_md = sha256
policy = policy_any
unique_subject = no
email_in_dn = no
copy_extensions = none
x509_extensions = issued_ext

[ policy_any ]
organizationName = optional
organizationalUnitName = optional
commonName = optional

[ req ]
distinguished_name = req_dn
prompt = no

[ req_dn ]
O = strait

[ issued_ext ]
$ext_body
EOF
}

# Issues a certificate for the key $TMP/$1 into $TMP/$2 with subject $3, signed by cert $4 / key $5,
# valid from epoch second $6 to $7, with the extensions in $8.
issue() {
  local key=$1 out=$2 subject=$3 ca_cert=$4 ca_key=$5 not_before=$6 not_after=$7 ext_body=$8
  write_ca_config "$ext_body"
  openssl req -new -config "$TMP/ca/openssl.cnf" -key "$TMP/$key" -subj "$subject" -out "$TMP/ca/req.csr"
  local log
  if ! log=$(openssl ca -batch -notext -config "$TMP/ca/openssl.cnf" -cert "$ca_cert" -keyfile "$ca_key" \
      -rand_serial -preserveDN -subj "$subject" \
      -startdate "$(asn1_time "$not_before")" -enddate "$(asn1_time "$not_after")" \
      -in "$TMP/ca/req.csr" -out "$TMP/$out" 2>&1); then
    die "openssl ca failed: $log"
  fi
}

check_root_dir() {
  [[ -f "$1/root-cert.pem" && -f "$1/root-key.pem" ]] || die "no root CA in $1 (run: $PROG root --dir $1)"
}

cmd_root() {
  local dir="" td="cluster.local" days=3650 kind=ec force=0
  while (($#)); do
    case "$1" in
      --dir) dir=${2:?}; shift 2 ;;
      --trust-domain) td=${2:?}; shift 2 ;;
      --days) days=${2:?}; shift 2 ;;
      --ec) kind=ec; shift ;;
      --rsa) kind=rsa; shift ;;
      --force) force=1; shift ;;
      *) die "root: unknown argument: $1" ;;
    esac
  done
  [[ -n "$dir" ]] || die "root: --dir is required"
  [[ "$days" =~ ^[1-9][0-9]*$ ]] || die "root: --days must be a positive integer"
  [[ "$td" =~ ^[A-Za-z0-9._-]+$ ]] || die "root: invalid trust domain: $td"
  if [[ -e "$dir/root-cert.pem" && $force -eq 0 ]]; then
    die "root: $dir/root-cert.pem exists (use --force to replace the root)"
  fi
  make_tmp_in "$dir"
  gen_key "$kind" "$TMP/root-key.pem"
  cat >"$TMP/root.cnf" <<EOF
[ req ]
distinguished_name = req_dn
prompt = no
x509_extensions = root_ext

[ req_dn ]
O = strait
OU = $td
CN = Strait Root CA

[ root_ext ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
  openssl req -new -x509 -config "$TMP/root.cnf" -key "$TMP/root-key.pem" -sha256 -days "$days" \
    -set_serial "0x$(openssl rand -hex 16)" -out "$TMP/root-cert.pem"
  printf '%s\n' "$td" >"$TMP/trust-domain"
  install_file trust-domain "$dir" 644
  install_file root-key.pem "$dir" 600
  install_file root-cert.pem "$dir" 644
}

cmd_intermediate() {
  local dir="" out="" days=365 kind=ec
  while (($#)); do
    case "$1" in
      --dir) dir=${2:?}; shift 2 ;;
      --out) out=${2:?}; shift 2 ;;
      --days) days=${2:?}; shift 2 ;;
      --ec) kind=ec; shift ;;
      --rsa) kind=rsa; shift ;;
      *) die "intermediate: unknown argument: $1" ;;
    esac
  done
  [[ -n "$dir" && -n "$out" ]] || die "intermediate: --dir and --out are required"
  [[ "$days" =~ ^[1-9][0-9]*$ ]] || die "intermediate: --days must be a positive integer"
  check_root_dir "$dir"
  local td="cluster.local"
  [[ -f "$dir/trust-domain" ]] && td=$(<"$dir/trust-domain")
  make_tmp_in "$out"
  gen_key "$kind" "$TMP/ca-key.pem"
  local now
  now=$(date -u +%s)
  issue ca-key.pem ca-cert.pem "/O=strait/OU=$td/CN=Strait Intermediate CA" \
    "$dir/root-cert.pem" "$dir/root-key.pem" "$((now - 60))" "$((now + days * 86400))" \
    "basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always"
  cat "$TMP/ca-cert.pem" "$dir/root-cert.pem" >"$TMP/cert-chain.pem"
  cp -- "$dir/root-cert.pem" "$TMP/root-cert.pem"
  install_file root-cert.pem "$out" 644
  install_file ca-key.pem "$out" 600
  install_file ca-cert.pem "$out" 644
  install_file cert-chain.pem "$out" 644
}

cmd_workload() {
  local dir="" out="" ns="" sa="" td="" seconds="" days="" offset=0 kind=ec ca_dir=""
  local -a dns=()
  while (($#)); do
    case "$1" in
      --dir) dir=${2:?}; shift 2 ;;
      --out) out=${2:?}; shift 2 ;;
      --ns) ns=${2:?}; shift 2 ;;
      --sa) sa=${2:?}; shift 2 ;;
      --trust-domain) td=${2:?}; shift 2 ;;
      --seconds) seconds=${2:?}; shift 2 ;;
      --days) days=${2:?}; shift 2 ;;
      --not-before-offset-seconds) offset=${2:?}; shift 2 ;;
      --dns) dns+=("${2:?}"); shift 2 ;;
      --ec) kind=ec; shift ;;
      --rsa) kind=rsa; shift ;;
      --ca-dir) ca_dir=${2:?}; shift 2 ;;
      *) die "workload: unknown argument: $1" ;;
    esac
  done
  [[ -n "$dir" && -n "$out" && -n "$ns" && -n "$sa" ]] || die "workload: --dir, --out, --ns and --sa are required"
  [[ -z "$seconds" || -z "$days" ]] || die "workload: give --seconds or --days, not both"
  [[ -z "$seconds" || "$seconds" =~ ^[1-9][0-9]*$ ]] || die "workload: --seconds must be a positive integer"
  [[ -z "$days" || "$days" =~ ^[1-9][0-9]*$ ]] || die "workload: --days must be a positive integer"
  is_int "$offset" || die "workload: --not-before-offset-seconds must be an integer"
  check_root_dir "$dir"
  if [[ -z "$td" ]]; then
    td="cluster.local"
    [[ -f "$dir/trust-domain" ]] && td=$(<"$dir/trust-domain")
  fi
  # SPIFFE ID path segments: no '/', nothing that would need escaping in a URI or the config below.
  local part
  for part in "$td" "$ns" "$sa"; do
    [[ "$part" =~ ^[A-Za-z0-9._-]+$ ]] || die "workload: invalid trust domain, namespace or service account: $part"
  done
  for part in ${dns[@]+"${dns[@]}"}; do
    [[ "$part" =~ ^(\*\.)?[A-Za-z0-9._-]+$ ]] || die "workload: invalid DNS name: $part"
  done

  local signer_cert="$dir/root-cert.pem" signer_key="$dir/root-key.pem"
  if [[ -n "$ca_dir" ]]; then
    [[ -f "$ca_dir/ca-cert.pem" && -f "$ca_dir/ca-key.pem" ]] || die "workload: no intermediate CA in $ca_dir"
    signer_cert="$ca_dir/ca-cert.pem"
    signer_key="$ca_dir/ca-key.pem"
  fi

  local lifetime
  if [[ -n "$seconds" ]]; then
    lifetime=$seconds
  else
    lifetime=$((${days:-1} * 86400))
  fi
  local now not_before not_after
  now=$(date -u +%s)
  not_before=$((now + offset))
  not_after=$((not_before + lifetime))

  local san="URI:spiffe://$td/ns/$ns/sa/$sa" name
  for name in ${dns[@]+"${dns[@]}"}; do san+=",DNS:$name"; done
  local key_usage="critical, digitalSignature"
  [[ "$kind" == rsa ]] && key_usage+=", keyEncipherment"

  make_tmp_in "$out"
  gen_key "$kind" "$TMP/key.pem"
  issue key.pem leaf.pem "/O=strait" "$signer_cert" "$signer_key" "$not_before" "$not_after" \
    "basicConstraints = critical, CA:FALSE
keyUsage = $key_usage
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = $san
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always"
  # `openssl ca -notext` writes the PEM only; the chain is the leaf, then the intermediate if any.
  if [[ -n "$ca_dir" ]]; then
    cat "$TMP/leaf.pem" "$ca_dir/ca-cert.pem" >"$TMP/cert-chain.pem"
  else
    cp -- "$TMP/leaf.pem" "$TMP/cert-chain.pem"
  fi
  cp -- "$dir/root-cert.pem" "$TMP/root-cert.pem"
  install_file root-cert.pem "$out" 644
  install_file key.pem "$out" 600
  install_file cert-chain.pem "$out" 644
}

cmd_show() {
  (($# == 1)) || die "show: exactly one FILE"
  local file=$1
  [[ -f "$file" ]] || die "show: no such file: $file"
  # openssl x509 reads the first certificate of a chain file.
  openssl x509 -in "$file" -noout -nameopt RFC2253 -subject -serial -startdate -enddate
  local sans
  sans=$(openssl x509 -in "$file" -noout -ext subjectAltName 2>/dev/null | sed -n '2,$p' | tr ',' '\n' |
    sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//')
  local entry
  while IFS= read -r entry; do
    case "$entry" in
      URI:*) echo "uri_san=${entry#URI:}" ;;
      DNS:*) echo "dns_san=${entry#DNS:}" ;;
    esac
  done <<<"$sans"
}

(($#)) || usage
command=$1
shift
case "$command" in
  root) cmd_root "$@" ;;
  intermediate) cmd_intermediate "$@" ;;
  workload) cmd_workload "$@" ;;
  show) cmd_show "$@" ;;
  -h | --help | help) usage ;;
  *) die "unknown command: $command (root, intermediate, workload, show)" ;;
esac
