"""/config_dump in Envoy's shape, as `istioctl proxy-config ... --file` and other readers unpack it: every
config an Any with "@type", and every resource inside too (static and dynamic listeners, clusters, route
configurations (inline ones as static_route_configs), secrets, endpoint configurations), with
version_info and last_updated where Envoy has them; and the query parameters: resource= (the entries of
one repeated field, each an Any of its entry type), mask= (a field mask, per dump, or per entry with
resource=), name_regex= and include_eds."""

from __future__ import annotations

import harness
from peers.origin import Origin
from test_xds_e2e import CLUSTER_A, CLUSTER_B, LISTENER, ROUTES, SERVICE_A, env, mode  # noqa: F401 (fixtures)

T = "type.googleapis.com/"
ADMIN = T + "envoy.admin.v3."
LISTENER_T = T + "envoy.config.listener.v3.Listener"
CLUSTER_T = T + "envoy.config.cluster.v3.Cluster"
ROUTE_T = T + "envoy.config.route.v3.RouteConfiguration"
CLA_T = T + "envoy.config.endpoint.v3.ClusterLoadAssignment"


def _dump(proc, query: str = "") -> dict:
    resp = proc.get("/config_dump" + query)
    assert resp.status == 200, f"/config_dump{query}: {resp!r}"
    return resp.json()


def _by_type(dump: dict) -> dict[str, dict]:
    return {c["@type"].rsplit(".", 1)[-1]: c for c in dump["configs"]}


def _static_env(fleet):
    """An HTTP listener with an inline route configuration to `web` and a tcp_proxy listener to `db`."""
    o = harness.track(fleet, Origin("web"))
    vh = harness.virtual_host("all", ["*"], [harness.route_to("web")])
    config = harness.bootstrap(
        [harness.http_listener("http_in", "ingress_http", [vh]),
         harness.tcp_proxy_listener("tcp_in", "db", "db_tcp")],
        [harness.static_cluster("web", [o.port]), harness.static_cluster("db", [fleet.echo().port])])
    return fleet.start(config)


def test_static_resources_are_anys_with_types(fleet):
    proc = _static_env(fleet)
    dump = _dump(proc)
    types = [c["@type"] for c in dump["configs"]]
    for t in ("BootstrapConfigDump", "ClustersConfigDump", "ListenersConfigDump", "RoutesConfigDump",
              "SecretsConfigDump"):
        assert ADMIN + t in types, types
    assert ADMIN + "EndpointsConfigDump" not in types, "Envoy lists endpoints only with ?include_eds"
    d = _by_type(dump)
    assert "bootstrap" in d["BootstrapConfigDump"] and d["BootstrapConfigDump"]["last_updated"]
    listeners = d["ListenersConfigDump"]["static_listeners"]
    assert {l["listener"]["name"] for l in listeners} == {"http_in", "tcp_in"}
    for l in listeners:
        assert l["listener"]["@type"] == LISTENER_T and l["last_updated"], l
    clusters = d["ClustersConfigDump"]["static_clusters"]
    assert {c["cluster"]["name"] for c in clusters} == {"web", "db"}
    for c in clusters:
        assert c["cluster"]["@type"] == CLUSTER_T and c["last_updated"], c
    routes = d["RoutesConfigDump"]["static_route_configs"]
    assert len(routes) == 1 and routes[0]["route_config"]["@type"] == ROUTE_T, routes
    assert routes[0]["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"] == "web"


def test_resource_mask_name_regex_and_include_eds(fleet):
    proc = _static_env(fleet)
    # resource=: only those entries, each an Any of its entry type.
    only = _dump(proc, "?resource=static_clusters")["configs"]
    assert {c["@type"] for c in only} == {ADMIN + "ClustersConfigDump.StaticCluster"}, only
    assert sorted(c["cluster"]["name"] for c in only) == ["db", "web"]
    assert all(c["cluster"]["@type"] == CLUSTER_T for c in only)
    # resource= with mask=: the mask applies to each entry (the Any keeps its @type).
    masked = _dump(proc, "?resource=static_listeners&mask=listener.name")["configs"]
    assert sorted(c["listener"]["name"] for c in masked) == ["http_in", "tcp_in"]
    for c in masked:
        assert set(c) == {"@type", "listener"} and set(c["listener"]) == {"@type", "name"}, c
    # mask= alone applies to each dump.
    d = _by_type(_dump(proc, "?mask=static_clusters"))
    assert set(d["ClustersConfigDump"]) == {"@type", "static_clusters"}, d["ClustersConfigDump"].keys()
    assert set(d["ListenersConfigDump"]) == {"@type"}, d["ListenersConfigDump"]
    # name_regex=: resources whose name matches, in every dump.
    d = _by_type(_dump(proc, "?name_regex=we.*"))
    assert [c["cluster"]["name"] for c in d["ClustersConfigDump"]["static_clusters"]] == ["web"]
    assert d["ListenersConfigDump"]["static_listeners"] == []
    # include_eds: a static cluster's load_assignment as static_endpoint_configs.
    d = _by_type(_dump(proc, "?include_eds"))
    eps = d["EndpointsConfigDump"]["static_endpoint_configs"]
    assert {e["endpoint_config"]["cluster_name"] for e in eps} == {"web", "db"}
    assert all(e["endpoint_config"]["@type"] == CLA_T for e in eps)
    # Bad input is named.
    resp = proc.get("/config_dump?resource=no_such_field")
    assert resp.status == 404 and "no_such_field" in resp.text, resp
    resp = proc.get("/config_dump?resource=bootstrap")
    assert resp.status == 400 and "mask" in resp.text, resp
    resp = proc.get("/config_dump?name_regex=((")
    assert resp.status == 400 and "name_regex" in resp.text, resp


def test_dynamic_resources_are_anys_with_versions(env):
    proc = env.standard()
    d = _by_type(_dump(proc, "?include_eds"))
    assert d["ClustersConfigDump"].get("version_info"), "ClustersConfigDump has no version_info"
    active = {c["cluster"]["name"]: c for c in d["ClustersConfigDump"]["dynamic_active_clusters"]}
    assert {CLUSTER_A, CLUSTER_B} <= set(active)
    for c in active.values():
        assert c["cluster"]["@type"] == CLUSTER_T and c["version_info"] and c["last_updated"], c
    dyn = {l["name"]: l for l in d["ListenersConfigDump"]["dynamic_listeners"]}
    st = dyn[LISTENER]["active_state"]
    assert st["listener"]["@type"] == LISTENER_T and st["version_info"] and st["last_updated"], st
    rcs = {r["route_config"]["name"]: r for r in d["RoutesConfigDump"]["dynamic_route_configs"]}
    assert rcs[ROUTES]["route_config"]["@type"] == ROUTE_T and rcs[ROUTES]["version_info"], rcs[ROUTES]
    eps = {e["endpoint_config"]["cluster_name"]: e for e in d["EndpointsConfigDump"]["dynamic_endpoint_configs"]}
    assert {SERVICE_A, CLUSTER_B} <= set(eps)
    assert all(e["endpoint_config"]["@type"] == CLA_T and e["version_info"] for e in eps.values())
    # resource=dynamic_active_clusters: those entries only, each with its @type and version.
    only = _dump(proc, "?resource=dynamic_active_clusters")["configs"]
    assert {c["@type"] for c in only} == {ADMIN + "ClustersConfigDump.DynamicCluster"}
    assert {CLUSTER_A, CLUSTER_B} <= {c["cluster"]["name"] for c in only}
    assert all(c["version_info"] and c["cluster"]["@type"] == CLUSTER_T for c in only)
    names = _dump(proc, f"?resource=dynamic_active_clusters&mask=cluster.name&name_regex={CLUSTER_A}")["configs"]
    assert names == [{"@type": ADMIN + "ClustersConfigDump.DynamicCluster",
                      "cluster": {"@type": CLUSTER_T, "name": CLUSTER_A}}], names
