"""The tcp_proxy filter end to end: bytes, half-close, upstream failures, timeouts, load balancing,
stats and backpressure, against the real strait binary and loopback upstreams."""

from __future__ import annotations

import hashlib
import socket
import threading
import time

import pytest

import harness
from harness import MIB, bootstrap, static_cluster, tcp_proxy_listener


def _single(fleet, upstream_ports, *, cluster="backend", listener="tcp_main", stat_prefix="main_tcp",
            idle_timeout=None, connect_timeout="1s", **start_kw):
    config = bootstrap([tcp_proxy_listener(listener, cluster, stat_prefix, idle_timeout=idle_timeout)],
                       [static_cluster(cluster, upstream_ports, connect_timeout=connect_timeout)])
    proc = fleet.start(config, **start_kw)
    return proc, proc.listener_port(listener)


def test_64mib_echo_is_byte_exact(fleet):
    echo = fleet.echo()
    proc, port = _single(fleet, [echo.port])
    sent, sent_sha, received, received_sha = harness.roundtrip_echo(port, 64 * MIB, timeout=120)
    assert sent == 64 * MIB
    assert received == sent, f"received {received} bytes of {sent}"
    assert received_sha == sent_sha
    assert proc.alive()


def test_concurrent_connections_are_all_intact(fleet):
    echo = fleet.echo()
    proc, port = _single(fleet, [echo.port])
    n, size = 20, 1 * MIB
    results: list = [None] * n

    def one(i):
        try:
            results[i] = harness.roundtrip_echo(port, size, timeout=60)
        except BaseException as err:  # checked below
            results[i] = err

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 90
    for t in threads:
        t.join(timeout=max(0.1, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "some connections did not finish in 90 s"
    bad = []
    for i, r in enumerate(results):
        if isinstance(r, BaseException) or r is None:
            bad.append(f"#{i}: {r!r}")
        else:
            sent, sent_sha, received, received_sha = r
            if not (sent == size and received == size and sent_sha == received_sha):
                bad.append(f"#{i}: sent {sent}, received {received}, hashes equal: {sent_sha == received_sha}")
    assert not bad, "broken connections: " + "; ".join(bad)
    assert echo.accept_count() == n


def test_half_close_then_full_reply(fleet):
    tail = bytes(range(256)) * 1024  # 256 KiB sent back only after the upstream saw EOF

    def reply(result):
        return f"{result.received} {result.hexdigest()}\n".encode() + tail

    sink = fleet.sink(reply=reply)
    proc, port = _single(fleet, [sink.port])
    payload = hashlib.sha256(b"half-close").digest() * 4096  # 128 KiB
    with harness.connect(port) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        answer = harness.recv_until_eof(s, timeout=10)
    expected = f"{len(payload)} {hashlib.sha256(payload).hexdigest()}\n".encode() + tail
    assert answer[:80] == expected[:80], "upstream did not see exactly what the client sent before EOF"
    assert len(answer) == len(expected), f"reply cut: {len(answer)} of {len(expected)} bytes"
    assert answer == expected
    result = sink.result(0)
    assert result.eof.is_set() and result.received == len(payload)


def test_upstream_refused_closes_downstream_promptly(fleet):
    dead_port = harness.closed_port()
    proc, port = _single(fleet, [dead_port], cluster="dead", connect_timeout="1s")
    with harness.connect(port) as s:
        try:
            s.sendall(b"anyone there?")
        except OSError:
            pass
        how, took = harness.wait_closed(s, timeout=5)
    assert how in ("eof", "reset"), "downstream still open 5 s after the upstream refused"
    assert took < 2.0, f"downstream closed only after {took:.2f} s"
    stats = proc.wait_stats(lambda st: st.get("cluster.dead.upstream_cx_connect_fail", 0) >= 1)
    assert stats.get("cluster.dead.upstream_cx_connect_fail", 0) >= 1, \
        {k: v for k, v in stats.items() if k.startswith("cluster.dead.")}
    assert proc.alive()


def test_upstream_reset_after_accept(fleet):
    resetter = fleet.reset()
    echo = fleet.echo()
    config = bootstrap(
        [tcp_proxy_listener("to_reset", "resetter", "reset_tcp"), tcp_proxy_listener("to_echo", "echo", "echo_tcp")],
        [static_cluster("resetter", [resetter.port]), static_cluster("echo", [echo.port])])
    proc = fleet.start(config)
    reset_port = proc.listener_port("to_reset")
    echo_port = proc.listener_port("to_echo")
    for i in range(3):
        with harness.connect(reset_port) as s:
            try:
                s.sendall(b"x" * 1000)
            except OSError:
                pass
            how, took = harness.wait_closed(s, timeout=5)
        assert how in ("eof", "reset"), f"attempt {i}: downstream not closed after the upstream reset"
    assert resetter.wait_accepts(3) == 3
    sent, sent_sha, received, received_sha = harness.roundtrip_echo(echo_port, 256 * 1024)
    assert (received, received_sha) == (sent, sent_sha)
    assert proc.alive()
    ready = proc.get("/ready")
    assert ready.status == 200, ready


def test_idle_timeout(fleet):
    echo = fleet.echo()
    proc, port = _single(fleet, [echo.port], stat_prefix="idle_tcp", idle_timeout="1s")
    with harness.connect(port) as s:
        s.sendall(b"ping")
        assert harness.recv_exact(s, 4) == b"ping"
        how, took = harness.wait_closed(s, timeout=6)
    assert how in ("eof", "reset"), "idle connection still open after 6 s with idle_timeout 1s"
    assert 0.8 <= took <= 3.0, f"idle connection closed after {took:.2f} s"
    stats = proc.wait_stats(lambda st: st.get("tcp.idle_tcp.idle_timeout", 0) >= 1)
    assert stats.get("tcp.idle_tcp.idle_timeout") == 1, {k: v for k, v in stats.items() if k.startswith("tcp.")}


def test_round_robin_over_two_static_endpoints(fleet):
    a, b = fleet.echo(), fleet.echo()
    # One worker: round-robin cursors are per worker, so an exact 5/5 split needs a single one.
    proc, port = _single(fleet, [a.port, b.port], concurrency=1)
    for i in range(10):
        with harness.connect(port) as s:
            msg = f"conn {i}".encode()
            s.sendall(msg)
            assert harness.recv_exact(s, len(msg)) == msg
    total = 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        total = a.accept_count() + b.accept_count()
        if total >= 10:
            break
        time.sleep(0.02)
    assert (a.accept_count(), b.accept_count()) == (5, 5)


def test_stats_count_connections_and_bytes(fleet):
    reply = b"r" * 12345
    sink = fleet.sink(reply=reply)
    # A fixed port, so that listener.127.0.0.1_<port> is the same name whether a listener's stats are
    # named after its configured or its bound address (they differ only for port 0).
    fixed = harness.free_port()
    config = bootstrap([tcp_proxy_listener("tcp_main", "backend", "stats_tcp", port=fixed)],
                       [static_cluster("backend", [sink.port])])
    proc = fleet.start(config)
    port = proc.listener_port("tcp_main")
    assert port == fixed
    sizes = [100_000, 250_000, 1]
    sent = received = 0
    for size in sizes:
        with harness.connect(port) as s:
            s.sendall(b"s" * size)
            s.shutdown(socket.SHUT_WR)
            answer = harness.recv_until_eof(s)
        assert answer == reply
        sent += size
        received += len(answer)
    assert sum(r.received for r in sink.results) == sent

    n = len(sizes)
    lis = f"listener.127.0.0.1_{port}"
    expected = {
        f"{lis}.downstream_cx_total": n,
        f"{lis}.downstream_cx_destroy": n,
        f"{lis}.downstream_cx_active": 0,
        "cluster.backend.upstream_cx_total": n,
        "cluster.backend.upstream_cx_active": 0,
        "cluster.backend.upstream_cx_tx_bytes_total": sent,
        "cluster.backend.upstream_cx_rx_bytes_total": received,
        "cluster.backend.upstream_cx_connect_fail": 0,
        "cluster.backend.membership_total": 1,
        "tcp.stats_tcp.downstream_cx_total": n,
        "tcp.stats_tcp.downstream_cx_rx_bytes_total": sent,
        "tcp.stats_tcp.downstream_cx_tx_bytes_total": received,
    }
    stats = proc.wait_stats(lambda st: all(st.get(k) == v for k, v in expected.items()))
    actual = {k: stats.get(k, "<missing>") for k in expected}
    assert actual == expected


@pytest.mark.unsanitized("its point is strait's RSS growth, which ASan's shadow memory and free quarantine inflate")
def test_backpressure_bounds_memory(fleet):
    total = 64 * MIB
    gate = threading.Event()
    sink = fleet.sink(gate=gate, rcvbuf=128 * 1024)
    proc, port = _single(fleet, [sink.port], stat_prefix="bp_tcp")
    baseline = proc.rss_kib()

    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 128 * 1024)
    s.settimeout(10)
    s.connect((harness.LOOPBACK, port))
    peak = [baseline]
    stop_sampling = threading.Event()

    def sample():
        end = time.monotonic() + 180
        while not stop_sampling.is_set() and time.monotonic() < end:
            try:
                peak[0] = max(peak[0], proc.rss_kib())
            except OSError:
                return
            stop_sampling.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    sender = harness.StreamSender(s, total, timeout=150)
    try:
        sender.start()
        # Wait until the sender makes no progress for 1 s: the whole path is full.
        deadline = time.monotonic() + 30
        last, last_change = -1, time.monotonic()
        while time.monotonic() < deadline and not sender.done.is_set():
            if sender.sent != last:
                last, last_change = sender.sent, time.monotonic()
            elif time.monotonic() - last_change >= 1.0:
                break
            time.sleep(0.05)
        stalled_at = sender.sent
        time.sleep(0.5)
        paused_peak = max(peak[0], proc.rss_kib())
        assert stalled_at < total, "the client sent all 64 MiB while the upstream read nothing: no backpressure"
        assert sink.result(0).received == 0

        gate.set()
        sender.join(timeout=150)
        assert not sender.is_alive(), f"sender stuck at {sender.sent} bytes after the upstream resumed"
        assert sender.error is None, repr(sender.error)
        answer = harness.recv_until_eof(s, timeout=60)
    finally:
        stop_sampling.set()
        sampler.join(timeout=5)
        s.close()
    result = sink.result(0)
    assert result.received == total
    assert result.hexdigest() == sender.hexdigest()
    assert answer == f"{total} {sender.hexdigest()}\n".encode()

    limit = harness.rss_limit_kib(64)
    info = (f"baseline {baseline} KiB, peak while paused {paused_peak} KiB, overall peak {peak[0]} KiB, "
            f"client stalled after {stalled_at / MIB:.1f} MiB")
    assert paused_peak - baseline < 24 * 1024, "proxy buffered the stalled stream in memory: " + info
    assert peak[0] < limit, f"proxy RSS over {limit // 1024} MiB: " + info


def test_upstream_bind_config_sets_the_source_address(fleet):
    """A cluster's upstream_bind_config.source_address (Istio's inbound clusters: 127.0.0.6, which its
    capture rules let through to the app) is the source of upstream connections, for tcp_proxy and for
    HTTP pools alike: the upstream sees the connection come from it."""
    import http.server

    seen: list = []
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    lsock.settimeout(10)

    def tcp_upstream():
        try:
            conn, peer = lsock.accept()
        except OSError:
            return
        with conn:
            seen.append(peer[0])
            conn.sendall(peer[0].encode())

    threading.Thread(target=tcp_upstream, daemon=True).start()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            body = self.client_address[0].encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    harness.track(fleet, type("Closer", (), {"close": lambda self: (httpd.shutdown(), httpd.server_close())})())
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    bind = {"upstream_bind_config": {"source_address": {"address": "127.0.0.6", "port_value": 0}}}
    tcp_cluster = {**static_cluster("bound_tcp", [lsock.getsockname()[1]]), **bind}
    http_cluster = {**static_cluster("bound_http", [httpd.server_address[1]]), **bind}
    vh = harness.virtual_host("all", ["*"], [harness.route_to("bound_http")])
    config = bootstrap([tcp_proxy_listener("tcp_bound", "bound_tcp", "bound"),
                        harness.http_listener("http_bound", "bound_http", [vh])], [tcp_cluster, http_cluster])
    proc = fleet.start(config)
    try:
        with socket.create_connection(("127.0.0.1", proc.listener_port("tcp_bound")), timeout=5) as c:
            c.settimeout(5)
            assert c.recv(64) == b"127.0.0.6"
        assert seen == ["127.0.0.6"]
        resp = harness.http_request(f"http://127.0.0.1:{proc.listener_port('http_bound')}", "/")
        assert resp.status == 200 and resp.body == b"127.0.0.6", resp
    finally:
        lsock.close()


def test_upstream_bind_config_with_a_bad_address_is_refused(tmp_path):
    config = bootstrap([tcp_proxy_listener("tcp_main", "backend")],
                       [{**static_cluster("backend", [1]),
                         "upstream_bind_config": {"source_address": {"address": "not-an-ip", "port_value": 0}}}])
    path = harness.write_bootstrap(tmp_path, config)
    done = harness.run_strait(["--mode", "validate", "-c", str(path)])
    assert done.returncode != 0, done
    assert "upstream_bind_config.source_address.address" in done.stdout + done.stderr, done
