"""HTTP/1.1 through the HTTP connection manager and the router, end to end: curl and raw sockets in
front, the test origin (peers/origin.py) or nginx behind. Bodies byte-exact, keep-alive and pipelining,
chunked bodies and trailers, HEAD, 100-continue, HTTP/1.0, header handling, stats, and 1 GiB bodies
streamed with bounded memory."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
import time
import uuid

import pytest

import harness
from harness import MIB
from peers import env, h1, patterns


# ---------------------------------------------------------------------------------------------------
# Methods and bodies


def test_curl_get_reaches_origin(fleet):
    e = env.simple(fleet)
    r = harness.curl(["-i", f"{e.url}/hello/world?x=1"])
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode("latin-1")
    assert re.match(r"HTTP/1\.1 200", out), out[:300]
    rec = e.origin.last()
    assert (rec.method, rec.target, rec.version) == ("GET", "/hello/world?x=1", "HTTP/1.1")
    assert '"path": "/hello/world?x=1"' in out


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_1mib_body_is_byte_exact_both_ways(fleet, method):
    e = env.simple(fleet)
    body = os.urandom(MIB)
    resp = h1.request(e.port, method, "/_/echo-body", body=body)
    assert resp.status == 200 and resp.complete, resp
    rec = e.origin.last()
    assert rec.method == method
    assert rec.body_len == MIB and rec.body_sha == env.sha256(body), "origin got a different body"
    assert resp.body_len == MIB and resp.body == body, "client got a different body back"


def test_curl_post_and_put_bodies_are_byte_exact(fleet, tmp_path):
    e = env.simple(fleet)
    body = os.urandom(MIB)
    path = tmp_path / "body.bin"
    path.write_bytes(body)
    for method in ("POST", "PUT"):
        out = tmp_path / f"out-{method}.bin"
        r = harness.curl(["-X", method, "--data-binary", f"@{path}", "-o", str(out), "-w", "%{http_code}",
                          f"{e.url}/_/echo-body"])
        assert r.returncode == 0, r.stderr
        assert r.stdout == b"200"
        assert e.origin.last().body_sha == env.sha256(body)
        assert out.read_bytes() == body


# ---------------------------------------------------------------------------------------------------
# Connections


def test_keep_alive_two_requests_on_one_client_connection(fleet):
    e = env.simple(fleet)
    with h1.Client(e.port) as c:
        first = c.request("GET", "/one")
        second = c.request("GET", "/two")
    assert first.status == 200 and second.status == 200
    assert not first.closes(), f"strait closed a keep-alive connection after one request: {first!r}"
    assert [r.target for r in e.origin.requests] == ["/one", "/two"]


def test_upstream_connections_are_reused_for_sequential_requests(fleet):
    e = env.simple(fleet)
    with h1.Client(e.port) as c:
        for i in range(20):
            resp = c.request("GET", f"/seq/{i}")
            assert resp.status == 200, resp
    assert e.origin.request_count() == 20
    assert e.origin.connection_count() <= 2, \
        f"20 sequential requests used {e.origin.connection_count()} upstream connections"


def test_upstream_connections_are_reused_across_client_connections(fleet):
    # Each client connection is new; the upstream pool (one per worker, 2 workers) should still reuse.
    e = env.simple(fleet)
    for i in range(20):
        resp = h1.get(e.port, f"/sep/{i}")
        assert resp.status == 200, resp
    assert e.origin.request_count() == 20
    assert e.origin.connection_count() <= 2, \
        f"20 sequential requests used {e.origin.connection_count()} upstream connections"


def test_pipelined_requests_are_answered_in_order(fleet):
    e = env.simple(fleet)
    with h1.Client(e.port) as c:
        c.send(h1.build_request("GET", "/_/slow?delay=0.3&n=first") + h1.build_request("GET", "/second")
               + h1.build_request("POST", "/third", body=b"x" * 1000))
        answers = [c.read_response() for _ in range(3)]
    assert [a.status for a in answers] == [200, 200, 200], answers
    assert [a.json()["path"] for a in answers] == ["/_/slow?delay=0.3&n=first", "/second", "/third"]
    assert answers[2].json()["body_len"] == 1000


def test_connection_close_is_honored(fleet):
    e = env.simple(fleet)
    with h1.Client(e.port) as c:
        resp = c.request("GET", "/bye", [("Connection", "close")])
        assert resp.status == 200
        assert resp.closes(), f"no Connection: close on the answer to a Connection: close request: {resp!r}"
        assert c.wait_closed(2.0) in ("eof", "reset"), "strait kept the connection open after Connection: close"


def test_http10_client_gets_an_answer_and_a_close(fleet):
    e = env.simple(fleet)
    with h1.Client(e.port) as c:
        resp = c.request("GET", "/old-client", version="HTTP/1.0")
        assert resp.status == 200, resp
        assert resp.complete and resp.json()["path"] == "/old-client"
        assert c.wait_closed(2.0) in ("eof", "reset"), "HTTP/1.0 without keep-alive: connection left open"


def test_http10_client_without_host_header(fleet):
    # HTTP/1.0 has no Host requirement: strait routes it as addressed to the listener.
    e = env.simple(fleet)
    with h1.Client(e.port) as c:
        resp = c.request("GET", "/no-host", version="HTTP/1.0", host=None)
    assert resp.status == 200, resp
    assert e.origin.last().target == "/no-host"


def test_curl_http10(fleet):
    e = env.simple(fleet)
    r = harness.curl(["--http1.0", "-i", f"{e.url}/curl10"])
    assert r.returncode == 0, r.stderr
    assert re.match(rb"HTTP/1\.[01] 200", r.stdout), r.stdout[:200]
    assert e.origin.last().target == "/curl10"


# ---------------------------------------------------------------------------------------------------
# Chunked bodies and trailers


def test_chunked_request_body_reaches_origin_intact(fleet):
    e = env.simple(fleet)
    body = os.urandom(300_000)
    resp = h1.request(e.port, "POST", "/chunked-up", body=body, chunked=True, chunk_size=7000)
    assert resp.status == 200, resp
    rec = e.origin.last()
    assert rec.body_complete and rec.body_len == len(body) and rec.body_sha == env.sha256(body)


def test_chunked_request_trailers_reach_origin(fleet):
    e = env.simple(fleet)
    resp = h1.request(e.port, "POST", "/chunked-trailers", body=b"hello world", chunked=True,
                      trailers=[("x-req-trailer", "rt1")])
    assert resp.status == 200, resp
    assert ("x-req-trailer", "rt1") in [(k.lower(), v) for k, v in e.origin.last().trailers], \
        f"origin saw trailers {e.origin.last().trailers}"


def test_chunked_response_is_relayed_intact(fleet):
    e = env.simple(fleet)
    resp = h1.get(e.port, "/_/chunked?chunks=50&size=3000")
    assert resp.status == 200 and resp.complete, resp
    assert resp.body == patterns.data(150_000)


def test_chunked_response_trailers_reach_client(fleet):
    e = env.simple(fleet)
    resp = h1.get(e.port, "/_/chunked?chunks=5&size=1000&trailers=1", headers=[("TE", "trailers")])
    assert resp.status == 200 and resp.complete, resp
    assert resp.body_info.chunked, "a response with trailers must stay chunked to carry them"
    trailers = {k.lower(): v for k, v in resp.trailers}
    assert trailers.get("x-trailer-one") == "t1", f"trailers: {resp.trailers}"
    assert trailers.get("x-body-sha256") == env.sha256(patterns.data(5000))


def test_curl_sees_chunked_response_trailers(fleet):
    e = env.simple(fleet)
    r = harness.curl(["-i", "--raw", f"{e.url}/_/chunked?chunks=3&size=10&trailers=1"])
    assert r.returncode == 0, r.stderr
    assert b"x-trailer-one: t1" in r.stdout.lower(), r.stdout[-400:]


# ---------------------------------------------------------------------------------------------------
# HEAD and 100-continue


def test_head_has_no_body_and_keeps_content_length(fleet):
    e = env.simple(fleet)
    with h1.Client(e.port) as c:
        head = c.request("HEAD", "/_/body?size=12345")
        assert head.status == 200
        assert head.header("content-length") == "12345", head
        # A body after the HEAD answer would be read as the start of the next response.
        after = c.request("GET", "/after-head")
        assert after.status == 200 and after.json()["path"] == "/after-head", after


def test_expect_100_continue_with_curl(fleet, tmp_path):
    e = env.simple(fleet)
    body = os.urandom(2 * MIB)
    path = tmp_path / "big.bin"
    path.write_bytes(body)
    r = harness.curl(["-v", "-H", "Expect: 100-continue", "--expect100-timeout", "10",
                      "--data-binary", f"@{path}", "-o", "/dev/null", "-w", "%{http_code}", f"{e.url}/upload"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"200"
    assert b"HTTP/1.1 100 Continue" in r.stderr, r.stderr.decode(errors="replace")[-1500:]
    assert e.origin.last().body_sha == env.sha256(body)


def test_expect_100_continue_raw_waits_for_100_before_body(fleet):
    e = env.simple(fleet)
    body = os.urandom(100_000)
    with h1.Client(e.port) as c:
        c.send(h1.build_request("POST", "/expect", [("Expect", "100-continue"),
                                                   ("Content-Length", str(len(body)))], None))
        interim = h1.read_response(c.reader, "POST", timeout=5, skip_interim=False)
        assert interim.status == 100, f"expected 100 Continue before sending the body, got {interim!r}"
        c.send(body)
        resp = c.read_response("POST")
    assert resp.status == 200, resp
    assert e.origin.last().body_sha == env.sha256(body)


# ---------------------------------------------------------------------------------------------------
# Headers


def test_header_name_case_is_preserved_http1_to_http1(fleet):
    e = env.simple(fleet)
    resp = h1.get(e.port, "/case", headers=[("X-MiXeD-Case", "1")])
    assert resp.status == 200
    assert b"\r\nX-MiXeD-Case: 1\r\n" in e.origin.last().raw_head, e.origin.last().raw_head


def test_request_id_is_added_when_absent(fleet):
    e = env.simple(fleet)
    h1.get(e.port, "/rid1")
    h1.get(e.port, "/rid2")
    ids = [r.header("x-request-id") for r in e.origin.requests]
    assert all(ids), f"origin saw no x-request-id: {ids}"
    for rid in ids:
        uuid.UUID(rid)  # Envoy generates UUIDs
    assert ids[0] != ids[1], "two requests got the same x-request-id"


def test_request_id_is_kept_when_present(fleet):
    e = env.simple(fleet)
    h1.get(e.port, "/rid", headers=[("x-request-id", "my-own-request-id-42")])
    assert e.origin.last().headers_named("x-request-id") == ["my-own-request-id-42"]


def test_trace_headers_pass_through_untouched(fleet):
    e = env.simple(fleet)
    trace = [
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
        ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90"),
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ("x-b3-parentspanid", "05e3ac9a4f6e3b90"),
        ("x-b3-sampled", "1"),
    ]
    h1.get(e.port, "/traced", headers=trace)
    rec = e.origin.last()
    for name, value in trace:
        assert rec.headers_named(name) == [value], f"{name}: origin saw {rec.headers_named(name)}"


def test_x_forwarded_proto_is_set(fleet):
    e = env.simple(fleet)
    h1.get(e.port, "/xfp")
    assert e.origin.last().headers_named("x-forwarded-proto") == ["http"]


def test_hop_by_hop_request_headers_are_not_forwarded(fleet):
    e = env.simple(fleet)
    resp = h1.get(e.port, "/hop", headers=[("Connection", "keep-alive"), ("Keep-Alive", "timeout=30"),
                                           ("Proxy-Connection", "keep-alive"), ("X-End-To-End", "yes")])
    assert resp.status == 200
    rec = e.origin.last()
    for name in ("keep-alive", "proxy-connection"):
        assert rec.header(name) is None, f"{name} was forwarded: {rec.headers}"
    assert "keep-alive" not in h1.connection_tokens(rec.headers), f"client's Connection forwarded: {rec.headers}"
    assert rec.header("x-end-to-end") == "yes"


def test_connection_nominated_request_headers_are_not_forwarded(fleet):
    e = env.simple(fleet)
    h1.get(e.port, "/nominated", headers=[("Connection", "x-custom-hop"), ("X-Custom-Hop", "secret")])
    rec = e.origin.last()
    assert rec.header("x-custom-hop") is None, f"a header named in Connection was forwarded: {rec.headers}"


def test_hop_by_hop_response_headers_are_not_forwarded(fleet):
    e = env.simple(fleet)
    resp = h1.get(e.port, "/_/hop")
    assert resp.status == 200
    for name in ("keep-alive", "proxy-connection", "x-custom-hop"):
        assert not resp.has_header(name), f"response hop-by-hop header {name} reached the client: {resp.headers}"
    assert resp.header("x-end-to-end") == "1"


def test_host_header_reaches_origin(fleet):
    e = env.simple(fleet)
    h1.get(e.port, "/host", host="service.example:8080")
    assert e.origin.last().headers_named("host") == ["service.example:8080"]


# ---------------------------------------------------------------------------------------------------
# Stats


def _traffic_2xx_4xx_5xx(port: int) -> None:
    assert h1.get(port, "/ok").status == 200
    assert h1.get(port, "/_/status?code=404").status == 404
    assert h1.get(port, "/_/status?code=503").status == 503


def test_http_stats_after_traffic(fleet):
    e = env.simple(fleet, stat_prefix="ingress_http", cluster="backend")
    _traffic_2xx_4xx_5xx(e.port)
    s = e.proc.wait_stats(lambda s: s.get("http.ingress_http.downstream_rq_total", 0) >= 3
                          and s.get("cluster.backend.upstream_rq_total", 0) >= 3)
    assert harness.stat(s, "http.ingress_http.downstream_rq_total") == 3
    assert harness.stat(s, "http.ingress_http.downstream_rq_2xx") == 1
    assert harness.stat(s, "http.ingress_http.downstream_rq_4xx") == 1
    assert harness.stat(s, "http.ingress_http.downstream_rq_5xx") == 1
    assert harness.stat(s, "http.ingress_http.downstream_cx_http1_total") == 3
    assert harness.stat(s, "http.ingress_http.downstream_cx_http2_total") == 0
    assert harness.stat(s, "cluster.backend.upstream_rq_total") == 3
    assert harness.stat(s, "cluster.backend.upstream_rq_2xx") == 1
    assert harness.stat(s, "cluster.backend.upstream_rq_4xx") == 1
    assert harness.stat(s, "cluster.backend.upstream_rq_5xx") == 1
    assert 1 <= harness.stat(s, "cluster.backend.upstream_cx_http1_total") <= 2
    assert harness.stat(s, "cluster.backend.upstream_rq_timeout") == 0
    assert harness.stat(s, "cluster.backend.upstream_rq_retry") == 0


def test_prometheus_has_request_time_histograms(fleet):
    e = env.simple(fleet, stat_prefix="ingress_http", cluster="backend")
    _traffic_2xx_4xx_5xx(e.port)
    deadline = time.monotonic() + 5
    text = ""
    while time.monotonic() < deadline:
        resp = e.proc.get("/stats/prometheus")
        assert resp.status == 200
        text = resp.text
        if "envoy_cluster_upstream_rq_time_bucket" in text and "envoy_http_downstream_rq_time_bucket" in text:
            break
        time.sleep(0.1)
    for metric, tag in (("envoy_http_downstream_rq_time", 'envoy_http_conn_manager_prefix="ingress_http"'),
                        ("envoy_cluster_upstream_rq_time", 'envoy_cluster_name="backend"')):
        buckets = re.findall(rf'^{metric}_bucket\{{([^}}]*)\}} (\d+)', text, re.M)
        assert buckets, f"no {metric}_bucket lines in /stats/prometheus"
        mine = [(labels, int(v)) for labels, v in buckets if tag in labels]
        assert mine, f"no {metric}_bucket with {tag}: {buckets[:5]}"
        assert all('le="' in labels for labels, _ in mine)
        inf = [v for labels, v in mine if 'le="+Inf"' in labels]
        assert inf and inf[0] == 3, f'{metric}_bucket{{le="+Inf"}} should count the 3 requests: {mine}'
        assert re.search(rf'^{metric}_count\{{[^}}]*{re.escape(tag)}[^}}]*\}} 3$', text, re.M), \
            f"{metric}_count for {tag} is not 3"


# ---------------------------------------------------------------------------------------------------
# nginx as the upstream


def test_nginx_upstream_keep_alive_and_files(fleet):
    ng = env.nginx(fleet)
    data = os.urandom(3 * MIB)
    path = ng.add_file("blob.bin", data)
    e = env.simple(fleet, upstream=ng.port)
    with h1.Client(e.port) as c:
        for _ in range(10):
            resp = c.request("GET", "/")
            assert resp.status == 200 and resp.body == b"nginx ok\n", resp
        resp = c.request("GET", path)
        assert resp.status == 200 and resp.body == data
        assert c.request("GET", "/status/404").status == 404


def test_wrk_against_nginx_has_no_errors(fleet):
    ng = env.nginx(fleet)
    e = env.simple(fleet, upstream=ng.port)
    r = harness.run_tool(["wrk", "-t", "2", "-c", "16", "-d", "3s", "--timeout", "2s", f"{e.url}/"], timeout=30)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, out + r.stderr.decode(errors="replace")
    m = re.search(r"(\d+) requests in", out)
    assert m and int(m.group(1)) > 100, out
    assert "Non-2xx or 3xx responses" not in out, out
    assert "Socket errors" not in out, out
    harness.assert_ready(e.proc)


# ---------------------------------------------------------------------------------------------------
# 1 GiB bodies, streamed with bounded memory

GIB = 1024 * MIB
HWM_LIMIT_KIB = harness.rss_limit_kib(100)


class _BodySender(threading.Thread):
    """Sends a request head then `total` pattern bytes, hashing what it sends."""

    def __init__(self, sock: socket.socket, head: bytes, total: int):
        super().__init__(daemon=True)
        self.sock, self.head, self.total = sock, head, total
        self.sha = hashlib.sha256()
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.sock.sendall(self.head)
            for piece in patterns.chunks(self.total, MIB):
                self.sock.sendall(piece)
                self.sha.update(piece)
                self.sent += len(piece)
        except BaseException as err:  # reported through .error
            self.error = err


@pytest.mark.slow
@pytest.mark.unsanitized("its point is strait's VmHWM, which ASan's shadow memory and free quarantine inflate")
def test_1gib_request_body_streams_with_bounded_memory(fleet):
    e = env.simple(fleet, start_kw={"log_level": "info"})
    start = time.monotonic()
    with h1.Client(e.port, timeout=60) as c:
        head = h1.build_request("POST", "/sink", [("Content-Length", str(GIB))], None)
        sender = _BodySender(c.sock, head, GIB)
        sender.start()
        resp = c.read_response("POST", timeout=60)
        sender.join(timeout=10)
    assert sender.error is None, f"sending failed after {sender.sent} bytes: {sender.error!r}"
    assert resp.status == 200, resp
    echo = resp.json()
    assert echo["body_len"] == GIB
    assert echo["body_sha256"] == sender.sha.hexdigest()
    hwm = harness.proc_status_kib(e.proc.pid, "VmHWM")
    assert hwm < HWM_LIMIT_KIB, f"strait's VmHWM reached {hwm} KiB streaming 1 GiB up"
    assert time.monotonic() - start < 60


@pytest.mark.slow
@pytest.mark.unsanitized("its point is strait's VmHWM, which ASan's shadow memory and free quarantine inflate")
def test_1gib_response_body_streams_to_a_slow_reader_with_bounded_memory(fleet):
    e = env.simple(fleet, start_kw={"log_level": "info"})
    expected = patterns.sha256(GIB)  # computed before the clock starts
    start = time.monotonic()
    with h1.Client(e.port, timeout=60) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        c.send(h1.build_request("GET", f"/_/body?size={GIB}"))
        time.sleep(2.0)  # read nothing at first: strait must apply backpressure, not buffer
        hwm_stalled = harness.proc_status_kib(e.proc.pid, "VmHWM")
        state = {"n": 0}

        def slow_then_fast(data: bytes) -> None:
            state["n"] += len(data)
            if state["n"] < 16 * MIB:
                time.sleep(0.01)

        resp = c.read_response("GET", timeout=60, store_limit=0, on_data=slow_then_fast)
    assert resp.status == 200 and resp.complete, resp
    assert resp.body_len == GIB
    assert resp.body_sha == expected
    hwm = harness.proc_status_kib(e.proc.pid, "VmHWM")
    assert hwm_stalled < HWM_LIMIT_KIB, f"VmHWM {hwm_stalled} KiB while the client was not reading"
    assert hwm < HWM_LIMIT_KIB, f"strait's VmHWM reached {hwm} KiB streaming 1 GiB down"
    assert time.monotonic() - start < 60
