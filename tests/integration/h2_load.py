"""A small HTTP/2 (h2c, prior knowledge) load client that counts what a drain test needs to know.

h2load cannot be asked the question a drain test asks ("did every request that reached the proxy get its
response?"): nghttp2's client closes a stream it had queued but not yet written when a GOAWAY arrives in
the same read as the response that let it queue one, and h2load counts that request as errored although
it never left the client. This client counts each case apart, and behaves as real HTTP/2 clients do
after a GOAWAY: no new streams on that connection, the streams the GOAWAY covers finish, the ones above
its last stream id (not processed, RFC 9113 section 6.8) are sent again on a new connection.

Everything is bounded: it stops opening streams after `seconds` and gives up on what is still open
`grace` seconds later. Runs under Debian's python3 (python3-h2).
"""
from __future__ import annotations

import selectors
import socket
import threading
import time

import h2.config
import h2.connection
import h2.events


class _GracefulH2(h2.connection.H2Connection):
    """python-h2 4.1 closes its state machine on any GOAWAY and then refuses the frames of the streams the
    GOAWAY lets finish; a graceful GOAWAY (NO_ERROR) leaves it open here (this client opens no new stream
    on such a connection itself)."""

    def _receive_goaway_frame(self, frame):
        prior = self.state_machine.state
        frames, events = super()._receive_goaway_frame(frame)
        if frame.error_code == 0:
            self.state_machine.state = prior
        return frames, events


class _Conn:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.h2 = _GracefulH2(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.h2.initiate_connection()
        self.open: dict[int, str] = {}  # stream id -> status ("" until the response headers)
        self.goaway_last: int | None = None  # last stream id of the newest GOAWAY received


class H2Load(threading.Thread):
    """`connections` connections with up to `streams` requests each in flight, for `seconds`."""

    def __init__(self, port: int, path: str = "/", *, connections: int = 4, streams: int = 4,
                 seconds: float = 4.0, grace: float = 10.0, host: str = "127.0.0.1"):
        super().__init__(daemon=True)
        self.port, self.path, self.host = port, path, host
        self.connections, self.streams = connections, streams
        self.seconds, self.grace = seconds, grace
        self.counts = {
            "sent": 0,            # requests whose HEADERS were written to a socket
            "ok": 0,              # 2xx responses, complete
            "bad_status": 0,      # complete responses that were not 2xx
            "reset": 0,           # sent, then RST_STREAM from the server
            "refused_goaway": 0,  # sent, above a GOAWAY's last stream id (not processed): sent again
            "lost": 0,            # sent, covered by no GOAWAY, and the connection closed under it
            "unfinished": 0,      # still open when the grace time ran out
            "goaways": 0,
            "connects": 0,
            "connect_refused": 0,  # a new connection refused (a listener that is gone)
        }
        self.error: str | None = None

    def _connect(self) -> _Conn | None:
        try:
            s = socket.create_connection((self.host, self.port), timeout=2)
        except OSError:
            self.counts["connect_refused"] += 1
            return None
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.counts["connects"] += 1
        return _Conn(s)

    def _send_request(self, c: _Conn) -> None:
        sid = c.h2.get_next_available_stream_id()
        c.h2.send_headers(sid, [(":method", "GET"), (":scheme", "http"), (":authority", f"{self.host}:{self.port}"),
                                (":path", self.path)], end_stream=True)
        c.open[sid] = ""
        self.counts["sent"] += 1

    def _flush(self, c: _Conn) -> bool:
        data = c.h2.data_to_send()
        if not data:
            return True
        c.sock.settimeout(2.0)  # a peer that stops reading fails the write, never hangs the client
        try:
            c.sock.sendall(data)
        except OSError:
            return False
        finally:
            c.sock.setblocking(False)
        return True

    def _close(self, c: _Conn, sel: selectors.BaseSelector) -> None:
        # Whatever is still open was sent: covered by a GOAWAY it would have finished, so it is lost.
        self.counts["lost"] += len(c.open)
        c.open.clear()
        sel.unregister(c.sock)
        c.sock.close()

    def run(self) -> None:
        try:
            self._run()
        except Exception as e:  # noqa: BLE001 (a test helper: the test reports it)
            self.error = repr(e)

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        conns: list[_Conn] = []
        start = time.monotonic()
        stop_at, give_up_at = start + self.seconds, start + self.seconds + self.grace
        next_retry = 0.0
        while True:
            now = time.monotonic()
            sending = now < stop_at
            if not sending and not any(c.open for c in conns):
                break
            if now >= give_up_at:
                self.counts["unfinished"] += sum(len(c.open) for c in conns)
                for c in conns:
                    c.open.clear()
                break
            # Keep `connections` usable connections while sending (a refused connect is retried at 20 Hz).
            usable = [c for c in conns if c.goaway_last is None]
            if sending and len(usable) < self.connections and now >= next_retry:
                c = self._connect()
                if c is None:
                    next_retry = now + 0.05
                else:
                    # Paced: a server that sends every new connection away at once costs a bounded loop.
                    next_retry = now + 0.005
                    conns.append(c)
                    sel.register(c.sock, selectors.EVENT_READ, c)
                    usable.append(c)
            if sending:
                for c in usable:
                    while len(c.open) < self.streams:
                        self._send_request(c)
            for c in list(conns):
                if not self._flush(c):
                    self._close(c, sel)
                    conns.remove(c)
            for key, _ in sel.select(timeout=0.05):
                c = key.data
                try:
                    data = c.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._close(c, sel)
                    conns.remove(c)
                    continue
                for ev in c.h2.receive_data(data):
                    self._event(c, ev)
                if not self._flush(c):
                    self._close(c, sel)
                    conns.remove(c)
                    continue
                # A connection that was told to go away and has nothing left open is done with.
                if c.goaway_last is not None and not c.open:
                    sel.unregister(c.sock)
                    c.sock.close()
                    conns.remove(c)
        for c in conns:
            sel.unregister(c.sock)
            c.sock.close()
        sel.close()

    def _event(self, c: _Conn, ev) -> None:
        if isinstance(ev, h2.events.ResponseReceived):
            if ev.stream_id in c.open:
                c.open[ev.stream_id] = dict(ev.headers).get(":status", "")
        elif isinstance(ev, h2.events.DataReceived):
            c.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded):
            status = c.open.pop(ev.stream_id, None)
            if status is not None:
                self.counts["ok" if status.startswith("2") else "bad_status"] += 1
        elif isinstance(ev, h2.events.StreamReset):
            if c.open.pop(ev.stream_id, None) is not None:
                self.counts["reset"] += 1
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.counts["goaways"] += 1
            c.goaway_last = ev.last_stream_id
            for sid in [s for s in c.open if s > ev.last_stream_id]:
                del c.open[sid]
                self.counts["refused_goaway"] += 1
