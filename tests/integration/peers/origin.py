"""An HTTP/1.1 origin server with controllable behaviours, for tests of the proxy in front of it.

Every request is recorded (connection id, order on its connection, method, target, version, headers
with their exact case, body length and sha256, trailers). Any path not under `/_/` answers 200 with a
JSON echo of what the origin received:
    {"origin", "method", "path", "version", "headers": [[name, value], ...], "body_len",
     "body_sha256", "trailers": [[name, value], ...], "conn", "conn_seq"}
Every response carries `x-origin: <name>`, `x-origin-conn: <connection id>` and `x-origin-seq: <n>`.

Behaviours (query parameters in brackets):
  /_/body[size, chunked, trailers, seed]   `size` bytes of patterns.piece (Content-Length or chunked)
  /_/echo-body                             the request body back, byte for byte
  /_/chunked[chunks, size, trailers]       a chunked response, optionally with trailers
                                           x-trailer-one: t1 and x-body-sha256: <sha of body>
  /_/slow[delay]                           waits `delay` s, then the JSON echo
  /_/slow-body[delay, size]                headers at once, the body after `delay` s
  /_/never                                 reads the request and never answers
  /_/reset-before-headers                  closes with an RST without answering
  /_/reset-after-headers[size, send]       headers (Content-Length: size), `send` bytes, then an RST
  /_/close-mid-body[size, send]            headers (Content-Length: size), `send` bytes, then a FIN
  /_/fail[key, times, status]              the first `times` requests with this key get `status`
  /_/fail-early[key, times, status]        the same, answered before the body is read (then a close);
                                           later ones read the body and get the JSON echo
                                           (default 503; `reset`: an RST before any response),
                                           later ones the JSON echo
  /_/status[code]                          that status with a small body
  /_/raw[name, keep]                       a canned, deliberately malformed response (RAW_RESPONSES);
                                           keep=1 leaves the connection open afterwards
  /_/hop                                   a response carrying hop-by-hop headers
  /_/headers[name=value...]                the JSON echo with each query pair as a response header

Server-wide switches: close_reused (answer only the first request of each connection; when a second
one arrives, close without answering: the keep-alive race), close_after_each (Connection: close on every
response), send_100 (answer Expect: 100-continue with an interim 100 before reading the body).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import socket
import struct
import sys
import time
import urllib.parse
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness  # noqa: E402
from peers import h1, patterns  # noqa: E402

RAW_RESPONSES = {
    # Both Content-Length and Transfer-Encoding.
    "cl-te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    # obs-fold line continuation in a header.
    "obs-fold": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Folded: a\r\n  b\r\n\r\nhello",
    "bad-cl": b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
    "dup-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    "bad-status": b"HTTP/1.1 2000 OK\r\nContent-Length: 5\r\n\r\nhello",
    "nul-in-header": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Bad: a\x00b\r\n\r\nhello",
}


class RequestRecord:
    def __init__(self, conn_id: int, seq: int, method: str, target: str, version: str,
                 headers: list[tuple[str, str]], raw_head: bytes):
        self.conn_id = conn_id
        self.seq = seq
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.raw_head = raw_head
        self.body_len = 0
        self.body_sha = hashlib.sha256().hexdigest()
        self.body: bytes | None = None
        self.body_complete = False
        self.trailers: list[tuple[str, str]] = []
        self.received_at = time.monotonic()
        self.done_at: float | None = None

    @property
    def path(self) -> str:
        return urllib.parse.urlsplit(self.target).path if not self.target.startswith("/") else \
            self.target.split("?", 1)[0]

    @property
    def query(self) -> dict[str, str]:
        q = self.target.split("?", 1)[1] if "?" in self.target else ""
        return dict(urllib.parse.parse_qsl(q, keep_blank_values=True))

    def header(self, name: str) -> str | None:
        return h1.header_get(self.headers, name)

    def headers_named(self, name: str) -> list[str]:
        return h1.header_all(self.headers, name)

    def as_json(self, origin: str) -> dict:
        return {
            "origin": origin, "method": self.method, "path": self.target, "version": self.version,
            "headers": [list(h) for h in self.headers], "body_len": self.body_len,
            "body_sha256": self.body_sha, "trailers": [list(t) for t in self.trailers],
            "conn": self.conn_id, "conn_seq": self.seq,
        }


class Origin(harness.TcpServer):
    def __init__(self, name: str = "origin", *, close_reused: bool = False, close_reused_rst: bool = False,
                 close_after_each: bool = False, send_100: bool = True, store_limit: int = 16 * harness.MIB,
                 fail_all: int | None = None, delay: float = 0.0, **kw):
        self.name = name
        # A misbehaving host: every request gets `fail_all` (None: normal); every answer waits `delay` s.
        self.fail_all = fail_all
        self.delay = delay
        self.close_reused = close_reused
        self.close_reused_rst = close_reused_rst
        self.close_after_each = close_after_each
        self.send_100 = send_100
        self.store_limit = store_limit
        self.requests: list[RequestRecord] = []
        self.conn_requests: dict[int, int] = {}
        self.race_closes = 0
        self.fail_counts: dict[str, int] = {}
        self.expect_seen = 0
        self._ids = itertools.count(1)
        super().__init__(**kw)

    # --- observations ------------------------------------------------------------------------------

    def request_count(self) -> int:
        with self.lock:
            return len(self.requests)

    def connection_count(self) -> int:
        """Connections that carried at least one request."""
        with self.lock:
            return len(self.conn_requests)

    def last(self) -> RequestRecord:
        with self.lock:
            assert self.requests, f"origin {self.name} received no request"
            return self.requests[-1]

    def wait_requests(self, n: int, timeout: float = 5.0) -> int:
        deadline = time.monotonic() + timeout
        while self.request_count() < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.request_count()

    def find(self, path_prefix: str) -> list[RequestRecord]:
        with self.lock:
            return [r for r in self.requests if r.target.startswith(path_prefix)]

    # --- connection loop ---------------------------------------------------------------------------

    def handle(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn_id = next(self._ids)
        reader = h1.Reader(conn, timeout=self.lifetime)
        seq = 0
        while not self.stopped.is_set():
            deadline = time.monotonic() + self.lifetime
            try:
                raw = reader.head(deadline)
            except (h1.NoResponse, TimeoutError, ValueError):
                return
            if raw is None:
                return
            if self.close_reused and seq >= 1:
                with self.lock:
                    self.race_closes += 1
                if self.close_reused_rst:
                    _rst(conn)
                return
            seq += 1
            (method, target, *rest), headers = h1.parse_head(raw)
            version = rest[0] if rest else "HTTP/0.9"
            rec = RequestRecord(conn_id, seq, method, target, version, headers, raw)
            with self.lock:
                self.requests.append(rec)
                self.conn_requests[conn_id] = seq
            keep = self._dispatch(conn, reader, rec)
            rec.done_at = time.monotonic()
            if not keep:
                return

    def _read_body(self, conn, reader: h1.Reader, rec: RequestRecord) -> None:
        expect = (rec.header("expect") or "").lower()
        if expect == "100-continue":
            with self.lock:
                self.expect_seen += 1
            if self.send_100:
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = h1.read_body(reader, rec.headers, time.monotonic() + self.lifetime, until_close=False,
                            store_limit=self.store_limit)
        rec.body_len = body.length
        rec.body_sha = body.hexdigest()
        rec.body = bytes(body.data) if body.data is not None else None
        rec.body_complete = body.complete
        rec.trailers = body.trailers
        if not body.complete:
            raise ConnectionError(f"request body incomplete ({body.how})")

    def _keep_alive(self, rec: RequestRecord) -> bool:
        if self.close_after_each:
            return False
        toks = h1.connection_tokens(rec.headers)
        if rec.version == "HTTP/1.0":
            return "keep-alive" in toks
        return "close" not in toks

    def _head(self, rec: RequestRecord, status: int, headers: list[tuple[str, str]], keep: bool,
              reason: str | None = None) -> bytes:
        lines = [f"HTTP/1.1 {status} {reason or _REASONS.get(status, 'Status')}"]
        lines += [f"x-origin: {self.name}", f"x-origin-conn: {rec.conn_id}", f"x-origin-seq: {rec.seq}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if not keep:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def respond(self, conn, rec: RequestRecord, status: int, body: bytes, headers=(), keep=True,
                content_type="application/octet-stream") -> bool:
        hdrs = [("Content-Type", content_type), ("Content-Length", str(len(body)))] + list(headers)
        data = self._head(rec, status, hdrs, keep)
        if rec.method != "HEAD":
            data += body
        conn.sendall(data)
        return keep

    def echo_json(self, conn, rec: RequestRecord, keep: bool, status: int = 200, headers=()) -> bool:
        body = (json.dumps(rec.as_json(self.name)) + "\n").encode()
        return self.respond(conn, rec, status, body, headers, keep, "application/json")

    def _dispatch(self, conn, reader, rec: RequestRecord) -> bool:
        path, q = rec.path, rec.query
        if path == "/_/fail-early":
            # Answers before reading the body (an upstream that rejects at the headers), then closes.
            key = q.get("key", "default")
            with self.lock:
                self.fail_counts[key] = self.fail_counts.get(key, 0) + 1
                n = self.fail_counts[key]
            if n <= int(q.get("times", "1")):
                self.respond(conn, rec, int(q.get("status", "503")), f"failing {n}\n".encode(), keep=False,
                             content_type="text/plain")
                return False
            path = "/echo"
        try:
            if path != "/_/never":
                self._read_body(conn, reader, rec)
        except (ConnectionError, TimeoutError, ValueError, OSError):
            return False
        keep = self._keep_alive(rec)
        if self.delay:
            time.sleep(self.delay)
        if self.fail_all is not None:
            return self.respond(conn, rec, self.fail_all, f"{self.name} failing\n".encode(), keep=keep,
                                content_type="text/plain")
        if not path.startswith("/_/"):
            return self.echo_json(conn, rec, keep)
        what = path[3:]
        if what == "body":
            size = int(q.get("size", "0"))
            seed = int(q.get("seed", patterns.DEFAULT_SEED))
            extra = [("x-body-sha256", patterns.sha256(size, seed))] if size <= 64 * harness.MIB else []
            if q.get("chunked") == "1":
                conn.sendall(self._head(rec, 200, [("Transfer-Encoding", "chunked")] + extra, keep))
                if rec.method != "HEAD":
                    for piece in patterns.chunks(size, 256 * 1024, seed):
                        conn.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
                    conn.sendall(b"0\r\n" + (b"x-trailer-one: t1\r\n" if q.get("trailers") == "1" else b"")
                                 + b"\r\n")
                return keep
            conn.sendall(self._head(rec, 200, [("Content-Length", str(size))] + extra, keep))
            if rec.method != "HEAD":
                for piece in patterns.chunks(size, harness.MIB, seed):
                    conn.sendall(piece)
            return keep
        if what == "echo-body":
            return self.respond(conn, rec, 200, rec.body or b"", [("x-body-sha256", rec.body_sha)], keep)
        if what == "chunked":
            n, size = int(q.get("chunks", "4")), int(q.get("size", "1000"))
            trailers = q.get("trailers") == "1"
            body = patterns.data(n * size)
            hdrs = [("Transfer-Encoding", "chunked"), ("Content-Type", "application/octet-stream")]
            if trailers:
                hdrs.append(("Trailer", "x-trailer-one, x-body-sha256"))
            conn.sendall(self._head(rec, 200, hdrs, keep))
            if rec.method == "HEAD":
                return keep
            for i in range(n):
                piece = body[i * size:(i + 1) * size]
                conn.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
                time.sleep(0.005)
            tail = b"0\r\n"
            if trailers:
                tail += b"x-trailer-one: t1\r\nx-body-sha256: " + hashlib.sha256(body).hexdigest().encode() + b"\r\n"
            conn.sendall(tail + b"\r\n")
            return keep
        if what == "slow":
            time.sleep(float(q.get("delay", "1")))
            return self.echo_json(conn, rec, keep)
        if what == "slow-body":
            size = int(q.get("size", "1000"))
            conn.sendall(self._head(rec, 200, [("Content-Length", str(size))], keep))
            time.sleep(float(q.get("delay", "1")))
            conn.sendall(patterns.data(size))
            return keep
        if what == "never":
            deadline = time.monotonic() + self.lifetime
            while not self.stopped.is_set() and time.monotonic() < deadline:
                try:
                    if not reader.fill(deadline):
                        return False
                    reader.buf.clear()
                except TimeoutError:
                    return False
            return False
        if what == "reset-before-headers":
            _rst(conn)
            return False
        if what in ("reset-after-headers", "close-mid-body"):
            size, send = int(q.get("size", "100000")), int(q.get("send", "1000"))
            conn.sendall(self._head(rec, 200, [("Content-Length", str(size))], True) + patterns.data(send))
            time.sleep(0.05)
            if what == "reset-after-headers":
                _rst(conn)
            else:
                conn.shutdown(socket.SHUT_RDWR)
            return False
        if what == "fail":
            key = q.get("key", "default")
            with self.lock:
                self.fail_counts[key] = self.fail_counts.get(key, 0) + 1
                n = self.fail_counts[key]
            if n <= int(q.get("times", "1")):
                if q.get("status") == "reset":
                    _rst(conn)
                    return False
                status = int(q.get("status", "503"))
                return self.respond(conn, rec, status, f"failing {n}\n".encode(), keep=keep,
                                    content_type="text/plain")
            return self.echo_json(conn, rec, keep)
        if what == "status":
            code = int(q.get("code", "200"))
            return self.respond(conn, rec, code, f"status {code}\n".encode(), keep=keep, content_type="text/plain")
        if what == "raw":
            conn.sendall(RAW_RESPONSES[q.get("name", "cl-te")])
            if q.get("keep") == "1":
                return True  # leave the connection open: a proxy must still never reuse it
            time.sleep(0.05)
            return False
        if what == "hop":
            hdrs = [("Connection", "x-custom-hop"), ("X-Custom-Hop", "1"), ("Keep-Alive", "timeout=5"),
                    ("Proxy-Connection", "keep-alive"), ("X-End-To-End", "1")]
            return self.echo_json(conn, rec, keep, headers=hdrs)
        if what == "headers":
            return self.echo_json(conn, rec, keep, headers=list(q.items()))
        return self.respond(conn, rec, 404, b"unknown origin behaviour\n", keep=keep, content_type="text/plain")


def _rst(conn: socket.socket) -> None:
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
    except OSError:
        pass


_REASONS = {100: "Continue", 200: "OK", 201: "Created", 204: "No Content", 301: "Moved Permanently",
            302: "Found", 304: "Not Modified", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
            504: "Gateway Timeout"}



if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Run the test origin on 127.0.0.1 until interrupted.")
    parser.add_argument("--name", default="origin")
    parser.add_argument("--seconds", type=float, default=300)
    args = parser.parse_args()
    o = Origin(args.name, lifetime=args.seconds)
    print(f"listening on 127.0.0.1:{o.port}", flush=True)
    try:
        time.sleep(args.seconds)
    except KeyboardInterrupt:
        pass
    o.close()
