"""Istio's sidecar bootstrap, as Istio's agent renders it, run as it is.

The bootstrap is built here (not copied) following the shape of the template Istio's agent renders for
every sidecar: node with locality and the agent's metadata, layered_runtime (a static layer and an
admin layer), bootstrap_extensions (TypedStruct-wrapped), stats_config (Istio's tag regexes and an
inclusion list), admin with access_log and profile_path, ADS over a unix socket (`xds-grpc`, STATIC with
a pipe endpoint, HTTP/2 via typed_extension_protocol_options, HIGH and DEFAULT circuit breakers, TCP
keepalive, max_requests_per_connection), `sds-grpc` over another unix socket, `prometheus_stats` and
`agent` STATIC clusters, the two unnamed listeners (Prometheus on 15090 -> /stats/prometheus on the
admin, readiness on 15021 -> the agent), tracing, stats sinks, cluster_manager outlier log and
deferred_stat_options, and the tracer's STRICT_DNS `zipkin` cluster. Ports are free ports instead of 15000/15020/15021/15090.

Checked: `--mode validate` accepts it; the binary serves on it and becomes ready once the control plane
(the project's xDS server, on the unix socket) answers; the Prometheus listener answers through the
proxy with the admin's stats, filtered by the inclusion list; the readiness listener reaches the agent;
every inert field is named in one warning each; the unnamed listeners get stable names; a bad
inclusion-list regex is rejected naming the field.
"""

from __future__ import annotations

import copy
import re
import http.client
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import threading
from pathlib import Path

import pytest

import harness

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tests" / "xds_server"))

from xds_control import XdsServer, XdsServerError  # noqa: E402

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
H2_OPTIONS = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}

# Istio's own tag regexes for its metric dimensions follow this one pattern.
ISTIO_TAGS = ["reporter", "source_namespace", "source_workload", "destination_service", "response_flags",
              "grpc_response_status", "connection_security_policy"]


def static_cluster(name: str, address: dict, **extra) -> dict:
    return {"name": name, "type": "STATIC", "connect_timeout": "0.250s", "lb_policy": "ROUND_ROBIN",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": address}}]}]}, **extra}


def tcp_address(port: int) -> dict:
    return {"socket_address": {"protocol": "TCP", "address": "127.0.0.1", "port_value": port}}


def route_listener(port: int, stat_prefix: str, prefix: str, cluster: str) -> dict:
    """Istio's unnamed static listeners: one HCM, one route."""
    return {"address": {"socket_address": {"protocol": "TCP", "address": "0.0.0.0", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                "@type": HCM, "codec_type": "AUTO", "stat_prefix": stat_prefix,
                "route_config": {"virtual_hosts": [{"name": "backend", "domains": ["*"], "routes": [
                    {"match": {"prefix": prefix}, "route": {"cluster": cluster}}]}]},
                "http_filters": [ROUTER]}}]}]}


def istio_bootstrap(*, admin_port: int, agent_port: int, prom_port: int, status_port: int, xds_sock: str,
                    sds_sock: str) -> dict:
    tags = [{"tag_name": "cluster_name", "regex": "^cluster\\.((.+?(\\..+?\\.svc\\.cluster\\.local)?)\\.)"},
            {"tag_name": "tcp_prefix", "regex": "^tcp\\.((.*?)\\.)\\w+?$"},
            {"tag_name": "response_code", "regex": "_rq(_(\\d{3}))$"},
            {"tag_name": "response_code_class", "regex": "_rq(_(\\dxx))$"},
            # Istio's one regex with a look-ahead: RE2 cannot run it, and it must not stop the bootstrap.
            {"tag_name": "http_conn_manager_listener_prefix",
             "regex": "^listener(?=\\.).*?\\.http\\.(((?:[_.[:digit:]]*|[_\\[\\]aAbBcCdDeEfF[:digit:]]*))\\.)"},
            {"tag_name": "listener_address",
             "regex": "^listener\\.(((?:[_.[:digit:]]*|[_\\[\\]aAbBcCdDeEfF[:digit:]]*))\\.)"}]
    tags += [{"regex": f"({t}=\\.=(.*?);\\.;)", "tag_name": t} for t in ISTIO_TAGS]
    return {
        "node": {
            "id": "sidecar~10.1.2.3~productpage-v1-6b746f74dc-9stvs.bookinfo~bookinfo.svc.cluster.local",
            "cluster": "productpage.bookinfo",
            "locality": {"region": "europe-west1", "zone": "europe-west1-b"},
            "metadata": {"NAMESPACE": "bookinfo", "INSTANCE_IPS": "10.1.2.3,fd00::3", "ISTIO_VERSION": "1.24.0",
                         "LABELS": {"app": "productpage", "version": "v1"}, "CLUSTER_ID": "Kubernetes",
                         "MESH_ID": "cluster.local", "INTERCEPTION_MODE": "REDIRECT",
                         "PROXY_CONFIG": {"concurrency": 2, "drainDuration": "45s"},
                         "EXCHANGE_KEYS": "NAME,NAMESPACE,INSTANCE_IPS,LABELS,OWNER,PLATFORM_METADATA"},
        },
        "layered_runtime": {"layers": [
            {"name": "global config", "static_layer": {
                "envoy.reloadable_features.http_reject_path_with_fragment": "false",
                "overload.global_downstream_max_connections": "2147483647",
                "re2.max_program_size.error_level": "32768"}},
            {"name": "admin", "admin_layer": {}}]},
        "bootstrap_extensions": [{"name": "envoy.bootstrap.internal_listener", "typed_config": {
            "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
            "type_url": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener",
            "value": {"buffer_size_kb": 64}}}],
        "stats_config": {
            "use_all_default_tags": False,
            "stats_tags": tags,
            "stats_matcher": {"inclusion_list": {"patterns": [
                {"prefix": "reporter="}, {"prefix": "cluster_manager"}, {"prefix": "listener_manager"},
                {"prefix": "server"}, {"prefix": "cluster.xds-grpc"}, {"prefix": "wasm"},
                {"suffix": "rbac.allowed"}, {"safe_regex": {"regex": ".*downstream_cx_total"}},
                {"prefix": "component"}, {"prefix": "istio"}]}},
        },
        "deferred_stat_options": {"enable_deferred_creation_stats": True},
        "admin": {
            "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": "/dev/null"}}],
            "profile_path": "/var/lib/istio/data/envoy.prof",
            "address": tcp_address(admin_port),
        },
        "dynamic_resources": {
            "lds_config": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
            "cds_config": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
            "ads_config": {"api_type": "GRPC", "set_node_on_first_message_only": True,
                           "transport_api_version": "V3",
                           "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]},
        },
        "static_resources": {
            "clusters": [
                static_cluster("prometheus_stats", tcp_address(admin_port)),
                static_cluster("agent", tcp_address(agent_port)),
                static_cluster("sds-grpc", {"pipe": {"path": sds_sock}}, connect_timeout="1s",
                               typed_extension_protocol_options=copy.deepcopy(H2_OPTIONS)),
                static_cluster("xds-grpc", {"pipe": {"path": xds_sock}}, connect_timeout="1s",
                               circuit_breakers={"thresholds": [
                                   {"priority": "DEFAULT", "max_connections": 100000, "max_pending_requests": 100000,
                                    "max_requests": 100000},
                                   {"priority": "HIGH", "max_connections": 100000, "max_pending_requests": 100000,
                                    "max_requests": 100000}]},
                               upstream_connection_options={"tcp_keepalive": {"keepalive_time": 300}},
                               max_requests_per_connection=1,
                               typed_extension_protocol_options=copy.deepcopy(H2_OPTIONS)),
                # The tracer's collector: STRICT_DNS on a host name, as Istio renders it.
                {"name": "zipkin", "type": "STRICT_DNS", "respect_dns_ttl": True, "dns_lookup_family": "V4_ONLY",
                 "dns_refresh_rate": "30s", "connect_timeout": "1s", "lb_policy": "ROUND_ROBIN",
                 "load_assignment": {"cluster_name": "zipkin", "endpoints": [{"lb_endpoints": [{"endpoint": {
                     "address": {"socket_address": {"address": "localhost", "port_value": 9411}}}}]}]}},
            ],
            "listeners": [
                route_listener(prom_port, "stats", "/stats/prometheus", "prometheus_stats"),
                route_listener(status_port, "agent", "/healthz/ready", "agent"),
            ],
        },
        "tracing": {"http": {"name": "envoy.tracers.zipkin", "typed_config": {
            "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
            "collector_cluster": "zipkin", "collector_endpoint": "/api/v2/spans",
            "collector_endpoint_version": "HTTP_JSON", "trace_id_128bit": True, "shared_span_context": False}}},
        "stats_sinks": [{"name": "envoy.stat_sinks.statsd", "typed_config": {
            "@type": "type.googleapis.com/envoy.config.metrics.v3.StatsdSink",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 9125}}}}],
        "cluster_manager": {"outlier_detection": {"event_log_path": "/dev/stdout"}},
    }


class Agent:
    """Istio's agent stand-in on the readiness path: answers /healthz/ready with 200."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                body = b"agent ready\n"
                self.send_response(200 if self.path.startswith("/healthz/ready") else 404)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.fixture
def istio(tmp_path, fleet):
    try:
        xds = XdsServer(tmp_path / "xds", unix=str(tmp_path / "XDS"))
        xds.start()
    except (XdsServerError, FileNotFoundError, OSError) as err:
        pytest.skip(f"the project's xDS server cannot run here: {err}")
    agent = Agent()
    ports = {"admin_port": harness.free_port(), "agent_port": agent.port, "prom_port": harness.free_port(),
             "status_port": harness.free_port()}
    boot = istio_bootstrap(**ports, xds_sock=str(tmp_path / "XDS"), sds_sock=str(tmp_path / "SDS"))
    yield boot, ports, fleet
    agent.close()
    xds.stop()


def test_istio_bootstrap_validates(istio, tmp_path):
    boot, _, _ = istio
    path = harness.write_bootstrap(tmp_path, boot, "istio.json")
    r = harness.run_strait(["-c", str(path), "--mode", "validate"])
    assert r.returncode == 0, f"Istio's bootstrap does not validate: {r.stderr[-3000:]}"


def test_istio_bootstrap_serves_prometheus_and_readiness_and_names_what_is_inert(istio):
    boot, ports, fleet = istio
    proc = fleet.start(boot, wait_ready=True, ready_timeout=20.0)
    # The Prometheus listener answers through the proxy, with the admin's stats, filtered by Istio's
    # inclusion list: server.* and listener_manager.* are in, http.* and cluster.agent.* are not.
    status, body = get(ports["prom_port"], "/stats/prometheus")
    assert status == 200, body[:500]
    text = body.decode()
    assert "# HELP envoy_server_live gauge server.live\n# TYPE envoy_server_live gauge\n" in text, text[:500]
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert any(n.startswith("envoy_server_") for n in names), f"server stats missing: {sorted(names)[:40]}"
    assert any(n.startswith("envoy_listener_manager_") for n in names), sorted(names)[:40]
    assert not any(n.startswith("envoy_http_") and "downstream_cx_total" not in n for n in names), (
        f"http.* stats are outside the inclusion list: {[n for n in names if n.startswith('envoy_http_')]}")
    assert not any("agent" in line and "upstream_rq" in line for line in text.splitlines()), (
        "cluster.agent.* stats are outside the inclusion list")
    # Istio's stats_tags, not the built-in tags (use_all_default_tags: false): the cluster is labelled
    # cluster_name, as Envoy under Istio labels it, and nothing gets an envoy_* label.
    assert re.search(r'^envoy_cluster_upstream_cx_total\{cluster_name="xds-grpc"\} \d+$', text, re.M), \
        [line for line in text.splitlines() if "upstream_cx_total" in line][:5]
    assert "envoy_cluster_name=" not in text
    # ... nor envoy_worker_id: the worker stays in the name.
    assert re.search(r'^envoy_server_worker_0_loop_max_iteration_usec \d+$', text, re.M), \
        [line for line in text.splitlines() if "loop_max_iteration" in line][:5]
    # The same filter applies to /stats on the admin.
    admin = proc.get("/stats")
    assert admin.status == 200
    for line in admin.text.splitlines():
        name = line.split(":")[0]
        assert name.startswith(("server", "listener_manager", "cluster_manager", "cluster.xds-grpc")) or \
            name.endswith(("rbac.allowed", "downstream_cx_total")), f"/stats shows {name}, outside the inclusion list"
    # The readiness listener reaches the agent.
    status, body = get(ports["status_port"], "/healthz/ready")
    assert status == 200 and body == b"agent ready\n", (status, body)
    # Every inert field is named, once, in a warning.
    logs = proc.logs()
    for field in ("stats_sinks", "tracing", "bootstrap_extensions", "deferred_stat_options",
                  "admin.access_log", "admin.profile_path",
                  "cluster_manager.outlier_detection.event_log_path"):
        assert logs.count(f"accepted but inert: {field} (") == 1, f"no single warning for {field}"
    assert "accepted but inert: stats_config.stats_tags" not in logs  # applied (tag_extraction.h)
    # The unnamed listeners get stable names from their addresses.
    dump = proc.get("/config_dump").json()
    listeners = [c for c in dump["configs"] if c.get("@type", "").endswith("ListenersConfigDump")][0]
    static_names = {l["listener"]["name"] for l in listeners.get("static_listeners", [])}
    assert {f"0.0.0.0_{ports['prom_port']}", f"0.0.0.0_{ports['status_port']}"} <= static_names, static_names


def test_bad_inclusion_regex_is_rejected_naming_the_field(istio, tmp_path):
    boot, _, _ = istio
    boot["stats_config"]["stats_matcher"]["inclusion_list"]["patterns"].append({"safe_regex": {"regex": "(("}})
    path = harness.write_bootstrap(tmp_path, boot, "istio-bad.json")
    r = harness.run_strait(["-c", str(path), "--mode", "validate"])
    assert r.returncode != 0
    assert "stats_config.stats_matcher.inclusion_list.patterns[10].safe_regex" in r.stderr, r.stderr[-2000:]


@pytest.mark.parametrize("regex,why", [("((", "stats_config.stats_tags[0].regex: "),
                                       ("^cluster\\.\\w+", "stats_config.stats_tags[0].regex: needs a capture group")])
def test_bad_stats_tags_regex_is_rejected_naming_the_field(istio, tmp_path, regex, why):
    boot, _, _ = istio
    boot["stats_config"]["stats_tags"].insert(0, {"tag_name": "broken", "regex": regex})
    path = harness.write_bootstrap(tmp_path, boot, "istio-bad-tag.json")
    r = harness.run_strait(["-c", str(path), "--mode", "validate"])
    assert r.returncode != 0
    assert why in r.stderr, r.stderr[-2000:]


def test_envoy_enum_spellings_and_a_router_named_alone(tmp_path, fleet):
    """Envoy takes enum names in any case (Istio's older bootstraps write "default"/"high", users write
    "least_request", "static") and a router filter given by name only."""
    agent = Agent()
    try:
        port = harness.free_port()
        listener = route_listener(port, "lower", "/healthz", "upstream")
        listener["name"] = "lower"
        listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"] = [
            {"name": "envoy.filters.http.router"}]
        cluster = static_cluster("upstream", tcp_address(agent.port), type="static", lb_policy="least_request",
                                 circuit_breakers={"thresholds": [{"priority": "default", "max_requests": 50},
                                                                  {"priority": "high", "max_requests": 60}]})
        boot = harness.bootstrap([listener], [cluster])
        proc = fleet.start(boot)
        status, body = get(port, "/healthz/ready")
        assert status == 200 and body == b"agent ready\n", (status, body)
        clusters = proc.get("/clusters").text
        assert "upstream::default_priority::max_requests::50" in clusters, clusters[:2000]
    finally:
        agent.close()


def test_max_requests_per_connection_closes_upstream_connections(fleet):
    """Istio sets max_requests_per_connection (Cluster field 9) on xds-grpc; users set it on any cluster:
    three requests on one keep-alive client connection take three upstream connections at 1."""
    agent = Agent()
    try:
        port = harness.free_port()
        listener = route_listener(port, "permax", "/", "once")
        listener["name"] = "permax"
        boot = harness.bootstrap([listener], [static_cluster("once", tcp_address(agent.port),
                                                             max_requests_per_connection=1)])
        proc = fleet.start(boot, concurrency=1)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            for _ in range(3):
                conn.request("GET", "/healthz/ready")
                resp = conn.getresponse()
                assert resp.status == 200, resp.status
                resp.read()
        finally:
            conn.close()
        stats = proc.wait_stats(lambda s: s.get("cluster.once.upstream_cx_destroy", 0) >= 3)
        assert stats["cluster.once.upstream_cx_total"] == 3, stats
    finally:
        agent.close()


# ---------------------------------------------------------------------------------------------------
# Istio's stats and metadata exchange plugins as HTTP Wasm filters in a static bootstrap, with the full
# vm_config Istio renders (EnvoyFilter-era sidecars): the YAML/JSON loader is strict, so every field of
# envoy.extensions.wasm.v3.VmConfig/PluginConfig that Istio writes must be in our proto subset.

STRING_VALUE = "type.googleapis.com/google.protobuf.StringValue"
HTTP_WASM = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
STATS_CONFIGURATION = json.dumps({"debug": "false", "stat_prefix": "istio", "disable_host_header_fallback": True,
                                  "metrics": [{"dimensions": {"source_cluster": "node.metadata['CLUSTER_ID']"}}]},
                                 indent=2)


def wasm_stats_filter() -> dict:
    return {"name": "istio.stats", "typed_config": {"@type": HTTP_WASM, "config": {
        "name": "stats_outbound", "root_id": "stats_outbound", "fail_open": True,
        "vm_config": {
            "vm_id": "stats_outbound", "runtime": "envoy.wasm.runtime.null", "allow_precompiled": True,
            "code": {"local": {"inline_string": "envoy.wasm.stats"}},
            "configuration": {"@type": STRING_VALUE, "value": "{}"},
            "environment_variables": {"host_env_keys": ["POD_NAME", "POD_NAMESPACE"],
                                      "key_values": {"ISTIO_META_CLUSTER_ID": "Kubernetes"}}},
        "capability_restriction_config": {"allowed_capabilities": {"proxy_log": {}, "get_property": {}}},
        "configuration": {"@type": STRING_VALUE, "value": STATS_CONFIGURATION}}}}


def wasm_mx_filter() -> dict:
    # Istio's HTTP metadata exchange plugin names neither root_id nor name: known by its null-VM code.
    return {"name": "istio.metadata_exchange", "typed_config": {"@type": HTTP_WASM, "config": {
        "vm_config": {"runtime": "envoy.wasm.runtime.null", "allow_precompiled": True,
                      "code": {"local": {"inline_string": "envoy.wasm.metadata_exchange"}},
                      "environment_variables": {"key_values": {"A": "b"}}},
        "configuration": {"@type": "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange"}}}}


@pytest.mark.parametrize("file_name", ["wasm.yaml", "wasm.json"])
def test_istio_wasm_http_filters_with_full_vm_config_load_and_serve(fleet, tmp_path, file_name):
    agent = Agent()
    try:
        port = harness.free_port()
        listener = route_listener(port, "outbound_wasm", "/", "upstream")
        listener["name"] = "wasm"
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["http_filters"] = [wasm_mx_filter(), wasm_stats_filter(), ROUTER]
        boot = harness.bootstrap([listener], [static_cluster("upstream", tcp_address(agent.port))])
        path = harness.write_bootstrap(tmp_path, boot, file_name)
        r = harness.run_strait(["-c", str(path), "--mode", "validate"])
        assert r.returncode == 0, r.stdout + r.stderr
        proc = fleet.start(path)
        for _ in range(2):
            status, body = get(port, "/healthz/ready")
            assert (status, body) == (200, b"agent ready\n")
        stats = proc.wait_stats(lambda s: s.get("http.outbound_wasm.inert.wasm_stats_outbound.requests_total", 0) >= 2)
        assert stats["http.outbound_wasm.inert.wasm_istio_metadata_exchange.requests_total"] == 2, stats
        # /config_dump shows both filters as configured, every VmConfig field kept.
        dump = proc.get("/config_dump").json()
        static = next(c for c in dump["configs"] if c["@type"].endswith("ListenersConfigDump"))["static_listeners"]
        lis = next(l["listener"] for l in static if l["listener"]["name"] == "wasm")
        filters = lis["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
        assert [f["name"] for f in filters] == ["istio.metadata_exchange", "istio.stats", "envoy.filters.http.router"]
        plugin = filters[1]["typed_config"]["config"]
        assert filters[1]["typed_config"]["@type"] == HTTP_WASM
        assert plugin["root_id"] == "stats_outbound" and plugin["fail_open"] is True, plugin
        vm = plugin["vm_config"]
        assert vm["allow_precompiled"] is True and vm["runtime"] == "envoy.wasm.runtime.null", vm
        assert vm["environment_variables"]["host_env_keys"] == ["POD_NAME", "POD_NAMESPACE"], vm
        assert vm["environment_variables"]["key_values"] == {"ISTIO_META_CLUSTER_ID": "Kubernetes"}, vm
        assert vm["configuration"] == {"@type": STRING_VALUE, "value": "{}"}, vm
        assert plugin["configuration"]["value"] == STATS_CONFIGURATION, plugin
        assert "inert in Strait" in proc.logs()
    finally:
        agent.close()


def test_unknown_wasm_plugin_with_full_vm_config_is_still_refused(tmp_path):
    listener = route_listener(harness.free_port(), "custom", "/", "upstream")
    f = wasm_stats_filter()
    f["typed_config"]["config"].update(name="my_plugin", root_id="my_plugin")
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"] = [f, ROUTER]
    boot = harness.bootstrap([listener], [static_cluster("upstream", tcp_address(harness.free_port()))])
    path = harness.write_bootstrap(tmp_path, boot, "custom.yaml")
    r = harness.run_strait(["-c", str(path), "--mode", "validate"])
    assert r.returncode != 0 and "my_plugin" in r.stdout + r.stderr, r.stdout + r.stderr
