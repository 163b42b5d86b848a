"""HTTP/1.x on raw sockets: a buffered reader, a lenient message parser (it records exactly what the peer
sent, header case included) and a client that can send well-formed or deliberately malformed requests
and tell a complete response from a truncated one.

Nothing here follows redirects, pools connections or hides errors: tests need to see the wire.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time

LOOPBACK = "127.0.0.1"
MIB = 1024 * 1024


class NoResponse(ConnectionError):
    """The connection ended (EOF or reset) before a complete response head arrived."""

    def __init__(self, how: str, partial: bytes = b""):
        super().__init__(f"connection {how} before a response head ({len(partial)} bytes: {partial[:200]!r})")
        self.how = how
        self.partial = partial


class Incomplete(ConnectionError):
    def __init__(self, what: str, how: str):
        super().__init__(f"{what}: connection {how}")
        self.how = how


class Reader:
    """Buffered reads from a socket, each bounded by a deadline."""

    def __init__(self, sock: socket.socket, timeout: float = 10.0):
        self.sock = sock
        self.timeout = timeout
        self.buf = bytearray()
        self.closed_how: str | None = None  # 'eof' or 'reset' once seen

    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    def fill(self, deadline: float, size: int = 1 << 20) -> bool:
        """Reads more into the buffer; False on EOF/reset (recorded in closed_how)."""
        if self.closed_how:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("read deadline passed")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(size)
        except socket.timeout:
            raise TimeoutError("read deadline passed") from None
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            self.closed_how = "reset"
            return False
        if not data:
            self.closed_how = "eof"
            return False
        self.buf += data
        return True

    def read_until(self, delim: bytes, limit: int, deadline: float) -> bytes:
        """Bytes up to and including `delim`; raises Incomplete on EOF, ValueError past `limit`."""
        start = 0
        while True:
            i = self.buf.find(delim, start)
            if i >= 0:
                out = bytes(self.buf[:i + len(delim)])
                del self.buf[:i + len(delim)]
                return out
            if len(self.buf) > limit:
                raise ValueError(f"no {delim!r} within {limit} bytes")
            start = max(0, len(self.buf) - len(delim) + 1)
            if not self.fill(deadline):
                raise Incomplete(f"waiting for {delim!r}", self.closed_how or "eof")

    def read_exact(self, n: int, deadline: float) -> bytes:
        while len(self.buf) < n:
            if not self.fill(deadline, max(65536, min(n - len(self.buf), 1 << 20))):
                raise Incomplete(f"{len(self.buf)} of {n} bytes", self.closed_how or "eof")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_some(self, max_size: int, deadline: float) -> bytes:
        """Up to max_size bytes; b'' at EOF/reset."""
        if not self.buf and not self.fill(deadline, max(65536, min(max_size, 1 << 20))):
            return b""
        out = bytes(self.buf[:max_size])
        del self.buf[:max_size]
        return out

    def head(self, deadline: float, limit: int = 1 << 20) -> bytes | None:
        """A message head (through the blank line). None if the connection ended cleanly before any
        byte; NoResponse if it ended part way."""
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                out = bytes(self.buf[:i + 4])
                del self.buf[:i + 4]
                return out
            if len(self.buf) > limit:
                raise ValueError(f"head longer than {limit} bytes")
            if not self.fill(deadline):
                if not self.buf:
                    return None
                raise NoResponse(self.closed_how or "eof", bytes(self.buf))


def parse_head(raw: bytes) -> tuple[list[str], list[tuple[str, str]]]:
    """Start line split in three, and headers as (name, value) in order, with their case."""
    text = raw.decode("latin-1")
    lines = text.split("\r\n")
    start = lines[0].split(" ", 2)
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        headers.append((name, value.strip(" \t")))
    return start, headers


def header_get(headers: list[tuple[str, str]], name: str) -> str | None:
    lname = name.lower()
    for k, v in headers:
        if k.lower() == lname:
            return v
    return None


def header_all(headers: list[tuple[str, str]], name: str) -> list[str]:
    lname = name.lower()
    return [v for k, v in headers if k.lower() == lname]


def connection_tokens(headers: list[tuple[str, str]]) -> set[str]:
    out = set()
    for v in header_all(headers, "connection"):
        out.update(t.strip().lower() for t in v.split(",") if t.strip())
    return out


class Body:
    """A message body as received: length and sha256 always, the bytes when under the store limit."""

    def __init__(self, store_limit: int):
        self.length = 0
        self.sha = hashlib.sha256()
        self.store_limit = store_limit
        self.data: bytearray | None = bytearray()
        self.trailers: list[tuple[str, str]] = []
        self.complete = False
        self.chunked = False
        self.how: str | None = None  # how it ended when incomplete

    def add(self, data: bytes) -> None:
        self.length += len(data)
        self.sha.update(data)
        if self.data is not None:
            if len(self.data) + len(data) > self.store_limit:
                self.data = None
            else:
                self.data += data

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


def read_body(reader: Reader, headers: list[tuple[str, str]], deadline: float, *, until_close: bool,
              store_limit: int = 64 * MIB, on_data=None) -> Body:
    """Reads a body framed by Transfer-Encoding: chunked, Content-Length, or (if until_close) the end of
    the connection. Never raises on EOF: `complete` says whether the framing was satisfied."""
    body = Body(store_limit)
    te = header_get(headers, "transfer-encoding")
    cl = header_get(headers, "content-length")

    def add(data: bytes) -> None:
        body.add(data)
        if on_data is not None:
            on_data(data)

    try:
        if te is not None and te.strip().lower().endswith("chunked"):
            body.chunked = True
            while True:
                line = reader.read_until(b"\r\n", 4096, deadline)
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    break
                left = size
                while left:
                    part = reader.read_some(min(left, 1 << 20), deadline)
                    if not part:
                        raise Incomplete("chunk data", reader.closed_how or "eof")
                    add(part)
                    left -= len(part)
                if reader.read_exact(2, deadline) != b"\r\n":
                    raise ValueError("chunk not followed by CRLF")
            while True:
                line = reader.read_until(b"\r\n", 65536, deadline)
                if line == b"\r\n":
                    break
                name, _, value = line.decode("latin-1").rstrip("\r\n").partition(":")
                body.trailers.append((name, value.strip()))
            body.complete = True
        elif cl is not None:
            left = int(cl)
            while left:
                part = reader.read_some(min(left, 1 << 20), deadline)
                if not part:
                    raise Incomplete("body", reader.closed_how or "eof")
                add(part)
                left -= len(part)
            body.complete = True
        elif until_close:
            while True:
                part = reader.read_some(1 << 20, deadline)
                if not part:
                    break
                add(part)
            body.complete = reader.closed_how == "eof"
            body.how = reader.closed_how
        else:
            body.complete = True
    except Incomplete as err:
        body.how = err.how
    return body


class Response:
    def __init__(self):
        self.version = ""
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[str, str]] = []
        self.raw_head = b""
        self.interim: list[tuple[int, list[tuple[str, str]]]] = []
        self.body_info: Body | None = None
        self.elapsed = 0.0

    @property
    def body(self) -> bytes | None:
        data = self.body_info.data if self.body_info else b""
        return bytes(data) if data is not None else None

    @property
    def body_len(self) -> int:
        return self.body_info.length if self.body_info else 0

    @property
    def body_sha(self) -> str:
        return self.body_info.hexdigest() if self.body_info else hashlib.sha256().hexdigest()

    @property
    def trailers(self) -> list[tuple[str, str]]:
        return self.body_info.trailers if self.body_info else []

    @property
    def complete(self) -> bool:
        return bool(self.body_info and self.body_info.complete)

    def header(self, name: str) -> str | None:
        return header_get(self.headers, name)

    def headers_named(self, name: str) -> list[str]:
        return header_all(self.headers, name)

    def has_header(self, name: str) -> bool:
        return header_get(self.headers, name) is not None

    def json(self):
        return json.loads(self.body or b"null")

    @property
    def text(self) -> str:
        return (self.body or b"").decode("utf-8", "replace")

    def closes(self) -> bool:
        toks = connection_tokens(self.headers)
        if self.version == "HTTP/1.0":
            return "keep-alive" not in toks
        return "close" in toks

    def __repr__(self) -> str:
        return (f"Response({self.version} {self.status} {self.reason!r}, headers={self.headers!r}, "
                f"body_len={self.body_len}, complete={self.complete}, body={(self.body or b'')[:200]!r})")


def read_response(reader: Reader, method: str = "GET", timeout: float = 10.0, store_limit: int = 64 * MIB,
                  on_data=None, skip_interim: bool = True) -> Response:
    """Reads one response (and any 1xx before it). Raises NoResponse if the connection ends before a head."""
    start = time.monotonic()
    deadline = start + timeout
    resp = Response()
    while True:
        raw = reader.head(deadline)
        if raw is None:
            raise NoResponse(reader.closed_how or "eof")
        (version, status, *rest), headers = parse_head(raw)
        code = int(status)
        if 100 <= code < 200 and code != 101 and skip_interim:
            resp.interim.append((code, headers))
            continue
        break
    resp.version, resp.status, resp.reason = version, code, rest[0] if rest else ""
    resp.headers, resp.raw_head = headers, raw
    if method.upper() == "HEAD" or code in (204, 304) or 100 <= code < 200:
        body = Body(store_limit)
        body.complete = True
        resp.body_info = body
    else:
        resp.body_info = read_body(reader, headers, deadline, until_close=True, store_limit=store_limit,
                                   on_data=on_data)
    resp.elapsed = time.monotonic() - start
    return resp


def _header_items(headers) -> list[tuple[str, str]]:
    if headers is None:
        return []
    if isinstance(headers, dict):
        return list(headers.items())
    return list(headers)


def build_request(method: str, target: str, headers=None, body: bytes | None = None, *,
                  host: str | None = "example.test", version: str = "HTTP/1.1", chunked: bool = False,
                  chunk_size: int = 16384, trailers=None, content_length: bool = True) -> bytes:
    """A request as bytes. Host and Content-Length are added unless given (pass host=None to omit)."""
    items = _header_items(headers)
    names = {k.lower() for k, _ in items}
    head = [f"{method} {target} {version}"]
    if host is not None and "host" not in names:
        head.append(f"Host: {host}")
    for k, v in items:
        head.append(f"{k}: {v}")
    payload = b""
    if chunked:
        if "transfer-encoding" not in names:
            head.append("Transfer-Encoding: chunked")
        parts = []
        data = body or b""
        for i in range(0, len(data), chunk_size):
            piece = data[i:i + chunk_size]
            parts.append(b"%x\r\n" % len(piece) + piece + b"\r\n")
        parts.append(b"0\r\n")
        for k, v in _header_items(trailers):
            parts.append(f"{k}: {v}\r\n".encode("latin-1"))
        parts.append(b"\r\n")
        payload = b"".join(parts)
    elif body is not None:
        if content_length and "content-length" not in names:
            head.append(f"Content-Length: {len(body)}")
        payload = body
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload


class Client:
    """One HTTP/1.x client connection."""

    def __init__(self, port: int, host: str = LOOPBACK, timeout: float = 10.0):
        self.port = port
        self.timeout = timeout
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = Reader(self.sock, timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data: bytes) -> None:
        self.sock.settimeout(self.timeout)
        self.sock.sendall(data)

    def request(self, method: str, target: str, headers=None, body: bytes | None = None, *,
                timeout: float | None = None, store_limit: int = 64 * MIB, **build_kw) -> Response:
        self.send(build_request(method, target, headers, body, **build_kw))
        return self.read_response(method, timeout=timeout, store_limit=store_limit)

    def read_response(self, method: str = "GET", timeout: float | None = None, store_limit: int = 64 * MIB,
                      on_data=None) -> Response:
        return read_response(self.reader, method, self.timeout if timeout is None else timeout,
                             store_limit=store_limit, on_data=on_data)

    def wait_closed(self, timeout: float) -> str:
        """Discards input until the peer closes: 'eof', 'reset' or 'timeout'."""
        deadline = time.monotonic() + timeout
        self.reader.buf.clear()
        while True:
            try:
                if not self.reader.fill(deadline):
                    return self.reader.closed_how or "eof"
            except TimeoutError:
                return "timeout"
            self.reader.buf.clear()

    def raw_until_close(self, timeout: float = 10.0, limit: int = 16 * MIB) -> tuple[bytes, str]:
        """Everything until the peer closes; (bytes, 'eof'|'reset'|'timeout')."""
        deadline = time.monotonic() + timeout
        while len(self.reader.buf) < limit:
            try:
                if not self.reader.fill(deadline):
                    return bytes(self.reader.buf), self.reader.closed_how or "eof"
            except TimeoutError:
                return bytes(self.reader.buf), "timeout"
        return bytes(self.reader.buf), "limit"


def request(port: int, method: str, target: str, headers=None, body: bytes | None = None, *,
            timeout: float = 10.0, **kw) -> Response:
    """One request on a new connection."""
    with Client(port, timeout=timeout) as c:
        return c.request(method, target, headers, body, timeout=timeout, **kw)


def get(port: int, target: str = "/", headers=None, **kw) -> Response:
    return request(port, "GET", target, headers, **kw)
