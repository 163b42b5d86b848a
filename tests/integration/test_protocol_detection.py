"""Protocol detection on a capture-style listener: listener_filters http_inspector + tls_inspector with a
short listener_filters_timeout and continue_on_listener_filters_timeout, one filter chain for
application_protocols [http/1.1, h2c] (the HTTP connection manager) and a default_filter_chain
(tcp_proxy). HTTP/1 and h2c go through the HTTP stack; anything else, including server-first protocols,
goes through tcp_proxy byte for byte.

Stat names expected (Envoy's, under the listener's scope `listener.<addr>.`):
  http_inspector.http11_found / http10_found, http_inspector.http2_found,
  http_inspector.http_not_found, and listener_filters_timeout (Envoy: downstream_pre_cx_timeout).
The tests accept either spelling and say which names they looked for when none is there."""

from __future__ import annotations

import os
import ssl
import socket
import time
from types import SimpleNamespace

import harness
from harness import MIB
from peers import env, h1, h2peers

DETECTION_TIMEOUT = 0.2


class BannerServer(harness.TcpServer):
    """A server-first protocol: sends a banner on accept, then echoes lines until EOF."""

    BANNER = b"220 strait-test banner ready\r\n"

    def handle(self, conn: socket.socket) -> None:
        conn.sendall(self.BANNER)
        while not self.stopped.is_set():
            data = conn.recv(65536)
            if not data:
                conn.shutdown(socket.SHUT_WR)
                return
            conn.sendall(data)


def _config(http_port: int, tcp_port: int, listener_port: int) -> dict:
    hcm = harness.http_connection_manager(
        "detect_http", [harness.virtual_host("all", ["*"], [harness.route_to("http_backend")])])
    tcp = {"@type": harness.TCP_PROXY_TYPE, "stat_prefix": "detect_tcp", "cluster": "tcp_backend"}
    listener = {
        "name": "capture",
        "address": harness.socket_address(listener_port),
        "listener_filters": [
            {"name": harness.HTTP_INSPECTOR, "typed_config": {"@type": harness.HTTP_INSPECTOR_TYPE}},
            {"name": harness.TLS_INSPECTOR, "typed_config": {"@type": harness.TLS_INSPECTOR_TYPE}},
        ],
        "listener_filters_timeout": f"{DETECTION_TIMEOUT}s",
        "continue_on_listener_filters_timeout": True,
        "filter_chains": [{
            "filter_chain_match": {"application_protocols": ["http/1.1", "h2c"]},
            "filters": [harness.hcm_filter(hcm)],
        }],
        "default_filter_chain": {"filters": [{"name": harness.TCP_PROXY_FILTER, "typed_config": tcp}]},
    }
    return harness.bootstrap([listener], [harness.static_cluster("http_backend", [http_port]),
                                          harness.static_cluster("tcp_backend", [tcp_port])])


def _env(fleet, tcp_upstream=None) -> SimpleNamespace:
    o = env.origin(fleet)
    tcp = tcp_upstream if tcp_upstream is not None else fleet.echo()
    port = harness.free_port()
    proc = fleet.start(_config(o.port, tcp.port, port))
    assert proc.listener_port("capture") == port
    return SimpleNamespace(proc=proc, port=port, origin=o, tcp=tcp, scope=f"listener.127.0.0.1_{port}.")


def _stat_any(stats: dict[str, int], scope: str, names: list[str]) -> int:
    """Sum of the spellings present (e.g. http11_found + http10_found)."""
    found = [scope + n for n in names if scope + n in stats]
    if not found:
        near = sorted(k for k in stats if k.startswith(scope))
        raise AssertionError(f"none of {[scope + n for n in names]} in /stats; under {scope}: {near}")
    return sum(stats[k] for k in found)


HTTP1_FOUND = ["http_inspector.http11_found", "http_inspector.http10_found"]
HTTP2_FOUND = ["http_inspector.http2_found"]
NOT_FOUND = ["http_inspector.http_not_found"]
TIMEOUTS = ["listener_filters_timeout", "downstream_pre_cx_timeout"]


def test_http1_goes_through_the_http_stack(fleet):
    e = _env(fleet)
    resp = h1.get(e.port, "/detected")
    assert resp.status == 200, resp
    rec = e.origin.last()
    assert rec.target == "/detected"
    assert rec.header("x-request-id"), "no x-request-id at the origin: the request did not go through the HCM"
    s = e.proc.wait_stats(lambda s: s.get("http.detect_http.downstream_rq_total", 0) >= 1)
    assert harness.stat(s, "http.detect_http.downstream_rq_total") == 1
    assert harness.stat(s, "http.detect_http.downstream_cx_http1_total") == 1
    assert _stat_any(s, e.scope, HTTP1_FOUND) == 1
    assert s.get("tcp.detect_tcp.downstream_cx_total", 0) == 0


def test_http1_request_split_across_packets_is_still_detected(fleet):
    e = _env(fleet)
    with h1.Client(e.port) as c:
        raw = h1.build_request("GET", "/split")
        for piece in (raw[:2], raw[2:9], raw[9:]):
            c.send(piece)
            time.sleep(0.03)
        resp = c.read_response()
    assert resp.status == 200, resp
    assert e.origin.last().header("x-request-id")


def test_h2c_prior_knowledge_goes_through_the_http_stack(fleet):
    e = _env(fleet)
    r = harness.curl(["--http2-prior-knowledge", "-i", f"http://127.0.0.1:{e.port}/h2c"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b"HTTP/2 200"), r.stdout[:200]
    assert e.origin.last().header("x-request-id")
    with h2peers.H2Client(e.port) as c:
        assert c.get("/h2c-again").status == 200
    s = e.proc.wait_stats(lambda s: s.get("http.detect_http.downstream_rq_total", 0) >= 2)
    assert harness.stat(s, "http.detect_http.downstream_rq_total") == 2
    assert harness.stat(s, "http.detect_http.downstream_cx_http2_total") == 2
    assert _stat_any(s, e.scope, HTTP2_FOUND) == 2


def test_binary_protocol_goes_through_tcp_proxy_byte_exact(fleet):
    e = _env(fleet)
    payload = b"\x00\x01\x02\xffBINARY" + os.urandom(MIB)
    with harness.connect(e.port) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        got = harness.recv_until_eof(s, timeout=10)
    assert got == payload
    assert e.origin.request_count() == 0
    st = e.proc.wait_stats(lambda s: s.get("tcp.detect_tcp.downstream_cx_total", 0) >= 1)
    assert harness.stat(st, "tcp.detect_tcp.downstream_cx_total") == 1
    assert _stat_any(st, e.scope, NOT_FOUND) == 1


def test_text_protocol_that_is_not_http_goes_through_tcp_proxy(fleet):
    e = _env(fleet)
    payload = b"HELLO this is not http\r\nPING\r\n"
    with harness.connect(e.port) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        got = harness.recv_until_eof(s, timeout=10)
    assert got == payload
    assert e.origin.request_count() == 0


def test_server_first_protocol_is_not_stalled(fleet):
    banner = BannerServer()
    fleet.servers.append(banner)
    e = _env(fleet, tcp_upstream=banner)
    start = time.monotonic()
    with harness.connect(e.port) as s:
        got = harness.recv_exact(s, len(BannerServer.BANNER), timeout=5)
        took = time.monotonic() - start
        assert got == BannerServer.BANNER
        s.sendall(b"QUIT\r\n")
        assert harness.recv_exact(s, 6, timeout=5) == b"QUIT\r\n"
    assert took < 1.0, f"the banner of a server-first protocol took {took:.2f}s (detection timeout 0.2s)"
    assert took >= DETECTION_TIMEOUT * 0.8, f"banner after {took:.3f}s: the detection wait looks skipped"
    st = e.proc.wait_stats(lambda s: s.get("tcp.detect_tcp.downstream_cx_total", 0) >= 1)
    assert _stat_any(st, e.scope, TIMEOUTS) == 1


def test_http_request_after_the_detection_timeout_goes_to_the_default_chain(fleet):
    # A client that waits longer than listener_filters_timeout before speaking is, by then, on the
    # default chain (Envoy's continue_on_listener_filters_timeout): its bytes reach tcp_proxy unchanged.
    e = _env(fleet)
    with harness.connect(e.port) as s:
        time.sleep(DETECTION_TIMEOUT * 3)
        raw = h1.build_request("GET", "/late")
        s.sendall(raw)
        s.shutdown(socket.SHUT_WR)
        got = harness.recv_until_eof(s, timeout=5)
    assert got == raw, "the late request should have been echoed by the tcp_proxy upstream"
    assert e.origin.request_count() == 0


def test_tls_client_hello_without_tls_chain_goes_to_the_default_chain(fleet):
    e = _env(fleet)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    # No ALPN: a ClientHello offering http/1.1 would match the HTTP chain's application_protocols.
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="detect.example")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    assert hello[:1] == b"\x16", "not a TLS record"
    with harness.connect(e.port) as s:
        s.sendall(hello)
        s.shutdown(socket.SHUT_WR)
        got = harness.recv_until_eof(s, timeout=5)
    assert got == hello
    assert e.origin.request_count() == 0


def test_each_outcome_is_counted(fleet):
    e = _env(fleet)
    assert h1.get(e.port, "/one").status == 200
    with h2peers.H2Client(e.port) as c:
        assert c.get("/two").status == 200
    with harness.connect(e.port) as s:
        s.sendall(b"\x00not http")
        s.shutdown(socket.SHUT_WR)
        harness.recv_until_eof(s, timeout=5)
    with harness.connect(e.port) as s:  # says nothing: the detection times out
        time.sleep(DETECTION_TIMEOUT * 3)
    st = e.proc.wait_stats(lambda s: s.get(f"{e.scope}downstream_cx_total", 0) >= 4)
    assert _stat_any(st, e.scope, HTTP1_FOUND) == 1
    assert _stat_any(st, e.scope, HTTP2_FOUND) == 1
    assert _stat_any(st, e.scope, NOT_FOUND) == 1
    assert _stat_any(st, e.scope, TIMEOUTS) == 1
    assert harness.stat(st, f"{e.scope}downstream_cx_total") == 4
