"""A listener's connection limit (Envoy's runtime key envoy.resource_limits.listener.<name>.connection_limit):
holds across workers, counts overflows, frees a slot when a connection closes, and a bad value is
rejected naming the key. Also the process-wide limit Istio sets (overload.global_downstream_max_connections)."""

from __future__ import annotations

import time

import harness
from harness import bootstrap, static_cluster, tcp_proxy_listener


def _config(echo_port: int, limit) -> dict:
    config = bootstrap([tcp_proxy_listener("tcp", "echo", "limited")], [static_cluster("echo", [echo_port])])
    config["layered_runtime"] = {"layers": [{"name": "static", "static_layer": {
        "envoy": {"resource_limits": {"listener": {"tcp": {"connection_limit": limit}}}}}}]}
    return config


def _served(port: int, word: bytes) -> bool:
    """True if a new connection gets its bytes echoed, False if strait closed it at accept."""
    s = harness.connect(port, timeout=5)
    try:
        s.sendall(word)
        return harness.recv_exact(s, len(word), timeout=3) == word
    except (OSError, ConnectionError, TimeoutError, EOFError):
        return False
    finally:
        s.close()


def test_listener_connection_limit_holds_across_workers_and_recovers(fleet):
    echo = fleet.echo()
    proc = fleet.start(_config(echo.port, 3), concurrency=2)
    port = proc.listener_port("tcp")
    held = []
    for i in range(3):
        s = harness.connect(port, timeout=5)
        s.sendall(b"hold%d" % i)
        assert harness.recv_exact(s, 5) == b"hold%d" % i
        held.append(s)
    # Two workers, three connections held: whichever worker takes the next ones, they are over the limit.
    for i in range(4):
        assert not _served(port, b"over%d" % i), "a connection over the limit was served"
    s = proc.wait_stats(lambda s: s.get("listener.127.0.0.1_%d.downstream_cx_overflow" % port, 0) >= 4)
    assert harness.stat(s, "listener.127.0.0.1_%d.downstream_cx_overflow" % port) == 4
    held.pop().close()
    deadline = time.monotonic() + 5
    ok = False
    while time.monotonic() < deadline and not ok:
        ok = _served(port, b"again")
        if not ok:
            time.sleep(0.1)
    assert ok, "a slot freed by a closed connection was not given back"
    for h in held:
        h.sendall(b"still")
        assert harness.recv_exact(h, 5) == b"still"
        h.close()


def test_listener_connection_limit_rejects_a_value_that_is_not_a_count(fleet, tmp_path):
    echo = fleet.echo()
    path = harness.write_bootstrap(tmp_path, _config(echo.port, "many"))
    r = harness.run_strait(["--mode", "validate", "-c", str(path)])
    assert r.returncode != 0
    assert "envoy.resource_limits.listener.tcp.connection_limit" in r.stdout + r.stderr, r


def test_global_downstream_max_connections_holds_across_listeners(fleet):
    """Istio's runtime key overload.global_downstream_max_connections: every listener's connections
    together, except a listener with ignore_global_conn_limit."""
    echo = fleet.echo()
    a = tcp_proxy_listener("a", "echo", "ga")
    b = tcp_proxy_listener("b", "echo", "gb")
    free = tcp_proxy_listener("free", "echo", "gfree")
    free["ignore_global_conn_limit"] = True
    config = bootstrap([a, b, free], [static_cluster("echo", [echo.port])])
    config["layered_runtime"] = {"layers": [{"name": "global config", "static_layer": {
        "overload.global_downstream_max_connections": "3"}}]}
    proc = fleet.start(config, concurrency=2)
    pa, pb, pf = (proc.listener_port(n) for n in ("a", "b", "free"))
    held = []
    for port, word in ((pa, b"a1"), (pa, b"a2"), (pb, b"b1")):
        s = harness.connect(port, timeout=5)
        s.sendall(word)
        assert harness.recv_exact(s, 2) == word
        held.append(s)
    assert not _served(pb, b"b2"), "a fourth connection (on another listener) was served"
    assert not _served(pa, b"a3"), "a fourth connection was served"
    assert _served(pf, b"ff"), "the listener with ignore_global_conn_limit was limited"
    s = proc.wait_stats(lambda s: s.get("listener.127.0.0.1_%d.downstream_global_cx_overflow" % pb, 0) >= 1)
    assert harness.stat(s, "listener.127.0.0.1_%d.downstream_global_cx_overflow" % pa) == 1
    held.pop(0).close()  # one of a's: the slot is everyone's
    deadline = time.monotonic() + 5
    ok = False
    while time.monotonic() < deadline and not ok:
        ok = _served(pb, b"b3")
        if not ok:
            time.sleep(0.1)
    assert ok, "a slot freed on one listener was not usable on another"
    for h in held:
        h.close()
