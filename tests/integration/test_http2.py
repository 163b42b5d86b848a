"""HTTP/2 (h2c, prior knowledge) downstream through the HTTP connection manager: to an HTTP/1.1 origin
(downstream h2 -> upstream h1) and to HTTP/2 upstreams (python3-h2 origin, nginx h2c). curl, nghttp,
h2load and a python3-h2 client in front."""

from __future__ import annotations

import json
import os
import re
import time

import h2.errors

import harness
from harness import MIB
from peers import env, h1, h2peers, patterns


def _h2load_ok(out: str, n: int) -> None:
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored", out)
    assert m, out
    total, started, done, succeeded, failed, errored = map(int, m.groups())
    assert (succeeded, failed, errored) == (n, 0, 0), out
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    assert codes and int(codes.group(1)) == n, out


# ---------------------------------------------------------------------------------------------------
# h2 -> h1


def test_curl_h2_prior_knowledge_to_http1_origin(fleet):
    e = env.simple(fleet)
    r = harness.curl(["--http2-prior-knowledge", "-i", "-H", "x-from-h2: yes", f"{e.url}/h2/to/h1?q=1"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b"HTTP/2 200"), r.stdout[:300]
    rec = e.origin.last()
    assert (rec.method, rec.target, rec.version) == ("GET", "/h2/to/h1?q=1", "HTTP/1.1")
    assert rec.header("x-from-h2") == "yes"
    assert rec.headers_named("host") == [f"127.0.0.1:{e.port}"], "the :authority should become Host"


def test_nghttp_to_http1_origin(fleet):
    e = env.simple(fleet)
    r = harness.run_tool(["nghttp", "-v", f"{e.url}/nghttp"], timeout=20)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, out + r.stderr.decode(errors="replace")
    assert re.search(r"recv \(stream_id=\d+\) :status: 200", out), out[-2000:]
    assert e.origin.last().target == "/nghttp"


def test_h2_post_1mib_to_http1_origin_is_byte_exact(fleet):
    e = env.simple(fleet)
    body = os.urandom(MIB)
    with h2peers.H2Client(e.port) as c:
        st = c.response(c.request("POST", "/_/echo-body", body=body))
    assert st.status == 200 and st.ended, st
    assert e.origin.last().body_sha == env.sha256(body)
    assert bytes(st.data) == body


def test_h2_request_trailers_to_http1_origin_do_not_break_the_request(fleet):
    e = env.simple(fleet)
    with h2peers.H2Client(e.port) as c:
        st = c.response(c.request("POST", "/with-trailers", body=b"abc", trailers={"x-req-trailer": "1"}))
    assert st.status == 200 and st.ended, st
    assert e.origin.last().body_len == 3


def test_h2_64mib_download_from_http1_origin_under_flow_control(fleet):
    e = env.simple(fleet, start_kw={"log_level": "info"})
    size = 64 * MIB
    with h2peers.H2Client(e.port, timeout=60) as c:
        st = c.response(c.request("GET", f"/_/body?size={size}", store=False), timeout=60)
    assert st.status == 200 and st.ended, st
    assert st.data_len == size and st.sha.hexdigest() == patterns.sha256(size)


def test_many_concurrent_streams_on_one_connection(fleet):
    e = env.simple(fleet)
    with h2peers.H2Client(e.port) as c:
        sids = [c.request("GET", f"/_/slow?delay=0.2&i={i}") for i in range(50)]
        states = [c.response(sid, timeout=15) for sid in sids]
    assert [s.status for s in states] == [200] * 50, [s for s in states if s.status != 200][:3]
    paths = [s.json()["path"] for s in states]
    assert paths == [f"/_/slow?delay=0.2&i={i}" for i in range(50)], "responses crossed streams"


def test_response_headers_reach_h2_client_lowercase(fleet):
    e = env.simple(fleet)
    with h2peers.H2Client(e.port) as c:
        st = c.get("/_/headers?X-Upper-Case=v")
    assert st.status == 200
    names = [k for k, _ in st.headers]
    assert all(k == k.lower() for k in names), f"uppercase header names on HTTP/2: {names}"
    assert st.header("x-upper-case") == "v"
    for name in ("connection", "keep-alive", "transfer-encoding"):
        assert st.header(name) is None, f"connection-specific header {name} sent on HTTP/2"


# ---------------------------------------------------------------------------------------------------
# h2 -> h2


def test_curl_h2_to_http2_upstream(fleet):
    e = env.simple(fleet, h2_upstream=True)
    r = harness.curl(["--http2-prior-knowledge", f"{e.url}/h2/to/h2", "-H", "x-a: b"])
    assert r.returncode == 0, r.stderr
    echo = json.loads(r.stdout)
    assert echo["protocol"] == "h2" and echo["path"] == "/h2/to/h2" and echo["method"] == "GET"
    assert ["x-a", "b"] in echo["headers"]


def test_http1_client_to_http2_upstream(fleet):
    e = env.simple(fleet, h2_upstream=True)
    body = os.urandom(300_000)
    resp = h1.request(e.port, "POST", "/h1/to/h2", body=body, host="svc.example")
    assert resp.status == 200, resp
    echo = resp.json()
    assert echo["protocol"] == "h2" and echo["authority"] == "svc.example"
    assert echo["body_len"] == len(body) and echo["body_sha256"] == env.sha256(body)


def test_nghttp_to_http2_upstream(fleet):
    e = env.simple(fleet, h2_upstream=True)
    r = harness.run_tool(["nghttp", "-v", f"{e.url}/nghttp-h2"], timeout=20)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, out
    assert re.search(r":status: 200", out), out[-2000:]
    assert '"protocol": "h2"' in out


def test_trailers_preserved_h2_to_h2(fleet):
    e = env.simple(fleet, h2_upstream=True)
    with h2peers.H2Client(e.port) as c:
        st = c.get("/_/trailers")
    assert st.status == 200 and st.ended, st
    assert bytes(st.data) == b"hello\n"
    assert st.trailer("x-trailer-one") == "t1" and st.trailer("x-trailer-two") == "t2", st.trailers


def test_request_trailers_preserved_h2_to_h2(fleet):
    e = env.simple(fleet, h2_upstream=True)
    with h2peers.H2Client(e.port) as c:
        st = c.response(c.request("POST", "/req-trailers", body=b"data", trailers={"x-req-trailer": "rt"}))
    assert st.status == 200, st
    assert ["x-req-trailer", "rt"] in st.json()["trailers"], st.json()


def test_nghttp_sees_trailers_h2_to_h2(fleet):
    e = env.simple(fleet, h2_upstream=True)
    r = harness.run_tool(["nghttp", "-v", f"{e.url}/_/trailers"], timeout=20)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, out
    assert re.search(r"recv \(stream_id=\d+\) x-trailer-one: t1", out), out[-2000:]


def test_http2_upstream_connection_is_multiplexed(fleet):
    up = env.h2origin(fleet)
    e = env.simple(fleet, upstream=up, h2_upstream=True)
    with h2peers.H2Client(e.port) as c:
        sids = [c.request("GET", f"/_/slow?delay=0.3&i={i}") for i in range(20)]
        states = [c.response(s, timeout=10) for s in sids]
    assert all(s.status == 200 for s in states), states[:3]
    conns = {s.json()["conn"] for s in states}
    assert len(conns) == 1, f"20 concurrent streams from one client used {len(conns)} upstream h2 connections"


# ---------------------------------------------------------------------------------------------------
# Multiplexing under load (h2load)


def test_h2load_multiplexing_to_http1_upstream(fleet):
    ng = env.nginx(fleet)
    e = env.simple(fleet, upstream=ng.port, start_kw={"log_level": "info"})
    r = harness.run_tool(["h2load", "-n", "2000", "-c", "4", "-m", "10", f"{e.url}/"], timeout=60)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, out + r.stderr.decode(errors="replace")
    _h2load_ok(out, 2000)


def test_h2load_multiplexing_to_http2_upstream(fleet):
    ng = env.nginx(fleet, h2=True)
    e = env.simple(fleet, upstream=ng.h2_port, h2_upstream=True, start_kw={"log_level": "info"})
    r = harness.run_tool(["h2load", "-n", "2000", "-c", "4", "-m", "10", f"{e.url}/"], timeout=60)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, out + r.stderr.decode(errors="replace")
    _h2load_ok(out, 2000)


def test_h2load_multiplexing_to_python_origin(fleet):
    e = env.simple(fleet, start_kw={"log_level": "info"})
    r = harness.run_tool(["h2load", "-n", "2000", "-c", "4", "-m", "10", f"{e.url}/load"], timeout=90)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, out
    _h2load_ok(out, 2000)
    assert e.origin.request_count() == 2000
    # h2load ends each connection with GOAWAY and FIN, as browsers and gRPC do: a normal close, not a
    # downstream protocol error (each of the 4 counted as one before).
    s = e.proc.wait_stats(lambda s: harness.stat(s, "http.ingress_http.downstream_cx_destroy") >= 4)
    assert harness.stat(s, "http.ingress_http.downstream_cx_destroy") == 4
    assert harness.stat(s, "http.ingress_http.downstream_cx_protocol_error") == 0


# ---------------------------------------------------------------------------------------------------
# Resets


def test_client_rst_stream_does_not_affect_other_streams(fleet):
    e = env.simple(fleet)
    with h2peers.H2Client(e.port) as c:
        doomed = c.request("GET", "/_/never")
        slow = c.request("GET", "/_/slow?delay=0.5")
        quick = c.request("GET", "/quick")
        time.sleep(0.1)
        c.reset(doomed, h2.errors.ErrorCodes.CANCEL)
        after = c.request("GET", "/after-reset")
        results = {name: c.response(sid) for name, sid in
                   (("slow", slow), ("quick", quick), ("after", after))}
        assert c.goaway is None and c.closed_how is None, (c.goaway, c.closed_how)
        again = c.get("/again")
    for name, st in results.items():
        assert st.status == 200 and st.ended, f"{name}: {st!r}"
    assert again.status == 200


def test_client_rst_stream_cancels_the_upstream_request(fleet):
    e = env.simple(fleet)
    with h2peers.H2Client(e.port) as c:
        sid = c.request("GET", "/_/never")
        assert e.origin.wait_requests(1) == 1
        c.reset(sid)
        deadline = time.monotonic() + 3
        rec = e.origin.last()
        while rec.done_at is None and time.monotonic() < deadline:
            c.pump_once(0.05)
        assert rec.done_at is not None, "the upstream request was not cancelled (origin connection still open)"
        assert c.get("/still-fine").status == 200


# ---------------------------------------------------------------------------------------------------
# Stats


def test_http2_stats(fleet):
    up = env.h2origin(fleet)
    e = env.simple(fleet, upstream=up, h2_upstream=True, stat_prefix="h2_in", cluster="h2_backend")
    with h2peers.H2Client(e.port) as c:
        for i in range(5):
            assert c.get(f"/s/{i}").status == 200
    s = e.proc.wait_stats(lambda s: s.get("http.h2_in.downstream_rq_total", 0) >= 5)
    assert harness.stat(s, "http.h2_in.downstream_cx_http2_total") == 1
    assert harness.stat(s, "http.h2_in.downstream_cx_http1_total") == 0
    assert harness.stat(s, "http.h2_in.downstream_rq_total") == 5
    assert harness.stat(s, "http.h2_in.downstream_rq_2xx") == 5
    assert harness.stat(s, "cluster.h2_backend.upstream_cx_http2_total") == 1
    assert harness.stat(s, "cluster.h2_backend.upstream_cx_http1_total") == 0
    assert harness.stat(s, "cluster.h2_backend.upstream_rq_total") == 5
    assert harness.stat(s, "cluster.h2_backend.upstream_rq_2xx") == 5
