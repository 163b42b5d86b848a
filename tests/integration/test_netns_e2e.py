"""End to end: two pods, each with deploy/strait-iptables.sh (or strait-nftables.sh) and the real strait
binary as its sidecar, and workloads that know nothing about Strait.

    pod A (netns, 10.200.0.1)                         pod B (netns, 10.200.0.2)
    client --connect 10.200.0.2:8080-->               echo server 0.0.0.0:8080 (root)
      OUTPUT: redirect to :15001                      hello server 0.0.0.0:8081 (excluded inbound port)
      strait (uid 1337) 0.0.0.0:15001  ---veth--->    PREROUTING: redirect to :15006
        PassthroughCluster -> 10.200.0.2:8080           strait (uid 1337) 0.0.0.0:15006
                                                          InboundPassthroughCluster -> 10.200.0.2:8080 (over lo)

Each strait runs on its embedded default bootstrap (no -c): outbound capture listener 0.0.0.0:15001,
inbound 0.0.0.0:15006, both forwarding to the original destination, admin on 127.0.0.1:15000 of its own
namespace. The test reads each admin's /stats with `ip netns exec NS curl`.

Needs root, `ip netns`, setpriv and curl (skipped with the reason otherwise) and a built binary:
STRAIT_BIN, or <repo>/build/proxy/strait (a missing binary fails, as in harness.py). Every wait is bounded; the namespaces and every process the test
started are removed at the end, pass or fail.
"""

import os
import subprocess
import shutil
import time

import pytest

import netns_pods as np_
from netns_pods import A_ADDR4, B_ADDR4

STRAIT_BIN = os.environ.get("STRAIT_BIN") or os.path.join(np_.REPO, "build", "proxy", "strait")
EXCLUDED = 8081  # pod B adds this inbound port to the default exclusions
PAYLOAD_SIZE = 4 << 20

OUT_LISTENER = "listener.0.0.0.0_15001.downstream_cx_total"
IN_LISTENER = "listener.0.0.0.0_15006.downstream_cx_total"
OUT_CLUSTER = "cluster.PassthroughCluster"
IN_CLUSTER = "cluster.InboundPassthroughCluster"


def _reason(backend):
    """Why this machine cannot run the test (a skip), or None."""
    r = np_.unavailable_reason()
    if r:
        return r
    r = np_.capture_tool_missing(backend)
    if r:
        return r
    if shutil.which("curl") is None:
        return "'curl' is not installed (deploy/install-deps.sh test installs it)"
    return None


def _require_binary():
    # Like harness.strait_bin(): a missing build fails, it never skips.
    if not (os.path.isfile(STRAIT_BIN) and os.access(STRAIT_BIN, os.X_OK)):
        pytest.fail(f"no strait binary at {STRAIT_BIN}: build it first (cmake -S . -B build -G Ninja && "
                    "ninja -C build) or set STRAIT_BIN", pytrace=False)


class Pods:
    pass


admin, stats, wait_stats = np_.admin, np_.stats, np_.wait_stats


def start_strait(p, ns, binary):
    proc = p.spawn(ns, [binary, "--concurrency", "1"], f"strait-{ns}", as_proxy=True)
    return np_.wait_admin_ready(p, ns, proc)


@pytest.fixture(scope="module", params=["iptables", "nftables"])
def pods(request):
    backend = request.param
    reason = _reason(backend)
    if reason:
        pytest.skip(reason)
    _require_binary()
    with np_.PodPair(f"e2e{backend[:3]}") as p:
        env = Pods()
        env.p = p
        binary = STRAIT_BIN
        if not np_.readable_by(binary, np_.PROXY_UID, np_.PROXY_GID):
            binary = np_.exposed_copy(binary, p.tmpdirs)  # the repo is not readable by uid 1337 here
        p.capture(p.a, backend)
        p.capture(p.b, backend, "-d", f"15000,15001,15006,15021,15090,{EXCLUDED}")
        env.strait_a = start_strait(p, p.a, binary)
        env.strait_b = start_strait(p, p.b, binary)
        p.echo_server(p.b, 8080)
        p.echo_server(p.b, EXCLUDED, hello=True)
        try:
            yield env
        finally:
            for proc in (env.strait_a, env.strait_b):
                print(f"----- {proc.name} (exit {proc.poll()}) -----\n{p.log_of(proc)[-4000:]}")


def test_workload_traffic_crosses_both_sidecars(pods):
    p = pods.p
    payload = os.urandom(PAYLOAD_SIZE)
    got = p.client(p.a, B_ADDR4, 8080, payload, timeout=120)
    assert len(got) == len(payload), f"echoed {len(got)} bytes of {len(payload)}"
    assert got == payload, "echoed bytes differ from the bytes sent"

    # Pod A: the client's connection was captured by the outbound listener and passed through to B.
    # Exactly one: a capture loop (strait's own upstream connection redirected back to 15001) would
    # count more.
    sa = wait_stats(p, p.a, lambda s: s.get(OUT_LISTENER, 0) >= 1
                    and s.get(f"{OUT_CLUSTER}.upstream_cx_total", 0) >= 1
                    and s.get(f"{OUT_CLUSTER}.upstream_cx_tx_bytes_total", 0) >= PAYLOAD_SIZE
                    and s.get(f"{OUT_CLUSTER}.upstream_cx_rx_bytes_total", 0) >= PAYLOAD_SIZE,
                    "outbound capture and passthrough")
    assert sa[OUT_LISTENER] == 1, f"{OUT_LISTENER} = {sa[OUT_LISTENER]}: a capture loop in pod A?"
    assert sa.get(IN_LISTENER, 0) == 0, "pod A's inbound listener saw a connection"

    # Pod B: the connection arriving from A was captured by the inbound listener and delivered to the
    # echo server at its original destination; strait's own connection to 10.200.0.2:8080 (over lo, as
    # uid 1337) was not captured again, neither inbound nor outbound.
    sb = wait_stats(p, p.b, lambda s: s.get(IN_LISTENER, 0) >= 1
                    and s.get(f"{IN_CLUSTER}.upstream_cx_total", 0) >= 1
                    and s.get(f"{IN_CLUSTER}.upstream_cx_tx_bytes_total", 0) >= PAYLOAD_SIZE,
                    "inbound capture and passthrough")
    assert sb[IN_LISTENER] == 1, f"{IN_LISTENER} = {sb[IN_LISTENER]}: a capture loop in pod B?"
    assert sb.get(OUT_LISTENER, 0) == 0, "pod B's outbound listener caught the sidecar's own connection"


def test_admin_of_the_other_pod_is_unreachable(pods):
    p = pods.p
    before_b = stats(p, p.b)
    before_a = stats(p, p.a)
    r = p.probe(p.a, B_ADDR4, 15000)
    # A's sidecar takes the connection (everything outbound is captured) and cannot reach B:15000:
    # B does not redirect its admin port, and its admin listens on 127.0.0.1 only. Nothing comes back.
    assert r["data"] == "", f"got an answer from pod B's admin port: {r}"
    sa = wait_stats(p, p.a, lambda s: s.get(f"{OUT_CLUSTER}.upstream_cx_connect_fail", 0)
                    > before_a.get(f"{OUT_CLUSTER}.upstream_cx_connect_fail", 0),
                    "a failed passthrough connect to 10.200.0.2:15000")
    assert sa[OUT_LISTENER] == before_a.get(OUT_LISTENER, 0) + 1
    assert stats(p, p.b).get(IN_LISTENER, 0) == before_b.get(IN_LISTENER, 0), "B captured its admin port"
    # B's admin still answers on its own loopback.
    assert admin(p, p.b, "/ready")[0] == 200


def test_excluded_inbound_port_is_not_redirected(pods):
    p = pods.p
    before_b = stats(p, p.b)
    r = p.probe(p.a, B_ADDR4, EXCLUDED)
    # The server on the excluded port sees pod A's address: the connection came straight from A's
    # sidecar, not through B's (which would connect from 10.200.0.2).
    assert r["data"] == f"peer={A_ADDR4}\nprobe\n", r
    assert stats(p, p.b).get(IN_LISTENER, 0) == before_b.get(IN_LISTENER, 0)


def test_captured_inbound_port_is_delivered_by_the_sidecar(pods):
    p = pods.p
    before_b = stats(p, p.b)
    # The same probe to a captured port of B reaches the echo server via B's sidecar.
    payload = b"through the mesh\n" * 64
    assert p.client(p.a, B_ADDR4, 8080, payload) == payload
    wait_stats(p, p.b, lambda s: s.get(IN_LISTENER, 0) == before_b.get(IN_LISTENER, 0) + 1,
               f"{IN_LISTENER} + 1")


@pytest.mark.parametrize("port", [15006, 15001])
def test_direct_connection_to_a_capture_port_does_not_loop(pods, port):
    """B leaves its own capture ports alone inbound, so A's sidecar reaches B's listener directly and
    the original destination B recovers is its own listener. Forwarding it there would loop; the
    listener must count one connection and close it."""
    p = pods.p
    listener = f"listener.0.0.0.0_{port}.downstream_cx_total"
    before_b = stats(p, p.b)
    r = p.probe(p.a, B_ADDR4, port)
    assert r["data"] == "", r
    wait_stats(p, p.b, lambda s: s.get(listener, 0) >= before_b.get(listener, 0) + 1, f"{listener} + 1")
    time.sleep(0.5)  # a loop would keep counting
    assert stats(p, p.b).get(listener, 0) == before_b.get(listener, 0) + 1, "the sidecar forwarded to itself"


def test_http_between_pods_goes_through_both_http_stacks(pods):
    """HTTP from pod A's workload to pod B's is detected on both capture listeners (http_inspector) and
    proxied by the HTTP connection managers, not as opaque TCP: both sidecars count the request and
    its 2xx, and pod B's workload sees the x-request-id Strait adds."""
    p = pods.p
    server = p.spawn(p.b, ["/usr/bin/python3", "-c",
                           "import http.server,sys\n"
                           "class H(http.server.BaseHTTPRequestHandler):\n"
                           "    protocol_version='HTTP/1.1'\n"
                           "    def do_GET(self):\n"
                           "        b=('rid=%s' % self.headers.get('x-request-id','none')).encode()\n"
                           "        self.send_response(200); self.send_header('content-length', str(len(b)))\n"
                           "        self.end_headers(); self.wfile.write(b)\n"
                           "    def log_message(self,*a): pass\n"
                           "http.server.HTTPServer(('0.0.0.0', 8090), H).serve_forever()\n"], "http-b")
    try:
        deadline = time.monotonic() + 10
        out = None
        while time.monotonic() < deadline:
            r = subprocess.run(["ip", "netns", "exec", p.a, "curl", "-s", "-m", "5", f"http://{B_ADDR4}:8090/hello"],
                               capture_output=True, timeout=15)
            out = r.stdout.decode() if r.returncode == 0 else None
            if out and out.startswith("rid="):
                break  # (until pod B's server listens, its sidecar answers 503: retried)
            time.sleep(0.2)
        assert out is not None, f"curl from pod A to pod B's HTTP server failed:\n{p.log_of(server)}"
        assert out.startswith("rid=") and out != "rid=none", f"pod B's workload saw no x-request-id: {out!r}"
        sa = wait_stats(p, p.a, lambda s: s.get("http.outbound_0.0.0.0_15001.downstream_rq_2xx", 0) >= 1
                        and s.get("listener.0.0.0.0_15001.http_inspector.http11_found", 0) >= 1,
                        "pod A's outbound HTTP stack")
        sb = wait_stats(p, p.b, lambda s: s.get("http.inbound_0.0.0.0_15006.downstream_rq_2xx", 0) >= 1
                        and s.get("listener.0.0.0.0_15006.http_inspector.http11_found", 0) >= 1,
                        "pod B's inbound HTTP stack")
        assert sa["cluster.PassthroughCluster.upstream_rq_2xx"] >= 1
        assert sb["cluster.InboundPassthroughCluster.upstream_rq_2xx"] >= 1
    finally:
        server.kill()
        server.wait(timeout=5)
