"""deploy/build-image.sh: the two images build here, and their roots run.

The sidecar image and the init image are built from the strait under test (STRAIT_BIN, else
build-release/proxy/strait, else build/proxy/strait) into OCI archives; the sidecar image again from the
static binary (`--static`: STRAIT_STATIC_BIN, else build-static/proxy/strait from -DSTRAIT_STATIC=ON;
skipped with the reason when there is none). Each archive is unpacked by hand: index.json ->
manifest -> config and gzip layers, which is what any runtime does. Nothing runs them through a
container runtime (podman run does not work in this sandbox); instead, in two network-namespace
"pods" (netns_pods.PodPair):

    pod A: the init image's entrypoint, chrooted into its root as root       -> the STRAIT_ chains exist
           (the static variant builds no init image: it runs deploy/strait-iptables.sh, the same file)
           the sidecar image's entrypoint + default args, chrooted, uid 1337 -> admin /ready 200
           curl http://10.200.0.2:8080/id (captured, through strait's embedded default)
    pod B: a plain HTTP server on 8080

Needs root, buildah, ip netns, iptables and curl (skips with the reason otherwise).
"""

import gzip
import json
import os
import shutil
import subprocess
import struct
import tarfile
import tempfile

import pytest

import netns_pods as np_
from netns_pods import B_ADDR4

REPO = np_.REPO
BUILD_IMAGE = os.path.join(REPO, "deploy", "build-image.sh")
IMAGE_FILES = {"usr/local/bin/strait", "usr/local/bin/strait-wait", "etc/ssl/certs/ca-certificates.crt",
               "etc/passwd", "etc/group"}


def image_binary():
    for cand in (os.environ.get("STRAIT_BIN"), os.path.join(REPO, "build-release", "proxy", "strait"),
                 os.path.join(REPO, "build", "proxy", "strait")):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    pytest.fail("no strait binary to put in the image: set STRAIT_BIN or build build-release/proxy/strait",
                pytrace=False)


def static_binary():
    """The -DSTRAIT_STATIC=ON strait for the static image; skips the static variant without one."""
    cand = os.environ.get("STRAIT_STATIC_BIN") or os.path.join(REPO, "build-static", "proxy", "strait")
    if not (os.path.isfile(cand) and os.access(cand, os.X_OK)):
        pytest.skip(f"no static strait at {cand}: build it (cmake -B build-static -DSTRAIT_STATIC=ON "
                    "-DSTRAIT_TESTS=OFF; ninja -C build-static strait) or set STRAIT_STATIC_BIN")
    assert elf_interpreter(cand) is None, f"STRAIT_STATIC_BIN {cand} is dynamically linked"
    return cand


def elf_interpreter(path):
    """The loader an ELF64 little-endian executable asks for (its PT_INTERP), or None for a static one."""
    with open(path, "rb") as f:
        head = f.read(64)
        assert head[:6] == b"\x7fELF\x02\x01", f"{path} is not an ELF64 little-endian file"
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            p_type, _, p_offset, _, _, p_filesz = struct.unpack("<IIQQQQ", f.read(40))
            if p_type == 3:  # PT_INTERP
                f.seek(p_offset)
                return f.read(p_filesz).rstrip(b"\0").decode()
    return None


def _skip_reason():
    r = np_.unavailable_reason()
    if r:
        return r
    for tool, pkg in (("buildah", "buildah"), ("iptables", "iptables"), ("curl", "curl"), ("cc", "gcc")):
        if shutil.which(tool) is None:
            return f"'{tool}' is not installed (deploy/install-deps.sh test installs {pkg})"
    return None


def unpack(archive, dest):
    """Unpacks an OCI archive's image into dest/rootfs; returns its config ("config" of the image config)."""
    layout = os.path.join(dest, "layout")
    os.makedirs(layout)
    with tarfile.open(archive) as t:
        t.extractall(layout)

    def blob(digest):
        return os.path.join(layout, "blobs", *digest.split(":", 1))

    with open(os.path.join(layout, "index.json")) as f:
        index = json.load(f)
    assert len(index["manifests"]) == 1, index
    with open(blob(index["manifests"][0]["digest"])) as f:
        manifest = json.load(f)
    with open(blob(manifest["config"]["digest"])) as f:
        config = json.load(f)["config"]
    root = os.path.join(dest, "rootfs")
    os.makedirs(root)
    for layer in manifest["layers"]:
        assert layer["mediaType"].endswith("tar+gzip"), layer
        with gzip.open(blob(layer["digest"])) as g, tarfile.open(fileobj=g, mode="r|") as t:
            t.extractall(root, numeric_owner=True)
    return config, root


@pytest.fixture(scope="module", params=[
    pytest.param("dynamic", marks=pytest.mark.unsanitized(
        "the image is built from STRAIT_BIN: its size is the point (a sanitized strait is far larger), and "
        "build-image.sh runs it in a chroot without /proc, where LeakSanitizer cannot start")),
    "static"])
def images(request):
    """Both images from the dynamic strait, or only the sidecar image from the static one."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    static = request.param == "static"
    which = ["--static", static_binary(), "--only", "strait"] if static else ["--binary", image_binary()]
    archives = {"strait": "strait-t1.oci.tar"} if static else \
        {"strait": "strait-t1.oci.tar", "init": "strait-init-t1.oci.tar"}
    out = tempfile.mkdtemp(prefix="strait-im-oci-")
    try:
        r = subprocess.run([BUILD_IMAGE, *which, "--registry", "registry.example/mesh", "--tag", "t1",
                            "--out", out], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        names = sorted(os.listdir(out))
        assert names == sorted(archives.values()), names
        result = {"static": static}
        for name, archive in archives.items():
            d = os.path.join(out, name)
            os.makedirs(d)
            config, root = unpack(os.path.join(out, archive), d)
            with tarfile.open(os.path.join(out, archive)) as t:
                index = json.load(t.extractfile("index.json"))
            result[name] = {"config": config, "root": root, "index": index,
                            "size": os.path.getsize(os.path.join(out, archive))}
        yield result
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_sidecar_image_is_the_smallest_honest_root(images):
    img = images["strait"]
    assert img["index"]["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == \
        "registry.example/mesh/strait:t1"
    assert img["config"]["User"] == "1337:1337"
    assert img["config"]["Entrypoint"] == ["/usr/local/bin/strait"]
    root = img["root"]
    files = set()
    for d, _, names in os.walk(root):
        files.update(os.path.relpath(os.path.join(d, n), root) for n in names)
    # The binary, its waiter, the CA bundle, the two user files, and the shared libraries + loader only
    # (with the static binary, nothing else at all: it asks for no loader).
    if images["static"]:
        assert files == IMAGE_FILES, files
        assert elf_interpreter(os.path.join(root, "usr/local/bin/strait")) is None
    else:
        others = {f for f in files if not f.startswith(("lib/", "lib64/", "usr/lib/"))}
        assert others == IMAGE_FILES, others
        interp = elf_interpreter(os.path.join(root, "usr/local/bin/strait"))
        assert interp and interp.lstrip("/") in files, interp
    assert not any(os.path.basename(f) in ("sh", "bash", "busybox") for f in files)
    with open(os.path.join(root, "etc/passwd")) as f:
        assert f.read().split(":")[2] == "1337"
    assert img["size"] < 40 << 20, f"sidecar image archive is {img['size']} bytes"
    unpacked = sum(os.lstat(os.path.join(root, f)).st_size for f in files)
    print(f"strait image ({'static' if images['static'] else 'dynamic'}): archive {img['size'] >> 10} KiB, "
          f"root {unpacked >> 10} KiB in {len(files)} files")


@pytest.fixture
def pods():
    with np_.PodPair("im-img") as p:
        yield p


def _run_image(p, ns, img, name, as_user=None, wait=True):
    """The image's entrypoint + default args with its env, chrooted into its root in ns."""
    cfg = img["config"]
    # What a runtime adds to a root: /dev and /proc, mounted in a mount namespace of their own.
    for d in ("dev", "proc"):
        os.makedirs(os.path.join(img["root"], d), exist_ok=True)
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
           'mount --rbind /dev "$0/dev" && mount -t proc proc "$0/proc" && exec "$@"', img["root"],
           "env", "-i", *cfg.get("Env", []), shutil.which("chroot") or "/usr/sbin/chroot"]
    if as_user:
        cmd.append(f"--userspec={as_user}")
    cmd += [img["root"], *(cfg.get("Entrypoint") or []), *(cfg.get("Cmd") or [])]
    if not wait:
        return p.spawn(ns, cmd, name)
    return p.run(ns, cmd)


def test_images_run_capture_and_proxy_in_a_pod(images, pods):
    p = pods
    if "init" in images:
        # The init image: its entrypoint, as root, with its default arguments.
        init = images["init"]
        assert init["config"]["Entrypoint"] == ["/usr/local/bin/strait-iptables.sh"]
        _run_image(p, p.a, init, "init")
    else:
        p.capture(p.a, "iptables")  # the script the init image runs, as the dynamic variant checks
    rules = p.run(p.a, ["iptables", "-t", "nat", "-S"]).stdout
    for chain in ("STRAIT_INBOUND", "STRAIT_IN_REDIRECT", "STRAIT_OUTPUT", "STRAIT_REDIRECT"):
        assert f"-N {chain}" in rules, rules
    assert "-A OUTPUT -p tcp -j STRAIT_OUTPUT" in rules and "--to-ports 15001" in rules, rules

    # The sidecar image: its entrypoint as the image's user (the config says 1337:1337).
    side = images["strait"]
    proc = _run_image(p, p.a, side, "strait", as_user=side["config"]["User"], wait=False)
    np_.wait_admin_ready(p, p.a, proc)
    # The image's strait-wait (the classic sidecar's postStart hook) works in the root, as 1337.
    waiter = dict(side, config=dict(side["config"], Entrypoint=["/usr/local/bin/strait-wait"],
                                    Cmd=["15000", "/ready", "5"]))
    r = _run_image(p, p.a, waiter, "wait", as_user="1337:1337")
    assert r.returncode == 0, r.stderr
    # ip netns exec, unshare, sh, env and chroot all exec: the process is strait itself.
    uid = p.run(p.a, ["ps", "-o", "uid=", "-p", str(proc.pid)]).stdout.strip()
    assert uid == "1337"

    np_.http_server(p, p.b, 8080, "pod-b")
    r = p.run(p.a, ["curl", "-sS", "-m", "5", f"http://{B_ADDR4}:8080/id"], check=False)
    assert r.returncode == 0 and r.stdout == "pod-b", r.stdout + r.stderr
    # It went through strait's embedded default: the outbound listener's HTTP chain.
    np_.wait_stats(p, p.a, lambda s: s.get("http.outbound_0.0.0.0_15001.downstream_rq_total", 0) >= 1,
                   "an HTTP request on the outbound listener")

