"""On-demand cluster discovery (issue 13: memory that follows the pod's own traffic). The strait binary
runs on an ADS bootstrap without cds_config, as in Envoy: no CDS wildcard subscription, so it holds no
cluster of the control plane until a request needs one. The HTTP listener (LDS, routes over RDS) has
Envoy's envoy.filters.http.on_demand filter with odcds {source: {ads: {}}} before the router. The test
control plane (tests/xds_server) holds many EDS clusters; origins are peers/origin.py servers.

Covered, state of the world and delta:
  - ready without any CDS response; no CDS request before traffic;
  - the first request to a service waits for its cluster (and endpoints) and is answered by the right
    origin, a POST body intact; the CDS subscription then names exactly the clusters called, and the
    process holds those and no other of the control plane's;
  - a cluster the control plane does not have: 503 (cluster_not_found) well before the filter's
    timeout, because the control plane's answer says so; later requests do not wait; once the control
    plane gets the cluster it is pushed (the name stays subscribed) and requests succeed;
  - a route whose typed_per_filter_config turns discovery off gets 503 at once and asks for nothing.
Skips when node/npm are missing. Traffic stays on 127.0.0.1; loops are bounded.
"""

from __future__ import annotations

import json
import time

import pytest

import harness
from peers.origin import Origin
from test_xds_e2e import CDS, EDS, LDS, MODES, RDS, ads_source, cla, eds_cluster, env, mode  # noqa: F401

ON_DEMAND = "type.googleapis.com/envoy.extensions.filters.http.on_demand.v3.OnDemand"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.on_demand.v3.PerRouteConfig"
FILTER = "envoy.filters.http.on_demand"
PREFIX = "odcds"
SERVICES = 40       # clusters on the control plane
TIMEOUT_S = 10      # the filter's odcds.timeout: the "does not exist" answers must come well before it


def on_demand_filter() -> dict:
    return {"name": FILTER, "typed_config": {"@type": ON_DEMAND,
                                             "odcds": {"source": ads_source(), "timeout": f"{TIMEOUT_S}s"}}}


def resources(port: int, origins: list[Origin]) -> list[dict]:
    out = []
    routes = []
    for i in range(SERVICES):
        name = f"svc-{i}"
        out += [eds_cluster(name), cla(name, [origins[i % 2].port])]
        routes.append(harness.route_to(name, f"/svc/{i}/"))
    routes.append(harness.route_to("ghost", "/ghost"))
    off = harness.route_to("svc-0", "/off")
    off["typed_per_filter_config"] = {FILTER: {"@type": PER_ROUTE}}
    routes.append(off)
    out.append({"@type": RDS, "name": "routes", "virtual_hosts": [harness.virtual_host("all", ["*"], routes)]})
    hcm = {"@type": harness.HCM_TYPE, "stat_prefix": PREFIX, "codec_type": "AUTO",
           "rds": {"config_source": ads_source(), "route_config_name": "routes"},
           "http_filters": [on_demand_filter(), harness.router_filter()]}
    out.append({"@type": LDS, "name": "main", "address": harness.socket_address(port),
                "filter_chains": [{"filters": [harness.hcm_filter(hcm)]}]})
    return out


def start(env):
    """Strait on the ADS bootstrap without cds_config; waits until ready."""
    b = env.bootstrap()
    del b["dynamic_resources"]["cds_config"]
    env.proc = env.fleet.start(b, wait_ready=False, drain_time_s=1)
    env.proc.wait_admin()
    env.proc.wait_ready(15)
    return env.proc


def cds_names(env) -> set[str]:
    """What the newest CDS request subscribes to, cumulatively (delta: subscribe minus unsubscribe)."""
    reqs = [r for r in env.xds.requests() if r["type_url"] == CDS]
    if not env.delta:
        return set(reqs[-1]["resource_names"]) if reqs else set()
    names: set[str] = set()
    for r in reqs:
        names |= set(r.get("resource_names_subscribe", []))
        names -= set(r.get("resource_names_unsubscribe", []))
    return names


def held_services(proc) -> set[str]:
    """The control plane's clusters the process holds (/clusters?format=json)."""
    body = json.loads(proc.get("/clusters?format=json").body)
    return {c["name"] for c in body.get("cluster_statuses", []) if c["name"].startswith(("svc-", "ghost"))}


def curl(port: int, path: str, *args: str) -> tuple[int, dict, float]:
    """status, JSON body (or {}), seconds taken."""
    t0 = time.monotonic()
    r = harness.curl(["-sS", "-o", "-", "-w", "\n%{http_code}", *args, f"http://{harness.LOOPBACK}:{port}{path}"],
                     timeout=TIMEOUT_S + 10)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    body, _, code = r.stdout.decode().rpartition("\n")
    try:
        data = json.loads(body) if body.startswith("{") else {}
    except ValueError:
        data = {}
    return int(code), data, took


def odstat(proc, name: str) -> int:
    return harness.stat(proc.stats(), f"http.{PREFIX}.on_demand.{name}")


@pytest.fixture
def setup(env):
    origins = [harness.track(env.fleet, Origin(f"o{i}")) for i in range(2)]
    env.port = harness.free_port()
    env.xds.set_resources(resources(env.port, origins))
    proc = start(env)
    return env, proc


@pytest.mark.parametrize("mode", MODES)
def test_clusters_come_with_the_first_request(setup, mode):
    env, proc = setup
    assert not [r for r in env.xds.requests() if r["type_url"] == CDS], "CDS was asked for before any traffic"
    assert held_services(proc) == set()

    payload = bytes(range(256)) * 400  # 100 KiB, held while the cluster is fetched
    (tmp := env.workdir / "body.bin").write_bytes(payload)
    code, data, took = curl(env.port, "/svc/3/x", "--data-binary", f"@{tmp}", "-H", "content-type: application/octet-stream")
    assert code == 200, (code, data, proc.logs()[-3000:])
    assert data["origin"] == "o1" and data["method"] == "POST" and data["body_len"] == len(payload), data
    assert took < TIMEOUT_S / 2, f"the first request took {took:.2f} s"
    code, data, _ = curl(env.port, "/svc/4/y")
    assert code == 200 and data["origin"] == "o0", (code, data)

    assert cds_names(env) == {"svc-3", "svc-4"}
    assert held_services(proc) == {"svc-3", "svc-4"}
    assert odstat(proc, "cluster_wait") == 2
    assert odstat(proc, "cluster_found") == 2
    # The bootstrap's xds-grpc plus the two called.
    assert harness.stat(proc.stats(), "cluster_manager.active_clusters") == 3
    # Held now: no more waiting.
    for _ in range(5):
        assert curl(env.port, "/svc/3/again")[0] == 200
    assert odstat(proc, "cluster_wait") == 2
    assert odstat(proc, "cluster_timeout") == 0


@pytest.mark.parametrize("mode", MODES)
def test_missing_cluster_answers_before_the_timeout_then_arrives(setup, mode):
    env, proc = setup
    code, _, took = curl(env.port, "/ghost")
    assert code == 503, code
    assert took < TIMEOUT_S / 2, f"a cluster the control plane lacks took {took:.2f} s (timeout {TIMEOUT_S} s)"
    assert odstat(proc, "cluster_missing") == 1
    assert harness.stat(proc.stats(), f"http.{PREFIX}.downstream_rq_5xx") == 1
    # Known missing: the next request does not wait.
    code, _, took = curl(env.port, "/ghost")
    assert code == 503 and took < 1.0, (code, took)
    assert odstat(proc, "cluster_wait") == 1
    assert "ghost" in cds_names(env)

    # The control plane gets it: pushed on the standing subscription, then served.
    env.xds.set_resources([eds_cluster("ghost"), cla("ghost", [harness.track(env.fleet, Origin("g")).port])])
    deadline = time.monotonic() + 5
    code = 0
    while time.monotonic() < deadline:
        code, data, _ = curl(env.port, "/ghost")
        if code == 200:
            assert data["origin"] == "g", data
            break
        time.sleep(0.1)
    assert code == 200, proc.logs()[-3000:]
    assert "ghost" in held_services(proc)


@pytest.mark.parametrize("mode", MODES)
def test_route_can_turn_discovery_off(setup, mode):
    env, proc = setup
    code, _, took = curl(env.port, "/off")
    assert code == 503 and took < 1.0, (code, took)
    assert "svc-0" not in cds_names(env)
    assert odstat(proc, "cluster_wait") == 0
