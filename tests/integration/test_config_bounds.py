"""Values out of bounds are rejected when the config loads, naming the field: negative durations
(which used to wrap into "never", a uint64 of a negative number of milliseconds) and HTTP/2 window
sizes outside RFC 9113's range."""

from __future__ import annotations

import pytest

import harness
from harness import bootstrap, http_listener, route_to, static_cluster, virtual_host


def validate(tmp_path, config) -> tuple[int, str]:
    path = harness.write_bootstrap(tmp_path, config)
    r = harness.run_strait(["--mode", "validate", "-c", str(path)])
    return r.returncode, r.stderr


def test_negative_cluster_connect_timeout(tmp_path):
    cluster = static_cluster("c", [9], connect_timeout="-1s")
    code, err = validate(tmp_path, bootstrap([], [cluster]))
    assert code == 1
    assert "static_resources.clusters[0].connect_timeout: must not be negative" in err, err


@pytest.mark.parametrize("field,where", [
    ("stream_idle_timeout", "typed_config.stream_idle_timeout"),
    ("request_headers_timeout", "typed_config.request_headers_timeout"),
])
def test_negative_hcm_timeouts_inside_typed_config(tmp_path, field, where):
    listener = http_listener("l", "l", [virtual_host("a", ["*"], [route_to("c")])], **{field: "-0.5s"})
    code, err = validate(tmp_path, bootstrap([listener], [static_cluster("c", [9])]))
    assert code == 1
    assert f"static_resources.listeners[0].filter_chains[0].filters[0].{where}: must not be negative" in err, err


def test_negative_route_timeout(tmp_path):
    listener = http_listener("l", "l", [virtual_host("a", ["*"], [route_to("c", timeout="-2s")])])
    code, err = validate(tmp_path, bootstrap([listener], [static_cluster("c", [9])]))
    assert code == 1
    assert "timeout: must not be negative" in err, err


def test_zero_and_positive_durations_are_fine(tmp_path):
    listener = http_listener("l", "l", [virtual_host("a", ["*"], [route_to("c", timeout="0s")])],
                             stream_idle_timeout="0s")
    code, err = validate(tmp_path, bootstrap([listener], [static_cluster("c", [9], connect_timeout="0.25s")]))
    assert code == 0, err


@pytest.mark.parametrize("field,value", [("initial_stream_window_size", 1024), ("initial_stream_window_size", 2**31),
                                         ("initial_connection_window_size", 100)])
def test_http2_windows_out_of_range_are_rejected_at_load(tmp_path, field, value):
    listener = http_listener("l", "l", [virtual_host("a", ["*"], [route_to("c")])],
                             http2_protocol_options={field: value})
    code, err = validate(tmp_path, bootstrap([listener], [static_cluster("c", [9])]))
    assert code == 1
    assert f"typed_config.http2_protocol_options.{field}: must be 65535..2147483647" in err, err
