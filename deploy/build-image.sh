#!/usr/bin/env bash
# Builds the sidecar image and the init image from an already built strait binary, without a daemon
# or a registry (buildah, Debian package), and writes each as an OCI archive any runtime can load.
#
#   deploy/build-image.sh [--binary PATH | --static PATH] [--registry PREFIX] [--tag TAG]
#                         [--out DIR] [--only strait|init]
#
#   --binary PATH     the strait to put in the image (default: build-release/proxy/strait); a dynamic
#                     binary gets exactly the shared libraries ldd lists for it, plus the loader
#   --static PATH     a binary from cmake -DSTRAIT_STATIC=ON: no libraries at all
#   --registry PREFIX image names are PREFIX/strait:TAG and PREFIX/strait-init:TAG (default: localhost,
#                     which is where `podman load` puts unqualified local images)
#   --tag TAG         default 0.1.0
#   --out DIR         where the archives go (default: build-oci): DIR/strait-TAG.oci.tar and
#                     DIR/strait-init-TAG.oci.tar
#
# Both images are FROM scratch (deploy/Containerfile, deploy/Containerfile.init) over a root staged here
# from the build machine's files; the binary is stripped on the way in. The init image copies this
# machine's iptables/nft and their libraries rather than installing Debian packages, because no base
# image or package download is needed then, and the capture scripts are tested against exactly these
# tools (tests/integration/test_image.py runs both images' roots). Buildah runs with --network=none
# and a private storage directory that is removed at the end, so nothing is left in the machine's own
# container storage: `podman load -i ARCHIVE` when you want it there.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
binary="$repo/build-release/proxy/strait"
static=0
registry=localhost
tag=0.1.0
out="$repo/build-oci"
only=""
die() { echo "build-image.sh: $*" >&2; exit 2; }
while (($#)); do
  case "$1" in
    --binary) binary=${2:?--binary needs a path}; static=0; shift 2 ;;
    --static) binary=${2:?--static needs a path}; static=1; shift 2 ;;
    --registry) registry=${2:?--registry needs a prefix}; shift 2 ;;
    --tag) tag=${2:?--tag needs a value}; shift 2 ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --only) only=${2:?--only needs strait or init}; shift 2 ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
case "$only" in ""|strait|init) ;; *) die "--only: '$only' is not strait or init" ;; esac
[[ $tag =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "--tag: '$tag' is not a valid image tag"
[[ $registry =~ ^[a-z0-9.:/_-]+$ ]] || die "--registry: '$registry' is not a registry prefix (lower case)"
command -v buildah >/dev/null || { echo "build-image.sh: buildah is not installed (apt-get install buildah)" >&2; exit 1; }
[[ $only == init || -x $binary ]] || { echo "build-image.sh: no strait binary at $binary (build it, or pass --binary/--static)" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/strait-image.XXXXXX")
storage=(--root "$work/storage" --runroot "$work/run" --storage-driver vfs)
trap 'buildah "${storage[@]}" rm --all >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
mkdir -p "$out"

# copy_file SRC ROOT: SRC at the same path under ROOT, symlinks followed (the file itself, not a link).
copy_file() {
  install -D -m "$(stat -L -c %a "$1")" "$(readlink -f "$1")" "$2$1"
}

# copy_libs ROOT FILE...: the shared libraries ldd lists for each FILE, and the loader.
copy_libs() {
  local root=$1 lib
  shift
  for lib in $(ldd "$@" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && $1 !~ /:$/ { print $1 }' | sort -u); do
    copy_file "$lib" "$root"
  done
}

build() {  # build NAME CONTAINERFILE ROOT
  local name=$1 file=$2 ctx
  ctx=$(dirname "$3")
  buildah "${storage[@]}" build --quiet --network=none --layers=false \
    -f "$file" -t "$registry/$name:$tag" "$ctx" >/dev/null
  rm -f "$out/$name-$tag.oci.tar"
  buildah "${storage[@]}" push --quiet "$registry/$name:$tag" "oci-archive:$out/$name-$tag.oci.tar:$registry/$name:$tag"
  echo "$out/$name-$tag.oci.tar $registry/$name:$tag $(du -k "$out/$name-$tag.oci.tar" | cut -f1) KiB"
}

if [[ $only != init ]]; then
  root="$work/strait/rootfs"
  mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp"
  chmod 1777 "$root/tmp"
  strip --strip-unneeded -o "$root/usr/local/bin/strait" "$binary"
  chmod 0755 "$root/usr/local/bin/strait"
  if ((static)); then
    file -L "$binary" | grep -q 'statically linked' || die "--static: $binary is not statically linked"
  else
    copy_libs "$root" "$binary"
  fi
  cc -static -Os -s -o "$root/usr/local/bin/strait-wait" "$repo/deploy/strait-wait.c"
  install -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  printf 'strait:x:1337:1337:strait:/nonexistent:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'strait:x:1337:\n' >"$root/etc/group"
  # Fails the build when a library is missing, before an image is written.
  chroot --userspec=1337:1337 "$root" /usr/local/bin/strait --version >/dev/null
  build strait "$repo/deploy/Containerfile" "$root"
fi

if [[ $only != strait ]]; then
  root="$work/init/rootfs"
  mkdir -p "$root/usr/local/bin" "$root/usr/local/lib/strait" "$root/usr/sbin" "$root/bin" "$root/run" "$root/tmp" "$root/etc"
  chmod 1777 "$root/tmp"
  tools=(/usr/sbin/xtables-nft-multi /usr/sbin/xtables-legacy-multi /usr/sbin/nft)
  for t in bash env readlink dirname basename grep cat xargs tr; do tools+=("$(command -v "$t")"); done
  for t in "${tools[@]}"; do copy_file "$t" "$root"; done
  copy_libs "$root" "${tools[@]}" /usr/lib/x86_64-linux-gnu/xtables/*.so
  # The xtables extensions are loaded with dlopen, so ldd of the binaries does not list them.
  for x in /usr/lib/x86_64-linux-gnu/xtables/*.so; do copy_file "$x" "$root"; done
  for t in iptables ip6tables iptables-save ip6tables-save iptables-restore ip6tables-restore; do
    ln -sf xtables-nft-multi "$root/usr/sbin/$t"
    ln -sf xtables-nft-multi "$root/usr/sbin/${t/tables/tables-nft}"
    ln -sf xtables-legacy-multi "$root/usr/sbin/${t/tables/tables-legacy}"
  done
  for t in bash env readlink dirname basename grep cat xargs tr; do
    p=$(command -v "$t"); [[ -e $root/bin/$t ]] || ln -sf "$p" "$root/bin/$t"
  done
  install -m 0755 "$repo/deploy/strait-iptables.sh" "$repo/deploy/strait-nftables.sh" "$root/usr/local/bin/"
  install -m 0644 "$repo/deploy/strait-capture-lib.sh" "$root/usr/local/lib/strait/"
  printf 'root:x:0:0:root:/nonexistent:/bin/bash\n' >"$root/etc/passwd"
  printf 'root:x:0:\n' >"$root/etc/group"
  # The scripts find their library and parse their defaults inside the root.
  PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin chroot "$root" /usr/local/bin/strait-iptables.sh --dry-run >/dev/null
  PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin chroot "$root" /usr/local/bin/strait-nftables.sh --dry-run >/dev/null
  build strait-init "$repo/deploy/Containerfile.init" "$root"
fi
