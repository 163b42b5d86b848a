"""Resilience through the real binary, against upstreams that misbehave on purpose: circuit breakers
that hold across workers, retry limits, outlier detection ejecting and returning a host, load-balancing
policies (weights, least request, ring hash, maglev), retry host predicates and the attempt count."""

from __future__ import annotations

import collections
import concurrent.futures
import re
import time

import pytest

import harness
from peers import env, h1

HOLD = 1.0  # seconds a slow origin holds each request


def _cluster(name: str, ports, **extra) -> dict:
    c = harness.static_cluster(name, ports)
    c.update(extra)
    return c


def _config(cluster: dict, **route_action) -> dict:
    vh = harness.virtual_host("all", ["*"], [harness.route_to(cluster["name"], **route_action)])
    return harness.bootstrap([harness.http_listener("http", "ingress_http", [vh])], [cluster])


def _weighted(name: str, ports_weights) -> dict:
    eps = [{"endpoint": {"address": harness.socket_address(p)}, "load_balancing_weight": w} for p, w in ports_weights]
    return {"name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": eps}]}}


def _parallel(port: int, n: int, path: str = "/", headers=None, gap: float = 0.0) -> list:
    """n requests at once (each on its own connection), or started `gap` seconds apart."""
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        futs = []
        for i in range(n):
            futs.append(pool.submit(h1.get, port, f"{path}?i={i}" if "?" not in path else f"{path}&i={i}", headers))
            time.sleep(gap)
        return [f.result() for f in futs]


def _origin_of(resp) -> str:
    return resp.header("x-origin") or "?"


# ---------------------------------------------------------------------------------------------------
# Circuit breakers


def test_max_requests_holds_across_workers_and_recovers(fleet):
    o = env.origin(fleet, "slow", delay=HOLD)
    cluster = _cluster("backend", [o.port], circuit_breakers={"thresholds": [{"max_requests": 2}]})
    proc = fleet.start(_config(cluster), concurrency=2)
    port = proc.listener_port("http")
    resps = _parallel(port, 6)
    statuses = collections.Counter(r.status for r in resps)
    assert statuses == {200: 2, 503: 4}, statuses
    for r in resps:
        if r.status == 503:
            assert r.header("x-envoy-overloaded") == "true", r
    s = proc.wait_stats(lambda s: s.get("cluster.backend.upstream_rq_pending_overflow", 0) >= 4)
    assert harness.stat(s, "cluster.backend.upstream_rq_pending_overflow") == 4
    # Recovered: the slots came back, the breaker is closed.
    assert collections.Counter(r.status for r in _parallel(port, 2)) == {200: 2}
    s = proc.stats()
    assert harness.stat(s, "cluster.backend.circuit_breakers.default.rq_open") == 0


def test_max_connections_and_pending_hold_across_workers(fleet):
    # One connection for the cluster across both workers, one request allowed to wait for it: of four
    # concurrent HTTP/1.1 requests, at most two find room (one on the connection, one pending, per the
    # shared limits; a worker whose pool has no connection may open one anyway, as Envoy does).
    o = env.origin(fleet, "slow", delay=HOLD)
    cluster = _cluster("backend", [o.port], circuit_breakers={"thresholds": [
        {"max_connections": 1, "max_pending_requests": 1, "max_requests": 100}]})
    proc = fleet.start(_config(cluster), concurrency=2)
    port = proc.listener_port("http")
    resps = _parallel(port, 4)
    statuses = collections.Counter(r.status for r in resps)
    assert statuses[503] >= 1 and statuses[200] >= 1, statuses
    assert statuses[200] <= 3, statuses
    s = proc.wait_stats(lambda s: s.get("cluster.backend.upstream_rq_pending_overflow", 0) >= 1)
    assert harness.stat(s, "cluster.backend.upstream_rq_pending_overflow") == statuses[503]
    assert o.connection_count() <= 2, "max_connections 1 let more connections through than Envoy's one-per-empty-pool"
    assert collections.Counter(r.status for r in _parallel(port, 1)) == {200: 1}


def test_max_retries_bounds_concurrent_retries(fleet):
    # Four requests fail at once; with a 1 s back-off and max_retries 1 only one retry may be waiting.
    o = env.origin(fleet, "failing", fail_all=503)
    cluster = _cluster("backend", [o.port], circuit_breakers={"thresholds": [{"max_retries": 1}]})
    policy = {"retry_on": "5xx", "num_retries": 3, "retry_back_off": {"base_interval": "1s", "max_interval": "1s"}}
    proc = fleet.start(_config(cluster, retry_policy=policy), concurrency=2)
    port = proc.listener_port("http")
    resps = _parallel(port, 4)
    assert all(r.status == 503 for r in resps), [r.status for r in resps]
    s = proc.wait_stats(lambda s: s.get("cluster.backend.upstream_rq_retry_overflow", 0) >= 3)
    assert harness.stat(s, "cluster.backend.upstream_rq_retry_overflow") >= 3
    # No storm: at most 4 first tries plus the retries of one request at a time.
    assert o.request_count() <= 4 + 3 + 1, o.request_count()


def test_retry_budget_replaces_max_retries(fleet):
    # A budget of 0% of active requests with a floor of one: like max_retries 1, whatever max_retries says.
    o = env.origin(fleet, "failing", fail_all=503)
    cluster = _cluster("backend", [o.port], circuit_breakers={"thresholds": [
        {"max_retries": 100, "retry_budget": {"budget_percent": {"value": 0}, "min_retry_concurrency": 1}}]})
    policy = {"retry_on": "5xx", "num_retries": 3, "retry_back_off": {"base_interval": "1s", "max_interval": "1s"}}
    proc = fleet.start(_config(cluster, retry_policy=policy), concurrency=2)
    port = proc.listener_port("http")
    resps = _parallel(port, 4)
    assert all(r.status == 503 for r in resps), [r.status for r in resps]
    s = proc.wait_stats(lambda s: s.get("cluster.backend.upstream_rq_retry_overflow", 0) >= 3)
    assert harness.stat(s, "cluster.backend.upstream_rq_retry_overflow") >= 3


def test_retry_gives_up_when_num_retries_is_spent_and_counts_it(fleet):
    o = env.origin(fleet, "failing", fail_all=503)
    policy = {"retry_on": "5xx", "num_retries": 2, "retry_back_off": {"base_interval": "0.01s"}}
    proc = fleet.start(_config(_cluster("backend", [o.port]), retry_policy=policy))
    port = proc.listener_port("http")
    assert h1.get(port, "/spent").status == 503
    assert o.request_count() == 3
    s = proc.wait_stats(lambda s: s.get("cluster.backend.upstream_rq_retry_limit_exceeded", 0) >= 1)
    assert harness.stat(s, "cluster.backend.upstream_rq_retry_limit_exceeded") == 1


# ---------------------------------------------------------------------------------------------------
# Retries: host predicate, headers, attempt count


def test_previous_hosts_predicate_sends_the_retry_elsewhere(fleet):
    bad = env.origin(fleet, "bad", fail_all=503)
    good = env.origin(fleet, "good")
    policy = {"retry_on": "5xx", "num_retries": 1, "retry_back_off": {"base_interval": "0.01s"},
              "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts"}],
              "host_selection_retry_max_attempts": 5}
    proc = fleet.start(_config(_cluster("backend", [bad.port, good.port]), retry_policy=policy))
    port = proc.listener_port("http")
    statuses = [h1.get(port, f"/p/{i}").status for i in range(20)]
    assert statuses == [200] * 20, statuses


def test_retry_headers_from_a_trusted_client_and_the_attempt_count(fleet):
    o = env.origin(fleet)
    vh = harness.virtual_host("all", ["*"], [harness.route_to("backend")], include_request_attempt_count=True,
                              include_attempt_count_in_response=True)
    # use_remote_address: the loopback client is internal, so its x-envoy-retry-on is trusted.
    config = harness.bootstrap([harness.http_listener("http", "ingress_http", [vh], use_remote_address=True)],
                               [_cluster("backend", [o.port])])
    proc = fleet.start(config)
    port = proc.listener_port("http")
    # No retry policy on the route: the loopback (internal) client asks for one itself.
    r = h1.get(port, "/_/fail?key=hdr&times=2&status=503",
               headers=[("x-envoy-retry-on", "5xx"), ("x-envoy-max-retries", "2")])
    assert r.status == 200, r
    assert r.header("x-envoy-attempt-count") == "3"
    attempts = [rec.header("x-envoy-attempt-count") for rec in o.find("/_/fail?key=hdr")]
    assert attempts == ["1", "2", "3"], attempts


# ---------------------------------------------------------------------------------------------------
# Outlier detection


def _health_flags(proc, cluster: str) -> dict[str, str]:
    text = proc.get("/clusters").body.decode()
    out = {}
    for line in text.splitlines():
        m = re.match(rf"{cluster}::([0-9.]+:\d+)::health_flags::(.*)$", line)
        if m:
            out[m[1]] = m[2]
    return out


def test_outlier_detection_ejects_a_failing_host_and_returns_it(fleet):
    good = [env.origin(fleet, f"good{i}") for i in range(2)]
    bad = env.origin(fleet, "bad", fail_all=503)
    cluster = _cluster("backend", [g.port for g in good] + [bad.port], outlier_detection={
        "consecutive_5xx": 3, "interval": "0.5s", "base_ejection_time": "2s", "max_ejection_percent": 50})
    proc = fleet.start(_config(cluster), concurrency=2)
    port = proc.listener_port("http")
    bad_addr = f"127.0.0.1:{bad.port}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _health_flags(proc, "backend").get(bad_addr) == "healthy":
        h1.get(port, "/od")
    assert _health_flags(proc, "backend")[bad_addr] == "/failed_outlier_check"
    s = proc.wait_stats(lambda s: s.get("cluster.backend.outlier_detection.ejections_enforced_total", 0) >= 1)
    assert harness.stat(s, "cluster.backend.outlier_detection.ejections_enforced_consecutive_5xx") >= 1
    # While ejected the bad host gets nothing.
    before = bad.request_count()
    statuses = [h1.get(port, f"/after/{i}").status for i in range(20)]
    assert statuses == [200] * 20 and bad.request_count() == before, (statuses, bad.request_count() - before)
    # It recovers, and returns once the ejection time is over (next interval after 2 s).
    bad.fail_all = None
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline and _health_flags(proc, "backend")[bad_addr] != "healthy":
        time.sleep(0.2)
    assert _health_flags(proc, "backend")[bad_addr] == "healthy"
    for i in range(12):
        h1.get(port, f"/back/{i}")
    assert bad.request_count() > before, "the returned host got no traffic"


def test_outlier_detection_respects_max_ejection_percent(fleet):
    bad = [env.origin(fleet, f"bad{i}", fail_all=503) for i in range(3)]
    cluster = _cluster("backend", [b.port for b in bad], outlier_detection={
        "consecutive_5xx": 2, "interval": "10s", "base_ejection_time": "30s", "max_ejection_percent": 34})
    proc = fleet.start(_config(cluster))
    port = proc.listener_port("http")
    for i in range(30):
        h1.get(port, f"/x/{i}")
    flags = _health_flags(proc, "backend")
    assert list(flags.values()).count("/failed_outlier_check") == 1, flags
    s = proc.wait_stats(lambda s: s.get("cluster.backend.outlier_detection.ejections_overflow", 0) >= 1)
    assert harness.stat(s, "cluster.backend.outlier_detection.ejections_overflow") >= 1


# ---------------------------------------------------------------------------------------------------
# Load balancing through the binary


def test_weighted_round_robin_follows_endpoint_weights(fleet):
    a, b = env.origin(fleet, "a"), env.origin(fleet, "b")
    proc = fleet.start(_config(_weighted("backend", [(a.port, 3), (b.port, 1)])), concurrency=1)
    port = proc.listener_port("http")
    with h1.Client(port) as c:
        names = collections.Counter(_origin_of(c.request("GET", f"/w/{i}")) for i in range(400))
    assert names["a"] == 300 and names["b"] == 100, names


def test_least_request_avoids_the_slow_host(fleet):
    fast, slow = env.origin(fleet, "fast"), env.origin(fleet, "slow", delay=0.5)
    proc = fleet.start(_config(_cluster("backend", [fast.port, slow.port], lb_policy="LEAST_REQUEST")), concurrency=1)
    port = proc.listener_port("http")
    # Keep requests in flight on both hosts: new choices go to the host with fewer outstanding. They start
    # 20 ms apart (24 within the slow host's 0.5 s): all at once, every choice could be made before the fast
    # host answered any (a loaded machine, the sanitizers), and least-request would rightly split them evenly.
    resps = _parallel(port, 24, gap=0.02)
    names = collections.Counter(_origin_of(r) for r in resps)
    assert names["fast"] >= 16, names


def test_peak_ewma_learns_each_hosts_latency_from_its_responses(fleet):
    # One request at a time, so both hosts always have nothing in flight: only the latency each host's
    # responses took (which the router feeds to the balancer) can tell them apart. A balancer that is
    # never fed costs both hosts 0 and splits about evenly.
    fast, slow = env.origin(fleet, "fast"), env.origin(fleet, "slow", delay=0.05)
    ewma = {"policies": [{"typed_extension_config": {
        "name": "strait.lb.peak_ewma",
        "typed_config": {"@type": "type.googleapis.com/strait.lb.v1.PeakEwma", "decay_time": "30s"}}}]}
    proc = fleet.start(_config(_cluster("backend", [fast.port, slow.port], load_balancing_policy=ewma)), concurrency=1)
    port = proc.listener_port("http")
    with h1.Client(port) as c:
        names = collections.Counter(_origin_of(c.request("GET", f"/e/{i}")) for i in range(60))
    # Each host is probed while unmeasured; after that the slow one (50 ms against well under 5) loses
    # every two-choice comparison until its average decays (30 s here, far longer than the test).
    assert names["fast"] >= 55 and names["slow"] >= 1, names


@pytest.mark.parametrize("policy", ["RING_HASH", "MAGLEV"])
def test_consistent_hash_keeps_a_key_on_one_host(fleet, policy):
    origins = [env.origin(fleet, f"h{i}") for i in range(4)]
    cluster = _cluster("backend", [o.port for o in origins], lb_policy=policy)
    proc = fleet.start(_config(cluster, hash_policy=[{"header": {"header_name": "x-user"}}]), concurrency=2)
    port = proc.listener_port("http")
    seen = {}
    for user in range(20):
        hosts = {_origin_of(h1.get(port, "/h", headers=[("x-user", f"u{user}")])) for _ in range(5)}
        assert len(hosts) == 1, (user, hosts)
        seen[user] = hosts.pop()
    assert len(set(seen.values())) >= 2, "every key went to one host: the hash is not used"


def test_cookie_hash_policy_sets_a_cookie_and_sticks(fleet):
    origins = [env.origin(fleet, f"c{i}") for i in range(3)]
    cluster = _cluster("backend", [o.port for o in origins], lb_policy="RING_HASH")
    proc = fleet.start(_config(cluster, hash_policy=[{"cookie": {"name": "sticky", "ttl": "60s", "path": "/"}}]))
    port = proc.listener_port("http")
    first = h1.get(port, "/c")
    cookie = first.header("set-cookie")
    assert cookie and cookie.startswith("sticky=") and "Max-Age=60" in cookie, first
    value = cookie.split(";", 1)[0]
    hosts = {_origin_of(h1.get(port, "/c", headers=[("cookie", value)])) for _ in range(10)}
    assert len(hosts) == 1, hosts
    again = h1.get(port, "/c", headers=[("cookie", value)])
    assert again.header("set-cookie") is None


def test_unsupported_lb_settings_are_rejected_with_the_field(fleet, tmp_path):
    o = env.origin(fleet)
    cluster = _cluster("backend", [o.port], lb_policy="MAGLEV", maglev_lb_config={"table_size": 1000})
    path = harness.write_bootstrap(tmp_path, _config(cluster))
    r = harness.run_strait(["--mode", "validate", "-c", str(path)])
    assert r.returncode != 0 and "maglev_lb_config.table_size" in r.stdout + r.stderr, r


# ---------------------------------------------------------------------------------------------------
# A host dies under load


def test_killing_one_of_three_hosts_under_h2load_fails_no_request(fleet):
    origins = [env.origin(fleet, f"o{i}") for i in range(3)]
    # max_retries (default 3, as Envoy's) bounds the retries in progress at once, back-offs included: the
    # requests cut together when the host dies, plus the connects it refuses before its ejection, can be
    # more than 3 when strait runs slower (a loaded machine, the sanitizers), and the overflow is a 502
    # by design. 16 = h2load's connections x streams: every request in flight may retry at once.
    cluster = _cluster("backend", [o.port for o in origins], outlier_detection={
        "consecutive_5xx": 3, "interval": "0.5s", "base_ejection_time": "30s", "max_ejection_percent": 50},
        circuit_breakers={"thresholds": [{"max_retries": 16}]})
    policy = {"retry_on": "connect-failure,reset,5xx", "num_retries": 3,
              "retry_back_off": {"base_interval": "0.005s", "max_interval": "0.02s"},
              "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts"}],
              "host_selection_retry_max_attempts": 3}
    proc = fleet.start(_config(cluster, retry_policy=policy), concurrency=2)
    port = proc.listener_port("http")
    import threading
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", harness.run_tool(
        ["h2load", "-n", "3000", "-c", "4", "-m", "4", f"http://127.0.0.1:{port}/load"], timeout=60)), daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while sum(o.request_count() for o in origins) < 600 and time.monotonic() < deadline:
        time.sleep(0.02)
    origins[0].close()  # mid-run: its connections are cut and its port refuses
    t.join(60)
    text = out["r"].stdout.decode()
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", text)
    assert m, text
    total, _, done, ok, failed, errored = map(int, m.groups())
    assert (done, ok, failed, errored) == (3000, 3000, 0, 0), text
    assert "3000 2xx" in text, text
    dead = f"127.0.0.1:{origins[0].port}"
    assert _health_flags(proc, "backend")[dead] == "/failed_outlier_check"
    s = proc.wait_stats(lambda s: s.get("cluster.backend.outlier_detection.ejections_enforced_total", 0) >= 1)
    assert harness.stat(s, "cluster.backend.upstream_rq_retry") >= 1
    assert harness.stat(s, "cluster.backend.upstream_rq_retry_overflow") == 0


# ---------------------------------------------------------------------------------------------------
# Active health checks


def test_http_health_check_takes_a_failing_host_out_and_back(fleet):
    good = [env.origin(fleet, f"g{i}") for i in range(2)]
    bad = env.origin(fleet, "sick", fail_all=503)
    cluster = _cluster("backend", [g.port for g in good] + [bad.port], health_checks=[{
        "timeout": "0.5s", "interval": "0.2s", "unhealthy_threshold": 2, "healthy_threshold": 2,
        "http_health_check": {"path": "/healthz", "host": "hc.example"}}])
    proc = fleet.start(_config(cluster), concurrency=2)
    port = proc.listener_port("http")
    sick = f"127.0.0.1:{bad.port}"
    goods = [f"127.0.0.1:{g.port}" for g in good]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        flags = _health_flags(proc, "backend")
        if flags.get(sick) == "/failed_active_hc" and all(flags.get(g) == "healthy" for g in goods):
            break
        time.sleep(0.1)
    flags = _health_flags(proc, "backend")
    assert flags[sick] == "/failed_active_hc", flags
    assert all(flags[f"127.0.0.1:{g.port}"] == "healthy" for g in good), flags
    checks = bad.find("/healthz")
    assert checks and checks[0].header("host") == "hc.example"
    statuses = [h1.get(port, f"/hc/{i}").status for i in range(20)]
    assert statuses == [200] * 20, statuses
    assert not bad.find("/hc/"), "traffic reached the host its health check failed"
    bad.fail_all = None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _health_flags(proc, "backend")[sick] != "healthy":
        time.sleep(0.1)
    assert _health_flags(proc, "backend")[sick] == "healthy"
    s = proc.wait_stats(lambda s: s.get("cluster.backend.health_check.failure", 0) >= 2)
    assert harness.stat(s, "cluster.backend.health_check.success") >= 2


def test_tcp_health_check_marks_a_closed_port_unhealthy(fleet):
    o = env.origin(fleet)
    closed = harness.closed_port()
    cluster = _cluster("backend", [o.port, closed], health_checks=[{
        "timeout": "0.5s", "interval": "0.2s", "unhealthy_threshold": 1, "healthy_threshold": 1,
        "tcp_health_check": {}}])
    proc = fleet.start(_config(cluster))
    port = proc.listener_port("http")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _health_flags(proc, "backend").get(f"127.0.0.1:{closed}") != "/failed_active_hc":
        time.sleep(0.1)
    assert _health_flags(proc, "backend")[f"127.0.0.1:{closed}"] == "/failed_active_hc"
    assert [h1.get(port, f"/t/{i}").status for i in range(10)] == [200] * 10


# ---------------------------------------------------------------------------------------------------
# Timeouts that say which one fired


def test_per_try_idle_timeout_retries_a_stalled_attempt(fleet):
    # The first attempt's upstream sends headers and then stalls; the retry gets a fast answer.
    o = env.origin(fleet)
    policy = {"retry_on": "5xx,reset", "num_retries": 1, "per_try_idle_timeout": "0.3s",
              "retry_back_off": {"base_interval": "0.01s"}}
    proc = fleet.start(_config(_cluster("backend", [o.port]), retry_policy=policy, timeout="5s"))
    port = proc.listener_port("http")
    start = time.monotonic()
    r = h1.get(port, "/_/fail?key=idle&times=1&status=200")  # warm: proves the route works
    assert r.status == 200
    r = h1.get(port, "/_/never")
    took = time.monotonic() - start
    assert r.status == 504, r
    assert took < 3, f"per-try idle timeouts (0.3 s) took {took:.1f} s"
    s = proc.wait_stats(lambda s: s.get("cluster.backend.upstream_rq_per_try_idle_timeout", 0) >= 2)
    assert harness.stat(s, "cluster.backend.upstream_rq_per_try_idle_timeout") == 2  # the try and its retry
    assert len(o.find("/_/never")) == 2


def test_max_stream_duration_and_grpc_timeout_header(fleet):
    o = env.origin(fleet)
    proc = fleet.start(_config(_cluster("backend", [o.port]), timeout="10s",
                               max_stream_duration={"max_stream_duration": "0.4s",
                                                    "grpc_timeout_header_max": "0s"}))
    port = proc.listener_port("http")
    start = time.monotonic()
    r = h1.get(port, "/_/never")
    assert r.status == 408 and time.monotonic() - start < 3, r
    # A gRPC request's own deadline (200 ms) wins over the route's (no cap) and ends as DEADLINE_EXCEEDED.
    start = time.monotonic()
    r = h1.get(port, "/_/never", headers=[("content-type", "application/grpc"), ("grpc-timeout", "200m")])
    took = time.monotonic() - start
    assert r.header("grpc-status") == "4", r
    assert took < 0.39, f"grpc-timeout 200m answered after {took:.2f} s"
    s = proc.wait_stats(lambda s: s.get("cluster.backend.upstream_rq_max_duration_reached", 0) >= 2)
    assert harness.stat(s, "cluster.backend.upstream_rq_max_duration_reached") == 2


def test_always_eject_one_host_lets_a_small_cluster_eject(fleet):
    # Envoy's rule counts the host about to go: 10% of 3 hosts ejects none, unless always_eject_one_host.
    good = [env.origin(fleet, f"ok{i}") for i in range(2)]
    bad = env.origin(fleet, "bad", fail_all=503)
    ports = [g.port for g in good] + [bad.port]
    for always, expect in ((False, "healthy"), (True, "/failed_outlier_check")):
        od = {"consecutive_5xx": 2, "interval": "10s", "base_ejection_time": "30s", "max_ejection_percent": 10}
        if always:
            od["always_eject_one_host"] = True
        proc = fleet.start(_config(_cluster("backend", ports, outlier_detection=od)))
        port = proc.listener_port("http")
        for i in range(15):
            h1.get(port, f"/small/{i}")
        assert _health_flags(proc, "backend")[f"127.0.0.1:{bad.port}"] == expect, always


# ---------------------------------------------------------------------------------------------------
# retriable-headers, retriable_request_headers, route priority


def test_retriable_headers_retry_a_matching_response_and_count_it(fleet):
    # Two hosts; every response names its origin (x-origin). A response from "stale" matches the
    # policy's retriable_headers and is retried on the other host (previous_hosts), so the client only
    # ever sees "fresh", and each request stale answered is one counted retry.
    stale = env.origin(fleet, "stale")
    fresh = env.origin(fleet, "fresh")
    policy = {"retry_on": "retriable-headers", "num_retries": 1, "retry_back_off": {"base_interval": "0.01s"},
              "retriable_headers": [{"name": "x-origin", "string_match": {"exact": "stale"}}],
              "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts"}],
              "host_selection_retry_max_attempts": 5}
    proc = fleet.start(_config(_cluster("backend", [stale.port, fresh.port]), retry_policy=policy))
    port = proc.listener_port("http")
    resps = [h1.get(port, f"/rh/{i}") for i in range(20)]
    assert [r.status for r in resps] == [200] * 20
    assert {_origin_of(r) for r in resps} == {"fresh"}
    retried = stale.request_count()
    assert retried >= 1, "round robin never reached the stale host"
    assert fresh.request_count() == 20
    s = proc.wait_stats(lambda s: s.get("cluster.backend.upstream_rq_retry", 0) >= retried)
    assert harness.stat(s, "cluster.backend.upstream_rq_retry") == retried
    assert harness.stat(s, "cluster.backend.upstream_rq_retry_success") == retried


def test_retriable_request_headers_restrict_which_requests_are_retried(fleet):
    o = env.origin(fleet)
    policy = {"retry_on": "5xx", "num_retries": 2, "retry_back_off": {"base_interval": "0.01s"},
              "retriable_request_headers": [{"name": "x-idempotent", "string_match": {"exact": "true"}}]}
    proc = fleet.start(_config(_cluster("backend", [o.port]), retry_policy=policy))
    port = proc.listener_port("http")
    # Not marked: the first 503 is the answer.
    assert h1.get(port, "/_/fail?key=plain&times=1&status=503").status == 503
    assert len(o.find("/_/fail?key=plain")) == 1
    # Marked: retried past the failure.
    r = h1.get(port, "/_/fail?key=marked&times=1&status=503", headers=[("x-idempotent", "true")])
    assert r.status == 200, r
    assert len(o.find("/_/fail?key=marked")) == 2
    s = proc.wait_stats(lambda s: s.get("cluster.backend.upstream_rq_retry", 0) >= 1)
    assert harness.stat(s, "cluster.backend.upstream_rq_retry") == 1
    assert harness.stat(s, "cluster.backend.upstream_rq_retry_limit_exceeded") == 0


def test_high_priority_route_uses_the_high_thresholds(fleet):
    # DEFAULT allows one request at a time, HIGH three. Three requests on each route at once: the HIGH
    # route takes all three while the DEFAULT one is refused past its first.
    o = env.origin(fleet, "slow", delay=HOLD)
    cluster = _cluster("backend", [o.port], circuit_breakers={"thresholds": [
        {"max_requests": 1}, {"priority": "HIGH", "max_requests": 3, "max_connections": 10}]})
    vh = harness.virtual_host("all", ["*"], [harness.route_to("backend", prefix="/high", priority="HIGH"),
                                             harness.route_to("backend")])
    proc = fleet.start(harness.bootstrap([harness.http_listener("http", "ingress_http", [vh])], [cluster]),
                       concurrency=2)
    port = proc.listener_port("http")
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        high = [pool.submit(h1.get, port, f"/high/{i}") for i in range(3)]
        default = [pool.submit(h1.get, port, f"/default/{i}") for i in range(3)]
        high_statuses = collections.Counter(f.result().status for f in high)
        default_statuses = collections.Counter(f.result().status for f in default)
    assert high_statuses == {200: 3}, high_statuses
    assert default_statuses == {200: 1, 503: 2}, default_statuses
    s = proc.wait_stats(lambda s: s.get("cluster.backend.upstream_rq_pending_overflow", 0) >= 2)
    assert harness.stat(s, "cluster.backend.upstream_rq_pending_overflow") == 2
    # Both priorities' gauges exist (closed again now).
    for prio in ("default", "high"):
        for gauge in ("rq_open", "rq_pending_open", "cx_open", "rq_retry_open"):
            assert f"cluster.backend.circuit_breakers.{prio}.{gauge}" in s, (prio, gauge)
            assert s[f"cluster.backend.circuit_breakers.{prio}.{gauge}"] == 0
    clusters = proc.get("/clusters").body.decode()
    assert "backend::high_priority::max_requests::3\n" in clusters, clusters
    assert "backend::high_priority::max_connections::10\n" in clusters
    assert "backend::default_priority::max_requests::1\n" in clusters


def test_track_remaining_publishes_remaining_gauges_and_only_then(fleet):
    # Envoy publishes circuit_breakers.<priority>.remaining_* only for thresholds with track_remaining.
    o = env.origin(fleet, "slow", delay=HOLD)
    tracked = _cluster("tracked", [o.port], circuit_breakers={"thresholds": [
        {"max_requests": 5, "max_connections": 7, "track_remaining": True}]})
    plain = _cluster("plain", [o.port], circuit_breakers={"thresholds": [{"max_requests": 5}]})
    vh = harness.virtual_host("all", ["*"], [harness.route_to("tracked")])
    proc = fleet.start(harness.bootstrap([harness.http_listener("http", "ingress_http", [vh])], [tracked, plain]),
                       concurrency=2)
    port = proc.listener_port("http")
    s = proc.stats()
    assert s["cluster.tracked.circuit_breakers.default.remaining_rq"] == 5
    assert s["cluster.tracked.circuit_breakers.default.remaining_cx"] == 7
    assert s["cluster.tracked.circuit_breakers.default.remaining_retries"] == 3  # Envoy's default max_retries
    assert not [k for k in s if ".remaining_" in k and not k.startswith("cluster.tracked.circuit_breakers.default.")]
    # Two requests in flight: two fewer remain while they are held, all again after.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futs = [pool.submit(h1.get, port, f"/r/{i}") for i in range(2)]
        held = proc.wait_stats(lambda s: s.get("cluster.tracked.upstream_rq_active", 0) == 2)
        assert held["cluster.tracked.circuit_breakers.default.remaining_rq"] == 3
        assert [f.result().status for f in futs] == [200, 200]
    s = proc.wait_stats(lambda s: s.get("cluster.tracked.upstream_rq_active", 1) == 0)
    assert s["cluster.tracked.circuit_breakers.default.remaining_rq"] == 5


def _zoned_cluster(name: str, zones: dict, **extra) -> dict:
    """A STATIC cluster with one LocalityLbEndpoints per zone: {"a": [port, ...], ...}."""
    c = {"name": name, "type": "STATIC", "connect_timeout": "1s",
         "load_assignment": {"cluster_name": name, "endpoints": [
             {"locality": {"zone": z}, "lb_endpoints": [{"endpoint": {"address": harness.socket_address(p)}}
                                                         for p in ports]}
             for z, ports in zones.items()]}}
    c.update(extra)
    return c


def test_zone_aware_routing_with_a_local_cluster(fleet):
    # This proxy runs in zone a; its local cluster has 3 hosts in a and 1 in b (75% in a). Never
    # contacted: only their spread matters, so closed ports do.
    local = _zoned_cluster("local", {"a": [harness.closed_port() for _ in range(3)], "b": [harness.closed_port()]})
    a1, a2, a3, b1 = (env.origin(fleet, n) for n in ("a1", "a2", "a3", "b1"))
    small_cfg = {"common_lb_config": {"zone_aware_lb_config": {"min_cluster_size": 2}}}
    clusters = [
        local,
        # 75% of its hosts in a, like the local cluster: every request stays in a.
        _zoned_cluster("direct", {"a": [a1.port, a2.port, a3.port], "b": [b1.port]}, **small_cfg),
        # 50% in a: a keeps 50/75 = 2/3 of the requests, the rest crosses to b.
        _zoned_cluster("sampled", {"a": [a1.port], "b": [b1.port]}, **small_cfg),
        # Two hosts, under the default min_cluster_size of 6: no zone routing, round robin over both.
        _zoned_cluster("small", {"a": [a1.port], "b": [b1.port]}),
    ]
    vh = harness.virtual_host("all", ["*"], [harness.route_to("direct", prefix="/direct"),
                                             harness.route_to("sampled", prefix="/sampled"),
                                             harness.route_to("small", prefix="/small")])
    config = harness.bootstrap([harness.http_listener("http", "ingress_http", [vh])], clusters)
    config["node"]["locality"] = {"zone": "a"}
    config["cluster_manager"] = {"local_cluster_name": "local"}
    proc = fleet.start(config, concurrency=2)
    port = proc.listener_port("http")

    direct = collections.Counter(_origin_of(h1.get(port, f"/direct/{i}")) for i in range(60))
    assert direct["b1"] == 0 and sum(direct.values()) == 60, direct
    n = 600
    sampled = collections.Counter(_origin_of(h1.get(port, f"/sampled/{i}")) for i in range(n))
    # Expected a1 share 2/3 (without zone routing: 1/2); binomial sd at n = 600 is 0.019, so +-0.08 is
    # four of them.
    assert abs(sampled["a1"] / n - 2 / 3) < 0.08, sampled
    assert sampled["a1"] + sampled["b1"] == n, sampled
    small = collections.Counter(_origin_of(h1.get(port, f"/small/{i}")) for i in range(40))
    assert small["a1"] >= 10 and small["b1"] >= 10, small  # both hosts take traffic

    s = proc.wait_stats(lambda s: s.get("cluster.direct.lb_zone_routing_all_directly", 0) >= 60)
    assert harness.stat(s, "cluster.direct.lb_zone_routing_all_directly") == 60
    assert harness.stat(s, "cluster.sampled.lb_zone_routing_sampled") == sampled["a1"]
    assert harness.stat(s, "cluster.sampled.lb_zone_routing_cross_zone") == sampled["b1"]
    assert harness.stat(s, "cluster.sampled.lb_zone_routing_all_directly") == 0
    assert harness.stat(s, "cluster.small.lb_zone_cluster_too_small") >= 1
    assert harness.stat(s, "cluster.small.lb_zone_routing_all_directly") == 0
    assert harness.stat(s, "cluster.small.lb_zone_routing_sampled") == 0


def test_local_cluster_name_must_name_a_static_cluster(fleet, tmp_path):
    config = harness.simple_http_config(harness.closed_port())
    config["cluster_manager"] = {"local_cluster_name": "nowhere"}
    path = harness.write_bootstrap(tmp_path, config)
    out = harness.run_strait(["--mode", "validate", "-c", str(path)])
    assert out.returncode == 1
    assert "cluster_manager.local_cluster_name" in (out.stdout + out.stderr), out
