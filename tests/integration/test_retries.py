"""Retries that are safe: what a retried request carries upstream.

A retry resends the request from a kept copy of its body. The copy is bounded by the listener's
per_connection_buffer_limit_bytes; past that the request can no longer be retried, and a retry that is
already waiting must not go out with the original headers and only the tail of the body (a chunked or
HTTP/2 upstream would take that as a complete request).
"""

from __future__ import annotations

import hashlib
import json
import socket
import time

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
