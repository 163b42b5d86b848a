"""SIGTERM in a pod, through the real binary: readiness (status port /healthz/ready and admin /ready)
goes 503 at once; INBOUND listeners drain (HTTP/1.1 responses carry Connection: close); OUTBOUND
listeners keep serving the application's own calls untold for --min-drain-time-s; Strait exits after
the minimum once no connection is left, before --drain-time-s. With
--exit-on-zero-active-connections it waits for the application to close a held outbound connection."""

from __future__ import annotations

import http.client
import signal
import time

import harness
from harness import bootstrap, http_listener, route_to, static_cluster, virtual_host
from test_pod_status import App, status_get


def listener(name: str, direction: str) -> dict:
    l = http_listener(name, name, [virtual_host("all", ["*"], [route_to("app")])])
    l["traffic_direction"] = direction
    return l


def start(fleet, app: App, extra: list[str], drain_time_s: int):
    port = harness.free_port()
    config = bootstrap([listener("inbound", "INBOUND"), listener("outbound", "OUTBOUND")],
                       [static_cluster("app", [app.port])])
    proc = fleet.start(config, drain_time_s=drain_time_s,
                       extra=["--status-port", str(port), "--drain-strategy", "immediate"] + extra)
    return proc, port, proc.listener_port("inbound"), proc.listener_port("outbound")


def get(conn: http.client.HTTPConnection, path: str) -> tuple[int, str | None]:
    conn.request("GET", path)
    r = conn.getresponse()
    r.read()
    return r.status, r.getheader("connection")


def wait_503(port: int, timeout: float = 1.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if status_get(port, "/healthz/ready", timeout=1).status == 503:
            return time.monotonic() - t0
        time.sleep(0.005)
    raise AssertionError("/healthz/ready still 200")


def test_sigterm_readiness_inbound_drain_outbound_served_minimum_kept(fleet):
    app = harness.track(fleet, App(200))
    proc, status, inbound, outbound = start(fleet, app, ["--min-drain-time-s", "2"], drain_time_s=6)
    assert status_get(status, "/healthz/ready").status == 200
    kept_in = http.client.HTTPConnection("127.0.0.1", inbound, timeout=5)
    assert get(kept_in, "/before") == (200, None)

    t0 = time.monotonic()
    proc.signal(signal.SIGTERM)
    assert wait_503(status) < 0.1
    assert proc.get("/ready").status == 503

    # Inbound: told to go (the open keep-alive connection, and a new one, get Connection: close).
    assert get(kept_in, "/in-open") == (200, "close")
    fresh_in = http.client.HTTPConnection("127.0.0.1", inbound, timeout=5)
    assert get(fresh_in, "/in-new") == (200, "close")
    # Outbound: the application's own calls still go out, on new and kept connections, untold.
    time.sleep(0.5)
    out = http.client.HTTPConnection("127.0.0.1", outbound, timeout=5)
    assert get(out, "/out-1") == (200, None)
    time.sleep(0.5)
    assert get(out, "/out-2") == (200, None)
    assert [p for p, _ in app.seen][-2:] == ["/out-1", "/out-2"]
    assert proc.alive()
    out.close()
    kept_in.close()
    fresh_in.close()

    code = proc.wait_exit(8)
    took = time.monotonic() - t0
    assert code == 0, proc.logs()
    assert 2.0 <= took < 6.0, took


def test_idle_strait_stays_for_the_minimum(fleet):
    app = harness.track(fleet, App(200))
    proc, status, _, outbound = start(fleet, app, ["--min-drain-time-s", "2"], drain_time_s=10)
    t0 = time.monotonic()
    proc.signal(signal.SIGTERM)
    time.sleep(1.5)
    # An idle sidecar used to leave about a second after SIGTERM; the application's late call still works.
    out = http.client.HTTPConnection("127.0.0.1", outbound, timeout=5)
    assert get(out, "/late") == (200, None)
    out.close()
    assert proc.wait_exit(6) == 0
    took = time.monotonic() - t0
    assert 2.0 <= took < 4.0, took


def test_exit_on_zero_waits_for_the_application_to_close(fleet):
    app = harness.track(fleet, App(200))
    proc, status, _, outbound = start(fleet, app, ["--min-drain-time-s", "1", "--exit-on-zero-active-connections"],
                                      drain_time_s=10)
    held = http.client.HTTPConnection("127.0.0.1", outbound, timeout=5)
    assert get(held, "/first") == (200, None)
    t0 = time.monotonic()
    proc.signal(signal.SIGTERM)
    time.sleep(2.0)
    # Past the minimum: still up for the held connection, which is never told to go.
    assert proc.alive()
    assert get(held, "/after-minimum") == (200, None)
    time.sleep(0.5)
    assert proc.alive()
    closed_at = time.monotonic()
    held.close()
    assert proc.wait_exit(5) == 0
    now = time.monotonic()
    assert now - closed_at < 2.0, now - closed_at  # a quiet second after the last connection went
    assert now - t0 < 10.0


def test_without_exit_on_zero_outbound_is_told_after_the_minimum(fleet):
    app = harness.track(fleet, App(200))
    proc, status, _, outbound = start(fleet, app, ["--min-drain-time-s", "1"], drain_time_s=10)
    held = http.client.HTTPConnection("127.0.0.1", outbound, timeout=5)
    assert get(held, "/first") == (200, None)
    t0 = time.monotonic()
    proc.signal(signal.SIGTERM)
    time.sleep(0.3)
    assert get(held, "/within-minimum") == (200, None)
    time.sleep(1.2)
    # After the minimum Strait moves the application's connections on, so the count can reach zero.
    assert get(held, "/after-minimum") == (200, "close")
    held.close()
    assert proc.wait_exit(5) == 0
    assert time.monotonic() - t0 < 5.0
