"""WebSocket (RFC 6455) with the standard library only: the handshake and the framing by hand.

WsEchoServer: answers a valid Upgrade with 101 and echoes every text/binary message; answers PING with
PONG; on CLOSE, sends CLOSE back with the same code and closes. It records each handshake's headers.
WsClient: opens the Upgrade (masking its frames, as a client must) and sends / receives messages.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness  # noqa: E402
from peers import h1  # noqa: E402

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def encode_frame(opcode: int, payload: bytes, mask: bool, fin: bool = True) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mbit | n])
    elif n < 65536:
        head += bytes([mbit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mbit | 127]) + struct.pack("!Q", n)
    if mask:
        key = os.urandom(4)
        payload = _xor(payload, key)
        head += key
    return head + payload


def _xor(data: bytes, key: bytes) -> bytes:
    if not data:
        return b""
    n = len(data)
    k = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(data, "big") ^ k).to_bytes(n, "big")


def read_frame(reader: h1.Reader, deadline: float) -> tuple[bool, int, bytes, bool]:
    """(fin, opcode, payload unmasked, was_masked)."""
    b0, b1 = reader.read_exact(2, deadline)
    fin, opcode = bool(b0 & 0x80), b0 & 0x0F
    masked, n = bool(b1 & 0x80), b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", reader.read_exact(2, deadline))[0]
    elif n == 127:
        n = struct.unpack("!Q", reader.read_exact(8, deadline))[0]
    key = reader.read_exact(4, deadline) if masked else b""
    payload = reader.read_exact(n, deadline) if n else b""
    if masked:
        payload = _xor(payload, key)
    return fin, opcode, payload, masked


class WsEchoServer(harness.TcpServer):
    def __init__(self, **kw):
        self.handshakes: list[list[tuple[str, str]]] = []
        self.unmasked_frames = 0
        self.messages = 0
        super().__init__(**kw)

    def handle(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = h1.Reader(conn, self.lifetime)
        deadline = time.monotonic() + self.lifetime
        raw = reader.head(deadline)
        if raw is None:
            return
        (method, target, *_), headers = h1.parse_head(raw)
        with self.lock:
            self.handshakes.append(headers)
        key = h1.header_get(headers, "sec-websocket-key")
        upgrade = (h1.header_get(headers, "upgrade") or "").lower()
        if method != "GET" or upgrade != "websocket" or not key or "upgrade" not in h1.connection_tokens(headers):
            body = b"not a websocket upgrade\n"
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
                         + body)
            return
        conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Accept: {accept_key(key)}\r\nx-ws-path: {target}\r\n\r\n").encode())
        while not self.stopped.is_set():
            try:
                fin, op, payload, masked = read_frame(reader, time.monotonic() + self.lifetime)
            except (h1.Incomplete, TimeoutError):
                return
            if not masked:
                with self.lock:
                    self.unmasked_frames += 1
            if op in (OP_TEXT, OP_BINARY, OP_CONT):
                with self.lock:
                    self.messages += 1
                conn.sendall(encode_frame(op, payload, mask=False, fin=fin))
            elif op == OP_PING:
                conn.sendall(encode_frame(OP_PONG, payload, mask=False))
            elif op == OP_CLOSE:
                conn.sendall(encode_frame(OP_CLOSE, payload[:2], mask=False))
                conn.shutdown(socket.SHUT_WR)
                return


class WsClient:
    def __init__(self, port: int, path: str = "/ws", host_header: str = "example.test", timeout: float = 10.0,
                 extra_headers=()):
        self.client = h1.Client(port, timeout=timeout)
        self.timeout = timeout
        self.key = base64.b64encode(os.urandom(16)).decode()
        headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", self.key),
                   ("Sec-WebSocket-Version", "13")] + list(extra_headers)
        self.client.send(h1.build_request("GET", path, headers, host=host_header))
        self.response = h1.read_response(self.client.reader, "GET", timeout)

    @property
    def accepted(self) -> bool:
        return (self.response.status == 101
                and self.response.header("sec-websocket-accept") == accept_key(self.key))

    def send(self, payload: bytes | str, opcode: int | None = None) -> None:
        if isinstance(payload, str):
            payload, op = payload.encode(), OP_TEXT if opcode is None else opcode
        else:
            op = OP_BINARY if opcode is None else opcode
        self.client.send(encode_frame(op, payload, mask=True))

    def recv(self, timeout: float | None = None) -> tuple[int, bytes]:
        deadline = time.monotonic() + (timeout or self.timeout)
        fin, op, payload, masked = read_frame(self.client.reader, deadline)
        return op, payload

    def close(self, code: int = 1000, timeout: float | None = None) -> tuple[int, bytes] | None:
        """Sends CLOSE; returns the peer's CLOSE frame (opcode, payload) or None."""
        self.client.send(encode_frame(OP_CLOSE, struct.pack("!H", code), mask=True))
        try:
            deadline = time.monotonic() + (timeout or self.timeout)
            while True:
                fin, op, payload, _ = read_frame(self.client.reader, deadline)
                if op == OP_CLOSE:
                    return op, payload
        except (h1.Incomplete, TimeoutError):
            return None

    def shutdown(self) -> None:
        self.client.close()


if __name__ == "__main__":
    srv = WsEchoServer()
    c = WsClient(srv.port)
    print("accepted:", c.accepted, c.response)
    c.send("hello")
    print(c.recv())
    c.send(os.urandom(70000))
    op, data = c.recv()
    print(op, len(data))
    print("close:", c.close())
    print("eof:", c.client.wait_closed(2))
    c.shutdown()
    srv.close()
