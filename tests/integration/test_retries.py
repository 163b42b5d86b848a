"""Retries that are safe: what a retried request carries upstream (HTTP/1 bodies, gRPC client streams).

A retry resends the request from a kept copy of its body. The copy is bounded by the listener's
per_connection_buffer_limit_bytes; past that the request can no longer be retried, and a retry that is
already waiting must not go out with the original headers and only the tail of the body (a chunked or
HTTP/2 upstream would take that as a complete request).
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from concurrent import futures

import grpc
import pytest

import harness
from peers import env, h1

LIMIT = 64 * 1024


def _config(upstream_port: int, retry_policy: dict, limit: int = LIMIT) -> dict:
    vh = harness.virtual_host("all", ["*"], [harness.route_to("backend", retry_policy=retry_policy)])
    listener = harness.http_listener("http", "ingress_http", [vh],
                                     listener_extra={"per_connection_buffer_limit_bytes": limit})
    return harness.bootstrap([listener], [harness.static_cluster("backend", [upstream_port])])


def _chunked_post(port: int, path: str, first: bytes, rest: bytes, pause: float) -> h1.Response:
    """POSTs `first` then, after `pause` seconds, `rest`, as chunks; returns the response."""
    s = harness.connect(port)
    try:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        s.sendall(b"%x\r\n" % len(first) + first + b"\r\n")
        time.sleep(pause)
        try:
            for i in range(0, len(rest), 16384):
                piece = rest[i:i + 16384]
                s.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
            s.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # strait may answer and stop reading first: the response is what counts
        return h1.read_response(h1.Reader(s, timeout=10.0), timeout=10.0)
    finally:
        s.close()


def test_body_outgrowing_the_retry_buffer_during_back_off_is_never_sent_truncated(fleet):
    # The upstream answers 503 at the headers; while the retry waits out its back-off the rest of the
    # body arrives and overflows the retry buffer. Either the whole body reaches the retry (if the retry
    # went out before the overflow) or the client gets 507; an upstream request that ends with fewer
    # bytes than were sent is the bug.
    o = env.origin(fleet)
    policy = {"retry_on": "5xx", "num_retries": 2,
              "retry_back_off": {"base_interval": "1s", "max_interval": "1s"}}
    proc = fleet.start(_config(o.port, policy))
    port = proc.listener_port("http")
    first = b"a" * 8192
    rest = bytes(range(256)) * ((3 * LIMIT) // 256)
    whole = first + rest
    outcomes = []
    for i in range(3):
        resp = _chunked_post(port, f"/_/fail-early?key=trunc{i}&times=1", first, rest, pause=0.2)
        outcomes.append(resp.status)
        assert resp.status in (200, 507), resp
        if resp.status == 200:
            echo = json.loads(resp.body)
            assert echo["body_len"] == len(whole) and echo["body_sha256"] == hashlib.sha256(whole).hexdigest()
    for rec in o.find("/_/fail-early"):
        if rec.body_complete:
            assert rec.body_len == len(whole), f"an upstream request ended after {rec.body_len} of {len(whole)} bytes"
    if 507 in outcomes:
        s = proc.wait_stats(lambda s: s.get("cluster.backend.retry_or_shadow_abandoned", 0) >= 1)
        assert harness.stat(s, "cluster.backend.retry_or_shadow_abandoned") >= 1
    harness.assert_ready(proc)


def test_body_within_the_retry_buffer_is_resent_whole(fleet):
    o = env.origin(fleet)
    policy = {"retry_on": "5xx", "num_retries": 2,
              "retry_back_off": {"base_interval": "0.05s", "max_interval": "0.1s"}}
    proc = fleet.start(_config(o.port, policy))
    port = proc.listener_port("http")
    first = b"b" * 4096
    rest = bytes(range(256)) * 64  # 16 KiB: the whole body stays under the 64 KiB limit
    resp = _chunked_post(port, "/_/fail-early?key=whole&times=2", first, rest, pause=0.3)
    assert resp.status == 200, resp
    echo = json.loads(resp.body)
    assert echo["body_len"] == len(first + rest)
    assert echo["body_sha256"] == hashlib.sha256(first + rest).hexdigest()
    assert len(o.find("/_/fail-early?key=whole")) == 3


# ---------------------------------------------------------------------------------------------------
# gRPC client streaming across retries


class _FlakyStreamServer:
    """A gRPC server with one client-streaming method (raw bytes). Its first call fails UNAVAILABLE
    without a message or initial metadata (a trailers-only response): at once after the first message
    (`fail="early"`, strait retries while the stream is still coming) or after reading the whole stream
    (`fail="late"`). Every call records the messages it read and whether its stream ended normally;
    the answer is "<count> <sha256 of the concatenation>"."""

    def __init__(self, fail: str):
        self.fail = fail
        self.calls: list[dict] = []
        self.lock = threading.Lock()
        handler = grpc.method_handlers_generic_handler(
            "strait.test.Upload", {"Stream": grpc.stream_unary_rpc_method_handler(self._stream)})
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                                  options=[("grpc.so_reuseport", 0),
                                           ("grpc.max_receive_message_length", 64 * 1024 * 1024)])
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        assert self.port, "grpc server could not bind"
        self.server.start()

    def close(self) -> None:
        self.server.stop(grace=0).wait(5)

    def _stream(self, request_iterator, context):
        call = {"messages": [], "complete": False}
        with self.lock:
            self.calls.append(call)
            first = len(self.calls) == 1
        if first and self.fail == "early":
            call["messages"].append(next(request_iterator))
            context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        for msg in request_iterator:
            call["messages"].append(msg)
        call["complete"] = True
        if first:
            context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        data = b"".join(call["messages"])
        return f"{len(call['messages'])} {hashlib.sha256(data).hexdigest()}".encode()


def _grpc_retry_env(fleet, fail: str, limit: int):
    server = harness.track(fleet, _FlakyStreamServer(fail))
    policy = {"retry_on": "unavailable", "num_retries": 1,
              "retry_back_off": {"base_interval": "0.01s", "max_interval": "0.02s"}}
    config = harness.simple_http_config(server.port, h2_upstream=True, cluster="grpc_up", stat_prefix="grpc_in",
                                        route_action={"retry_policy": policy},
                                        listener_extra={"per_connection_buffer_limit_bytes": limit})
    proc = fleet.start(config)
    channel = grpc.insecure_channel(f"127.0.0.1:{proc.listener_port('http')}",
                                    options=[("grpc.enable_retries", 0), ("grpc.enable_http_proxy", 0),
                                             ("grpc.max_send_message_length", 64 * 1024 * 1024)])
    harness.track(fleet, channel)
    return proc, server, channel.stream_unary("/strait.test.Upload/Stream")


def _messages(count: int, size: int) -> list[bytes]:
    return [bytes([i % 251]) * 7 + hashlib.sha256(b"%d" % i).digest() * (size // 32) for i in range(count)]


@pytest.mark.parametrize("fail", ["early", "late"])
def test_grpc_client_stream_is_resent_whole_on_retry(fleet, fail):
    proc, server, upload = _grpc_retry_env(fleet, fail, limit=LIMIT)
    msgs = _messages(40, 1000)  # about 41 KiB in all: within the 64 KiB retry buffer
    resp = upload(iter(msgs), timeout=20)
    assert resp == f"{len(msgs)} {hashlib.sha256(b''.join(msgs)).hexdigest()}".encode()
    assert len(server.calls) == 2, [len(c["messages"]) for c in server.calls]
    answered = server.calls[1]
    assert answered["complete"] and answered["messages"] == msgs  # every message, byte for byte, in order
    s = proc.wait_stats(lambda s: s.get("cluster.grpc_up.upstream_rq_retry", 0) >= 1)
    assert harness.stat(s, "cluster.grpc_up.upstream_rq_retry") == 1
    assert harness.stat(s, "cluster.grpc_up.upstream_rq_retry_success") == 1


def test_grpc_client_stream_larger_than_the_retry_buffer_is_not_retried_nor_truncated(fleet):
    proc, server, upload = _grpc_retry_env(fleet, "late", limit=LIMIT)
    msgs = _messages(100, 4000)  # about 400 KiB: far past the 64 KiB retry buffer
    with pytest.raises(grpc.RpcError) as info:
        upload(iter(msgs), timeout=20)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
    # One attempt only, and it read the whole stream: nothing was retried, nothing cut short.
    assert len(server.calls) == 1, [len(c["messages"]) for c in server.calls]
    assert server.calls[0]["complete"] and server.calls[0]["messages"] == msgs
    s = proc.wait_stats(lambda s: s.get("cluster.grpc_up.retry_or_shadow_abandoned", 0) >= 1)
    assert harness.stat(s, "cluster.grpc_up.retry_or_shadow_abandoned") == 1
    assert harness.stat(s, "cluster.grpc_up.upstream_rq_retry") == 0
    harness.assert_ready(proc)
