"""Envoy's overload manager shape: a fixed_heap resource monitor drives stop_accepting_requests (new
requests get 503 "envoy overloaded") and stop_accepting_connections (new connections are closed,
counted); below the threshold traffic flows. Bad thresholds are rejected at load."""

from __future__ import annotations

import time

import harness
from harness import bootstrap, http_listener, static_cluster, virtual_host

FIXED_HEAP = "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig"


def config(max_heap: int, action: str, threshold: float = 0.5) -> dict:
    vh = virtual_host("all", ["*"], [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "fine"}}}])
    b = bootstrap([http_listener("http", "ov", [vh])], [static_cluster("c", [9])])
    b["overload_manager"] = {
        "refresh_interval": "0.1s",
        "resource_monitors": [{"name": "envoy.resource_monitors.fixed_heap",
                               "typed_config": {"@type": FIXED_HEAP, "max_heap_size_bytes": max_heap}}],
        "actions": [{"name": action, "triggers": [{"name": "envoy.resource_monitors.fixed_heap",
                                                   "threshold": {"value": threshold}}]}],
    }
    return b


def get(port: int) -> tuple[int, bytes]:
    r = harness.curl(["-s", "-o", "-", "-w", "\n%{http_code}", f"http://127.0.0.1:{port}/"], timeout=5)
    body, _, code = r.stdout.rpartition(b"\n")
    return int(code or 0), body


def test_heap_above_threshold_refuses_requests_with_503(fleet):
    proc = fleet.start(config(1 << 20, "envoy.overload_actions.stop_accepting_requests"))  # any heap > 512 KiB
    time.sleep(0.3)
    assert get(proc.listener_port("http")) == (503, b"envoy overloaded")
    stats = proc.stats()
    assert stats["overload.envoy.overload_actions.stop_accepting_requests.active"] == 1
    assert stats["overload.envoy.resource_monitors.fixed_heap.pressure"] > 50


def test_heap_below_threshold_serves(fleet):
    proc = fleet.start(config(64 << 30, "envoy.overload_actions.stop_accepting_requests"))
    time.sleep(0.3)
    assert get(proc.listener_port("http")) == (200, b"fine")
    assert proc.stats()["overload.envoy.overload_actions.stop_accepting_requests.active"] == 0


def test_heap_above_threshold_refuses_connections(fleet):
    proc = fleet.start(config(1 << 20, "envoy.overload_actions.stop_accepting_connections"))
    time.sleep(0.3)
    port = proc.listener_port("http")
    s = harness.connect(port)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    how, _ = harness.wait_closed(s, 3)
    assert how in ("eof", "reset")
    assert proc.stats()[f"listener.127.0.0.1_{port}.downstream_cx_overload_reject"] >= 1


def test_threshold_out_of_range_is_rejected(tmp_path):
    path = harness.write_bootstrap(tmp_path, config(1 << 20, "envoy.overload_actions.stop_accepting_requests", 1.5))
    r = harness.run_strait(["--mode", "validate", "-c", str(path)])
    assert r.returncode == 1
    assert "overload_manager.actions[0].triggers[0]: a threshold is a pressure between 0 and 1" in r.stderr, r.stderr
