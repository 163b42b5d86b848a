"""Every HTTP row of shared/guide/hardening.md against the real binary: HTTP/1.1 (raw sockets), HTTP/2
(hand-built frames, python3-h2 / hyperframe / hpack) and upstream faults.

Each attack test checks the documented answer, that a well-behaved connection opened before the attack
still works afterwards (HTTP/1.1 and, where the attack is HTTP/2, an HTTP/2 one too), and that strait is
alive and /ready answers 200."""

from __future__ import annotations

import select
import socket
import time
from types import SimpleNamespace

import h2.errors
import hyperframe.frame as hf
import pytest

import harness
from harness import MIB
from peers import env, h1, h2peers, patterns
from peers.origin import Origin

REFUSED_STREAM = 0x7
RSS_LIMIT_KIB = harness.rss_limit_kib(100)


def _env(fleet, origin: Origin | None = None, **cfg) -> SimpleNamespace:
    return env.simple(fleet, upstream=origin, **cfg)


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    """Sends, ignoring a peer that already closed (an early 400 and close is a fine answer)."""
    try:
        sock.settimeout(5)
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def _h1_attack(e, raw: bytes, status: int, *, close: bool = True, origin_sees: bool = False) -> h1.Response:
    """Sends `raw` on a fresh connection with a bystander open; checks the answer, the close, that the
    origin never received the attack (unless origin_sees), and that the bystander and strait survived."""
    by = env.Bystander(e.port)
    before = e.origin.request_count()
    with h1.Client(e.port) as c:
        _send_quietly(c.sock, raw)
        try:
            resp = c.read_response(timeout=5)
        except h1.NoResponse as err:
            raise AssertionError(f"expected {status}, strait closed the connection without an answer ({err.how})")
        assert resp.status == status, f"expected {status}, got {resp!r}"
        if close:
            assert c.wait_closed(3) in ("eof", "reset"), f"connection left open after {status}"
    if not origin_sees:
        assert e.origin.request_count() == before, \
            f"the origin received the rejected request: {e.origin.requests[-1].raw_head!r}"
    else:
        for rec in e.origin.requests[before:]:
            assert not rec.body_complete, f"a malformed request reached the origin as complete: {rec.raw_head!r}"
    env.survived(e.proc, by)
    return resp


def _req(head_lines: list[str], body: bytes = b"", method: str = "POST", target: str = "/attack") -> bytes:
    head = [f"{method} {target} HTTP/1.1", "Host: example.test"] + head_lines
    return "\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + body


# ---------------------------------------------------------------------------------------------------
# HTTP/1.1: framing


SMUGGLE_TAIL = b"GET /smuggled HTTP/1.1\r\nHost: example.test\r\n\r\n"


@pytest.mark.parametrize("order", ["cl-first", "te-first"])
def test_h1_content_length_and_transfer_encoding_together_is_400_and_close(fleet, order):
    e = _env(fleet)
    lines = ["Content-Length: 5", "Transfer-Encoding: chunked"]
    if order == "te-first":
        lines.reverse()
    _h1_attack(e, _req(lines, b"0\r\n\r\n" + SMUGGLE_TAIL), 400)
    assert not e.origin.find("/smuggled")


TE_CASES = {
    "gzip-only": "Transfer-Encoding: gzip",
    "chunked-not-final": "Transfer-Encoding: chunked, gzip",
    "identity": "Transfer-Encoding: identity",
    "leading-comma": "Transfer-Encoding: ,chunked",
    "xchunked": "Transfer-Encoding: xchunked",
    "space-before-colon": "Transfer-Encoding : chunked",
    "vtab-before-value": "Transfer-Encoding: \x0bchunked",
    "ctl-after-value": "Transfer-Encoding: chunked\x01",
    "nul-in-value": "Transfer-Encoding: chun\x00ked",
}


@pytest.mark.parametrize("case", list(TE_CASES))
def test_h1_bad_transfer_encoding_is_400_and_close(fleet, case):
    e = _env(fleet)
    _h1_attack(e, _req([TE_CASES[case]], b"5\r\nhello\r\n0\r\n\r\n" + SMUGGLE_TAIL), 400)
    assert not e.origin.find("/smuggled")


CL_CASES = {
    "plus": ["Content-Length: +1"],
    "hex": ["Content-Length: 0x10"],
    "trailing-garbage": ["Content-Length: 1Z"],
    "empty": ["Content-Length: "],
    "negative": ["Content-Length: -1"],
    "differing-duplicates": ["Content-Length: 1", "Content-Length: 2"],
    "differing-list": ["Content-Length: 1, 2"],
}


@pytest.mark.parametrize("case", list(CL_CASES))
def test_h1_bad_content_length_is_400_and_close(fleet, case):
    e = _env(fleet)
    _h1_attack(e, _req(CL_CASES[case], b"x" * 16), 400)


CHUNK_CASES = {
    "hex-prefix": b"0x1\r\nA\r\n0\r\n\r\n",
    "minus-zero": b"-0\r\n\r\n",
    "garbage-after-size": b"1garbage\r\nA\r\n0\r\n\r\n",
    "bare-cr-in-extension": b"1;ext=a\rb\r\nA\r\n0\r\n\r\n",
    "bare-lf-after-size": b"1\nA\r\n0\r\n\r\n",
    "bare-lf-after-data": b"1\r\nA\n0\r\n\r\n",
    "size-overflow": b"fffffffffffffffffffff\r\nA\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("case", list(CHUNK_CASES))
def test_h1_bad_chunk_is_400_and_close(fleet, case):
    e = _env(fleet)
    # The head is valid, so strait may already have started the request upstream; the origin must never
    # see it complete, and the client gets 400 (no response had started).
    _h1_attack(e, _req(["Transfer-Encoding: chunked"], CHUNK_CASES[case] + SMUGGLE_TAIL), 400, origin_sees=True)
    assert not e.origin.find("/smuggled")


# ---------------------------------------------------------------------------------------------------
# HTTP/1.1: header syntax


def test_h1_obs_fold_in_request_is_400(fleet):
    e = _env(fleet)
    _h1_attack(e, _req(["X-Folded: a", "  continued"], method="GET"), 400)


def test_h1_obs_fold_in_response_is_502(fleet):
    e = _env(fleet)
    by = env.Bystander(e.port)
    resp = h1.get(e.port, "/_/raw?name=obs-fold")
    assert resp.status == 502, resp
    env.survived(e.proc, by)


HEADER_CASES = {
    "nul-in-value": "X-A: a\x00b",
    "cr-in-value": "X-A: a\rb",
    "lf-in-value": "X-A: a\nb",
    "space-before-colon": "X-A : a",
    "empty-name": ": a",
    "paren-in-name": "X(A): a",
    "at-in-name": "X@A: a",
    "slash-in-name": "X/A: a",
    "high-byte-in-name": "X\xe9: a",
}


@pytest.mark.parametrize("case", list(HEADER_CASES))
def test_h1_malformed_header_is_400(fleet, case):
    e = _env(fleet)
    _h1_attack(e, _req([HEADER_CASES[case]], method="GET"), 400)


# ---------------------------------------------------------------------------------------------------
# HTTP/1.1: limits


def test_h1_header_over_60kib_is_431(fleet):
    e = _env(fleet)
    _h1_attack(e, _req(["X-Big: " + "a" * (61 * 1024)], method="GET"), 431)


def test_h1_headers_summing_over_60kib_is_431(fleet):
    e = _env(fleet)
    _h1_attack(e, _req([f"X-H{i}: " + "b" * 1000 for i in range(70)], method="GET"), 431)


def test_h1_url_over_60kib_is_431(fleet):
    e = _env(fleet)
    _h1_attack(e, _req([], method="GET", target="/" + "u" * (61 * 1024)), 431)


def test_h1_more_than_100_headers_is_431(fleet):
    e = _env(fleet)
    _h1_attack(e, _req([f"X-N{i}: v" for i in range(110)], method="GET"), 431)


def test_h1_headers_under_the_limits_pass(fleet):
    e = _env(fleet)
    resp = h1.get(e.port, "/ok", headers=[(f"X-N{i}", "v" * 500) for i in range(90)])  # 90 headers, ~47 KiB
    assert resp.status == 200, resp
    assert len(e.origin.last().headers_named("x-n89")) == 1


def test_h1_slowloris_headers_get_408_and_close(fleet):
    e = _env(fleet, request_headers_timeout="1s")
    by = env.Bystander(e.port)
    start = time.monotonic()
    with h1.Client(e.port) as c:
        c.send(b"GET /slow HTTP/1.1\r\nHost: example.test\r\nX-Drip: ")
        got = b""
        for _ in range(60):  # one byte every 0.1 s, at most 6 s
            readable, _, _ = select.select([c.sock], [], [], 0.1)
            if readable:
                break
            try:
                c.sock.send(b"a")
            except (BrokenPipeError, ConnectionResetError):
                break
        raw, how = c.raw_until_close(timeout=5)
        got = raw
        took = time.monotonic() - start
    assert got.startswith(b"HTTP/1.1 408"), f"expected 408, got {got[:200]!r} ({how})"
    assert how in ("eof", "reset"), f"connection not closed after 408 ({how})"
    assert took <= 2.5, f"request_headers_timeout 1s: closed after {took:.2f}s"
    assert e.origin.find("/slow") == []
    env.survived(e.proc, by)


def test_h1_dribbled_body_hits_stream_idle_timeout(fleet):
    e = _env(fleet, stream_idle_timeout="1s")
    by = env.Bystander(e.port)
    start = time.monotonic()
    with h1.Client(e.port) as c:
        c.send(_req(["Content-Length: 1000"], b"x" * 10, target="/dribble"))
        raw, how = c.raw_until_close(timeout=6)
        took = time.monotonic() - start
    assert how in ("eof", "reset"), f"a stalled body was not timed out in 6 s ({how})"
    assert 0.8 <= took <= 3.0, f"stream_idle_timeout 1s fired after {took:.2f}s"
    if raw:
        assert raw.startswith(b"HTTP/1.1 408"), f"answer to a stalled body should be 408 or a reset: {raw[:200]!r}"
    for rec in e.origin.find("/dribble"):
        assert not rec.body_complete
    env.survived(e.proc, by)


@pytest.mark.unsanitized("its point is strait's VmHWM, which ASan's shadow memory and free quarantine inflate")
def test_h1_client_that_never_reads_hits_stream_idle_timeout_with_bounded_memory(fleet):
    e = _env(fleet, stream_idle_timeout="1s", start_kw={"log_level": "info"})
    by = env.Bystander(e.port)
    size = 512 * MIB
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", e.port))
    try:
        sock.sendall(h1.build_request("GET", f"/_/body?size={size}"))
        time.sleep(4.0)  # never read: strait must stop reading upstream, then time the stream out
        hwm = harness.proc_status_kib(e.proc.pid, "VmHWM")
        reader = h1.Reader(sock, 30)
        resp = h1.read_response(reader, timeout=30, store_limit=0)
    finally:
        sock.close()
    assert hwm < RSS_LIMIT_KIB, f"VmHWM {hwm} KiB with a client that never reads"
    assert resp.status == 200
    assert not resp.complete and resp.body_len < size, \
        "the stalled stream should have been reset by the idle timeout, not kept until the client read"
    env.survived(e.proc, by)


# ---------------------------------------------------------------------------------------------------
# HTTP/1.1: path normalisation before routing (default HCM settings)


def _admin_guard_env(fleet):
    o = env.origin(fleet)
    vh = harness.virtual_host("all", ["*"], [
        {"match": {"prefix": "/admin/"}, "direct_response": {"status": 403, "body": {"inline_string": "forbidden\n"}}},
        harness.route_to("backend"),
    ])
    proc = fleet.start(harness.bootstrap([harness.http_listener("http", "ingress_http", [vh])],
                                         [harness.static_cluster("backend", [o.port])]))
    return SimpleNamespace(proc=proc, port=proc.listener_port("http"), origin=o)


@pytest.mark.parametrize("path", ["/public/../admin/secret", "/public/./../admin/secret", "//admin/secret",
                                  "/admin%2Fsecret", "/admin%2fsecret", "/public/..%2Fadmin/secret",
                                  "/admin%5Csecret", "/public/..%5Cadmin/secret"])
def test_h1_path_is_normalised_before_routing(fleet, path):
    e = _admin_guard_env(fleet)
    by = env.Bystander(e.port)
    resp = h1.get(e.port, path)
    assert resp.status in (400, 403), f"{path} bypassed the /admin/ route: {resp!r}"
    assert e.origin.find(path) == [] and not [r for r in e.origin.requests if "admin" in r.target.lower()], \
        f"the origin received {[r.target for r in e.origin.requests]}"
    env.survived(e.proc, by)


@pytest.mark.parametrize("action", ["UNESCAPE_AND_FORWARD", "REJECT_REQUEST"])
@pytest.mark.parametrize("path", ["//admin/secret", "/admin%2Fsecret", "/public/..%2Fadmin/secret",
                                  "/admin%5Csecret"])
def test_h1_path_guard_holds_with_merge_slashes_and_escaped_slash_action(fleet, path, action):
    # The Envoy knobs that close these bypasses when a deployment turns them on.
    o = env.origin(fleet)
    vh = harness.virtual_host("all", ["*"], [
        {"match": {"prefix": "/admin/"}, "direct_response": {"status": 403, "body": {"inline_string": "forbidden\n"}}},
        harness.route_to("backend"),
    ])
    listener = harness.http_listener("http", "ingress_http", [vh], merge_slashes=True,
                                     path_with_escaped_slashes_action=action)
    proc = fleet.start(harness.bootstrap([listener], [harness.static_cluster("backend", [o.port])]))
    resp = h1.get(proc.listener_port("http"), path)
    expected = 400 if action == "REJECT_REQUEST" and "%" in path else 403
    assert resp.status == expected, f"{path} with {action}: {resp!r}"
    assert o.request_count() == 0, f"the origin received {[r.target for r in o.requests]}"


def test_h1_normalised_path_reaches_origin(fleet):
    e = _admin_guard_env(fleet)
    resp = h1.get(e.port, "/admin/../public/x")
    assert resp.status == 200, resp
    assert e.origin.last().target == "/public/x"


# ---------------------------------------------------------------------------------------------------
# HTTP/1.1: invalid upstream responses


@pytest.mark.parametrize("name", ["cl-te", "obs-fold", "bad-cl", "dup-cl", "nul-in-header", "bad-status"])
def test_h1_invalid_upstream_response_is_502_and_connection_never_reused(fleet, name):
    e = _env(fleet)
    by = env.Bystander(e.port)
    with h1.Client(e.port) as c:
        bad = c.request("GET", f"/_/raw?name={name}&keep=1")
        assert bad.status == 502, f"{name}: {bad!r}"
        bad_conn = e.origin.find("/_/raw")[-1].conn_id
        for i in range(3):
            good = c.request("GET", f"/after/{i}")
            assert good.status == 200, good
            assert int(good.header("x-origin-conn")) != bad_conn, \
                "the upstream connection that sent an invalid response was reused"
    env.survived(e.proc, by)


def test_h1_bad_chunk_in_upstream_response_never_looks_complete(fleet):
    e = _env(fleet)
    resp = h1.get(e.port, "/_/raw?name=bad-chunk")
    assert resp.status == 502 or not resp.complete, f"a broken chunked body was passed on as complete: {resp!r}"
    harness.assert_ready(e.proc)


# ---------------------------------------------------------------------------------------------------
# HTTP/2 attacks (an HTTP/2 upstream, so streams multiplex upstream too)


def _h2_env(fleet, **cfg):
    up = env.h2origin(fleet)
    e = env.simple(fleet, upstream=up, h2_upstream=True, **cfg)
    return e


def _bystanders(e):
    return env.Bystander(e.port), env.H2Bystander(e.port)


def _closed_or_goaway(r: h2peers.RawH2, timeout: float) -> str:
    r.wait_closed(timeout)
    g = r.goaway()
    if g is not None:
        return f"goaway({g.error_code})"
    return r.closed_how or "open"


def test_h2_rapid_reset_closes_the_connection(fleet):
    e = _h2_env(fleet, start_kw={"log_level": "info"})
    bys = _bystanders(e)
    with h2peers.RawH2(e.port) as r:
        r.server_settings()
        sid, pairs = 1, 0
        deadline = time.monotonic() + 15
        while pairs < 50_000 and time.monotonic() < deadline and not r.closed_how and r.goaway() is None:
            batch = []
            for _ in range(200):
                batch.append(r.headers_frame(sid, r.request_headers("/_/slow?delay=2")))
                rst = hf.RstStreamFrame(sid)
                rst.error_code = h2.errors.ErrorCodes.CANCEL
                batch.append(rst)
                sid += 2
            if not r.send(*batch):
                break
            pairs += 200
            r.read_frames(0.001)
        outcome = _closed_or_goaway(r, 5)
    assert outcome != "open", f"{pairs} open+reset pairs and the connection is still open"
    env.survived(e.proc, *bys)


def _continuation_flood(e, frame_payload: int, max_frames: int) -> tuple[str, int]:
    with h2peers.RawH2(e.port) as r:
        r.server_settings()
        first = r.headers_frame(1, r.request_headers("/flood"), end_stream=True, end_headers=False)
        r.send(first)
        sent = 0
        i = 0
        while sent < max_frames and not r.closed_how and r.goaway() is None:
            batch = []
            for _ in range(50):
                cont = hf.ContinuationFrame(1)
                # Literal header without indexing, new name: 0x00, name, value.
                name = f"x-fill-{i}".encode()
                value = b"v" * frame_payload
                cont.data = b"\x00" + _hpack_len(name) + name + _hpack_len(value) + value
                batch.append(cont)
                i += 1
            if not r.send(*batch):
                break
            sent += 50
            r.read_frames(0.001)
        return _closed_or_goaway(r, 5), sent


def _hpack_len(b: bytes) -> bytes:
    """HPACK string length prefix (7-bit prefix integer, no Huffman)."""
    n = len(b)
    if n < 127:
        return bytes([n])
    out = bytearray([127])
    n -= 127
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def test_h2_continuation_flood_big_frames_closes(fleet):
    e = _h2_env(fleet, start_kw={"log_level": "info"})
    bys = _bystanders(e)
    outcome, sent = _continuation_flood(e, 16000, 400)  # up to 6.4 MB of header block
    assert outcome != "open", f"{sent} CONTINUATION frames (16 KB each) and the connection is still open"
    assert harness.proc_status_kib(e.proc.pid, "VmHWM") < RSS_LIMIT_KIB
    env.survived(e.proc, *bys)


def test_h2_continuation_flood_small_frames_closes(fleet):
    e = _h2_env(fleet, start_kw={"log_level": "info"})
    bys = _bystanders(e)
    outcome, sent = _continuation_flood(e, 100, 20_000)  # 60 KiB is passed after ~550 frames
    assert outcome != "open", f"{sent} small CONTINUATION frames and the connection is still open"
    env.survived(e.proc, *bys)


def _control_flood(e, make_frame) -> str:
    with h2peers.RawH2(e.port, rcvbuf=4096) as r:
        r.server_settings()
        sent = 0
        deadline = time.monotonic() + 20
        while sent < 400_000 and time.monotonic() < deadline:
            if not r.send_raw(b"".join(make_frame(i).serialize() for i in range(1000)), timeout=2):
                break
            sent += 1000
        # Now read: the answer must be a close (GOAWAY then EOF, or a reset), not an endless queue.
        return _closed_or_goaway(r, 10)


def test_h2_ping_flood_without_reading_closes(fleet):
    e = _h2_env(fleet, start_kw={"log_level": "info"})
    bys = _bystanders(e)

    def ping(i):
        f = hf.PingFrame(0)
        f.opaque_data = i.to_bytes(8, "big")
        return f

    outcome = _control_flood(e, ping)
    assert outcome != "open", "a PING flood with unread ACKs did not get the connection closed"
    assert harness.proc_status_kib(e.proc.pid, "VmHWM") < RSS_LIMIT_KIB
    env.survived(e.proc, *bys)


def test_h2_settings_flood_without_reading_closes(fleet):
    e = _h2_env(fleet, start_kw={"log_level": "info"})
    bys = _bystanders(e)

    def settings(i):
        f = hf.SettingsFrame(0)
        f.settings = {hf.SettingsFrame.ENABLE_PUSH: 0}
        return f

    outcome = _control_flood(e, settings)
    assert outcome != "open", "a SETTINGS flood with unread ACKs did not get the connection closed"
    assert harness.proc_status_kib(e.proc.pid, "VmHWM") < RSS_LIMIT_KIB
    env.survived(e.proc, *bys)


def test_h2_hpack_bomb_is_reset(fleet):
    e = _h2_env(fleet)
    bys = _bystanders(e)
    before = e.upstream.request_count()
    with h2peers.RawH2(e.port) as r:
        r.server_settings()
        value = b"b" * 4000
        # One literal with incremental indexing (lands at dynamic index 62), then 15000 one-byte references
        # to it: ~15 KB on the wire that decode to ~60 MB of headers.
        block = r.block(r.request_headers("/bomb")) + b"\x40" + _hpack_len(b"x-bomb") + b"x-bomb" + \
            _hpack_len(value) + value
        # The request pseudo-headers may also have been indexed; the x-bomb entry is the newest: index 62.
        block += bytes([0x80 | 62]) * 15000
        frames = []
        first = hf.HeadersFrame(1)
        first.data = block[:16384]
        first.flags.add("END_STREAM")
        frames.append(first)
        rest = block[16384:]
        while rest:
            cont = hf.ContinuationFrame(1)
            cont.data = rest[:16384]
            rest = rest[16384:]
            frames.append(cont)
        frames[-1].flags.add("END_HEADERS")
        r.send(*frames)
        kind, detail = r.stream_outcome(1, timeout=5)
    if kind == "headers":
        assert dict(detail).get(":status") in ("431", "400"), f"an HPACK bomb was answered {detail}"
    else:
        assert kind in ("rst", "goaway", "closed"), (kind, detail)
    assert e.upstream.request_count() == before, "the HPACK bomb reached the origin"
    assert harness.proc_status_kib(e.proc.pid, "VmHWM") < RSS_LIMIT_KIB
    env.survived(e.proc, *bys)


def test_h2_zero_window_hits_stream_idle_timeout(fleet):
    e = _h2_env(fleet, stream_idle_timeout="1s", start_kw={"log_level": "info"})
    bys = _bystanders(e)
    # The origin's x-body-sha256 header, cached: hashing 64 MiB takes a second or more on a loaded machine,
    # and headers that reach strait after the timeout would get a 408 instead of the stalled stream's reset.
    patterns.sha256(64 * MIB)
    start = time.monotonic()
    with h2peers.RawH2(e.port, initial_window=0) as r:
        r.server_settings()
        r.send_request(1, f"/_/body?size={64 * MIB}")
        rst = r.wait_for(lambda f: (isinstance(f, hf.RstStreamFrame) and f.stream_id == 1)
                         or isinstance(f, hf.GoAwayFrame), timeout=6)
        took = time.monotonic() - start
        data_bytes = sum(len(f.data) for f in r.frames if isinstance(f, hf.DataFrame))
    assert rst is not None, "a stream whose window never opened was not timed out within 6 s"
    assert 0.8 <= took <= 3.5, f"stream_idle_timeout 1s fired after {took:.2f}s"
    assert data_bytes == 0, f"{data_bytes} DATA bytes sent into a zero window"
    assert harness.proc_status_kib(e.proc.pid, "VmHWM") < RSS_LIMIT_KIB
    env.survived(e.proc, *bys)


def _mcs_outcomes(e, ack_first: bool) -> tuple[dict, dict]:
    with h2peers.RawH2(e.port) as r:
        if ack_first:
            settings = r.server_settings()  # reads the server's SETTINGS and ACKs them
            r.read_frames(0.2)
        sids = [1 + 2 * i for i in range(15)]
        # Without ack_first, the 15 HEADERS follow the preface at once, before we have even read the
        # server's SETTINGS (an eager but legal client).
        r.send(*[r.headers_frame(sid, r.request_headers("/_/slow?delay=1")) for sid in sids])
        outcomes = {sid: r.stream_outcome(sid, timeout=6) for sid in sids}
        if not ack_first:
            settings = r.server_settings()
    return settings, outcomes


def _mcs_check(settings, outcomes) -> None:
    assert settings.get(hf.SettingsFrame.MAX_CONCURRENT_STREAMS) == 10, settings
    sids = sorted(outcomes)
    refused = [sid for sid, (kind, detail) in outcomes.items() if kind == "rst" and detail == REFUSED_STREAM]
    answered = [sid for sid, (kind, detail) in outcomes.items()
                if kind == "headers" and dict(detail).get(":status") == "200"]
    assert set(refused) == set(sids[10:]) and set(answered) == set(sids[:10]), \
        f"expected streams 1..19 answered and 21..29 REFUSED_STREAM: {outcomes}"


def test_h2_more_streams_than_max_concurrent_streams_are_refused(fleet):
    # A client that opens streams before it has seen our SETTINGS.
    e = _h2_env(fleet, http2_protocol_options={"max_concurrent_streams": 10})
    bys = _bystanders(e)
    _mcs_check(*_mcs_outcomes(e, ack_first=False))
    env.survived(e.proc, *bys)


def test_h2_streams_beyond_acknowledged_limit_are_refused_and_others_complete(fleet):
    # A client that ACKed MAX_CONCURRENT_STREAMS 10 and opens 15 anyway: the extra streams are refused
    # (RFC 9113 5.1.2: a stream error), and the 10 within the limit still complete. (nghttp2 alone would
    # close the whole connection here; the codec keeps the limit itself.)
    e = _h2_env(fleet, http2_protocol_options={"max_concurrent_streams": 10})
    bys = _bystanders(e)
    _mcs_check(*_mcs_outcomes(e, ack_first=True))
    env.survived(e.proc, *bys)


def test_h2_client_that_keeps_opening_streams_past_the_limit_is_cut_off(fleet):
    # Each stream past the limit costs us an answer (REFUSED_STREAM). A client that keeps opening them
    # counts towards the reset flood check and gets GOAWAY ENHANCE_YOUR_CALM; other clients are unharmed.
    e = _h2_env(fleet, http2_protocol_options={"max_concurrent_streams": 10})
    bys = _bystanders(e)
    with h2peers.RawH2(e.port) as r:
        r.server_settings()
        r.read_frames(0.2)
        # Ten slow streams fill the limit; everything after them is refused.
        r.send(*[r.headers_frame(1 + 2 * i, r.request_headers("/_/slow?delay=3")) for i in range(10)])
        sid, sent = 21, 0
        deadline = time.monotonic() + 15
        while sent < 5_000 and time.monotonic() < deadline and not r.closed_how and r.goaway() is None:
            if not r.send(*[r.headers_frame(sid + 2 * i, r.request_headers("/over")) for i in range(50)]):
                break
            sid += 100
            sent += 50
            r.read_frames(0.01)
        outcome = _closed_or_goaway(r, 5)
    assert outcome == f"goaway({int(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)})", \
        f"{sent} streams past the limit: {outcome}"
    env.survived(e.proc, *bys)


INVALID_H2 = {
    "unknown-pseudo": lambda h: h + [(":foo", "bar")],
    "missing-path": lambda h: [x for x in h if x[0] != ":path"],
    "missing-method": lambda h: [x for x in h if x[0] != ":method"],
    "duplicate-method": lambda h: h + [(":method", "POST")],
    "pseudo-after-regular": lambda h: h[:2] + [("x-a", "1")] + h[2:],
    "response-pseudo": lambda h: h + [(":status", "200")],
    "uppercase-name": lambda h: h + [("X-Upper", "1")],
    "connection": lambda h: h + [("connection", "keep-alive")],
    "keep-alive": lambda h: h + [("keep-alive", "timeout=5")],
    "proxy-connection": lambda h: h + [("proxy-connection", "keep-alive")],
    "transfer-encoding": lambda h: h + [("transfer-encoding", "chunked")],
    "upgrade": lambda h: h + [("upgrade", "websocket")],
    "te-not-trailers": lambda h: h + [("te", "gzip")],
    "crlf-in-value": lambda h: h + [("x-a", "a\r\nx-injected: 1")],
    "lf-in-value": lambda h: h + [("x-a", "a\nx-injected: 1")],
    "nul-in-value": lambda h: h + [("x-a", "a\x00b")],
    "space-in-name": lambda h: h + [("x a", "1")],
    "colon-in-name": lambda h: h + [("x:a", "1")],
}


@pytest.mark.parametrize("case", list(INVALID_H2))
def test_h2_invalid_request_headers_are_reset_never_forwarded(fleet, case):
    e = _h2_env(fleet)
    bys = _bystanders(e)
    before = e.upstream.request_count()
    with h2peers.RawH2(e.port) as r:
        r.server_settings()
        headers = INVALID_H2[case](r.request_headers("/invalid"))
        r.send(r.headers_frame(1, headers))
        kind, detail = r.stream_outcome(1, timeout=5)
    if kind == "headers":
        assert dict(detail).get(":status") == "400", f"{case}: answered {detail}"
    else:
        assert kind == "rst", f"{case}: expected a stream reset (or 400), got {kind} {detail}"
    assert e.upstream.request_count() == before, f"{case}: the invalid request reached the origin"
    env.survived(e.proc, *bys)


# ---------------------------------------------------------------------------------------------------
# Upstream faults


def test_connection_refused_is_503(fleet):
    e = env.simple(fleet, upstream=harness.closed_port(), connect_timeout="0.5s", cluster="gone")
    resp = h1.get(e.port, "/refused")
    assert resp.status == 503, resp
    with h2peers.H2Client(e.port) as c:
        assert c.get("/refused-h2").status == 503
    s = e.proc.wait_stats(lambda s: s.get("cluster.gone.upstream_cx_connect_fail", 0) >= 2)
    assert harness.stat(s, "cluster.gone.upstream_cx_connect_fail") >= 2
    harness.assert_ready(e.proc)


def test_reset_before_response_headers_is_502(fleet):
    e = _env(fleet)
    assert h1.get(e.port, "/_/reset-before-headers").status == 502
    with h2peers.H2Client(e.port) as c:
        assert c.get("/_/reset-before-headers").status == 502
    harness.assert_ready(e.proc)


@pytest.mark.parametrize("fault", ["close-mid-body", "reset-after-headers"])
def test_h1_client_sees_truncated_body_as_incomplete(fleet, fault):
    e = _env(fleet)
    with h1.Client(e.port) as c:
        resp = c.request("GET", f"/_/{fault}?size=100000&send=1000")
        assert resp.status == 200, resp
        assert not resp.complete, f"a truncated body was passed on as complete ({resp.body_len} bytes): {resp!r}"
        assert resp.body_len < 100000
        assert c.wait_closed(3) in ("eof", "reset")
    harness.assert_ready(e.proc)


@pytest.mark.parametrize("fault", ["close-mid-body", "reset-after-headers"])
def test_h2_client_sees_truncated_body_as_rst_stream(fleet, fault):
    e = _env(fleet)
    with h2peers.H2Client(e.port) as c:
        st = c.get(f"/_/{fault}?size=100000&send=1000")
        assert st.status == 200, st
        assert st.reset_code is not None and not st.ended, f"expected RST_STREAM, got {st!r}"
        assert c.get("/other-stream").status == 200, "the connection should survive a reset stream"
    harness.assert_ready(e.proc)


def test_h2_upstream_reset_mid_body_reaches_h2_client_as_rst_stream(fleet):
    e = _h2_env(fleet)
    with h2peers.H2Client(e.port) as c:
        st = c.get("/_/reset-after-headers?send=1000")
        assert st.status == 200 and st.reset_code is not None and not st.ended, st
        assert c.get("/fine").status == 200
    harness.assert_ready(e.proc)


def test_upstream_never_answers_route_timeout_504(fleet):
    e = env.simple(fleet, route_action={"timeout": "1s"}, cluster="backend")
    start = time.monotonic()
    resp = h1.get(e.port, "/_/never")
    took = time.monotonic() - start
    assert resp.status == 504, resp
    assert 0.8 <= took <= 2.5, f"timeout 1s answered after {took:.2f}s"
    with h2peers.H2Client(e.port) as c:
        assert c.get("/_/never").status == 504
    s = e.proc.wait_stats(lambda s: s.get("cluster.backend.upstream_rq_timeout", 0) >= 2)
    assert harness.stat(s, "cluster.backend.upstream_rq_timeout") == 2
    assert harness.stat(s, "http.ingress_http.downstream_rq_5xx") == 2


def test_retry_on_5xx_succeeds_and_counts_retries(fleet):
    e = env.simple(fleet, cluster="backend",
                   route_action={"retry_policy": {"retry_on": "5xx", "num_retries": 2}})
    resp = h1.get(e.port, "/_/fail?key=r1&times=2&status=503")
    assert resp.status == 200, resp
    assert len(e.origin.find("/_/fail?key=r1")) == 3
    s = e.proc.wait_stats(lambda s: s.get("cluster.backend.upstream_rq_retry", 0) >= 2)
    assert harness.stat(s, "cluster.backend.upstream_rq_retry") == 2
    assert harness.stat(s, "http.ingress_http.downstream_rq_2xx") == 1


def test_retries_exhausted_returns_last_5xx(fleet):
    e = env.simple(fleet, cluster="backend",
                   route_action={"retry_policy": {"retry_on": "5xx", "num_retries": 2}})
    resp = h1.get(e.port, "/_/fail?key=r2&times=10&status=503")
    assert resp.status == 503, resp
    assert len(e.origin.find("/_/fail?key=r2")) == 3, "num_retries 2 means 3 attempts in all"


def test_no_retry_on_4xx_with_retry_on_5xx(fleet):
    e = env.simple(fleet, cluster="backend",
                   route_action={"retry_policy": {"retry_on": "5xx", "num_retries": 2}})
    resp = h1.get(e.port, "/_/fail?key=r3&times=1&status=404")
    assert resp.status == 404
    assert len(e.origin.find("/_/fail?key=r3")) == 1


def test_retry_on_5xx_over_http2_client(fleet):
    e = env.simple(fleet, cluster="backend",
                   route_action={"retry_policy": {"retry_on": "5xx", "num_retries": 2}})
    with h2peers.H2Client(e.port) as c:
        st = c.get("/_/fail?key=r4&times=1")
    assert st.status == 200, st
    assert len(e.origin.find("/_/fail?key=r4")) == 2


def test_reset_before_headers_is_retried_with_retry_on_reset(fleet):
    e = env.simple(fleet, cluster="backend",
                   route_action={"retry_policy": {"retry_on": "reset", "num_retries": 2}})
    resp = h1.get(e.port, "/_/fail?key=rr&times=1&status=reset")
    assert resp.status == 200, resp
    assert len(e.origin.find("/_/fail?key=rr")) == 2
    s = e.proc.wait_stats(lambda s: s.get("cluster.backend.upstream_rq_retry", 0) >= 1)
    assert harness.stat(s, "cluster.backend.upstream_rq_retry") == 1


def test_connect_failure_is_retried_on_another_host(fleet):
    # Two endpoints, one refusing: with retry_on connect-failure every request still succeeds.
    o = env.origin(fleet)
    cluster = harness.static_cluster("backend", [harness.closed_port(), o.port], connect_timeout="0.5s")
    vh = harness.virtual_host("all", ["*"], [harness.route_to(
        "backend", retry_policy={"retry_on": "connect-failure", "num_retries": 2})])
    proc = fleet.start(harness.bootstrap([harness.http_listener("http", "ingress_http", [vh])], [cluster]))
    port = proc.listener_port("http")
    statuses = [h1.get(port, f"/cf/{i}").status for i in range(6)]
    assert statuses == [200] * 6, statuses
    s = proc.wait_stats(lambda s: s.get("cluster.backend.upstream_cx_connect_fail", 0) >= 1)
    assert harness.stat(s, "cluster.backend.upstream_cx_connect_fail") >= 1
    assert harness.stat(s, "cluster.backend.upstream_rq_retry") >= 1


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_keep_alive_race_is_retried_on_a_fresh_connection(fleet, how):
    # The origin answers the first request of each connection, and closes (FIN or RST) without answering
    # when a second one arrives: what a server closing an idle keep-alive connection looks like when our
    # request crosses its close. Nothing was received, so strait retries once on a new connection: no
    # retry policy is configured, and the client must never see a 503.
    o = env.origin(fleet, "racy", close_reused=True, close_reused_rst=(how == "rst"))
    e = env.simple(fleet, upstream=o)
    statuses = []
    with h1.Client(e.port) as c:
        for i in range(10):
            statuses.append(c.request("GET", f"/race/{i}").status)
    assert statuses == [200] * 10, statuses
    assert o.race_closes >= 1, "the origin never saw a reused connection: the race was not exercised"
    harness.assert_ready(e.proc)
