#!/usr/bin/env bash
# runtime-packages.sh BINARY...: the Debian packages holding the shared libraries the binaries load,
# one name a line. deploy/Dockerfile runs it in the build stage so the runtime stage installs exactly
# those packages (and no -dev package, compiler or header), whatever libraries the build links today.
set -euo pipefail
(($# > 0)) || { echo "usage: $0 BINARY..." >&2; exit 2; }
for bin in "$@"; do
  ldd "$bin" || { echo "runtime-packages: ldd failed on $bin" >&2; exit 1; }
done |
  awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
  sort -u |
  while read -r lib; do
    # Debian 12 has merged /usr, and dpkg knows each file by the path its package shipped, which may
    # be /lib/... or /usr/lib/..., and may be the versioned file behind the soname link.
    for cand in "$lib" "/usr$lib" "${lib#/usr}" "$(readlink -f "$lib")"; do
      if owner=$(dpkg -S "$cand" 2>/dev/null | grep -v '^diversion' | head -n 1) && [[ -n $owner ]]; then
        echo "${owner%%:*}"
        continue 2
      fi
    done
    echo "runtime-packages: no Debian package holds $lib" >&2
    exit 1
  done |
  sort -u
