"""Drains that tell clients: SIGTERM, /drain_listeners and listener updates over LDS. HTTP/2 clients get
GOAWAY (first the "shutting down soon" one with the largest stream id, then the final one), HTTP/1.1
responses carry Connection: close, requests in flight finish; /drain_listeners?graceful keeps accepting
(and telling) for the drain time, so a steady load sees no failed request; ?inboundonly leaves outbound
listeners alone; a listener update keeps the connections of filter chains it did not change."""

from __future__ import annotations

import http.client
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import harness
from h2_load import H2Load
from harness import bootstrap, http_listener, route_to, static_cluster, virtual_host

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tests" / "xds_server"))

import xds_control  # noqa: E402
from xds_control import CDS, LDS, XdsServer, ads_bootstrap  # noqa: E402


class SlowOrigin:
    """HTTP/1.1 origin: /slow answers after 1 s, anything else at once."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                if self.path.startswith("/slow"):
                    time.sleep(1.0)
                body = b"ok " + self.path.encode()
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # the default backlog of 5 drops SYNs under a burst of reconnects

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def http_config(origin_port: int, name: str = "http", direction: str | None = None, **hcm) -> dict:
    listener = http_listener(name, name, [virtual_host("all", ["*"], [route_to("origin")])], **hcm)
    if direction:
        listener["traffic_direction"] = direction
    return listener


def test_sigterm_sends_http2_goaway_twice_and_finishes_in_flight(fleet):
    """Frame by frame (hyperframe/hpack: the h2 state machine treats any GOAWAY as the end)."""
    import hpack
    import hyperframe.frame as hf

    origin = harness.track(fleet, SlowOrigin())
    proc = fleet.start(bootstrap([http_config(origin.port, drain_timeout="0.3s")], [static_cluster("origin", [origin.port])]),
                       drain_time_s=4, extra=["--drain-strategy", "immediate"])
    sock = harness.connect(proc.listener_port("http"))
    enc, dec = hpack.Encoder(), hpack.Decoder()
    headers = hf.HeadersFrame(1, enc.encode([(":method", "GET"), (":path", "/slow"), (":scheme", "http"),
                                              (":authority", "x")]))
    headers.flags.add("END_HEADERS")
    headers.flags.add("END_STREAM")
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + hf.SettingsFrame(0).serialize() + headers.serialize())
    time.sleep(0.3)
    proc.signal(signal.SIGTERM)
    goaways, status, body, ended = [], None, b"", False
    buf = b""
    sock.settimeout(0.1)
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        if not data:
            break
        buf += data
        while len(buf) >= 9:
            frame, length = hf.Frame.parse_frame_header(memoryview(buf[:9]))
            if len(buf) < 9 + length:
                break
            frame.parse_body(memoryview(buf[9:9 + length]))
            buf = buf[9 + length:]
            if isinstance(frame, hf.GoAwayFrame):
                goaways.append(frame.last_stream_id)
            elif isinstance(frame, hf.HeadersFrame) and frame.stream_id == 1:
                status = dict(dec.decode(frame.data)).get(":status")
                ended = ended or "END_STREAM" in frame.flags
            elif isinstance(frame, hf.DataFrame) and frame.stream_id == 1:
                body += frame.data
                ended = ended or "END_STREAM" in frame.flags
            elif isinstance(frame, hf.SettingsFrame) and "ACK" not in frame.flags:
                ack = hf.SettingsFrame(0)
                ack.flags.add("ACK")
                sock.sendall(ack.serialize())
    sock.close()
    assert goaways and goaways[0] == 2**31 - 1, goaways
    assert 1 in goaways[1:], f"no final GOAWAY naming stream 1: {goaways}"
    assert status == "200" and ended and body == b"ok /slow", (status, ended, body)
    assert proc.wait_exit(6) == 0


def test_sigterm_gives_http1_responses_connection_close(fleet):
    origin = harness.track(fleet, SlowOrigin())
    proc = fleet.start(bootstrap([http_config(origin.port)], [static_cluster("origin", [origin.port])]),
                       drain_time_s=4, extra=["--drain-strategy", "immediate"])
    c = http.client.HTTPConnection("127.0.0.1", proc.listener_port("http"), timeout=5)
    c.request("GET", "/warm")
    r = c.getresponse()
    assert r.read() == b"ok /warm" and r.getheader("connection") is None
    c.request("GET", "/slow")
    time.sleep(0.3)
    proc.signal(signal.SIGTERM)
    r = c.getresponse()
    assert r.status == 200 and r.read() == b"ok /slow"
    assert r.getheader("connection") == "close"
    assert proc.wait_exit(6) == 0


def wrk(port: int, seconds: int) -> str:
    r = harness.run_tool(["wrk", "-t1", "-c8", f"-d{seconds}s", f"http://127.0.0.1:{port}/"], timeout=seconds + 20)
    return r.stdout.decode()


def test_graceful_drain_listeners_inbound_only_loses_no_request_under_load(fleet):
    origin = harness.track(fleet, SlowOrigin())
    config = bootstrap([http_config(origin.port, "inbound", "INBOUND"), http_config(origin.port, "outbound", "OUTBOUND")],
                       [static_cluster("origin", [origin.port], connect_timeout="5s")])
    proc = fleet.start(config, drain_time_s=3, extra=["--drain-strategy", "gradual"])
    inbound, outbound = proc.listener_port("inbound"), proc.listener_port("outbound")
    keep = http.client.HTTPConnection("127.0.0.1", outbound, timeout=5)
    keep.request("GET", "/before")
    keep.getresponse().read()
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("out", wrk(inbound, 2)), daemon=True)
    t.start()
    time.sleep(0.5)
    assert proc.post("/drain_listeners?graceful&inboundonly").status == 200
    t.join(30)
    out = result["out"]
    assert "Socket errors" not in out and "Non-2xx" not in out, out
    # During the drain the inbound listener still answers, and tells: Connection: close.
    c = http.client.HTTPConnection("127.0.0.1", inbound, timeout=5)
    c.request("GET", "/during")
    r = c.getresponse()
    assert r.status == 200 and r.read() == b"ok /during"
    assert r.getheader("connection") == "close"
    # The outbound listener is untouched: its kept-alive connection goes on, without Connection: close.
    keep.request("GET", "/after")
    r = keep.getresponse()
    assert r.read() == b"ok /after" and r.getheader("connection") is None
    # When the drain time is over the inbound listener stops; the process stays up.
    deadline = time.monotonic() + 6
    while harness.is_listening(inbound) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not harness.is_listening(inbound)
    assert harness.is_listening(outbound)
    assert proc.alive() and proc.get("/ready").status in (200, 503)


def test_lds_update_keeps_connections_of_unchanged_filter_chains(fleet, tmp_path):
    """One listener, two filter chains told apart by destination IP (127.0.0.1 and 127.0.0.2). An LDS
    update that changes only the second chain: its connection is closed when the drain time ends, the
    first chain's connection stays."""
    if not xds_control.node_available():
        pytest.skip("node/npm not installed: the test management server cannot run")
    echo = fleet.echo()
    port = harness.free_port()

    def listener(prefix_b: str) -> dict:
        def chain(ip: str, stat: str) -> dict:
            return {"filter_chain_match": {"prefix_ranges": [{"address_prefix": ip, "prefix_len": 32}]},
                    "filters": [{"name": harness.TCP_PROXY_FILTER, "typed_config": {
                        "@type": harness.TCP_PROXY_TYPE, "stat_prefix": stat, "cluster": "echo"}}]}
        return {"@type": LDS, "name": "tcp", "address": harness.socket_address(port, "0.0.0.0"),
                "filter_chains": [chain("127.0.0.1", "chain_a"), chain("127.0.0.2", prefix_b)]}

    cluster = {"@type": CDS, "name": "echo", "type": "STATIC", "connect_timeout": "1s",
               "load_assignment": {"cluster_name": "echo", "endpoints": [{"lb_endpoints": [
                   {"endpoint": {"address": harness.socket_address(echo.port)}}]}]}}
    with XdsServer(tmp_path / "xds") as xds:
        xds.set_resources([cluster, listener("chain_b")])
        proc = fleet.start(ads_bootstrap(xds.ads_port), drain_time_s=1)
        a = socket.create_connection(("127.0.0.1", port), timeout=5)
        b = socket.create_connection(("127.0.0.2", port), timeout=5)
        for s, word in ((a, b"aaa"), (b, b"bbb")):
            s.sendall(word)
            assert harness.recv_exact(s, 3) == word
        xds.set_resources([listener("chain_b_v2")])
        xds.wait_request(lambda r: r["type_url"] == LDS and r.get("kind") == "ack" and r.get("version_info") != "1", timeout=10)
        how, _ = harness.wait_closed(b, timeout=5)
        assert how in ("eof", "reset"), "the changed chain's connection was not closed after the drain time"
        a.sendall(b"still")
        assert harness.recv_exact(a, 5) == b"still", "the unchanged chain's connection was cut"
        a.close()
        b.close()
        # New connections to the changed chain take the new config.
        with socket.create_connection(("127.0.0.2", port), timeout=5) as c:
            c.sendall(b"new")
            assert harness.recv_exact(c, 3) == b"new"
        assert proc.wait_stats(lambda s: s.get("tcp.chain_b_v2.downstream_cx_total", 0) >= 1)["tcp.chain_b_v2.downstream_cx_total"] >= 1


def _wrk_counts(out: str) -> dict:
    """wrk's error counts (0 when it printed none) and the number of requests."""
    import re
    counts = {"connect": 0, "read": 0, "write": 0, "timeout": 0, "non2xx": 0, "requests": 0}
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        counts.update(connect=int(m[1]), read=int(m[2]), write=int(m[3]), timeout=int(m[4]))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        counts["non2xx"] = int(m[1])
    m = re.search(r"(\d+) requests in", out)
    if m:
        counts["requests"] = int(m[1])
    return counts


@pytest.mark.parametrize("event", ["sigterm", "lds_change", "lds_removal"])
def test_steady_load_across_drain_events_fails_no_request(fleet, tmp_path, event):
    """wrk (HTTP/1.1 keep-alive) and an HTTP/2 client (h2c, 4 connections x 4 streams, h2_load.py) run
    for 4 s against one listener; after 1.5 s comes SIGTERM, or an LDS update that changes the listener,
    or one that removes it. No request may fail: connections are told (Connection: close, GOAWAY) and
    what they had in flight finishes. After a removal the port is gone, so clients that reconnect are
    refused (wrk counts those as connect errors, the HTTP/2 client as refused connects); every request
    that was sent still gets its 2xx.

    Not h2load: nghttp2's client drops a request it had queued but not written when a GOAWAY comes in
    the same read as the response that let it queue one, and h2load counts that as errored although the
    request never left the client (a flake under load). h2_load.py counts each case apart and, as real
    clients do, sends a request above a GOAWAY's last stream id again on a new connection."""
    if not xds_control.node_available():
        pytest.skip("node/npm not installed: the test management server cannot run")
    origin = harness.track(fleet, SlowOrigin())
    port = harness.free_port()

    def listener(stat_prefix: str) -> dict:
        hcm = harness.http_connection_manager(stat_prefix, [virtual_host("all", ["*"], [route_to("origin")])])
        hcm["drain_timeout"] = "0.2s"
        return {"@type": LDS, "name": "http", "address": harness.socket_address(port),
                "filter_chains": [{"filters": [harness.hcm_filter(hcm)]}]}

    cluster = {"@type": CDS, "name": "origin", "type": "STATIC", "connect_timeout": "5s",
               "load_assignment": {"cluster_name": "origin", "endpoints": [{"lb_endpoints": [
                   {"endpoint": {"address": harness.socket_address(origin.port)}}]}]}}
    with XdsServer(tmp_path / "xds") as xds:
        xds.set_resources([cluster, listener("v1")])
        proc = fleet.start(ads_bootstrap(xds.ads_port), drain_time_s=6, extra=["--drain-strategy", "immediate"])
        deadline = time.monotonic() + 10
        while not harness.is_listening(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert harness.is_listening(port)
        outs = {}
        threads = [threading.Thread(target=lambda: outs.setdefault("wrk", wrk_for(port, 4)), daemon=True),
                   H2Load(port, "/h2", connections=4, streams=4, seconds=4)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        if event == "sigterm":
            proc.signal(signal.SIGTERM)
        elif event == "lds_change":
            xds.set_resources([cluster, listener("v2")])
        else:
            xds.remove(LDS, ["http"])
        for t in threads:
            t.join(30)
        w = _wrk_counts(outs["wrk"])
        h2c = threads[1]
        h = h2c.counts
        assert h2c.error is None, h2c.error
        assert w["requests"] > 50 and h["ok"] > 50, (outs["wrk"], h)
        assert w["read"] == 0 and w["timeout"] == 0 and w["non2xx"] == 0, outs["wrk"]
        # Every HTTP/2 request that was sent got its 2xx: none reset, none cut off by a close that no
        # GOAWAY covered, none left unanswered. (A request above a GOAWAY's last stream id was not
        # processed and went again on a new connection: refused_goaway, allowed by RFC 9113 6.8.)
        assert h["bad_status"] == 0 and h["reset"] == 0 and h["lost"] == 0 and h["unfinished"] == 0, h
        assert h["ok"] == h["sent"] - h["refused_goaway"], h
        assert h["goaways"] >= 1, h  # the drain told the HTTP/2 clients
        if event == "lds_removal":
            # Refused reconnects are the only failures a removal may cause (wrk counts a refused
            # non-blocking connect as a write error).
            pass
        else:
            assert w["connect"] == 0 and w["write"] == 0, outs["wrk"]
            assert h["connect_refused"] == 0, h
        if event == "lds_change":
            # The new version took the connections that came after the change.
            s = proc.wait_stats(lambda s: s.get("http.v2.downstream_rq_2xx", 0) > 0)
            assert harness.stat(s, "http.v2.downstream_rq_2xx") > 0
            assert proc.alive()
        elif event == "sigterm":
            assert proc.wait_exit(12) == 0


def wrk_for(port: int, seconds: int) -> str:
    r = harness.run_tool(["wrk", "-t1", "-c4", f"-d{seconds}s", f"http://127.0.0.1:{port}/h1"], timeout=seconds + 20)
    return r.stdout.decode()
