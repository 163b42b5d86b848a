"""The request headers timeout also holds a client that sends only part of the HTTP/2 connection
preface (AUTO codec and an HTTP/2-only listener), or a preface and SETTINGS but never a stream: the
connection is closed at the timeout instead of being held until the idle timeout (an hour)."""

from __future__ import annotations

import time

import pytest

import harness
from harness import bootstrap, http_listener, route_to, static_cluster, virtual_host

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


@pytest.mark.parametrize("codec,sent", [("AUTO", PREFACE[:23]), ("HTTP2", PREFACE[:23]), ("HTTP2", PREFACE + SETTINGS),
                                        ("AUTO", PREFACE + SETTINGS)])
def test_partial_preface_or_no_stream_is_closed_at_the_headers_timeout(fleet, codec, sent):
    listener = http_listener("http", "hto", [virtual_host("all", ["*"], [route_to("c")])], codec_type=codec,
                             request_headers_timeout="1s")
    proc = fleet.start(bootstrap([listener], [static_cluster("c", [9])]))
    s = harness.connect(proc.listener_port("http"))
    s.sendall(sent)
    start = time.monotonic()
    how, took = harness.wait_closed(s, timeout=6)
    s.close()
    assert how in ("eof", "reset"), f"not closed 6 s after a stalled start ({how})"
    assert 0.8 <= took <= 3.0, took
    stats = proc.stats()
    assert stats["http.hto.downstream_rq_header_timeout"] >= 1
    assert time.monotonic() - start < 6


def test_partial_pipelined_request_read_with_the_first_gets_408_at_the_timeout(fleet):
    """The second request's first bytes arrive in the same packet as the first request: no later read
    would start its headers clock, so the codec's own start of a request does."""
    vh = virtual_host("all", ["*"], [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "one"}}}])
    listener = http_listener("http", "pipe", [vh], request_headers_timeout="1s")
    proc = fleet.start(bootstrap([listener], [static_cluster("c", [9])]))
    s = harness.connect(proc.listener_port("http"))
    s.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHo")
    start = time.monotonic()
    data = b""
    s.settimeout(0.2)
    while time.monotonic() - start < 6:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    took = time.monotonic() - start
    s.close()
    assert data.startswith(b"HTTP/1.1 200"), data
    assert b"HTTP/1.1 408" in data, data
    assert 0.8 <= took <= 3.0, took
