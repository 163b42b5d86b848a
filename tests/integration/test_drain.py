"""Graceful drain on SIGTERM/SIGINT: keep accepting and tell every connection to go, let open
connections finish for up to --drain-time-s, exit 0 as soon as none is left."""

from __future__ import annotations

import signal
import time

import harness
from harness import MIB, bootstrap, static_cluster, tcp_proxy_listener


def _start(fleet, upstream_port: int, drain_time_s: int):
    config = bootstrap([tcp_proxy_listener("tcp_main", "backend", "drain_tcp")],
                       [static_cluster("backend", [upstream_port])])
    proc = fleet.start(config, drain_time_s=drain_time_s)
    return proc, proc.listener_port("tcp_main")


def test_sigterm_keeps_accepting_and_finishes_inflight(fleet):
    total = 8 * MIB
    drain_time_s = 8
    # The upstream reads in 64 KiB steps with a pause (at most ~6 MiB/s); the client sends at
    # 4 MiB/s, so the transfer takes about 2 s and is in flight when SIGTERM arrives.
    sink = fleet.sink(read_chunk=64 * 1024, read_delay=0.01, rcvbuf=64 * 1024)
    echo = fleet.echo()
    config = bootstrap([tcp_proxy_listener("tcp_main", "backend", "drain_tcp"),
                        tcp_proxy_listener("tcp_echo", "echo", "drain_echo")],
                       [static_cluster("backend", [sink.port]), static_cluster("echo", [echo.port])])
    proc = fleet.start(config, drain_time_s=drain_time_s)
    port, echo_port = proc.listener_port("tcp_main"), proc.listener_port("tcp_echo")

    client = harness.connect(port, timeout=30)
    sender = harness.StreamSender(client, total, chunk=64 * 1024, rate=4 * MIB, timeout=60)
    try:
        sender.start()
        result = sink.result(0, timeout=5)
        deadline = time.monotonic() + 10
        while result.received < 1 * MIB and time.monotonic() < deadline:
            time.sleep(0.01)
        assert result.received >= 1 * MIB, f"upstream got only {result.received} bytes in 10 s"

        sigterm_at = time.monotonic()
        at_signal = result.received
        proc.signal(signal.SIGTERM)
        assert at_signal < total, "transfer finished before SIGTERM: the test did not exercise drain"

        # New connections are still accepted and served while the drain lasts (traffic that Kubernetes
        # still routes here, and the application's own outbound calls as it shuts down).
        time.sleep(0.3)
        for i in range(3):
            with harness.connect(echo_port, timeout=5) as probe:
                probe.sendall(b"probe%d" % i)
                assert harness.recv_exact(probe, 6) == b"probe%d" % i, "a connection made during the drain was not served"
        assert not result.eof.is_set(), "the in-flight transfer ended before the probes"
        assert proc.alive(), "strait exited while a connection was still in flight"

        sender.join(timeout=60)
        assert not sender.is_alive(), f"sender stuck at {sender.sent} of {total} bytes during drain"
        assert sender.error is None, f"in-flight transfer broken by drain: {sender.error!r}"
        answer = harness.recv_until_eof(client, timeout=30)
    finally:
        client.close()
    assert result.received == total
    assert result.hexdigest() == sender.hexdigest()
    assert answer == f"{total} {sender.hexdigest()}\n".encode()

    left = drain_time_s + 3 - (time.monotonic() - sigterm_at)
    code = proc.wait_exit(timeout=max(left, 0.1))
    took = time.monotonic() - sigterm_at
    assert code is not None, f"strait still running {took:.1f} s after SIGTERM (drain time {drain_time_s} s)"
    assert code == 0, f"exit code {code} after SIGTERM"


def test_drain_timeout_cuts_open_connections(fleet):
    echo = fleet.echo()
    proc, port = _start(fleet, echo.port, drain_time_s=1)
    with harness.connect(port) as s:
        s.sendall(b"still here")
        assert harness.recv_exact(s, 10) == b"still here"
        sigterm_at = time.monotonic()
        proc.signal(signal.SIGTERM)
        how, took = harness.wait_closed(s, timeout=5)
    assert how in ("eof", "reset"), "idle connection not cut 5 s after SIGTERM with --drain-time-s 1"
    assert 0.5 <= took <= 3.0, f"connection cut {took:.2f} s after SIGTERM (drain time 1 s)"
    code = proc.wait_exit(timeout=max(0.1, sigterm_at + 3.5 - time.monotonic()))
    took_exit = time.monotonic() - sigterm_at
    assert code is not None, f"strait still running {took_exit:.1f} s after SIGTERM with --drain-time-s 1"
    assert code == 0, f"exit code {code}"


def test_sigint_without_connections_exits_zero(fleet):
    echo = fleet.echo()
    proc, port = _start(fleet, echo.port, drain_time_s=2)
    start = time.monotonic()
    proc.signal(signal.SIGINT)
    code = proc.wait_exit(timeout=2 + 3)
    assert code is not None, "strait still running 5 s after SIGINT with --drain-time-s 2"
    assert code == 0, f"exit code {code}"
    assert time.monotonic() - start < 5
    assert not harness.is_listening(port)
