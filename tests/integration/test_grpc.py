"""gRPC through strait: python3-grpcio client -> strait (h2c listener) -> python3-grpcio server (a cluster
with http2_protocol_options). Generic handlers, raw bytes messages (peers/grpc_peer.py)."""

from __future__ import annotations

import hashlib
import os
import queue
import threading

import grpc
import pytest

import harness
from harness import MIB
from peers import grpc_peer, patterns

GRPC_TIMEOUT = 20


def _env(fleet, **cfg):
    server = harness.track(fleet, grpc_peer.GrpcServer())
    proc = fleet.start(harness.simple_http_config(server.port, h2_upstream=True, cluster="greeter",
                                                  stat_prefix="grpc_in", **cfg))
    client = grpc_peer.GrpcClient(proc.listener_port("http"))
    harness.track(fleet, client)
    return proc, server, client


def test_unary_call_with_metadata_round_trip(fleet):
    proc, server, client = _env(fleet)
    resp, call = client.unary.with_call(b"hello grpc", metadata=[("x-echo-color", "blue"), ("x-other", "o")],
                                        timeout=GRPC_TIMEOUT)
    assert resp == b"hello grpc"
    assert call.code() == grpc.StatusCode.OK
    initial = dict(call.initial_metadata())
    assert initial.get("x-initial") == "i1", initial
    assert initial.get("x-echo-color") == "blue", initial
    trailing = dict(call.trailing_metadata())
    assert trailing.get("x-trailing") == "t1", trailing
    seen = dict(server.metadata_seen[-1])
    assert seen.get("x-echo-color") == "blue" and seen.get("x-other") == "o", seen


def test_bidirectional_streaming_100_messages_each_way(fleet):
    proc, server, client = _env(fleet)
    # Ping-pong: the next message is sent only after the previous echo arrived, so this passes only if
    # strait streams both directions (it cannot wait for the end of the request).
    outbox: queue.Queue = queue.Queue()
    sent = [os.urandom(1 + (i * 97) % 5000) for i in range(100)]

    def requests():
        for i in range(100):
            item = outbox.get(timeout=GRPC_TIMEOUT)
            if item is None:
                return
            yield item

    outbox.put(sent[0])
    received = []
    call = client.bidi(requests(), timeout=GRPC_TIMEOUT)
    try:
        for msg in call:
            received.append(msg)
            if len(received) < 100:
                outbox.put(sent[len(received)])
            else:
                outbox.put(None)
    finally:
        outbox.put(None)
    assert len(received) == 100
    assert received == sent
    assert call.code() == grpc.StatusCode.OK


def test_bidirectional_streaming_burst(fleet):
    proc, server, client = _env(fleet)
    sent = [b"msg-%03d-" % i + os.urandom(200) for i in range(100)]
    received = list(client.bidi(iter(sent), timeout=GRPC_TIMEOUT))
    assert received == sent


def test_non_ok_status_details_and_trailing_metadata_preserved(fleet):
    proc, server, client = _env(fleet)
    with pytest.raises(grpc.RpcError) as info:
        client.fail(b"widget-7", timeout=GRPC_TIMEOUT)
    err = info.value
    assert err.code() == grpc.StatusCode.NOT_FOUND, err
    assert err.details() == "not found: widget-7"
    trailing = dict(err.trailing_metadata())
    assert trailing.get("x-fail-reason") == "custom", trailing
    assert trailing.get("x-fail-bin") == b"\x00\x01\xff", trailing


def test_large_request_message_4mib(fleet):
    proc, server, client = _env(fleet)
    msg = os.urandom(4 * MIB)
    resp = client.size(msg, timeout=GRPC_TIMEOUT)
    assert resp == f"{len(msg)} {hashlib.sha256(msg).hexdigest()}".encode()


def test_large_response_message_4mib(fleet):
    proc, server, client = _env(fleet)
    resp = client.big(b"%d" % (4 * MIB), timeout=GRPC_TIMEOUT)
    assert len(resp) == 4 * MIB
    assert hashlib.sha256(resp).hexdigest() == patterns.sha256(4 * MIB)


def test_many_concurrent_unary_calls(fleet):
    proc, server, client = _env(fleet)
    futures = [client.unary.future(b"call-%d" % i, timeout=GRPC_TIMEOUT) for i in range(200)]
    results = [f.result() for f in futures]
    assert results == [b"call-%d" % i for i in range(200)]


def test_concurrent_streams_from_threads(fleet):
    proc, server, client = _env(fleet)
    errors = []

    def worker(n):
        try:
            msgs = [b"%d-%d" % (n, i) for i in range(30)]
            got = list(client.bidi(iter(msgs), timeout=GRPC_TIMEOUT))
            if got != msgs:
                errors.append(f"worker {n}: {got[:3]}...")
        except grpc.RpcError as err:
            errors.append(f"worker {n}: {err.code()} {err.details()}")

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=GRPC_TIMEOUT + 5)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors


def test_grpc_upstream_uses_http2_and_stats_count_calls(fleet):
    proc, server, client = _env(fleet)
    for i in range(3):
        client.unary(b"x", timeout=GRPC_TIMEOUT)
    with pytest.raises(grpc.RpcError):
        client.fail(b"y", timeout=GRPC_TIMEOUT)
    s = proc.wait_stats(lambda s: s.get("cluster.greeter.upstream_rq_total", 0) >= 4)
    assert harness.stat(s, "cluster.greeter.upstream_cx_http2_total") >= 1
    assert harness.stat(s, "cluster.greeter.upstream_cx_http1_total") == 0
    assert harness.stat(s, "cluster.greeter.upstream_rq_total") == 4
    # gRPC errors travel as HTTP 200 with grpc-status in the trailers.
    assert harness.stat(s, "http.grpc_in.downstream_rq_2xx") == 4
    assert harness.stat(s, "http.grpc_in.downstream_cx_http2_total") >= 1
