"""mTLS between two pods, proved on the wire: two network namespaces with deploy/strait-iptables.sh
capture rules and the real strait binary as each pod's sidecar (uid 1337), as in test_netns_e2e.py, but
each sidecar runs on a bootstrap file derived from the embedded default (proxy/config/default_bootstrap.h)
with mTLS added between them:

    pod A (10.200.0.1)                                    pod B (10.200.0.2)
    client --plaintext 10.200.0.2:8080-->                 echo server 0.0.0.0:8080 (logs sha256)
      OUTPUT: redirect to :15001                          PREROUTING: redirect to :15006
      strait 0.0.0.0:15001 (original_dst,                 strait 0.0.0.0:15006 (original_dst)
        http_inspector: HTTP -> HCM, else tcp_proxy)        DownstreamTlsContext, client cert required,
        cluster outbound_mtls (ORIGINAL_DST)                  SAN must be ...sa/client; tcp_proxy to
        UpstreamTlsContext: ...sa/client cert,                InboundPassthroughCluster (ORIGINAL_DST,
        SAN must be ...sa/server          ==TLS on veth==>    plaintext over lo to the workload)

tcpdump on pod A's veth (eth0 in A) records the whole exchange; the capture is parsed here (pcap, standard
library): the payload's marker must appear nowhere in it, and every TCP stream between the pods must be a
well-formed sequence of TLS records starting with a handshake record (0x16 0x03).

Needs root, `ip netns`, setpriv, iptables, curl and tcpdump (skipped with the reason otherwise) and a built
binary: STRAIT_BIN, or <repo>/build/proxy/strait (a missing binary fails). Every wait is bounded; every
process the test started is stopped by its PID and the namespaces are deleted at the end, pass or fail.
"""

import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

import pytest

import netns_pods as np_
import tlsutil
from netns_pods import A_ADDR4, B_ADDR4

STRAIT_BIN = os.environ.get("STRAIT_BIN") or os.path.join(np_.REPO, "build", "proxy", "strait")
BACKEND = "iptables"
APP_PORT = 8080     # pod B's echo server (logs what it received)
HTTP_PORT = 8090    # pod B's HTTP server
PAYLOAD_SIZE = 4 << 20
MARKER = b"STRAIT-PLAINTEXT-MARKER"

SPIFFE_CLIENT = "spiffe://cluster.local/ns/default/sa/client"
SPIFFE_SERVER = "spiffe://cluster.local/ns/default/sa/server"

DOWNSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
ORIGINAL_DST = "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
HTTP_INSPECTOR = "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"

OUT_CLUSTER = "cluster.outbound_mtls"
IN_SSL = "listener.0.0.0.0_15006.ssl."


def _reason():
    """Why this machine cannot run the test (a skip), or None."""
    r = np_.unavailable_reason()
    if r:
        return r
    r = np_.capture_tool_missing(BACKEND)
    if r:
        return r
    if shutil.which("curl") is None:
        return "'curl' is not installed (deploy/install-deps.sh test installs it)"
    if shutil.which("tcpdump") is None:
        return "'tcpdump' is not installed (deploy/install-deps.sh test installs it)"
    return None


def _require_binary():
    # Like harness.strait_bin(): a missing build fails, it never skips.
    if not (os.path.isfile(STRAIT_BIN) and os.access(STRAIT_BIN, os.X_OK)):
        pytest.fail(f"no strait binary at {STRAIT_BIN}: build it first (cmake -S . -B build -G Ninja && "
                    "ninja -C build) or set STRAIT_BIN", pytrace=False)


# ---------------------------------------------------------------------------------------------------
# Certificates: the mesh root, the two workloads, and a client from another trust domain. Everything is
# in a world-searchable directory; the workload files belong to the proxy's uid (keys stay 0600).

@pytest.fixture(scope="module")
def pki():
    reason = _reason()
    if reason:
        pytest.skip(reason)
    base = tempfile.mkdtemp(prefix="strait-mtls-pki-")
    try:
        os.chmod(base, 0o755)
        root = tlsutil.make_root(os.path.join(base, "ca"))
        tlsutil.make_root(os.path.join(base, "other-ca"), trust_domain="other.local")
        out = {
            "root": str(root),
            "client": tlsutil.make_workload(os.path.join(base, "ca"), os.path.join(base, "client"), "default", "client"),
            "server": tlsutil.make_workload(os.path.join(base, "ca"), os.path.join(base, "server"), "default", "server"),
            "foreign": tlsutil.make_workload(os.path.join(base, "other-ca"), os.path.join(base, "foreign"),
                                             "default", "client"),
        }
        for who in ("client", "server", "foreign"):
            d = os.path.dirname(out[who]["cert"])
            for f in [d] + [os.path.join(d, n) for n in os.listdir(d)]:
                os.chown(f, np_.PROXY_UID, np_.PROXY_GID)
        for f in (out["root"], out["client"]["cert"], out["client"]["key"], out["server"]["cert"],
                  out["server"]["key"], out["foreign"]["cert"], out["foreign"]["key"]):
            assert np_.readable_by(str(f), np_.PROXY_UID, np_.PROXY_GID), f"{f} is not readable by uid 1337"
        assert tlsutil.cert_info(out["foreign"]["cert"])["sans"] == ["spiffe://other.local/ns/default/sa/client"]
        yield out
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# Bootstraps: the embedded default (default_bootstrap.h) in JSON, with the mTLS pieces swapped in.

def _tls_common(paths, root, sans):
    return {
        "tls_certificates": [{"certificate_chain": {"filename": str(paths["cert"])},
                              "private_key": {"filename": str(paths["key"])}}],
        "validation_context": {
            "trusted_ca": {"filename": str(root)},
            "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": s}} for s in sans],
        },
    }


def upstream_mtls(paths, root, server_san):
    return {"name": "envoy.transport_sockets.tls",
            "typed_config": {"@type": UPSTREAM_TLS, "common_tls_context": _tls_common(paths, root, [server_san])}}


def downstream_mtls(paths, root, client_san):
    return {"name": "envoy.transport_sockets.tls",
            "typed_config": {"@type": DOWNSTREAM_TLS, "common_tls_context": _tls_common(paths, root, [client_san]),
                             "require_client_certificate": True}}


_SERVER_FIRST_PORTS = {"or_match": {"rules": [{"destination_port_range": {"start": s, "end": s + 1}}
                                              for s in (21, 25, 110, 143, 3306)]}}


def _detecting_listener(name, port, direction, prefix, cluster, tcp_stat_prefix):
    """A capture listener as in the default bootstrap: original_dst + http_inspector, HTTP to the HCM
    (routing everything to `cluster`), anything else to tcp_proxy (to `cluster`)."""
    return {
        "name": name,
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
        "traffic_direction": direction,
        "listener_filters": [
            {"name": "envoy.filters.listener.original_dst", "typed_config": {"@type": ORIGINAL_DST}},
            {"name": "envoy.filters.listener.http_inspector", "typed_config": {"@type": HTTP_INSPECTOR},
             "filter_disabled": _SERVER_FIRST_PORTS},
        ],
        "listener_filters_timeout": "0.1s",
        "continue_on_listener_filters_timeout": True,
        "filter_chains": [{
            "name": f"{prefix}_http",
            "filter_chain_match": {"application_protocols": ["http/1.0", "http/1.1", "h2c"]},
            "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                "@type": HCM,
                "stat_prefix": prefix,
                "codec_type": "AUTO",
                "upgrade_configs": [{"upgrade_type": "websocket"}],
                "route_config": {"name": prefix, "virtual_hosts": [{
                    "name": "passthrough", "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "0s"}}]}]},
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
            }}],
        }],
        "default_filter_chain": {
            "name": f"{prefix}_tcp",
            "filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                "@type": TCP_PROXY, "stat_prefix": tcp_stat_prefix, "cluster": cluster, "idle_timeout": "3600s"}}],
        },
    }


def _orig_dst_cluster(name, transport_socket=None):
    c = {"name": name, "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": "10s"}
    if transport_socket is not None:
        c["transport_socket"] = transport_socket
    return c


def _base(node_id, listeners, clusters):
    return {"node": {"id": node_id, "cluster": "strait"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 15000}}},
            "static_resources": {"listeners": listeners, "clusters": clusters}}


def client_bootstrap(pki, identity="client"):
    """Pod A: everything outbound (TCP and HTTP) goes to outbound_mtls, an ORIGINAL_DST cluster that
    originates mTLS with `identity`'s certificate and accepts only the server's SPIFFE ID. Inbound as in
    the default (plaintext passthrough)."""
    return _base(
        "pod-a",
        [_detecting_listener("virtualOutbound", 15001, "OUTBOUND", "outbound_0.0.0.0_15001", "outbound_mtls",
                             "outbound_mtls"),
         _detecting_listener("virtualInbound", 15006, "INBOUND", "inbound_0.0.0.0_15006", "InboundPassthroughCluster",
                             "InboundPassthroughCluster")],
        [_orig_dst_cluster("outbound_mtls", upstream_mtls(pki[identity], pki["root"], SPIFFE_SERVER)),
         _orig_dst_cluster("PassthroughCluster"),
         _orig_dst_cluster("InboundPassthroughCluster")])


def server_bootstrap(pki):
    """Pod B: the inbound capture listener terminates mTLS (client certificate required, SPIFFE ID of the
    client only) on its one filter chain and forwards plaintext to the original destination. Outbound as
    in the default."""
    inbound = {
        "name": "virtualInbound",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15006}},
        "traffic_direction": "INBOUND",
        "listener_filters": [
            {"name": "envoy.filters.listener.original_dst", "typed_config": {"@type": ORIGINAL_DST}}],
        "filter_chains": [{
            "name": "inbound_0.0.0.0_15006_mtls",
            "transport_socket": downstream_mtls(pki["server"], pki["root"], SPIFFE_CLIENT),
            "filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                "@type": TCP_PROXY, "stat_prefix": "InboundPassthroughCluster",
                "cluster": "InboundPassthroughCluster", "idle_timeout": "3600s"}}],
        }],
    }
    return _base(
        "pod-b",
        [_detecting_listener("virtualOutbound", 15001, "OUTBOUND", "outbound_0.0.0.0_15001", "PassthroughCluster",
                             "PassthroughCluster"),
         inbound],
        [_orig_dst_cluster("PassthroughCluster"), _orig_dst_cluster("InboundPassthroughCluster")])


# ---------------------------------------------------------------------------------------------------
# Admin, stats, processes (as in test_netns_e2e.py, with a bootstrap file).

admin, stats, wait_stats = np_.admin, np_.stats, np_.wait_stats


def start_strait(p, ns, binary, config, confdir):
    path = os.path.join(confdir, f"bootstrap-{ns}.json")
    with open(path, "w") as f:
        json.dump(config, f, indent=1)
    os.chmod(path, 0o644)
    proc = p.spawn(ns, [binary, "-c", path, "--concurrency", "1", "-l", "info"], f"strait-{ns}", as_proxy=True)
    return np_.wait_admin_ready(p, ns, proc)


class Mesh:
    pass


def build_mesh(p, pki, identity):
    """Capture rules, both sidecars, pod B's echo server; returns a Mesh."""
    m = Mesh()
    m.p = p
    binary = STRAIT_BIN
    if not np_.readable_by(binary, np_.PROXY_UID, np_.PROXY_GID):
        binary = np_.exposed_copy(binary, p.tmpdirs)  # the repo is not readable by uid 1337 here
    confdir = tempfile.mkdtemp(prefix="strait-mtls-conf-")
    p.tmpdirs.append(confdir)
    os.chmod(confdir, 0o755)
    p.capture(p.a, BACKEND)
    p.capture(p.b, BACKEND)
    m.strait_a = start_strait(p, p.a, binary, client_bootstrap(pki, identity), confdir)
    m.strait_b = start_strait(p, p.b, binary, server_bootstrap(pki), confdir)
    m.echo = p.echo_server(p.b, APP_PORT, log=True)
    return m


def dump_logs(m):
    for proc in (m.strait_a, m.strait_b):
        print(f"----- {proc.name} (exit {proc.poll()}) -----\n{m.p.log_of(proc)[-4000:]}")


@pytest.fixture(scope="module")
def mesh(pki):
    _require_binary()
    with np_.PodPair("mtls") as p:
        m = build_mesh(p, pki, "client")
        try:
            yield m
        finally:
            dump_logs(m)


# ---------------------------------------------------------------------------------------------------
# Packet capture on pod A's veth, and a pcap reader.

class Capture:
    """tcpdump -i eth0 in pod A, writing to a file; stop() ends it by its PID (SIGINT, so it flushes)."""

    def __init__(self, p, ns):
        self.p = p
        d = tempfile.mkdtemp(prefix="strait-mtls-pcap-")
        p.tmpdirs.append(d)
        self.path = os.path.join(d, "a-eth0.pcap")
        # -Z root: keep root so the file can be written in this root-owned directory; --immediate-mode
        # and -U: take and write each packet as it comes (not in blocks that a stop would lose);
        # -B: a large kernel buffer so that nothing is dropped; -s 0: whole packets.
        self.proc = p.spawn(ns, ["tcpdump", "-i", "eth0", "-n", "-s", "0", "--immediate-mode", "-U", "-B", "32768",
                                 "-Z", "root", "-w", self.path, "tcp"], f"tcpdump-{ns}-{len(p.procs)}")
        p.wait_log(self.proc, "listening on", timeout=10)

    def stop(self):
        # Let the last packets (FINs) reach the file: wait until it stops growing (bounded).
        deadline = time.monotonic() + 3
        size = -1
        while time.monotonic() < deadline and self.proc.poll() is None:
            now = os.path.getsize(self.path) if os.path.exists(self.path) else 0
            if now == size:
                break
            size = now
            time.sleep(0.3)
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        log = self.p.log_of(self.proc)
        for line in log.splitlines():
            if "dropped by kernel" in line:
                assert line.split()[0] == "0", f"tcpdump dropped packets, the capture is incomplete:\n{log}"
        with open(self.path, "rb") as f:
            return f.read()


def pcap_packets(raw):
    """(linktype, packet bytes, captured length, wire length) of each record of a classic pcap file."""
    magic = raw[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        e = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        e = ">"
    else:
        raise AssertionError(f"not a pcap file (magic {magic!r})")
    linktype = struct.unpack(e + "I", raw[20:24])[0]
    off = 24
    out = []
    while off + 16 <= len(raw):
        _, _, incl, orig = struct.unpack(e + "IIII", raw[off:off + 16])
        off += 16
        out.append((linktype, raw[off:off + incl], incl, orig))
        off += incl
    return out


def tcp_segments(raw):
    """Each IPv4/TCP segment of an Ethernet capture: ((src, sport, dst, dport), seq, flags, payload)."""
    segs = []
    for linktype, pkt, incl, orig in pcap_packets(raw):
        assert linktype == 1, f"expected an Ethernet capture, got link type {linktype}"
        assert incl == orig, f"a packet was truncated in the capture ({incl} of {orig} bytes)"
        if len(pkt) < 14 or pkt[12:14] != b"\x08\x00":
            continue
        ip = pkt[14:]
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack("!H", ip[2:4])[0] or len(ip)  # 0 in a TSO super-packet
        if ip[9] != 6:
            continue
        src, dst = ".".join(map(str, ip[12:16])), ".".join(map(str, ip[16:20]))
        tcp = ip[ihl:total]
        sport, dport, seq = struct.unpack("!HHI", tcp[:8])
        doff = (tcp[12] >> 4) * 4
        segs.append(((src, sport, dst, dport), seq, tcp[13], bytes(tcp[doff:])))
    return segs


FIN, SYN, RST = 0x01, 0x02, 0x04


def tcp_streams(segs, closed=True):
    """{(src, sport, dst, dport): bytes} of each direction of each connection, reassembled by sequence
    number from its SYN; a gap fails (the capture must hold every byte), and with `closed` so does a
    direction whose end (FIN, or a reset) is not in the capture."""
    isn, pieces, fin, rst = {}, {}, {}, set()
    for key, seq, flags, payload in segs:
        if flags & SYN:
            isn.setdefault(key, seq)
        if flags & FIN:
            fin[key] = (seq + len(payload)) & 0xFFFFFFFF
        if flags & RST:
            rst.add(key)
        if payload:
            pieces.setdefault(key, []).append((seq, payload))
    streams = {}
    for key, parts in pieces.items():
        assert key in isn, f"no SYN captured for {key}: the capture started too late"
        base = (isn[key] + 1) & 0xFFFFFFFF
        parts = sorted(((s - base) & 0xFFFFFFFF, d) for s, d in parts)
        buf = bytearray()
        for rel, data in parts:
            assert rel <= len(buf), f"{key}: {rel - len(buf)} bytes missing from the capture at offset {len(buf)}"
            if rel + len(data) > len(buf):
                buf += data[len(buf) - rel:]
        streams[key] = bytes(buf)
        # Complete: the FIN comes right after the last byte (or the direction was reset).
        if not closed:
            continue
        if key in fin:
            assert (fin[key] - base) & 0xFFFFFFFF == len(buf), \
                f"{key}: the FIN is at offset {(fin[key] - base) & 0xFFFFFFFF}, the capture holds {len(buf)} bytes"
        else:
            rev = (key[2], key[3], key[0], key[1])
            assert key in rst or rev in rst, f"{key}: neither FIN nor RST captured: the capture is incomplete"
    return streams


def tls_records(stream, who):
    """[(content type, length)] of a byte stream that must consist of whole TLS records only."""
    recs, off = [], 0
    while off < len(stream):
        assert off + 5 <= len(stream), f"{who}: {len(stream) - off} bytes at the end are not a TLS record header"
        ctype, major, minor, length = stream[off], stream[off + 1], stream[off + 2], \
            struct.unpack("!H", stream[off + 3:off + 5])[0]
        assert ctype in (20, 21, 22, 23) and major == 3 and minor in (1, 2, 3, 4) and length <= 16384 + 2048, \
            f"{who}: not a TLS record at offset {off}: {stream[off:off + 16]!r}"
        recs.append((ctype, length))
        off += 5 + length
    assert off == len(stream), f"{who}: the last TLS record is cut short"
    return recs


def assert_only_tls(raw, port, secrets, closed=True):
    """The capture holds no secret anywhere, and every TCP stream to/from `port` between the pods is TLS
    from its first byte. Returns {direction: stream}."""
    for s in secrets:
        assert s not in raw, f"{s!r} is in the packet capture: plaintext crossed the wire"
    streams = tcp_streams(tcp_segments(raw), closed)
    for key, data in streams.items():
        for s in secrets:
            assert s not in data, f"{s!r} is in the reassembled stream {key}: plaintext crossed the wire"
    mine = {k: v for k, v in streams.items() if port in (k[1], k[3])}
    assert mine, f"no TCP payload to or from port {port} in the capture; streams seen: {list(streams)}"
    others = [k for k in streams if k not in mine]
    assert not others, f"unexpected TCP streams with payload on pod A's veth: {others}"
    for key, data in mine.items():
        assert {key[0], key[2]} == {A_ADDR4, B_ADDR4}, key
        assert data[:2] == b"\x16\x03", f"{key} does not start with a TLS handshake record: {data[:16]!r}"
        recs = tls_records(data, key)
        assert recs[0][0] == 22
    return mine


# ---------------------------------------------------------------------------------------------------
# The tests.

def marked_payload(size):
    """`size` bytes: random blocks, each led by the marker (so plaintext anywhere would show it)."""
    block = 8192
    parts, n = [], 0
    while n < size:
        chunk = (MARKER * 4 + os.urandom(block - 4 * len(MARKER)))[:size - n]
        parts.append(chunk)
        n += len(chunk)
    return b"".join(parts)


def test_tcp_payload_crosses_the_wire_only_as_mtls(mesh):
    p = mesh.p
    payload = marked_payload(PAYLOAD_SIZE)
    conns_before, done_before = p.echo_connections(mesh.echo)
    cap = Capture(p, p.a)
    try:
        got = p.client(p.a, B_ADDR4, APP_PORT, payload, timeout=60)
    finally:
        raw = cap.stop()

    # 1. Byte-exact both ways; the workload in B received exactly the payload.
    assert len(got) == len(payload), f"echoed {len(got)} bytes of {len(payload)}"
    assert got == payload, "the echoed bytes differ from the bytes sent"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(p.echo_connections(mesh.echo)[1]) <= len(done_before):
        time.sleep(0.05)
    conns, done = p.echo_connections(mesh.echo)
    assert len(conns) == len(conns_before) + 1, f"echo server connections: {conns}"
    new = done[len(done_before):]
    assert len(new) == 1, f"echo server finished connections: {new}"
    assert new[0]["bytes"] == len(payload)
    assert new[0]["sha256"] == hashlib.sha256(payload).hexdigest(), "pod B's workload received other bytes"
    # Delivered by pod B's sidecar over lo (from B's own address), not straight from pod A.
    assert new[0]["peer"].startswith(B_ADDR4 + ":"), new[0]

    # 2. On pod A's veth: no plaintext, and both directions are TLS records from the first byte.
    streams = assert_only_tls(raw, APP_PORT, [MARKER])
    to_b = [v for k, v in streams.items() if k[3] == APP_PORT]
    from_b = [v for k, v in streams.items() if k[1] == APP_PORT]
    assert len(to_b) == 1 and len(from_b) == 1, f"expected one connection between the pods: {list(streams)}"
    for data, who in ((to_b[0], "A->B"), (from_b[0], "B->A")):
        app = sum(n for t, n in tls_records(data, who) if t == 23)
        assert app >= len(payload), f"{who}: only {app} bytes of TLS application data for a {len(payload)}-byte payload"

    # 3. Both sidecars did the handshake; B got A's certificate.
    sa = wait_stats(p, p.a, lambda s: s.get(f"{OUT_CLUSTER}.ssl.handshake", 0) >= 1, f"{OUT_CLUSTER}.ssl.handshake >= 1")
    sb = wait_stats(p, p.b, lambda s: s.get(IN_SSL + "handshake", 0) >= 1, IN_SSL + "handshake >= 1")
    assert sb.get(IN_SSL + "no_certificate", 0) == 0, f"{IN_SSL}no_certificate = {sb.get(IN_SSL + 'no_certificate')}"
    assert sb.get(IN_SSL + "fail_verify_error", 0) == 0
    assert sa.get(f"{OUT_CLUSTER}.ssl.fail_verify_san", 0) == 0


def test_http_through_the_connection_manager_is_mtls_on_the_wire(mesh):
    """HTTP from pod A's workload is detected (http_inspector) and routed by A's HCM to the ORIGINAL_DST
    cluster outbound_mtls: the request and the response cross the wire inside TLS only."""
    p = mesh.p
    server = p.spawn(p.b, [sys.executable, "-c",
                           "import http.server\n"
                           "class H(http.server.BaseHTTPRequestHandler):\n"
                           "    protocol_version='HTTP/1.1'\n"
                           "    def do_GET(self):\n"
                           "        b=('path=%s marker=%s' % (self.path, self.headers.get('x-marker',''))).encode()\n"
                           "        self.send_response(200); self.send_header('content-length', str(len(b)))\n"
                           "        self.end_headers(); self.wfile.write(b)\n"
                           "    def log_message(self,*a): pass\n"
                           f"http.server.HTTPServer(('0.0.0.0', {HTTP_PORT}), H).serve_forever()\n"], "http-b")
    try:
        before_a = stats(p, p.a)
        # Wait (bounded) until the server listens: B's sidecar then gets a connection refused, which A sees
        # as a reset or an error from its HCM. No capture yet.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = p.run(p.b, ["curl", "-s", "-m", "2", "-o", "/dev/null", "-w", "%{http_code}",
                            f"http://127.0.0.1:{HTTP_PORT}/"], timeout=10, check=False)
            if r.stdout.strip() == "200":
                break
            time.sleep(0.1)
        cap = Capture(p, p.a)
        try:
            marker = MARKER.decode()
            r = p.run(p.a, ["curl", "-sS", "-m", "10", "-H", f"x-marker: {marker}-HEADER",
                            f"http://{B_ADDR4}:{HTTP_PORT}/{marker}-PATH"], timeout=20, check=False)
        finally:
            raw = cap.stop()
        assert r.returncode == 0, f"curl from pod A to pod B's HTTP server failed: {r.stderr}\n{p.log_of(server)}"
        assert r.stdout == f"path=/{marker}-PATH marker={marker}-HEADER", r.stdout
        # (A's upstream connection stays open in its pool: no FIN to wait for.)
        assert_only_tls(raw, HTTP_PORT, [MARKER], closed=False)
        sa = wait_stats(p, p.a, lambda s: s.get("http.outbound_0.0.0.0_15001.downstream_rq_2xx", 0)
                        > before_a.get("http.outbound_0.0.0.0_15001.downstream_rq_2xx", 0)
                        and s.get(f"{OUT_CLUSTER}.upstream_rq_2xx", 0) > before_a.get(f"{OUT_CLUSTER}.upstream_rq_2xx", 0),
                        "pod A's HCM routed the request to outbound_mtls")
        assert sa[f"{OUT_CLUSTER}.ssl.handshake"] > before_a.get(f"{OUT_CLUSTER}.ssl.handshake", 0)
        assert sa.get("listener.0.0.0.0_15001.http_inspector.http11_found", 0) >= 1
    finally:
        server.kill()
        server.wait(timeout=5)


SEND_SCRIPT = r"""
import json, socket, sys
out = {"connected": False, "received": 0, "error": None}
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    out["connected"] = True
    s.settimeout(10)
    s.sendall(sys.argv[3].encode() * 1000)
    s.shutdown(socket.SHUT_WR)
    while True:
        d = s.recv(65536)
        if not d:
            break
        out["received"] += len(d)
    s.close()
except OSError as e:
    out["error"] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"""


def test_client_certificate_from_another_root_is_refused(pki):
    """Pod A presents spiffe://other.local/... signed by another root: B's sidecar refuses the handshake
    (fail_verify_error), nothing reaches B's workload, and nothing crosses the wire in plaintext."""
    _require_binary()
    with np_.PodPair("mtlsbad") as p:
        m = build_mesh(p, pki, "foreign")
        try:
            cap = Capture(p, p.a)
            try:
                r = p.run(p.a, [sys.executable, "-c", SEND_SCRIPT, B_ADDR4, str(APP_PORT), MARKER.decode()], timeout=30)
            finally:
                raw = cap.stop()
            out = json.loads(r.stdout)
            assert out["received"] == 0, f"the client got an answer through a refused handshake: {out}"
            sb = wait_stats(p, p.b, lambda s: s.get(IN_SSL + "fail_verify_error", 0) >= 1, IN_SSL + "fail_verify_error >= 1")
            assert sb.get(IN_SSL + "handshake", 0) == 0, f"{IN_SSL}handshake = {sb.get(IN_SSL + 'handshake')}"
            time.sleep(0.3)
            conns, done = p.echo_connections(m.echo)
            assert conns == [] and done == [], f"pod B's workload got a connection: {conns} {done}"
            # What A's sidecar sent was TLS (a ClientHello, its certificate), never the client's bytes.
            assert_only_tls(raw, APP_PORT, [MARKER])
            assert m.strait_a.poll() is None and m.strait_b.poll() is None, "a sidecar exited"
        finally:
            dump_logs(m)
