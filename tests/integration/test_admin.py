"""The admin endpoint (Envoy's paths) of a running strait."""

from __future__ import annotations

import re
import subprocess
import time
from types import SimpleNamespace

import pytest

import harness
from harness import bootstrap, static_cluster, tcp_proxy_listener

NODE_ID = "admin-test-node"
NODE_CLUSTER = "admin-test-cluster"
PROMTOOL = "/usr/bin/promtool"


def _start_env(fleet) -> SimpleNamespace:
    """A strait with one tcp_proxy listener to an echo upstream (started inside each test, so that a
    missing binary is a test failure rather than a fixture error)."""
    echo = fleet.echo()
    # A fixed listener port, so that listener.127.0.0.1_<port> does not depend on whether stats are
    # named after the configured or the bound address (they differ only for port 0).
    config = bootstrap([tcp_proxy_listener("tcp_main", "backend", "main_tcp", port=harness.free_port())],
                       [static_cluster("backend", [echo.port])],
                       node_id=NODE_ID, node_cluster=NODE_CLUSTER)
    proc = fleet.start(config)
    return SimpleNamespace(proc=proc, echo=echo, port=proc.listener_port("tcp_main"), fleet=fleet)


def _echo_once(port: int) -> None:
    with harness.connect(port) as s:
        s.sendall(b"hello")
        assert harness.recv_exact(s, 5) == b"hello"


def _strings_in(obj) -> set[str]:
    out: set[str] = set()
    stack = [obj]
    for _ in range(1_000_000):
        if not stack:
            break
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            out.add(item)
    return out


def test_ready_is_live(fleet):
    env = _start_env(fleet)
    resp = env.proc.get("/ready")
    assert resp.status == 200
    assert resp.text.strip() == "LIVE"


def test_server_info(fleet):
    env = _start_env(fleet)
    resp = env.proc.get("/server_info")
    assert resp.status == 200, resp
    info = resp.json()
    assert info.get("state") == "LIVE", info
    assert info.get("node", {}).get("id") == NODE_ID, info
    assert info.get("node", {}).get("cluster") == NODE_CLUSTER, info
    assert "version" in info, info
    assert any(k.startswith("uptime") for k in info), info
    assert "command_line_options" in info, info


@pytest.mark.unsanitized("/memory reads mallinfo2 (zero under ASan's allocator) and compares with VmRSS")
def test_memory(fleet):
    env = _start_env(fleet)
    resp = env.proc.get("/memory")
    assert resp.status == 200, resp
    mem = {k: int(v) for k, v in resp.json().items()}
    assert {"allocated", "heap_size", "pageheap_free", "total_physical_bytes"} <= set(mem), mem
    assert 0 < mem["allocated"] <= mem["heap_size"], mem
    # The resident size is the process's own, as /proc reports it (within what changed in between).
    rss = harness.proc_status_kib(env.proc.pid, "VmRSS") * 1024
    assert abs(mem["total_physical_bytes"] - rss) < 0.25 * rss, (mem, rss)


def test_stats_lists_contract_names(fleet):
    env = _start_env(fleet)
    _echo_once(env.port)
    resp = env.proc.get("/stats")
    assert resp.status == 200, resp
    lines = [l for l in resp.text.splitlines() if l.strip()]
    names = [l.partition(":")[0] for l in lines]
    assert names == sorted(names), "/stats lines are not sorted"
    stats = harness.parse_stats(resp.text)
    assert stats.get("server.live") == 1
    assert stats.get("server.concurrency") == 2
    for name in (f"listener.127.0.0.1_{env.port}.downstream_cx_total",
                 "cluster.backend.upstream_cx_total",
                 "cluster.backend.upstream_cx_connect_fail",
                 "cluster.backend.membership_total",
                 "tcp.main_tcp.downstream_cx_total",
                 "tcp.main_tcp.idle_timeout",
                 "server.uptime"):
        assert name in stats, f"{name} missing from /stats"


def test_stats_filter(fleet):
    env = _start_env(fleet)
    stats = env.proc.stats(filter_re="cluster")
    assert stats, "no stats match 'cluster'"
    assert "cluster.backend.upstream_cx_total" in stats
    others = [name for name in stats if not re.search("cluster", name)]
    assert not others, f"/stats?filter=cluster returned {others}"
    assert "server.live" not in stats


def test_prometheus_format(fleet):
    env = _start_env(fleet)
    _echo_once(env.port)
    # wait until the connection is counted
    env.proc.wait_stats(lambda st: st.get("cluster.backend.upstream_cx_total", 0) >= 1)
    resp = env.proc.get("/stats/prometheus")
    assert resp.status == 200, resp
    text = resp.text
    m = re.search(r'^envoy_cluster_upstream_cx_total\{envoy_cluster_name="backend"\} (\d+)\s*$', text, re.M)
    assert m, "no envoy_cluster_upstream_cx_total{envoy_cluster_name=\"backend\"} sample"
    assert int(m.group(1)) == 1
    assert re.search(r"^envoy_server_live(\{\})? 1\s*$", text, re.M), "no envoy_server_live 1 sample"

    check = subprocess.run([PROMTOOL, "check", "metrics"], input=resp.body, capture_output=True, timeout=30)
    report = (check.stdout + check.stderr).decode(errors="replace")
    # promtool exits 1 on a format error and 3 on lint problems. Envoy's own names break three lint
    # rules by design (counters without a _total suffix such as upstream_cx_connect_fail, gauges with
    # one such as membership_total, and no HELP lines); those are accepted, everything else must be clean.
    tolerated = ('counter metrics should have "_total" suffix',
                 'non-counter metrics should not have "_total" suffix',
                 "no help text")
    problems = [l for l in report.splitlines() if l.strip() and not any(t in l for t in tolerated)]
    assert check.returncode in (0, 3), f"promtool check metrics exit {check.returncode}:\n{report}"
    assert not problems, "promtool check metrics:\n" + "\n".join(problems)


def test_config_dump(fleet):
    env = _start_env(fleet)
    resp = env.proc.get("/config_dump")
    assert resp.status == 200, resp
    strings = _strings_in(resp.json())
    assert "tcp_main" in strings, "static listener missing from /config_dump"
    assert "backend" in strings, "static cluster missing from /config_dump"
    assert NODE_ID in strings, "bootstrap node missing from /config_dump"


def test_clusters(fleet):
    env = _start_env(fleet)
    _echo_once(env.port)
    _echo_once(env.port)
    pattern = re.compile(rf"^backend::127\.0\.0\.1:{env.echo.port}::cx_total::(\d+)\s*$", re.M)
    deadline = time.monotonic() + 5
    resp = env.proc.get("/clusters")
    while time.monotonic() < deadline:
        m = pattern.search(resp.text)
        if m and int(m.group(1)) >= 2:
            break
        time.sleep(0.05)
        resp = env.proc.get("/clusters")
    assert resp.status == 200, resp
    m = pattern.search(resp.text)
    assert m, f"no backend::127.0.0.1:{env.echo.port}::cx_total::N line in:\n{resp.text}"
    assert int(m.group(1)) == 2
    as_json = env.proc.get("/clusters?format=json")
    assert as_json.status == 200, as_json
    assert "backend" in _strings_in(as_json.json())


def test_listeners(fleet):
    env = _start_env(fleet)
    resp = env.proc.get("/listeners")
    assert resp.status == 200, resp
    assert f"tcp_main::127.0.0.1:{env.port}" in resp.text.splitlines()
    statuses = env.proc.listener_statuses()
    assert [s["name"] for s in statuses] == ["tcp_main"]
    addr = statuses[0]["local_address"]["socket_address"]
    assert addr["address"] == "127.0.0.1" and int(addr["port_value"]) == env.port != 0


def test_logging_level(fleet):
    env = _start_env(fleet)
    before = env.proc.get("/logging")
    assert before.status == 200, before
    changed = env.proc.post("/logging?level=warning")
    assert changed.status == 200, changed
    after = env.proc.get("/logging")
    assert after.status == 200, after
    assert "warning" in after.text
    assert after.text != before.text, "GET /logging did not change after POST /logging?level=warning"
    bad = env.proc.post("/logging?level=loudest")
    assert bad.status == 400, bad
    assert env.proc.get("/logging").text == after.text, "a rejected level changed the logging state"
    back = env.proc.post("/logging?level=debug")
    assert back.status == 200, back
    assert env.proc.get("/logging").text == before.text


def test_unknown_path_is_404_with_index(fleet):
    env = _start_env(fleet)
    resp = env.proc.get("/no/such/admin/path")
    assert resp.status == 404, resp
    assert "/stats" in resp.text
    assert "/ready" in resp.text


def test_quitquitquit_exits_zero(fleet):
    echo = fleet.echo()
    proc = fleet.start(bootstrap([tcp_proxy_listener("tcp_main", "backend")], [static_cluster("backend", [echo.port])]),
                       drain_time_s=2)
    start = time.monotonic()
    proc.expected_exit = True
    try:
        resp = proc.post("/quitquitquit")
    except OSError as err:  # the process may close the admin connection as it exits
        resp = err
    if not isinstance(resp, OSError):
        assert resp.status == 200, resp
    code = proc.wait_exit(timeout=2 + 3)
    took = time.monotonic() - start
    assert code is not None, "strait still running 5 s after POST /quitquitquit with --drain-time-s 2"
    assert code == 0, f"exit code {code}"
    assert took < 2 + 3
