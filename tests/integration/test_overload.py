"""Envoy's overload manager shape through the real binary. Resource monitors (fixed_heap, the heap in use
against a ceiling; global_downstream_max_connections, open downstream connections against theirs) drive
actions through threshold and scaled triggers: stop_accepting_requests (503 with x-envoy-overloaded),
stop_accepting_connections, disable_http_keepalive (Connection: close / GOAWAY), reduce_timeouts (idle
timers shrink) and shrink_heap. /stats shows overload.*. Slow readers push the heap past its ceiling:
new requests are refused, the process stays up, and it recovers when they go. Bad configs are refused
naming the field."""

from __future__ import annotations

import socket
import time

import pytest

import harness
from harness import MIB, bootstrap, http_listener, static_cluster, virtual_host
from peers import env, h1, h2peers

FIXED_HEAP = "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig"
CONNECTIONS = ("type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3."
               "DownstreamConnectionsConfig")
SCALE_TIMERS = "type.googleapis.com/envoy.config.overload.v3.ScaleTimersOverloadActionConfig"
HEAP = "envoy.resource_monitors.fixed_heap"
CONNS = "envoy.resource_monitors.global_downstream_max_connections"
STOP_REQUESTS = "envoy.overload_actions.stop_accepting_requests"
STOP_CONNECTIONS = "envoy.overload_actions.stop_accepting_connections"
KEEPALIVE = "envoy.overload_actions.disable_http_keepalive"
REDUCE_TIMEOUTS = "envoy.overload_actions.reduce_timeouts"


def heap_monitor(max_heap: int) -> dict:
    return {"name": HEAP, "typed_config": {"@type": FIXED_HEAP, "max_heap_size_bytes": max_heap}}


def conns_monitor(limit: int) -> dict:
    return {"name": CONNS, "typed_config": {"@type": CONNECTIONS, "max_active_downstream_connections": limit}}


def action(name: str, monitor: str = HEAP, threshold: float = 0.5, **extra) -> dict:
    return {"name": name, "triggers": [{"name": monitor, "threshold": {"value": threshold}}], **extra}


def with_overload(b: dict, monitors: list[dict], actions: list[dict]) -> dict:
    b["overload_manager"] = {"refresh_interval": "0.1s", "resource_monitors": monitors, "actions": actions}
    return b


def direct_config(monitors: list[dict], actions: list[dict], **hcm_extra) -> dict:
    """One listener answering 200 "fine" itself, with the overload manager given."""
    vh = virtual_host("all", ["*"], [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "fine"}}}])
    return with_overload(bootstrap([http_listener("http", "ov", [vh], **hcm_extra)], [static_cluster("c", [9])]),
                         monitors, actions)


def config(max_heap: int, name: str, threshold: float = 0.5) -> dict:
    return direct_config([heap_monitor(max_heap)], [action(name, threshold=threshold)])


def get(port: int) -> tuple[int, bytes]:
    r = harness.curl(["-s", "-o", "-", "-w", "\n%{http_code}", f"http://127.0.0.1:{port}/"], timeout=5)
    body, _, code = r.stdout.rpartition(b"\n")
    return int(code or 0), body


def served(port: int) -> bool:
    """A new connection gets a 200 (False: closed at accept)."""
    try:
        with h1.Client(port, timeout=3) as c:
            return c.request("GET", "/").status == 200
    except (OSError, ConnectionError):
        return False


# ---------------------------------------------------------------------------------------------------
# fixed_heap


@pytest.mark.unsanitized("the fixed_heap monitor reads mallinfo2, which ASan's allocator leaves at zero: no heap to trigger on")
def test_heap_above_threshold_refuses_requests_with_503(fleet):
    proc = fleet.start(config(1 << 20, STOP_REQUESTS))  # any heap > 512 KiB
    time.sleep(0.3)
    with h1.Client(proc.listener_port("http")) as c:
        r = c.request("GET", "/")
    assert (r.status, r.body) == (503, b"envoy overloaded"), r
    assert r.header("x-envoy-overloaded") == "true", r
    stats = proc.stats()
    assert stats[f"overload.{STOP_REQUESTS}.active"] == 1
    assert stats[f"overload.{STOP_REQUESTS}.scale_percent"] == 100
    assert stats[f"overload.{HEAP}.pressure"] > 50
    assert stats[f"overload.{HEAP}.failed_updates"] == 0
    assert stats[f"overload.{HEAP}.skipped_updates"] == 0


def test_heap_below_threshold_serves(fleet):
    proc = fleet.start(config(64 << 30, STOP_REQUESTS))
    time.sleep(0.3)
    assert get(proc.listener_port("http")) == (200, b"fine")
    stats = proc.stats()
    assert stats[f"overload.{STOP_REQUESTS}.active"] == 0
    assert stats[f"overload.{STOP_REQUESTS}.scale_percent"] == 0


@pytest.mark.unsanitized("the fixed_heap monitor reads mallinfo2, which ASan's allocator leaves at zero: no heap to trigger on")
def test_heap_above_threshold_refuses_connections(fleet):
    proc = fleet.start(config(1 << 20, STOP_CONNECTIONS))
    time.sleep(0.3)
    port = proc.listener_port("http")
    s = harness.connect(port)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    how, _ = harness.wait_closed(s, 3)
    assert how in ("eof", "reset")
    assert proc.stats()[f"listener.127.0.0.1_{port}.downstream_cx_overload_reject"] >= 1


@pytest.mark.unsanitized("the fixed_heap monitor reads mallinfo2, which ASan's allocator leaves at zero: no heap to trigger on")
def test_scaled_trigger_reports_a_partial_scale(fleet):
    """scaled {0, 1}: a heap at rest (under 1 MiB) against 16 MiB is between the thresholds, so the action
    scales (0 < scale_percent < 100) without being active (saturated)."""
    b = direct_config([heap_monitor(16 * MIB)], [{"name": KEEPALIVE, "triggers": [
        {"name": HEAP, "scaled": {"scaling_threshold": 0.0, "saturation_threshold": 1.0}}]}])
    proc = fleet.start(b)
    s = proc.wait_stats(lambda s: s.get(f"overload.{KEEPALIVE}.scale_percent", 0) > 0, timeout=3)
    assert s[f"overload.{KEEPALIVE}.scale_percent"] < 100
    assert s[f"overload.{KEEPALIVE}.active"] == 0


def _heap_in_use(fleet) -> int:
    """Strait's heap in use at rest, read from a fixed_heap monitor of 1 MiB (pressure = heap / 10 KiB)."""
    probe = fleet.start(config(1 << 20, "envoy.overload_actions.shrink_heap", threshold=1.0), drain_time_s=0)
    s = probe.wait_stats(lambda s: s.get(f"overload.{HEAP}.pressure", 0) > 0, timeout=3)
    probe.expected_exit = True
    probe.stop()
    if s.get(f"overload.{HEAP}.pressure", 0) == 0:
        pytest.skip("the allocator reports no heap through mallinfo2 (a sanitizer build): nothing to measure")
    return s[f"overload.{HEAP}.pressure"] * (1 << 20) // 100


def test_slow_readers_push_the_heap_over_then_it_recovers(fleet):
    """Ten clients ask for 64 MiB bodies and read nothing: strait holds up to its 4 MiB buffer limit for
    each (backpressure stops the upstream reads there). That is past the ceiling (heap at rest + 16 MiB):
    new requests get 503 + x-envoy-overloaded while the process stays up; once the readers go, the heap
    falls back, the action clears and requests are served again."""
    rest = _heap_in_use(fleet)
    origin = env.origin(fleet)
    b = harness.simple_http_config(origin.port, listener_extra={"per_connection_buffer_limit_bytes": 4 * MIB})
    max_heap = rest + 16 * MIB
    with_overload(b, [heap_monitor(max_heap)], [action(STOP_REQUESTS, threshold=1.0),
                                                action("envoy.overload_actions.shrink_heap", threshold=1.0)])
    proc = fleet.start(b, log_level="info")
    port = proc.listener_port("http")
    assert served(port)
    readers = []
    try:
        for _ in range(10):
            c = h1.Client(port, timeout=10)
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            c.send(h1.build_request("GET", f"/_/body?size={64 * MIB}"))
            readers.append(c)
        s = proc.wait_stats(lambda s: s.get(f"overload.{STOP_REQUESTS}.active", 0) == 1, timeout=10)
        pressure = s[f"overload.{HEAP}.pressure"]
        assert pressure >= 100, s
        with h1.Client(port, timeout=5) as c:
            r = c.request("GET", "/anything")
        assert r.status == 503 and r.header("x-envoy-overloaded") == "true", r
        assert proc.alive()
        print(f"heap at rest {rest >> 10} KiB, ceiling {max_heap >> 10} KiB, pressure with 10 slow readers {pressure}%")
    finally:
        for c in readers:
            c.close()
    s = proc.wait_stats(lambda s: s.get(f"overload.{STOP_REQUESTS}.active", 1) == 0, timeout=10)
    assert s[f"overload.{HEAP}.pressure"] < 100, s
    with h1.Client(port, timeout=5) as c:
        r = c.request("GET", "/after")
    assert r.status == 200, r
    assert proc.alive()
    assert harness.stat(proc.stats(), "http.ingress_http.downstream_rq_5xx") >= 1


# ---------------------------------------------------------------------------------------------------
# global_downstream_max_connections


def test_global_downstream_max_connections_refuses_the_one_over_and_recovers(fleet):
    proc = fleet.start(direct_config([conns_monitor(3)], []), concurrency=2)
    port = proc.listener_port("http")
    held = []
    for _ in range(3):
        c = h1.Client(port, timeout=5)
        assert c.request("GET", "/").status == 200
        held.append(c)
    s = proc.wait_stats(lambda s: s.get(f"overload.{CONNS}.pressure", 0) == 100, timeout=3)
    for _ in range(2):
        assert not served(port), "a connection over the global limit was served"
    s = proc.wait_stats(lambda s: s.get(f"listener.127.0.0.1_{port}.downstream_global_cx_overflow", 0) >= 2)
    assert harness.stat(s, f"listener.127.0.0.1_{port}.downstream_global_cx_overflow") == 2
    held.pop().close()
    deadline = time.monotonic() + 5
    ok = False
    while not ok and time.monotonic() < deadline:
        ok = served(port)
        if not ok:
            time.sleep(0.1)
    assert ok, "a slot freed by a closed connection was not given back"
    for c in held:
        assert c.request("GET", "/").status == 200
        c.close()


# ---------------------------------------------------------------------------------------------------
# disable_http_keepalive and reduce_timeouts


@pytest.mark.unsanitized("the fixed_heap monitor reads mallinfo2, which ASan's allocator leaves at zero: no heap to trigger on")
def test_disable_http_keepalive_closes_http1_connections(fleet):
    proc = fleet.start(config(1 << 20, KEEPALIVE))
    time.sleep(0.3)
    port = proc.listener_port("http")
    with h1.Client(port) as c:
        r = c.request("GET", "/")
        assert r.status == 200, r
        assert "close" in h1.connection_tokens(r.headers), r
        assert c.wait_closed(3) == "eof"
    s = proc.stats()
    assert harness.stat(s, "http.ov.downstream_cx_overload_disable_keepalive") >= 1
    assert s[f"overload.{KEEPALIVE}.active"] == 1


def test_keepalive_stays_when_the_action_is_inactive(fleet):
    proc = fleet.start(config(64 << 30, KEEPALIVE))
    time.sleep(0.3)
    with h1.Client(proc.listener_port("http")) as c:
        r1 = c.request("GET", "/")
        r2 = c.request("GET", "/")  # the same connection
    assert (r1.status, r2.status) == (200, 200)
    assert "close" not in h1.connection_tokens(r1.headers)


@pytest.mark.unsanitized("the fixed_heap monitor reads mallinfo2, which ASan's allocator leaves at zero: no heap to trigger on")
def test_disable_http_keepalive_sends_http2_goaway(fleet):
    """Frame by frame (the h2 state machine treats any GOAWAY as the end): the request is answered, and the
    connection is told to go (GOAWAY NO_ERROR), then closed once drain_timeout ends."""
    import hyperframe.frame as hf

    proc = fleet.start(direct_config([heap_monitor(1 << 20)], [action(KEEPALIVE)], drain_timeout="0.3s"))
    time.sleep(0.3)
    frames = []
    with h2peers.RawH2(proc.listener_port("http"), timeout=5) as c:
        assert c.send_request(1)
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline and not c.closed_how:
            frames += c.read_frames(0.5)
    goaways = [f for f in frames if isinstance(f, hf.GoAwayFrame)]
    headers = [f for f in frames if isinstance(f, hf.HeadersFrame) and f.stream_id == 1]
    assert headers, frames
    assert goaways and all(g.error_code == 0 for g in goaways), frames
    assert any(g.last_stream_id == 1 for g in goaways), f"no final GOAWAY naming stream 1: {goaways}"
    assert c.closed_how == "eof", c.closed_how
    assert harness.stat(proc.stats(), "http.ov.downstream_cx_overload_disable_keepalive") == 1


def _idle_close_after(proc) -> float:
    """Seconds from the end of a response until strait closes the idle connection."""
    with h1.Client(proc.listener_port("http"), timeout=10) as c:
        assert c.request("GET", "/").status == 200
        start = time.monotonic()
        assert c.wait_closed(8) == "eof"
        return time.monotonic() - start


@pytest.mark.unsanitized("the fixed_heap monitor reads mallinfo2, which ASan's allocator leaves at zero: no heap to trigger on")
def test_reduce_timeouts_shortens_the_idle_timeout(fleet):
    """idle_timeout 3 s; reduce_timeouts saturated with min_timeout 0.3 s: idle connections go after
    about 0.3 s. The same config with the action below its threshold keeps the full 3 s."""
    idle = {"common_http_protocol_options": {"idle_timeout": "3s"}}
    timers = {"@type": SCALE_TIMERS, "timer_scale_factors": [
        {"timer": "HTTP_DOWNSTREAM_CONNECTION_IDLE", "min_timeout": "0.3s"}]}
    fast = fleet.start(direct_config([heap_monitor(1 << 20)], [action(REDUCE_TIMEOUTS, typed_config=timers)], **idle))
    time.sleep(0.3)
    reduced = _idle_close_after(fast)
    s = fast.stats()
    assert s[f"overload.{REDUCE_TIMEOUTS}.active"] == 1
    assert harness.stat(s, "http.ov.downstream_cx_idle_timeout") == 1
    full = _idle_close_after(fleet.start(direct_config([heap_monitor(64 << 30)],
                                                       [action(REDUCE_TIMEOUTS, typed_config=timers)], **idle)))
    print(f"idle close: {reduced:.2f} s under reduce_timeouts, {full:.2f} s without")
    assert 0.2 < reduced < 1.5, reduced
    assert 2.5 < full < 4.5, full


def test_reduce_timeouts_shortens_a_connection_already_idle(fleet):
    """The scale rising after a connection went idle shortens it too. reduce_timeouts fires when the
    connection monitor (ceiling 2) sees a second connection: an idle HTTP connection (idle_timeout 4 s,
    floor 0.3 s) then goes within about a second (it looks at the scale at least every second), not 4 s."""
    echo = fleet.echo()
    timers = {"@type": SCALE_TIMERS, "timer_scale_factors": [
        {"timer": "HTTP_DOWNSTREAM_CONNECTION_IDLE", "min_timeout": "0.3s"}]}
    b = direct_config([conns_monitor(2)], [action(REDUCE_TIMEOUTS, CONNS, threshold=1.0, typed_config=timers)],
                      common_http_protocol_options={"idle_timeout": "4s"})
    b["static_resources"]["listeners"].append(harness.tcp_proxy_listener("tcp", "echo", "tcp"))
    b["static_resources"]["clusters"].append(static_cluster("echo", [echo.port]))
    proc = fleet.start(b)
    with h1.Client(proc.listener_port("http"), timeout=10) as c:
        assert c.request("GET", "/").status == 200
        time.sleep(0.5)  # idle, at 1 connection of 2: no pressure yet
        other = harness.connect(proc.listener_port("tcp"), timeout=5)
        try:
            other.sendall(b"hi")
            assert harness.recv_exact(other, 2) == b"hi"
            start = time.monotonic()
            assert c.wait_closed(5) == "eof"
            took = time.monotonic() - start
        finally:
            other.close()
    print(f"an idle connection went {took:.2f} s after the pressure rose")
    assert took < 2.0, took
    s = proc.stats()
    assert harness.stat(s, "http.ov.downstream_cx_idle_timeout") == 1


# ---------------------------------------------------------------------------------------------------
# Bad configs


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b["overload_manager"]["actions"][0]["triggers"][0]["threshold"].update(value=1.5),
     "overload_manager.actions[0].triggers[0].threshold.value: a threshold is a pressure between 0 and 1"),
    (lambda b: b["overload_manager"]["actions"][0].update(name="envoy.overload_actions.fly"),
     "overload_manager.actions[0].name: unknown overload action 'envoy.overload_actions.fly'"),
    (lambda b: b["overload_manager"]["resource_monitors"][0].update(typed_config={"@type": "type.googleapis.com/google.protobuf.Empty"}),
     "overload_manager.resource_monitors[0].typed_config: unsupported resource monitor type"),
    (lambda b: b["overload_manager"]["actions"][0]["triggers"][0].update(name="envoy.resource_monitors.cpu"),
     "overload_manager.actions[0].triggers[0].name: 'envoy.resource_monitors.cpu' is not a resource monitor"),
    (lambda b: b["overload_manager"]["actions"][0].update(name=REDUCE_TIMEOUTS),
     "overload_manager.actions[0].typed_config: is required"),
], ids=["threshold", "action", "monitor", "trigger", "timers"])
def test_bad_overload_config_is_rejected_naming_the_field(tmp_path, mutate, message):
    b = config(1 << 20, STOP_REQUESTS)
    mutate(b)
    path = harness.write_bootstrap(tmp_path, b)
    r = harness.run_strait(["--mode", "validate", "-c", str(path)])
    assert r.returncode == 1
    assert message in r.stderr, r.stderr
