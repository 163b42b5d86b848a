"""HTTP/2 (cleartext, prior knowledge) peers built on python3-h2, hyperframe and hpack.

- H2Client: a blocking client over h2's state machine: many concurrent streams, request trailers,
  resets, flow control (automatic or withheld), GOAWAY and RST_STREAM recorded per stream.
- RawH2: hand-built frames (hyperframe + hpack) for attacks the state machine would refuse to send:
  CONTINUATION floods, HPACK bombs, invalid pseudo-headers, PING/SETTINGS floods, rapid reset.
- H2Origin: an h2c origin server (one thread per connection) that echoes requests as JSON, sends bodies
  of any size under flow control, answers with trailers, or resets streams mid-response.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import socket
import sys
import time
import urllib.parse
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hpack
import hyperframe.frame as hf

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness  # noqa: E402
from peers import patterns  # noqa: E402

LOOPBACK = "127.0.0.1"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _s(v) -> str:
    return v.decode("latin-1") if isinstance(v, (bytes, bytearray)) else str(v)


class StreamState:
    def __init__(self, sid: int):
        self.sid = sid
        self.headers: list[tuple[str, str]] = []
        self.interim: list[list[tuple[str, str]]] = []
        self.data = bytearray()
        self.data_len = 0
        self.sha = hashlib.sha256()
        self.trailers: list[tuple[str, str]] = []
        self.ended = False
        self.reset_code: int | None = None   # RST_STREAM received from the peer
        self.reset_sent = False
        self.store = True

    @property
    def status(self) -> int | None:
        v = self.header(":status")
        return int(v) if v is not None else None

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def trailer(self, name: str) -> str | None:
        for k, v in self.trailers:
            if k == name:
                return v
        return None

    @property
    def done(self) -> bool:
        return self.ended or self.reset_code is not None or self.reset_sent

    def json(self):
        return json.loads(bytes(self.data))

    def __repr__(self) -> str:
        return (f"Stream({self.sid}: headers={self.headers}, data_len={self.data_len}, trailers={self.trailers},"
                f" ended={self.ended}, reset_code={self.reset_code}, data={bytes(self.data[:200])!r})")


class H2Client:
    """A blocking HTTP/2 client (h2c, prior knowledge). Not thread-safe: one thread drives it."""

    def __init__(self, port: int, host: str = LOOPBACK, timeout: float = 10.0, auto_ack: bool = True,
                 settings: dict | None = None, validate: bool = True):
        self.timeout = timeout
        self.auto_ack = auto_ack
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cfg = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                        validate_outbound_headers=validate,
                                        normalize_outbound_headers=validate,
                                        validate_inbound_headers=False)
        self.conn = h2.connection.H2Connection(config=cfg)
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.streams: dict[int, StreamState] = {}
        self.goaway: tuple[int, int, bytes] | None = None  # (error_code, last_stream_id, data)
        self.closed_how: str | None = None
        self.remote_settings: dict = {}
        self.events: list = []
        self.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.closed_how:
            try:
                self.sock.settimeout(self.timeout)
                self.sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError) as err:
                self.closed_how = f"send failed: {err}"

    # --- requests ----------------------------------------------------------------------------------

    def request(self, method: str, path: str, headers=(), body: bytes | None = None,
                authority: str = "example.test", scheme: str = "http", end: bool = True,
                trailers=None, store: bool = True) -> int:
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":scheme", scheme), (":authority", authority), (":path", path)]
        hdrs += list(headers.items() if isinstance(headers, dict) else headers)
        st = StreamState(sid)
        st.store = store
        self.streams[sid] = st
        end_on_headers = end and not body and not trailers
        self.conn.send_headers(sid, hdrs, end_stream=end_on_headers)
        self.flush()
        if body:
            self.send_data(sid, body, end=end and not trailers)
        if trailers:
            self.conn.send_headers(sid, list(trailers.items() if isinstance(trailers, dict) else trailers),
                                   end_stream=True)
            self.flush()
        return sid

    def send_data(self, sid: int, data: bytes, end: bool = False, timeout: float | None = None) -> None:
        """Sends under flow control, pumping events while the window is closed."""
        view = memoryview(data)
        deadline = time.monotonic() + (timeout or self.timeout)
        while view:
            window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if window <= 0:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"stream {sid}: send window closed for {timeout or self.timeout}s")
                self.pump_once(0.2)
                if self.closed_how or self.streams[sid].done:
                    raise ConnectionError(f"stream {sid} ended while sending: {self.streams[sid]!r} "
                                          f"{self.closed_how}")
                continue
            take = view[:window]
            self.conn.send_data(sid, bytes(take), end_stream=end and len(take) == len(view))
            view = view[len(take):]
            self.flush()
        if end and not data:
            self.conn.end_stream(sid)
            self.flush()

    def end_stream(self, sid: int) -> None:
        self.conn.end_stream(sid)
        self.flush()

    def reset(self, sid: int, code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        self.conn.reset_stream(sid, code)
        self.streams[sid].reset_sent = True
        self.flush()

    def ping(self, data: bytes = b"12345678") -> None:
        self.conn.ping(data)
        self.flush()

    # --- events ------------------------------------------------------------------------------------

    def pump_once(self, timeout: float) -> bool:
        """Reads once (up to `timeout`) and handles the events; False when the connection is gone."""
        if self.closed_how:
            return False
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(1 << 20)
        except socket.timeout:
            return True
        except (ConnectionResetError, ConnectionAbortedError) as err:
            self.closed_how = f"reset: {err}"
            return False
        if not data:
            self.closed_how = "eof"
            return False
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as err:
            self.closed_how = f"protocol error: {err!r}"
            return False
        for ev in events:
            self._on_event(ev)
        self.flush()
        return True

    def _on_event(self, ev) -> None:
        self.events.append(type(ev).__name__)
        if isinstance(ev, h2.events.ResponseReceived):
            self.streams[ev.stream_id].headers = [(_s(k), _s(v)) for k, v in ev.headers]
        elif isinstance(ev, h2.events.InformationalResponseReceived):
            self.streams[ev.stream_id].interim.append([(_s(k), _s(v)) for k, v in ev.headers])
        elif isinstance(ev, h2.events.TrailersReceived):
            self.streams[ev.stream_id].trailers = [(_s(k), _s(v)) for k, v in ev.headers]
        elif isinstance(ev, h2.events.DataReceived):
            st = self.streams[ev.stream_id]
            st.data_len += len(ev.data)
            st.sha.update(ev.data)
            if st.store:
                st.data += ev.data
            if self.auto_ack and ev.flow_controlled_length:
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded):
            self.streams[ev.stream_id].ended = True
        elif isinstance(ev, h2.events.StreamReset):
            if ev.stream_id in self.streams:
                self.streams[ev.stream_id].reset_code = int(ev.error_code)
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = (int(ev.error_code), ev.last_stream_id, ev.additional_data or b"")
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            for k, v in ev.changed_settings.items():
                self.remote_settings[k] = v.new_value

    def pump_until(self, predicate, timeout: float | None = None) -> bool:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if not self.pump_once(min(left, 0.5)):
                return predicate()
        return True

    def response(self, sid: int, timeout: float | None = None) -> StreamState:
        """Waits for the stream to end or be reset (or the connection to end); returns its state."""
        st = self.streams[sid]
        self.pump_until(lambda: st.done, timeout)
        return st

    def get(self, path: str, headers=(), timeout: float | None = None, **kw) -> StreamState:
        return self.response(self.request("GET", path, headers, **kw), timeout)

    def wait_closed(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.pump_once(min(0.2, max(0.001, deadline - time.monotonic()))):
                return True
        return False


# ---------------------------------------------------------------------------------------------------
# Hand-built frames


class RawH2:
    """HTTP/2 by hand: frames in, frames out, no state machine in the way."""

    def __init__(self, port: int, host: str = LOOPBACK, timeout: float = 10.0, settings: dict | None = None,
                 initial_window: int | None = None, rcvbuf: int | None = None):
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: no autotuning
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder(max_header_list_size=1 << 24)
        self.decoder.max_allowed_table_size = 1 << 16
        self.buf = bytearray()
        self.frames: list = []
        self.closed_how: str | None = None
        self.send_blocked = False  # a send timed out: the peer stopped reading (not a close)
        self.sent_bytes = 0
        st = hf.SettingsFrame(0)
        st.settings = dict(settings or {})
        if initial_window is not None:
            st.settings[hf.SettingsFrame.INITIAL_WINDOW_SIZE] = initial_window
        self.send_raw(PREFACE + st.serialize())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def send_raw(self, data: bytes, timeout: float | None = None) -> bool:
        """False if the peer closed/reset (closed_how set) or stopped reading (send_blocked set)."""
        try:
            self.sock.settimeout(self.timeout if timeout is None else timeout)
            self.sock.sendall(data)
            self.sent_bytes += len(data)
            return True
        except socket.timeout:
            self.send_blocked = True
            return False
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as err:
            self.closed_how = self.closed_how or f"send failed: {err!r}"
            return False

    def send(self, *frames) -> bool:
        return self.send_raw(b"".join(f.serialize() for f in frames))

    def block(self, headers) -> bytes:
        return self.encoder.encode(list(headers))

    @staticmethod
    def request_headers(path: str = "/", method: str = "GET", authority: str = "example.test", extra=()):
        return [(":method", method), (":scheme", "http"), (":authority", authority), (":path", path)] + list(extra)

    def headers_frame(self, sid: int, headers, end_stream: bool = True, end_headers: bool = True) -> hf.HeadersFrame:
        f = hf.HeadersFrame(sid)
        f.data = self.block(headers)
        if end_stream:
            f.flags.add("END_STREAM")
        if end_headers:
            f.flags.add("END_HEADERS")
        return f

    def send_request(self, sid: int, path: str = "/", **kw) -> bool:
        return self.send(self.headers_frame(sid, self.request_headers(path, **kw)))

    def settings_ack(self) -> hf.SettingsFrame:
        f = hf.SettingsFrame(0)
        f.flags.add("ACK")
        return f

    def read_frames(self, timeout: float = 0.5) -> list:
        """Frames that arrive within `timeout` (returns early once something arrived and the socket is
        quiet). ACKs the peer's SETTINGS."""
        deadline = time.monotonic() + timeout
        out = []
        while time.monotonic() < deadline and not self.closed_how:
            self.sock.settimeout(max(0.001, min(0.1 if out else 0.5, deadline - time.monotonic())))
            try:
                data = self.sock.recv(1 << 20)
            except socket.timeout:
                if out:
                    break
                continue
            except (ConnectionResetError, ConnectionAbortedError):
                self.closed_how = "reset"
                break
            if not data:
                self.closed_how = "eof"
                break
            self.buf += data
            while len(self.buf) >= 9:
                frame, length = hf.Frame.parse_frame_header(memoryview(bytes(self.buf[:9])))
                if len(self.buf) < 9 + length:
                    break
                frame.parse_body(memoryview(bytes(self.buf[9:9 + length])))
                del self.buf[:9 + length]
                if isinstance(frame, hf.SettingsFrame) and "ACK" not in frame.flags:
                    self.send(self.settings_ack())
                if isinstance(frame, (hf.HeadersFrame, hf.PushPromiseFrame)):
                    # Decode every header block as it arrives, in order, to keep the HPACK table in sync.
                    try:
                        frame.decoded = [(_s(k), _s(v)) for k, v in self.decoder.decode(frame.data, raw=True)]
                    except Exception as err:  # hpack errors: recorded, the test decides
                        frame.decoded = [("x-hpack-error", repr(err))]
                out.append(frame)
        self.frames.extend(out)
        return out

    def wait_for(self, predicate, timeout: float = 5.0) -> object | None:
        """Reads until a frame satisfies predicate (returned) or the time runs out / connection ends."""
        deadline = time.monotonic() + timeout
        for f in self.frames:
            if predicate(f):
                return f
        while time.monotonic() < deadline and not self.closed_how:
            for f in self.read_frames(min(0.5, max(0.01, deadline - time.monotonic()))):
                if predicate(f):
                    return f
        return None

    def server_settings(self, timeout: float = 5.0) -> dict:
        """The peer's first (non-ACK) SETTINGS, as {setting code: value}."""
        f = self.wait_for(lambda f: isinstance(f, hf.SettingsFrame) and "ACK" not in f.flags, timeout)
        return dict(f.settings) if f is not None else {}

    @staticmethod
    def decode(frame) -> list[tuple[str, str]]:
        return getattr(frame, "decoded", [])

    def goaway(self):
        for f in self.frames:
            if isinstance(f, hf.GoAwayFrame):
                return f
        return None

    def wait_closed(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.closed_how:
            self.read_frames(min(0.5, max(0.01, deadline - time.monotonic())))
        return bool(self.closed_how)

    def stream_outcome(self, sid: int, timeout: float = 5.0) -> tuple[str, object]:
        """('headers', [(name, value)...]) for a response HEADERS on sid, ('rst', code), ('goaway', code)
        for a GOAWAY whose last_stream_id is below sid, or ('closed', how) / ('timeout', None)."""
        def pred(f):
            return (getattr(f, "stream_id", None) == sid and isinstance(f, (hf.HeadersFrame, hf.RstStreamFrame))) \
                or (isinstance(f, hf.GoAwayFrame) and f.last_stream_id < sid)
        f = self.wait_for(pred, timeout)
        if f is None:
            return ("closed", self.closed_how) if self.closed_how else ("timeout", None)
        if isinstance(f, hf.HeadersFrame):
            return "headers", self.decode(f)
        if isinstance(f, hf.RstStreamFrame):
            return "rst", f.error_code
        return "goaway", f.error_code


# ---------------------------------------------------------------------------------------------------
# An h2c origin


class _H2Stream:
    def __init__(self, sid: int, headers):
        self.sid = sid
        self.headers = [(_s(k), _s(v)) for k, v in headers]
        self.body_len = 0
        self.sha = hashlib.sha256()
        self.body = bytearray()
        self.trailers: list[tuple[str, str]] = []

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


class H2Origin(harness.TcpServer):
    """h2c origin. Paths: anything -> JSON echo {origin, protocol, method, path, authority, headers,
    body_len, body_sha256, trailers, conn}; /_/trailers -> body "hello\\n" then trailers
    x-trailer-one: t1, x-trailer-two: t2; /_/body?size=N -> N pattern bytes; /_/slow?delay=s -> echo
    after s seconds; /_/reset-after-headers?send=N -> headers, N bytes, RST_STREAM(INTERNAL_ERROR);
    /_/never -> nothing; /_/echo-body -> the request body back."""

    def __init__(self, name: str = "h2origin", max_concurrent_streams: int = 1000, **kw):
        self.name = name
        self.max_concurrent_streams = max_concurrent_streams
        self.requests: list[dict] = []
        self._ids = itertools.count(1)
        super().__init__(**kw)

    def request_count(self) -> int:
        with self.lock:
            return len(self.requests)

    def handle(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn_id = next(self._ids)
        cfg = h2.config.H2Configuration(client_side=False, header_encoding=None)
        conn = h2.connection.H2Connection(config=cfg)
        conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_concurrent_streams,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20,
        })
        conn.initiate_connection()
        conn.increment_flow_control_window(16 << 20)
        streams: dict[int, _H2Stream] = {}
        pending: dict[int, list] = {}  # sid -> [memoryview remaining, trailers or None]
        timers: list[tuple[float, int, callable]] = []
        deadline = time.monotonic() + self.lifetime

        def send():
            data = conn.data_to_send()
            if data:
                sock.sendall(data)

        def queue_body(sid, data: bytes | patterns.Slice, trailers=None, end=True, after=None):
            pending[sid] = [data if isinstance(data, patterns.Slice) else memoryview(data), trailers, end, after]

        def flush_pending():
            for sid in list(pending):
                view, trailers, end, after = pending[sid]
                try:
                    while view:
                        window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                        if window <= 0:
                            break
                        take = view[:window]
                        last = len(take) == len(view)
                        conn.send_data(sid, bytes(take), end_stream=last and end and trailers is None)
                        view = view[len(take):]
                        send()
                    pending[sid][0] = view
                    if not view:
                        if trailers is not None:
                            conn.send_headers(sid, trailers, end_stream=True)
                        del pending[sid]
                        if after is not None:
                            after()
                except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
                    pending.pop(sid, None)
            send()

        def respond(st: _H2Stream):
            path = st.header(":path") or "/"
            parsed = urllib.parse.urlsplit(path)
            q = dict(urllib.parse.parse_qsl(parsed.query))
            what = parsed.path[3:] if parsed.path.startswith("/_/") else ""
            base = [(":status", "200"), ("x-origin", self.name), ("x-origin-conn", str(conn_id))]
            if what == "trailers":
                conn.send_headers(st.sid, base + [("content-type", "text/plain")])
                queue_body(st.sid, b"hello\n", [("x-trailer-one", "t1"), ("x-trailer-two", "t2")])
            elif what == "body":
                size = int(q.get("size", "0"))
                conn.send_headers(st.sid, base + [("content-length", str(size)),
                                                  ("x-body-sha256", patterns.sha256(size))])
                queue_body(st.sid, patterns.Slice(size))  # made as the window opens, not up front
            elif what == "echo-body":
                conn.send_headers(st.sid, base + [("content-length", str(len(st.body)))])
                queue_body(st.sid, bytes(st.body))
            elif what == "reset-after-headers":
                send_n = int(q.get("send", "1000"))
                conn.send_headers(st.sid, base + [("content-length", str(send_n * 10))])
                queue_body(st.sid, patterns.data(send_n), end=False, after=lambda sid=st.sid: timers.append(
                    (time.monotonic() + 0.05, sid,
                     lambda: conn.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR))))
            elif what == "never":
                pass
            elif what == "slow" and not getattr(st, "delayed", False):
                st.delayed = True
                timers.append((time.monotonic() + float(q.get("delay", "1")), st.sid, lambda s=st: respond(s)))
            else:
                body = json.dumps({
                    "origin": self.name, "protocol": "h2", "method": st.header(":method"), "path": path,
                    "authority": st.header(":authority"), "headers": [list(h) for h in st.headers],
                    "body_len": st.body_len, "body_sha256": st.sha.hexdigest(),
                    "trailers": [list(t) for t in st.trailers], "conn": conn_id}).encode() + b"\n"
                conn.send_headers(st.sid, base + [("content-type", "application/json"),
                                                  ("content-length", str(len(body)))])
                queue_body(st.sid, body)
            flush_pending()

        send()
        while not self.stopped.is_set() and time.monotonic() < deadline:
            now = time.monotonic()
            due = [t for t in timers if t[0] <= now]
            for t in due:
                timers.remove(t)
                try:
                    t[2]()
                except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
                    pass
            if due:
                flush_pending()
            wait = min([t[0] for t in timers], default=now + 0.5) - time.monotonic()
            sock.settimeout(max(0.005, min(0.5, wait)))
            try:
                data = sock.recv(1 << 20)
            except socket.timeout:
                continue
            except (ConnectionResetError, ConnectionAbortedError):
                return
            if not data:
                return
            try:
                events = conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                send()
                return
            for ev in events:
                if isinstance(ev, h2.events.RequestReceived):
                    streams[ev.stream_id] = _H2Stream(ev.stream_id, ev.headers)
                elif isinstance(ev, h2.events.DataReceived):
                    st = streams.get(ev.stream_id)
                    if st is not None:
                        st.body_len += len(ev.data)
                        st.sha.update(ev.data)
                        if len(st.body) < 16 * harness.MIB:
                            st.body += ev.data
                    if ev.flow_controlled_length:
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.TrailersReceived):
                    st = streams.get(ev.stream_id)
                    if st is not None:
                        st.trailers = [(_s(k), _s(v)) for k, v in ev.headers]
                elif isinstance(ev, h2.events.StreamEnded):
                    st = streams.get(ev.stream_id)
                    if st is not None:
                        with self.lock:
                            self.requests.append({"conn": conn_id, "headers": st.headers,
                                                  "body_len": st.body_len, "trailers": st.trailers})
                        try:
                            respond(st)
                        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                            pass
                elif isinstance(ev, h2.events.StreamReset):
                    pending.pop(ev.stream_id, None)
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    send()
                    return
            flush_pending()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Run the h2c origin on 127.0.0.1.")
    parser.add_argument("--seconds", type=float, default=300)
    args = parser.parse_args()
    o = H2Origin(lifetime=args.seconds)
    print(f"listening on 127.0.0.1:{o.port}", flush=True)
    try:
        time.sleep(args.seconds)
    except KeyboardInterrupt:
        pass
    o.close()
