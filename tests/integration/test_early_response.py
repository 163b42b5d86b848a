"""Responses that finish before the request does, on HTTP/2 (issue: the downstream stream used to be reset
with CANCEL in the same turn, and nghttp2 sent the RST_STREAM ahead of the queued response, so the
client got nothing). The response must arrive whole, then the stream is reset with NO_ERROR
(RFC 9113 section 8.1) to stop the rest of the request body.

Cases: a 5 MB h2c POST to a direct response, to a path with no route (404), to a path an RBAC filter
denies (403), and to an upstream that answers after reading 1 KiB; with curl, nghttp and python h2; and
a gRPC client-streaming call whose server returns early gets its grpc-status."""

from __future__ import annotations

import os
import socket
import threading
import time

import grpc
import pytest

import harness
from harness import MIB, bootstrap, http_listener, route_to, static_cluster, virtual_host
from peers import grpc_peer

HTTP_RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"


class EarlyOrigin(harness.TcpServer):
    """An HTTP/1.1 origin that answers after reading 1 KiB of the request, then keeps reading (and
    dropping) whatever else comes until the peer goes."""

    def handle(self, conn: socket.socket) -> None:
        got = b""
        while len(got) < 1024:
            chunk = conn.recv(65536)
            if not chunk:
                return
            got += chunk
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\nconnection: close\r\n\r\nearly reply")
        deadline = time.monotonic() + 30
        conn.settimeout(1)
        while time.monotonic() < deadline and not self.stopped.is_set():
            try:
                if not conn.recv(1 << 18):
                    return
            except socket.timeout:
                continue
            except OSError:
                return


@pytest.fixture
def body_file(tmp_path):
    p = tmp_path / "5mb.bin"
    p.write_bytes(os.urandom(5 * MIB))
    return p


def start(fleet, origin_port: int):
    deny = {"name": "envoy.filters.http.rbac", "typed_config": {"@type": HTTP_RBAC, "rules": {"action": "DENY", "policies": {
        "forbidden": {"permissions": [{"url_path": {"path": {"prefix": "/forbidden"}}}], "principals": [{"any": True}]}}}}}
    vh = virtual_host("all", ["*"], [
        {"match": {"prefix": "/direct"}, "direct_response": {"status": 200, "body": {"inline_string": "direct answer"}}},
        {"match": {"prefix": "/forbidden"}, "direct_response": {"status": 200, "body": {"inline_string": "never"}}},
        route_to("origin", prefix="/early"),
    ])
    listener = http_listener("http", "early", [vh], http_filters=[deny, harness.router_filter()])
    return fleet.start(bootstrap([listener], [static_cluster("origin", [origin_port])]))


CASES = [("/direct", 200, b"direct answer"), ("/missing", 404, None), ("/forbidden", 403, b"RBAC: access denied"),
         ("/early", 200, b"early reply")]


@pytest.mark.parametrize("path,status,body", CASES)
def test_curl_h2c_post_gets_the_whole_early_response(fleet, body_file, path, status, body):
    """curl writes out the whole response. (Debian 12's curl 7.88 cannot end a transfer whose stream is
    reset, even with NO_ERROR, while its own upload is unfinished: it waits for its --max-time or
    reports error 92. The response it printed is what this test checks; the python h2 test below
    checks the frames.)"""
    origin = harness.track(fleet, EarlyOrigin())
    proc = start(fleet, origin.port)
    port = proc.listener_port("http")
    r = harness.curl(["--http2-prior-knowledge", "-X", "POST", "--data-binary", f"@{body_file}", "-o", "-",
                      "-w", "\n%{http_code}", f"http://127.0.0.1:{port}{path}"], timeout=3)
    out, _, code = r.stdout.rpartition(b"\n")
    assert r.returncode in (0, 28, 92), r.stderr.decode()
    assert b"CANCEL" not in r.stderr
    assert int(code) == status, r
    if body is not None:
        assert out == body


@pytest.mark.parametrize("total", [5 * MIB, 24 * MIB])
@pytest.mark.parametrize("path,status,body", CASES)
def test_python_h2_sees_response_then_no_error_reset(fleet, path, status, body, total):
    """Frame by frame: HEADERS and DATA with END_STREAM first, RST_STREAM(NO_ERROR) only after them."""
    import h2.config
    import h2.connection
    import h2.events

    origin = harness.track(fleet, EarlyOrigin())
    proc = start(fleet, origin.port)
    port = proc.listener_port("http")
    sock = harness.connect(port)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 24})
    conn.increment_flow_control_window(1 << 24)
    conn.send_headers(1, [(":method", "POST"), (":path", path), (":scheme", "http"), (":authority", "x")])
    sock.sendall(conn.data_to_send())
    sent = 0
    order = []
    got = b""
    deadline = time.monotonic() + 15
    sock.settimeout(0.05)
    ended = False
    while time.monotonic() < deadline and not ended:
        # Keep sending the body while the window allows (a client still uploading).
        window = min(conn.local_flow_control_window(1), conn.max_outbound_frame_size)
        if sent < total and window > 0 and not any(e == "reset" for e in order):
            n = min(window, total - sent)
            try:
                conn.send_data(1, b"x" * n, end_stream=sent + n == total)
                sent += n
            except Exception:  # the stream closed under us: stop sending
                pass
        out = conn.data_to_send()
        if out:
            try:
                sock.sendall(out)
            except OSError:
                break
        try:
            data = sock.recv(1 << 16)
        except socket.timeout:
            continue
        if not data:
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                order.append("headers")
                code = int(dict(ev.headers)[b":status"])
                assert code == status
            elif isinstance(ev, h2.events.DataReceived):
                got += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, 1)
            elif isinstance(ev, h2.events.StreamEnded):
                order.append("end")
            elif isinstance(ev, h2.events.StreamReset):
                order.append("reset")
                assert ev.error_code == h2.errors.ErrorCodes.NO_ERROR, ev
                ended = True
        if sent == total and "end" in order:
            break
    sock.close()
    assert order[:2] == ["headers", "end"], order
    if body is not None:
        assert got == body
    # The rest of the upload is stopped with a NO_ERROR reset a moment after the response (or once more
    # than 8 MiB of it came); a client that finished its upload first just sees the stream end.
    if "reset" in order:
        assert order.index("reset") > order.index("end")
        assert sent < total or total <= 8 * MIB
    else:
        assert sent == total, (order, sent)


def test_nghttp_post_gets_the_early_response(fleet, body_file):
    origin = harness.track(fleet, EarlyOrigin())
    proc = start(fleet, origin.port)
    port = proc.listener_port("http")
    r = harness.run_tool(["nghttp", "-d", str(body_file), f"http://127.0.0.1:{port}/direct"], timeout=30)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"direct answer"


class EarlyGrpc(grpc_peer.GrpcServer):
    """Adds Early(stream bytes) -> bytes: answers after the first message, leaving the rest unread."""

    def __init__(self):
        super().__init__()
        handler = grpc.stream_unary_rpc_method_handler(self._early)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("strait.test.Early", {"Early": handler}),))

    def _early(self, request_iterator, context):
        first = next(request_iterator)
        context.set_trailing_metadata([("x-early", "yes")])
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "enough after " + first.decode())


def test_grpc_client_streaming_gets_status_when_server_ends_first(fleet):
    server = harness.track(fleet, EarlyGrpc())
    proc = fleet.start(harness.simple_http_config(server.port, h2_upstream=True, cluster="g", stat_prefix="g"))
    channel = grpc.insecure_channel(f"127.0.0.1:{proc.listener_port('http')}", options=grpc_peer.CHANNEL_OPTIONS)
    harness.track(fleet, channel)
    early = channel.stream_unary("/strait.test.Early/Early")
    stop = threading.Event()

    def messages():
        yield b"first"
        for _ in range(2000):
            if stop.is_set():
                return
            time.sleep(0.005)
            yield b"more" * 256

    with pytest.raises(grpc.RpcError) as err:
        early(messages(), timeout=20)
    stop.set()
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, (err.value.code(), err.value.details())
    assert err.value.details() == "enough after first"
    assert ("x-early", "yes") in list(err.value.trailing_metadata() or [])
