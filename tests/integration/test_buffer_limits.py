"""The listener's per_connection_buffer_limit_bytes bounds HTTP buffering too (it used to be honoured by
tcp_proxy only; HTTP connections always buffered up to 1 MiB): clients that do not read a large
response hold at most about the limit each in Strait, not the whole response."""

from __future__ import annotations

import socket
import threading
import time

import pytest

import harness
from harness import MIB, bootstrap, http_listener, route_to, static_cluster, virtual_host

CLIENTS = 16


class BigOrigin(harness.TcpServer):
    """Answers every request with a 16 MiB body, written as fast as the socket takes it."""

    def handle(self, conn: socket.socket) -> None:
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = conn.recv(4096)
            if not chunk:
                return
            got += chunk
        body = 16 * MIB
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % body)
        block = b"x" * (1 << 16)
        sent = 0
        while sent < body and not self.stopped.is_set():
            conn.sendall(block)
            sent += len(block)


def allocated(proc) -> int:
    return int(proc.get("/memory").json()["allocated"])


@pytest.mark.unsanitized("measures heap growth through /memory (mallinfo2, zero under ASan's allocator)")
def test_http_buffers_follow_the_listener_limit(fleet):
    origin = harness.track(fleet, BigOrigin())
    listener = http_listener("http", "lim", [virtual_host("all", ["*"], [route_to("big")])])
    listener["per_connection_buffer_limit_bytes"] = 64 * 1024
    proc = fleet.start(bootstrap([listener], [static_cluster("big", [origin.port])]), concurrency=1)
    port = proc.listener_port("http")
    before = allocated(proc)
    socks = []
    for _ in range(CLIENTS):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        s.connect((harness.LOOPBACK, port))
        s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        socks.append(s)
    time.sleep(2.0)  # every response is as far as the buffers let it get; nobody reads
    grown = allocated(proc) - before
    for s in socks:
        s.close()
    # 16 stalled 16 MiB responses: with a 64 KiB limit Strait holds a few hundred KiB each at most.
    assert grown < 8 * MIB, f"heap grew by {grown / MIB:.1f} MiB for {CLIENTS} stalled responses"
    assert proc.alive()
