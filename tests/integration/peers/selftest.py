"""Checks every peer on its own, without strait: clients straight against servers.

    cd tests/integration && /usr/bin/python3 -m peers.selftest

Exits 0 and prints `N passed, 0 failed` when every peer behaves as the HTTP tests assume.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc  # noqa: E402

from peers import grpc_peer, h1, h2peers, nginx, patterns, websocket  # noqa: E402
from peers.origin import Origin  # noqa: E402

CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def curl(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--noproxy", "*", "--max-time", "10", *args], capture_output=True,
                          timeout=20)


@check
def origin_echo_keepalive_pipelining_and_case():
    o = Origin("self")
    try:
        with h1.Client(o.port) as c:
            c.send(h1.build_request("GET", "/a", [("X-MiXeD-Case", "1")]) + h1.build_request("GET", "/b"))
            a, b = c.read_response(), c.read_response()
            assert a.json()["path"] == "/a" and b.json()["path"] == "/b"
            assert a.json()["conn"] == b.json()["conn"]
            assert b"X-MiXeD-Case: 1" in o.requests[0].raw_head
        assert o.connection_count() == 1 and o.request_count() == 2
    finally:
        o.close()


@check
def origin_bodies_chunked_trailers_head_100():
    o = Origin("self")
    try:
        body = os.urandom(1 << 20)
        with h1.Client(o.port) as c:
            assert c.request("POST", "/_/echo-body", body=body).body == body
            r = c.request("PUT", "/x", body=body, chunked=True, trailers={"x-t": "1"})
            assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
            assert r.json()["trailers"] == [["x-t", "1"]]
            r = c.request("GET", "/_/chunked?chunks=3&size=10&trailers=1")
            assert r.body_info.chunked and ("x-trailer-one", "t1") in r.trailers
            r = c.request("HEAD", "/_/body?size=1000")
            assert r.header("content-length") == "1000" and r.body_len == 0
            r = c.request("GET", "/_/body?size=3000000")
            assert r.body_sha == patterns.sha256(3000000) == r.header("x-body-sha256")
        r = curl("-o", "/dev/null", "-w", "%{http_code}", "-H", "Expect: 100-continue", "--data-binary",
                 "@-", f"http://127.0.0.1:{o.port}/up")
        assert r.stdout == b"200" and o.expect_seen == 1, r
    finally:
        o.close()


@check
def origin_faults():
    o = Origin("self")
    try:
        r = h1.get(o.port, "/_/close-mid-body?size=5000&send=100")
        assert r.status == 200 and not r.complete and r.body_len == 100
        r = h1.get(o.port, "/_/reset-after-headers?size=5000&send=100")
        assert r.status == 200 and not r.complete
        try:
            h1.get(o.port, "/_/reset-before-headers")
            raise AssertionError("expected no response")
        except h1.NoResponse:
            pass
        assert [h1.get(o.port, "/_/fail?key=k&times=2").status for _ in range(3)] == [503, 503, 200]
        t = time.monotonic()
        try:
            h1.get(o.port, "/_/never", timeout=0.5)
            raise AssertionError("expected a timeout")
        except TimeoutError:
            assert time.monotonic() - t >= 0.4
        r = h1.get(o.port, "/_/raw?name=cl-te")
        assert r.header("transfer-encoding") and r.header("content-length")
    finally:
        o.close()


@check
def origin_keep_alive_race():
    o = Origin("self", close_reused=True)
    try:
        with h1.Client(o.port) as c:
            assert c.request("GET", "/1").status == 200
            try:
                c.request("GET", "/2", timeout=2)
                raise AssertionError("the racy origin answered a reused connection")
            except h1.NoResponse:
                pass
        assert o.race_closes == 1
    finally:
        o.close()


@check
def h2_origin_and_clients():
    o = h2peers.H2Origin()
    try:
        with h2peers.H2Client(o.port) as c:
            s1 = c.request("GET", "/_/body?size=5000000", store=False)
            s2 = c.request("POST", "/up", body=patterns.data(3_000_000), trailers={"x-req-trailer": "1"})
            s3 = c.request("GET", "/_/trailers")
            s4 = c.request("GET", "/_/reset-after-headers")
            r1, r2, r3, r4 = (c.response(s) for s in (s1, s2, s3, s4))
            assert r1.data_len == 5000000 and r1.sha.hexdigest() == patterns.sha256(5000000)
            assert r2.json()["body_len"] == 3000000 and r2.json()["trailers"] == [["x-req-trailer", "1"]]
            assert r3.trailer("x-trailer-one") == "t1" and bytes(r3.data) == b"hello\n"
            assert r4.reset_code == 2 and not r4.ended
        with h2peers.RawH2(o.port) as r:
            assert r.server_settings()
            r.send_request(1, "/raw")
            kind, hdrs = r.stream_outcome(1)
            assert kind == "headers" and dict(hdrs)[":status"] == "200"
        out = subprocess.run(["h2load", "-n", "200", "-c", "2", "-m", "10", f"http://127.0.0.1:{o.port}/"],
                             capture_output=True, timeout=30).stdout.decode()
        assert "200 succeeded" in out, out
        out = subprocess.run(["nghttp", "-v", f"http://127.0.0.1:{o.port}/_/trailers"], capture_output=True,
                             timeout=30).stdout.decode()
        assert "x-trailer-one: t1" in out, out
    finally:
        o.close()


@check
def grpc_server_and_client():
    srv = grpc_peer.GrpcServer()
    try:
        with grpc_peer.GrpcClient(srv.port) as c:
            resp, call = c.unary.with_call(b"ping", metadata=[("x-echo-a", "1")], timeout=10)
            assert resp == b"ping" and dict(call.initial_metadata())["x-echo-a"] == "1"
            assert dict(call.trailing_metadata())["x-trailing"] == "t1"
            msgs = [b"m%d" % i for i in range(100)]
            assert list(c.bidi(iter(msgs), timeout=10)) == msgs
            try:
                c.fail(b"thing", timeout=10)
                raise AssertionError("Fail did not fail")
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.NOT_FOUND and err.details() == "not found: thing"
                assert dict(err.trailing_metadata())["x-fail-bin"] == b"\x00\x01\xff"
            assert len(c.big(b"%d" % (4 << 20), timeout=10)) == 4 << 20
            big = os.urandom(4 << 20)
            assert c.size(big, timeout=10) == f"{len(big)} {hashlib.sha256(big).hexdigest()}".encode()
    finally:
        srv.close()


@check
def websocket_echo():
    srv = websocket.WsEchoServer()
    try:
        c = websocket.WsClient(srv.port)
        assert c.accepted, c.response
        c.send("hello")
        assert c.recv() == (websocket.OP_TEXT, b"hello")
        data = os.urandom(70000)
        c.send(data)
        assert c.recv() == (websocket.OP_BINARY, data)
        c.send(b"p", opcode=websocket.OP_PING)
        assert c.recv() == (websocket.OP_PONG, b"p")
        assert c.close() == (websocket.OP_CLOSE, b"\x03\xe8")
        assert c.client.wait_closed(2) == "eof"
        c.shutdown()
    finally:
        srv.close()


@check
def nginx_upstream():
    if not nginx.available():
        raise AssertionError(f"nginx missing at {nginx.NGINX} (deploy/install-deps.sh test installs it)")
    with tempfile.TemporaryDirectory() as d:
        n = nginx.Nginx(Path(d), h2=True)
        try:
            path = n.add_file("f.bin", b"x" * 1000)
            with h1.Client(n.port) as c:
                assert c.request("GET", "/").body == b"nginx ok\n"
                assert c.request("GET", path).body == b"x" * 1000
                assert c.request("GET", "/status/503").status == 503
            with h2peers.H2Client(n.h2_port) as c:
                assert bytes(c.get("/").data) == b"nginx ok\n"
        finally:
            n.close()
        assert n.proc.poll() is not None


def main() -> int:
    passed = failed = 0
    for fn in CHECKS:
        start = time.monotonic()
        try:
            fn()
            passed += 1
            print(f"ok    {fn.__name__} ({time.monotonic() - start:.2f}s)")
        except Exception:  # every failure is printed, the run goes on
            failed += 1
            print(f"FAIL  {fn.__name__}\n{traceback.format_exc()}")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
