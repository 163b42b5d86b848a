"""Istio's sidecar listener model through the real binary, in two network-namespace pods with the
capture rules of deploy/strait-iptables.sh (REDIRECT, so SO_ORIGINAL_DST is real).

    pod A (10.200.0.1): client, strait as uid 1337 with an Istio-shaped outbound config
      virtualOutbound 0.0.0.0:15001 (use_original_dst; catch-all chain -> PassthroughCluster)
      0.0.0.0_8080       bind_to_port false, HCM (istio MX + wasm stats in front) -> svc 10.200.0.2:18080
      10.200.0.2_9000    bind_to_port false, tcp_proxy (MX, stats, authn in front) -> 10.200.0.2:19000
      0.0.0.0_9000       bind_to_port false, tcp_proxy -> 10.200.0.2:19002
    pod B (10.200.0.2): servers, strait as uid 1337 with an Istio-shaped virtualInbound 0.0.0.0:15006
      chains for port 9080: raw_buffer + HTTP ALPN -> HCM -> :18080; raw_buffer -> tcp_proxy -> :19003;
      tls + istio-peer-exchange -> tcp_proxy -> :19001; passthrough chains (no port) -> original dst

Which upstream answered (HTTP bodies; each TCP echo server's log of connections with the sha256 of
what it received) and the receiving listener's stats say which listener and chain took each
connection. Needs root, ip netns, setpriv, iptables and curl (skipped with the reason otherwise).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import hashlib

import pytest

import netns_pods as np_
from netns_pods import A_ADDR4, B_ADDR4

STRAIT_BIN = os.environ.get("STRAIT_BIN") or os.path.join(np_.REPO, "build", "proxy", "strait")
TCP = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
TYPED_STRUCT = "type.googleapis.com/udpa.type.v1.TypedStruct"
WASM = "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm"
MX = "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange"
STATS = "type.googleapis.com/stats.PluginConfig"
AUTHN = "type.googleapis.com/io.istio.network.authn.Config"
ORIGINAL_DST = "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
TLS_INSPECTOR = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
HTTP_INSPECTOR = "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"

# Servers in pod B. HTTP: body = the file "id". TCP: echo, logging each connection and its sha256.
HTTP_DIRECT, HTTP_SVC = 8080, 18080
ECHO_EXACT_9000, ECHO_WILD_9000, ECHO_PASS_OUT = 19000, 19002, 7001
ECHO_IN_MTLS, ECHO_IN_TCP, ECHO_IN_PASS = 19001, 19003, 7000
IN_SVC_PORT = 9080  # captured by pod B's inbound rules; nothing listens on it


def _reason():
    r = np_.unavailable_reason()
    if r:
        return r
    r = np_.capture_tool_missing("iptables")
    if r:
        return r
    if shutil.which("curl") is None:
        return "'curl' is not installed (deploy/install-deps.sh test installs it)"
    return None


def tcp_proxy(cluster, stat_prefix=None):
    return {"name": "envoy.filters.network.tcp_proxy",
            "typed_config": {"@type": TCP, "stat_prefix": stat_prefix or cluster, "cluster": cluster}}


def hcm(stat_prefix, cluster):
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": HCM, "stat_prefix": stat_prefix,
        "route_config": {"name": stat_prefix, "virtual_hosts": [
            {"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]}}


def mx_typed_struct():
    return {"name": "istio.metadata_exchange", "typed_config": {
        "@type": TYPED_STRUCT, "type_url": MX, "value": {"protocol": "istio-peer-exchange", "enable_discovery": True}}}


def mx_direct():
    return {"name": "istio.metadata_exchange", "typed_config": {"@type": MX, "protocol": "istio-peer-exchange"}}


def stats_typed_struct():
    return {"name": "istio.stats", "typed_config": {"@type": TYPED_STRUCT, "type_url": STATS, "value": {}}}


def stats_direct():
    return {"name": "istio.stats", "typed_config": {"@type": STATS}}


def stats_wasm(root_id):
    return {"name": "istio.stats", "typed_config": {"@type": TYPED_STRUCT, "type_url": WASM, "value": {"config": {
        "root_id": root_id,
        "vm_config": {"vm_id": f"tcp_{root_id}", "runtime": "envoy.wasm.runtime.null",
                      "code": {"local": {"inline_string": "envoy.wasm.stats"}}},
        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "{}"}}}}}


def authn_typed_struct():
    return {"name": "istio_authn", "typed_config": {"@type": TYPED_STRUCT, "type_url": AUTHN}}


def static(name, port, host=B_ADDR4):
    return {"name": name, "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
        "cluster_name": name,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": host,
                                                                                        "port_value": port}}}}]}]}}


def original_dst_cluster(name):
    return {"name": name, "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": "1s"}


def addr(ip, port):
    return {"socket_address": {"address": ip, "port_value": port}}


def admin():
    return {"address": addr("127.0.0.1", 15000)}


def outbound_config():
    virtual_outbound = {
        "name": "virtualOutbound", "address": addr("0.0.0.0", 15001), "use_original_dst": True,
        "traffic_direction": "OUTBOUND",
        "listener_filters": [{"name": "envoy.filters.listener.original_dst", "typed_config": {"@type": ORIGINAL_DST}}],
        "filter_chains": [
            {"name": "virtualOutbound-blackhole", "filter_chain_match": {"destination_port": 15001},
             "filters": [stats_typed_struct(), tcp_proxy("BlackHoleCluster")]},
            {"name": "virtualOutbound-catchall-tcp",
             "filters": [stats_typed_struct(), tcp_proxy("PassthroughCluster")]},
        ],
    }
    http_8080 = {
        "name": "0.0.0.0_8080", "address": addr("0.0.0.0", 8080), "bind_to_port": False,
        "traffic_direction": "OUTBOUND", "continue_on_listener_filters_timeout": True,
        "listener_filters_timeout": "0.2s",
        "listener_filters": [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": TLS_INSPECTOR}},
                             {"name": "envoy.filters.listener.http_inspector", "typed_config": {"@type": HTTP_INSPECTOR}}],
        "filter_chains": [
            {"name": "0.0.0.0_8080_http",
             "filter_chain_match": {"transport_protocol": "raw_buffer", "application_protocols": ["http/1.1", "h2c"]},
             "filters": [mx_typed_struct(), stats_wasm("stats_outbound"), hcm("outbound_0.0.0.0_8080", "svc_8080")]},
        ],
    }
    tcp_exact = {
        "name": "10.200.0.2_9000", "address": addr(B_ADDR4, 9000), "bind_to_port": False,
        "traffic_direction": "OUTBOUND",
        "filter_chains": [{"filters": [mx_direct(), stats_direct(), authn_typed_struct(),
                                       tcp_proxy("exact_9000", "outbound|9000||exact")]}],
    }
    tcp_wild = {
        "name": "0.0.0.0_9000", "address": addr("0.0.0.0", 9000), "bind_to_port": False,
        "traffic_direction": "OUTBOUND",
        "filter_chains": [{"filters": [stats_typed_struct(), tcp_proxy("wild_9000", "outbound|9000||wild")]}],
    }
    return {
        "node": {"id": "sidecar~10.200.0.1~a.default~default.svc.cluster.local", "cluster": "a.default"},
        "admin": admin(),
        "static_resources": {
            "listeners": [virtual_outbound, http_8080, tcp_exact, tcp_wild],
            "clusters": [original_dst_cluster("PassthroughCluster"),
                         {"name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "1s"},
                         static("svc_8080", HTTP_SVC), static("exact_9000", ECHO_EXACT_9000),
                         static("wild_9000", ECHO_WILD_9000)],
        },
    }


def inbound_config():
    def chain(name, match, filters):
        return {"name": name, "filter_chain_match": match, "filters": filters}

    virtual_inbound = {
        "name": "virtualInbound", "address": addr("0.0.0.0", 15006), "use_original_dst": True,
        "traffic_direction": "INBOUND", "continue_on_listener_filters_timeout": True,
        "listener_filters_timeout": "0.5s",
        "listener_filters": [
            {"name": "envoy.filters.listener.original_dst", "typed_config": {"@type": ORIGINAL_DST}},
            {"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": TLS_INSPECTOR},
             "filter_disabled": {"destination_port_range": {"start": 3306, "end": 3307}}},
            {"name": "envoy.filters.listener.http_inspector", "typed_config": {"@type": HTTP_INSPECTOR},
             "filter_disabled": {"or_match": {"rules": [
                 {"destination_port_range": {"start": 3306, "end": 3307}},
                 {"destination_port_range": {"start": 25, "end": 26}}]}}},
        ],
        "filter_chains": [
            chain("virtualInbound-blackhole", {"destination_port": 15006}, [tcp_proxy("BlackHoleCluster")]),
            chain("inbound|9080|mtls-tcp", {"destination_port": IN_SVC_PORT, "transport_protocol": "tls",
                                            "application_protocols": ["istio-peer-exchange", "istio"]},
                  [mx_direct(), tcp_proxy("in_mtls")]),
            chain("inbound|9080|http", {"destination_port": IN_SVC_PORT, "transport_protocol": "raw_buffer",
                                        "application_protocols": ["http/1.1", "http/1.0", "h2c"]},
                  [authn_typed_struct(), mx_direct(), stats_direct(), hcm("inbound_0.0.0.0_9080", "in_http")]),
            chain("inbound|9080|tcp", {"destination_port": IN_SVC_PORT, "transport_protocol": "raw_buffer"},
                  [mx_typed_struct(), stats_typed_struct(), tcp_proxy("in_tcp")]),
            chain("virtualInbound-catchall-tls", {"transport_protocol": "tls"},
                  [tcp_proxy("InboundPassthroughCluster")]),
            chain("virtualInbound-catchall-raw", {"transport_protocol": "raw_buffer"},
                  [stats_wasm("stats_inbound"), tcp_proxy("InboundPassthroughCluster")]),
        ],
    }
    return {
        "node": {"id": "sidecar~10.200.0.2~b.default~default.svc.cluster.local", "cluster": "b.default"},
        "admin": admin(),
        "static_resources": {
            "listeners": [virtual_inbound],
            "clusters": [original_dst_cluster("InboundPassthroughCluster"),
                         {"name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "1s"},
                         static("in_http", HTTP_SVC), static("in_tcp", ECHO_IN_TCP), static("in_mtls", ECHO_IN_MTLS)],
        },
    }


class Env:
    pass


def _start_strait(p, ns, binary, config):
    d = tempfile.mkdtemp(prefix="strait-istio-cfg-")
    p.tmpdirs.append(d)
    os.chmod(d, 0o755)
    path = os.path.join(d, "bootstrap.json")
    with open(path, "w") as f:
        json.dump(config, f)
    os.chmod(path, 0o644)
    proc = p.spawn(ns, [binary, "-c", path, "--concurrency", "2"], f"strait-{ns}", as_proxy=True)
    deadline = time.monotonic() + 20
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"strait in {ns} exited {proc.returncode}:\n{p.log_of(proc)}")
        last = np_.admin(p, ns, "/ready", timeout=2)
        if last[0] == 200:
            return proc
        time.sleep(0.1)
    raise AssertionError(f"strait in {ns} not ready within 20s (last /ready: {last}):\n{p.log_of(proc)}")


@pytest.fixture(scope="module")
def pods():
    reason = _reason()
    if reason:
        pytest.skip(reason)
    if not (os.path.isfile(STRAIT_BIN) and os.access(STRAIT_BIN, os.X_OK)):
        pytest.fail(f"no strait binary at {STRAIT_BIN}: build it or set STRAIT_BIN", pytrace=False)
    with np_.PodPair("istio") as p:
        env = Env()
        env.p = p
        binary = STRAIT_BIN
        if not np_.readable_by(binary, np_.PROXY_UID, np_.PROXY_GID):
            binary = np_.exposed_copy(binary, p.tmpdirs)
        p.capture(p.a, "iptables")
        # Pod B captures inbound 9080 and 7000 only: every other server port is excluded.
        excluded = [15000, 15001, 15006, 15021, 15090, HTTP_DIRECT, HTTP_SVC, ECHO_EXACT_9000, ECHO_WILD_9000,
                    ECHO_PASS_OUT, ECHO_IN_MTLS, ECHO_IN_TCP]
        p.capture(p.b, "iptables", "-d", ",".join(map(str, excluded)))
        env.http = [np_.http_server(p, p.b, HTTP_DIRECT, "direct-8080"), np_.http_server(p, p.b, HTTP_SVC, "svc-18080")]
        env.echo = {port: p.echo_server(p.b, port, log=True)
                    for port in (ECHO_EXACT_9000, ECHO_WILD_9000, ECHO_PASS_OUT, ECHO_IN_MTLS, ECHO_IN_TCP, ECHO_IN_PASS)}
        env.strait_a = _start_strait(p, p.a, binary, outbound_config())
        env.strait_b = _start_strait(p, p.b, binary, inbound_config())
        try:
            yield env
        finally:
            for proc in (env.strait_a, env.strait_b):
                print(f"----- {proc.name} (exit {proc.poll()}) -----\n{p.log_of(proc)[-4000:]}")


def _delta(after, before, name):
    return after.get(name, 0) - before.get(name, 0)


def _echo_done(env, port, sha, timeout=10.0):
    """Waits for the echo server on `port` to log a finished connection whose bytes hash to `sha`."""
    deadline = time.monotonic() + timeout
    done = []
    while time.monotonic() < deadline:
        _, done = env.p.echo_connections(env.echo[port])
        if any(d["sha256"] == sha for d in done):
            return done
        time.sleep(0.05)
    raise AssertionError(f"echo server {port} never finished a connection with sha256 {sha}: {done}")


def _send(env, ns, host, port, payload, as_proxy=False):
    got = env.p.client(ns, host, port, payload, timeout=30, as_proxy=as_proxy)
    assert got == payload, f"{host}:{port}: echoed {len(got)} bytes, sent {len(payload)}; bytes differ or were cut"
    return hashlib.sha256(payload).hexdigest()


def _others_untouched(env, sha, but):
    for port, proc in env.echo.items():
        if port == but:
            continue
        _, done = env.p.echo_connections(proc)
        assert not any(d["sha256"] == sha for d in done), f"echo server {port} also received the payload"


# ---------------------------------------------------------------------------------------------------
# Outbound: virtualOutbound hands connections to the bind_to_port: false listeners.

def test_http_to_service_port_is_handed_to_the_port_listener(pods):
    p = pods.p
    before = np_.stats(p, p.a)
    r = p.run(p.a, ["curl", "-sS", "-m", "5", f"http://{B_ADDR4}:8080/id"], check=False)
    assert r.returncode == 0, r.stderr
    # Passthrough would have reached 10.200.0.2:8080 ("direct-8080"); the port listener's route sends
    # to the svc cluster on 18080.
    assert r.stdout == "svc-18080", f"answered by {r.stdout!r}"
    s = np_.wait_stats(p, p.a, lambda s: _delta(s, before, "cluster.svc_8080.upstream_rq_2xx") >= 1, "svc_8080 2xx")
    assert _delta(s, before, "listener.0.0.0.0_8080.downstream_cx_total") == 1
    assert _delta(s, before, "listener.0.0.0.0_8080.http_inspector.http11_found") == 1
    assert _delta(s, before, "http.outbound_0.0.0.0_8080.downstream_rq_total") == 1
    # The accepting listener does not count what it handed on.
    assert _delta(s, before, "listener.0.0.0.0_15001.downstream_cx_total") == 0
    assert _delta(s, before, "cluster.PassthroughCluster.upstream_cx_total") == 0
    # The istio filters in front of the HCM saw the connection and let it through.
    assert _delta(s, before, "istio_inert.metadata_exchange.cx_total") == 1
    assert _delta(s, before, "istio_inert.stats.cx_total") == 1


def test_tcp_exact_address_listener_beats_the_wildcard_one(pods):
    p = pods.p
    before = np_.stats(p, p.a)
    payload = os.urandom(300_000)
    sha = _send(pods, p.a, B_ADDR4, 9000, payload)
    _echo_done(pods, ECHO_EXACT_9000, sha)
    _others_untouched(pods, sha, ECHO_EXACT_9000)
    s = np_.wait_stats(p, p.a, lambda s: _delta(s, before, "listener.10.200.0.2_9000.downstream_cx_destroy") >= 1,
                       "exact listener connection over")
    assert _delta(s, before, "listener.10.200.0.2_9000.downstream_cx_total") == 1
    assert _delta(s, before, "listener.0.0.0.0_9000.downstream_cx_total") == 0
    assert _delta(s, before, "listener.0.0.0.0_15001.downstream_cx_total") == 0
    assert _delta(s, before, "tcp.outbound|9000||exact.downstream_cx_total") == 1
    assert _delta(s, before, "tcp.outbound|9000||exact.downstream_cx_rx_bytes_total") == len(payload)
    for kind in ("metadata_exchange", "stats", "authn"):
        assert _delta(s, before, f"istio_inert.{kind}.cx_total") == 1, kind


def test_tcp_other_ip_same_port_goes_to_the_wildcard_listener(pods):
    p = pods.p
    before = np_.stats(p, p.a)
    payload = os.urandom(100_000)
    # 10.200.0.9 does not exist: the connection is captured before it leaves, and the wildcard
    # listener's cluster sends it to pod B.
    sha = _send(pods, p.a, "10.200.0.9", 9000, payload)
    _echo_done(pods, ECHO_WILD_9000, sha)
    _others_untouched(pods, sha, ECHO_WILD_9000)
    s = np_.stats(p, p.a)
    assert _delta(s, before, "listener.0.0.0.0_9000.downstream_cx_total") == 1
    assert _delta(s, before, "listener.10.200.0.2_9000.downstream_cx_total") == 0
    assert _delta(s, before, "listener.0.0.0.0_15001.downstream_cx_total") == 0


def test_unmatched_port_goes_through_passthrough(pods):
    p = pods.p
    before = np_.stats(p, p.a)
    payload = os.urandom(200_000)
    sha = _send(pods, p.a, B_ADDR4, ECHO_PASS_OUT, payload)
    _echo_done(pods, ECHO_PASS_OUT, sha)
    s = np_.wait_stats(p, p.a, lambda s: _delta(s, before, "cluster.PassthroughCluster.upstream_cx_total") >= 1,
                       "passthrough used")
    assert _delta(s, before, "listener.0.0.0.0_15001.downstream_cx_total") == 1
    assert _delta(s, before, "cluster.PassthroughCluster.upstream_cx_total") == 1
    assert _delta(s, before, "cluster.BlackHoleCluster.upstream_cx_total") == 0
    for name in ("listener.0.0.0.0_8080.downstream_cx_total", "listener.0.0.0.0_9000.downstream_cx_total",
                 "listener.10.200.0.2_9000.downstream_cx_total"):
        assert _delta(s, before, name) == 0, name


def test_non_bound_listeners_open_no_socket(pods):
    p = pods.p
    r = p.run(p.a, ["ss", "-Hltn"], check=False)
    assert r.returncode == 0, r.stderr
    listening = {line.split()[3] for line in r.stdout.splitlines() if line.strip()}
    assert any(a.endswith(":15001") for a in listening), listening
    for port in (8080, 9000):
        assert not any(a.endswith(f":{port}") for a in listening), f"something listens on {port}: {listening}"
    code, body = np_.admin(p, p.a, "/listeners")
    assert code == 200
    for line in ("virtualOutbound::0.0.0.0:15001", "0.0.0.0_8080::0.0.0.0:8080", "10.200.0.2_9000::10.200.0.2:9000"):
        assert line in body.splitlines(), body


# ---------------------------------------------------------------------------------------------------
# Inbound: virtualInbound's chains by destination port, transport and application protocols.

def _as_proxy(cmd):
    return ["setpriv", f"--reuid={np_.PROXY_UID}", f"--regid={np_.PROXY_GID}", "--clear-groups", *cmd]


def test_inbound_http_takes_the_http_chain(pods):
    p = pods.p
    before = np_.stats(p, p.b)
    # As uid 1337 in pod A, so pod A's own capture leaves the connection alone.
    r = p.run(p.a, _as_proxy(["curl", "-sS", "-m", "5", f"http://{B_ADDR4}:{IN_SVC_PORT}/id"]), check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "svc-18080", f"answered by {r.stdout!r}"
    s = np_.wait_stats(p, p.b, lambda s: _delta(s, before, "cluster.in_http.upstream_rq_2xx") >= 1, "in_http 2xx")
    assert _delta(s, before, "listener.0.0.0.0_15006.downstream_cx_total") == 1
    assert _delta(s, before, "listener.0.0.0.0_15006.http_inspector.http11_found") == 1
    assert _delta(s, before, "http.inbound_0.0.0.0_9080.downstream_rq_total") == 1
    for kind in ("metadata_exchange", "stats", "authn"):
        assert _delta(s, before, f"istio_inert.{kind}.cx_total") == 1, kind


def test_inbound_raw_tcp_takes_the_tcp_chain_bytes_untouched(pods):
    p = pods.p
    before = np_.stats(p, p.b)
    payload = b"\x00\x01not http at all\r\n" + os.urandom(500_000)
    sha = _send(pods, p.a, B_ADDR4, IN_SVC_PORT, payload, as_proxy=True)
    _echo_done(pods, ECHO_IN_TCP, sha)
    _others_untouched(pods, sha, ECHO_IN_TCP)
    s = np_.wait_stats(p, p.b, lambda s: _delta(s, before, "tcp.in_tcp.downstream_cx_total") >= 1, "in_tcp used")
    assert _delta(s, before, "listener.0.0.0.0_15006.http_inspector.http_not_found") == 1
    assert _delta(s, before, "tcp.in_tcp.downstream_cx_rx_bytes_total") == len(payload)
    assert _delta(s, before, "istio_inert.metadata_exchange.cx_total") == 1
    assert _delta(s, before, "istio_inert.stats.cx_total") == 1
    assert _delta(s, before, "cluster.InboundPassthroughCluster.upstream_cx_total") == 0


TLS_CLIENT = r"""
import socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(sys.argv[3].split(","))
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
try:
    ctx.wrap_socket(s, server_hostname="b.default.svc.cluster.local").close()
except (ssl.SSLError, OSError) as e:
    print("handshake ended:", type(e).__name__)
"""


def _tls_hello(p, alpn):
    # The upstreams are plain echo servers: the handshake fails, but which one got the ClientHello
    # shows the chain that took it.
    r = p.run(p.a, _as_proxy([sys.executable, "-c", TLS_CLIENT, B_ADDR4, str(IN_SVC_PORT), alpn]), timeout=20,
              check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def _conns(env, port):
    return len(env.p.echo_connections(env.echo[port])[0])


def test_inbound_tls_with_istio_alpn_takes_the_mtls_chain(pods):
    p = pods.p
    before = np_.stats(p, p.b)
    mtls_before, pass_before = _conns(pods, ECHO_IN_MTLS), _conns(pods, ECHO_IN_PASS)
    _tls_hello(p, "istio-peer-exchange,istio")
    s = np_.wait_stats(p, p.b, lambda s: _delta(s, before, "tcp.in_mtls.downstream_cx_total") >= 1, "in_mtls used")
    assert _delta(s, before, "listener.0.0.0.0_15006.tls_inspector.tls_found") == 1
    deadline = time.monotonic() + 5
    while _conns(pods, ECHO_IN_MTLS) == mtls_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _conns(pods, ECHO_IN_MTLS) == mtls_before + 1
    assert _conns(pods, ECHO_IN_PASS) == pass_before


def test_inbound_tls_without_istio_alpn_finds_no_chain_on_the_service_port(pods):
    # Envoy's order: the destination port chooses the 9080 chains first; none of them takes TLS with
    # ALPN h2, and the port-less passthrough chains are not tried again. No default chain: closed.
    p = pods.p
    before = np_.stats(p, p.b)
    mtls_before = _conns(pods, ECHO_IN_MTLS)
    _tls_hello(p, "h2,http/1.1")
    s = np_.wait_stats(p, p.b, lambda s: _delta(s, before, "listener.0.0.0.0_15006.no_filter_chain_match") >= 1,
                       "no chain")
    assert _delta(s, before, "listener.0.0.0.0_15006.no_filter_chain_match") == 1
    assert _delta(s, before, "cluster.InboundPassthroughCluster.upstream_cx_total") == 0
    assert _delta(s, before, "tcp.in_mtls.downstream_cx_total") == 0
    assert _conns(pods, ECHO_IN_MTLS) == mtls_before


def test_inbound_other_port_takes_the_passthrough_chain(pods):
    p = pods.p
    before = np_.stats(p, p.b)
    payload = os.urandom(150_000)
    sha = _send(pods, p.a, B_ADDR4, ECHO_IN_PASS, payload, as_proxy=True)
    _echo_done(pods, ECHO_IN_PASS, sha)
    s = np_.wait_stats(p, p.b, lambda s: _delta(s, before, "cluster.InboundPassthroughCluster.upstream_cx_total") >= 1,
                       "inbound passthrough used")
    assert _delta(s, before, "listener.0.0.0.0_15006.downstream_cx_total") == 1
    assert _delta(s, before, "tcp.in_tcp.downstream_cx_total") == 0
    # The wasm stats stand-in in front of the passthrough chain.
    assert _delta(s, before, "istio_inert.stats.cx_total") == 1


# ---------------------------------------------------------------------------------------------------
# LDS: listeners that do not bind come, change and go over xDS; their connections drain like others.

sys.path.insert(0, os.path.join(np_.REPO, "tests", "xds_server"))
import xds_control  # noqa: E402

LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LDS_ECHO_OLD, LDS_ECHO_NEW, LDS_ECHO_PASS = 19000, 19002, 9000
DRAIN_S = 2

HOLDER = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.settimeout(2)
print("OPEN", flush=True)
deadline = time.monotonic() + float(sys.argv[3])
n = 0
while time.monotonic() < deadline:
    try:
        s.sendall(b"x")
        if s.recv(1) != b"x":
            break
    except OSError:
        break
    n += 1
    print("ALIVE", n, flush=True)
    time.sleep(0.2)
print("CLOSED" if time.monotonic() < deadline else "TIMEOUT", flush=True)
"""


def lds_resources(port_9000_cluster=None):
    vo = {"@type": LDS, "name": "virtualOutbound", "address": addr("0.0.0.0", 15001), "use_original_dst": True,
          "listener_filters": [{"name": "envoy.filters.listener.original_dst", "typed_config": {"@type": ORIGINAL_DST}}],
          "filter_chains": [{"name": "catchall", "filters": [tcp_proxy("PassthroughCluster")]}]}
    out = [vo,
           {"@type": CDS, **original_dst_cluster("PassthroughCluster")},
           {"@type": CDS, **static("lds_old", LDS_ECHO_OLD)}, {"@type": CDS, **static("lds_new", LDS_ECHO_NEW)}]
    if port_9000_cluster:
        out.append({"@type": LDS, "name": "0.0.0.0_9000", "address": addr("0.0.0.0", 9000), "bind_to_port": False,
                    "filter_chains": [{"filters": [tcp_proxy(port_9000_cluster, "lds_9000")]}]})
    return out


def test_lds_adds_changes_and_removes_a_listener_that_does_not_bind(tmp_path):
    reason = _reason() or (None if xds_control.node_available() else "node is not installed")
    if reason:
        pytest.skip(reason)
    if not (os.path.isfile(STRAIT_BIN) and os.access(STRAIT_BIN, os.X_OK)):
        pytest.fail(f"no strait binary at {STRAIT_BIN}", pytrace=False)
    with np_.PodPair("istiolds") as p:
        binary = STRAIT_BIN
        if not np_.readable_by(binary, np_.PROXY_UID, np_.PROXY_GID):
            binary = np_.exposed_copy(binary, p.tmpdirs)
        sock_dir = tempfile.mkdtemp(prefix="strait-istio-xds-")
        p.tmpdirs.append(sock_dir)
        os.chmod(sock_dir, 0o777)
        sock = os.path.join(sock_dir, "xds.sock")
        p.capture(p.a, "iptables")
        echo = {port: p.echo_server(p.b, port, log=True) for port in (LDS_ECHO_OLD, LDS_ECHO_NEW, LDS_ECHO_PASS)}
        with xds_control.XdsServer(tmp_path / "xds", unix=sock,
                                   resources=lds_resources(port_9000_cluster="lds_old")) as xds:
            deadline = time.monotonic() + 10
            while not os.path.exists(sock) and time.monotonic() < deadline:
                time.sleep(0.05)
            os.chmod(sock, 0o777)  # strait runs as uid 1337
            boot = xds_control.ads_bootstrap(0)
            boot["admin"] = admin()
            boot["static_resources"]["clusters"][0]["load_assignment"]["endpoints"] = [
                {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": sock}}}}]}]
            cfg_dir = tempfile.mkdtemp(prefix="strait-istio-cfg-")
            p.tmpdirs.append(cfg_dir)
            os.chmod(cfg_dir, 0o755)
            cfg = os.path.join(cfg_dir, "bootstrap.json")
            with open(cfg, "w") as f:
                json.dump(boot, f)
            os.chmod(cfg, 0o644)
            proc = p.spawn(p.a, [binary, "-c", cfg, "--concurrency", "2", "--drain-time-s", str(DRAIN_S)],
                           "strait-lds", as_proxy=True)
            try:
                deadline = time.monotonic() + 20
                while np_.admin(p, p.a, "/ready", timeout=2)[0] != 200:
                    assert proc.poll() is None, p.log_of(proc)
                    assert time.monotonic() < deadline, f"not ready:\n{p.log_of(proc)}"
                    time.sleep(0.1)

                def through_9000(expect_port):
                    payload = os.urandom(50_000)
                    sha = _send_to(p, B_ADDR4, 9000, payload)
                    deadline = time.monotonic() + 10
                    while time.monotonic() < deadline:
                        if any(d["sha256"] == sha for d in p.echo_connections(echo[expect_port])[1]):
                            return
                        time.sleep(0.05)
                    raise AssertionError(f"payload did not reach the echo server on {expect_port}")

                # 1. The listener from LDS takes B:9000 (it has no socket of its own).
                s0 = np_.stats(p, p.a)
                through_9000(LDS_ECHO_OLD)
                s1 = np_.stats(p, p.a)
                assert _delta(s1, s0, "listener.0.0.0.0_9000.downstream_cx_total") == 1
                assert _delta(s1, s0, "listener.0.0.0.0_15001.downstream_cx_total") == 0

                # 2. A connection held open on it, then the listener changes (another cluster): new
                # connections use the new version at once; the held one drains and is closed after
                # --drain-time-s.
                holder = p.spawn(p.a, [sys.executable, "-c", HOLDER, B_ADDR4, "9000", "30"], "holder")
                p.wait_log(holder, "ALIVE 2")
                xds.set_resources(lds_resources(port_9000_cluster="lds_new"))
                np_.wait_stats(p, p.a, lambda s: _delta(s, s1, "listener_manager.lds.update_success") >= 1, "LDS applied")
                through_9000(LDS_ECHO_NEW)
                t0 = time.monotonic()
                p.wait_log(holder, "CLOSED", timeout=DRAIN_S + 8)
                assert time.monotonic() - t0 >= DRAIN_S - 1.5, "the held connection was closed before the drain time"

                # 3. The listener goes: B:9000 now falls to virtualOutbound's passthrough chain.
                s2 = np_.stats(p, p.a)
                xds.replace([LDS], [r for r in lds_resources() if r["@type"] == LDS])
                np_.wait_stats(p, p.a, lambda s: _delta(s, s2, "listener_manager.lds.update_success") >= 1, "LDS applied")
                through_9000(LDS_ECHO_PASS)
                s3 = np_.stats(p, p.a)
                assert _delta(s3, s2, "listener.0.0.0.0_15001.downstream_cx_total") == 1
                assert _delta(s3, s2, "cluster.PassthroughCluster.upstream_cx_total") == 1
                assert _delta(s3, s2, "listener.0.0.0.0_9000.downstream_cx_total") == 0
            finally:
                print(f"----- strait-lds (exit {proc.poll()}) -----\n{p.log_of(proc)[-4000:]}")


def _send_to(p, host, port, payload):
    got = p.client(p.a, host, port, payload, timeout=30)
    assert got == payload, f"{host}:{port}: echoed {len(got)} of {len(payload)} bytes"
    return hashlib.sha256(payload).hexdigest()
