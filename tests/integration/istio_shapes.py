"""What istiod pushes to one sidecar, generated: listeners, route configurations, clusters, endpoints and
the secrets Istio's agent serves, in the shapes Istio gives them (written here from Istio's published
config shapes; nothing is copied from Istio's sources or test data). Resources are Envoy JSON with
"@type", ready for the project's xDS server (tests/xds_server).

    mesh = default_mesh()                                  # ~25 services over many namespaces
    push = sidecar_push(pod, mesh, inbound=[InboundPort(8080, "http")], flavor="wasm", mtls=True)
    push.listeners / push.routes / push.clusters / push.endpoints / push.all()
    secrets_from({"cert": ..., "key": ..., "root": ...})   # the SDS secrets "default" and "ROOTCA"
    node(pod)                                              # the node id and metadata Istio's agent sends
    bootstrap(pod, xds_pipe=..., sds_pipe=...)             # a sidecar bootstrap (xds-grpc, sds-grpc,
                                                           # Prometheus 15090 and readiness 15021 listeners)

The shape of a push (Istio's sidecar model):
  virtualOutbound 0.0.0.0:15001   use_original_dst; chains: blackhole (port 15001), catch-all -> PassthroughCluster
  virtualInbound 0.0.0.0:15006    original_dst + tls_inspector + http_inspector; per inbound port:
                                  HTTP port: tls + istio-http ALPNs (mTLS) and raw_buffer + http ALPNs -> HCM
                                  TCP port: tls + [istio-peer-exchange, istio] (mTLS) and raw_buffer -> tcp_proxy
                                  then the port-less passthrough chains (the same four variants)
  0.0.0.0_<port>                  bind_to_port false, per outbound HTTP port: HCM over RDS "<port>" with Istio's
                                  HTTP filters (metadata exchange, grpc_stats, istio.alpn, fault, cors, stats,
                                  router); a port without a protocol ("auto") is sniffed: HTTP and TCP chains
  <service ip>_<port>             bind_to_port false, per outbound TCP service port: istio.stats + tcp_proxy
  route configuration "<port>"    one virtual host per service on that port (short name, namespaced, FQDN,
                                  cluster IP, each with and without ":port") plus allow_any -> PassthroughCluster
  outbound|<port>||<fqdn>         EDS, Istio's circuit breakers, metadata, cluster MX filter, tlsMode-istio /
                                  tlsMode-disabled transport_socket_matches (mtls=True)
  PassthroughCluster, BlackHoleCluster, InboundPassthroughClusterIpv4, inbound|<port>||
Standard library only.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path

# Type URLs
T = "type.googleapis.com/"
LDS = T + "envoy.config.listener.v3.Listener"
RDS = T + "envoy.config.route.v3.RouteConfiguration"
CDS = T + "envoy.config.cluster.v3.Cluster"
EDS = T + "envoy.config.endpoint.v3.ClusterLoadAssignment"
SDS = T + "envoy.extensions.transport_sockets.tls.v3.Secret"
HCM = T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP_PROXY = T + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ROUTER = T + "envoy.extensions.filters.http.router.v3.Router"
FAULT = T + "envoy.extensions.filters.http.fault.v3.HTTPFault"
CORS = T + "envoy.extensions.filters.http.cors.v3.Cors"
GRPC_STATS = T + "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"
ALPN = T + "istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig"
HTTP_WASM = T + "envoy.extensions.filters.http.wasm.v3.Wasm"
NET_WASM = T + "envoy.extensions.filters.network.wasm.v3.Wasm"
TYPED_STRUCT = T + "udpa.type.v1.TypedStruct"
MX = T + "envoy.tcp.metadataexchange.config.MetadataExchange"
STATS = T + "stats.PluginConfig"
PEER_METADATA = T + "io.istio.http.peer_metadata.Config"
STRING_VALUE = T + "google.protobuf.StringValue"
ORIGINAL_DST = T + "envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
TLS_INSPECTOR = T + "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
HTTP_INSPECTOR = T + "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"
DOWNSTREAM_TLS = T + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM_TLS = T + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
RAW_BUFFER = T + "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
HTTP_OPTIONS = T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
FILE_LOG = T + "envoy.extensions.access_loggers.file.v3.FileAccessLog"
UUID_ID = T + "envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig"
PREVIOUS_HOSTS = T + "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"

TRUST_DOMAIN = "cluster.local"
MAX32 = 4294967295
HTTP_PROTOCOLS = ("http", "http2", "grpc", "grpc-web")
SNIFFED_HTTP_ALPNS = ["http/1.1", "h2c"]
INBOUND_HTTP_ALPNS = ["http/1.1", "h2c", "http/1.0"]
MTLS_HTTP_ALPNS = ["istio-http/1.0", "istio-http/1.1", "istio-h2"]
MTLS_TCP_ALPNS = ["istio-peer-exchange", "istio"]
CIPHERS = ["ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES128-GCM-SHA256",
           "ECDHE-RSA-AES128-GCM-SHA256", "AES256-GCM-SHA384", "AES128-GCM-SHA256"]


# ---------------------------------------------------------------------------------------------------
# The mesh: services with ports and endpoints, and the pod the sidecar runs in.

@dataclass
class Endpoint:
    ip: str
    workload: str          # pod owner name, e.g. "reviews-v1"
    tls: bool = True       # the pod has a sidecar: security.istio.io/tlsMode=istio
    port_map: dict = field(default_factory=dict)   # service port -> target port (default: the same)
    sa: str = ""


@dataclass
class ServicePort:
    port: int
    name: str              # Istio takes the protocol from the name prefix ("http-x", "tcp", "grpc", ...)

    @property
    def protocol(self) -> str:
        p = self.name.split("-", 1)[0].lower()
        if p in HTTP_PROTOCOLS:
            return "http2" if p in ("http2", "grpc") else "http"
        if p in ("tcp", "https", "tls", "mongo", "mysql", "redis", "tcp-dns", "dns"):
            return "tcp"
        return "auto"      # unnamed or unknown: sniffed


@dataclass
class Service:
    name: str
    namespace: str
    ip: str
    ports: list
    endpoints: list = field(default_factory=list)
    sa: str = "default"

    @property
    def fqdn(self) -> str:
        return f"{self.name}.{self.namespace}.svc.cluster.local"


@dataclass
class Pod:
    ip: str
    name: str = "sleep-5c8d7f9b4-x2kqz"
    namespace: str = "default"
    app: str = "sleep"
    version: str = "v1"
    sa: str = "sleep"
    istio_version: str = "1.22.0"

    @property
    def workload(self) -> str:
        return self.name.rsplit("-", 2)[0]

    @property
    def node_id(self) -> str:
        return f"sidecar~{self.ip}~{self.name}.{self.namespace}~{self.namespace}.svc.cluster.local"

    @property
    def spiffe(self) -> str:
        return f"spiffe://{TRUST_DOMAIN}/ns/{self.namespace}/sa/{self.sa}"


@dataclass
class InboundPort:
    port: int
    protocol: str = "http"     # "http" or "tcp"
    target: int | None = None  # the container port (default: the same)


def default_mesh(extra: list | None = None) -> list:
    """A cluster's worth of services: Kubernetes and Istio's own, bookinfo, data stores, telemetry. Their
    endpoints live on 10.244.x.x pod addresses (not reachable from the tests: they are config only).
    `extra` services are added (the tests' real ones)."""
    def ep(i, workload, **kw):
        return Endpoint(f"10.244.{i // 250}.{i % 250 + 2}", workload, **kw)

    mesh = [
        Service("kubernetes", "default", "10.96.0.1", [ServicePort(443, "https")],
                [Endpoint("172.18.0.2", "kube-apiserver", tls=False, port_map={443: 6443})]),
        Service("kube-dns", "kube-system", "10.96.0.10", [ServicePort(53, "dns-tcp"), ServicePort(9153, "http-metrics")],
                [ep(1, "coredns", tls=False), ep(2, "coredns", tls=False)]),
        Service("istiod", "istio-system", "10.96.1.10",
                [ServicePort(15010, "grpc-xds"), ServicePort(15012, "https-dns"), ServicePort(443, "https-webhook"),
                 ServicePort(15014, "http-monitoring")], [ep(10, "istiod", tls=False, port_map={443: 15017})],
                sa="istiod"),
        Service("istio-ingressgateway", "istio-system", "10.96.1.20", [ServicePort(80, "http2"), ServicePort(443, "https")],
                [ep(11, "istio-ingressgateway", port_map={80: 8080, 443: 8443})], sa="istio-ingressgateway-service-account"),
        Service("productpage", "bookinfo", "10.96.2.10", [ServicePort(9080, "http")], [ep(20, "productpage-v1")],
                sa="bookinfo-productpage"),
        Service("details", "bookinfo", "10.96.2.11", [ServicePort(9080, "http")], [ep(21, "details-v1")],
                sa="bookinfo-details"),
        Service("reviews", "bookinfo", "10.96.2.12", [ServicePort(9080, "http")],
                [ep(22, "reviews-v1"), ep(23, "reviews-v2"), ep(24, "reviews-v3")], sa="bookinfo-reviews"),
        Service("ratings", "bookinfo", "10.96.2.13", [ServicePort(9080, "http")], [ep(25, "ratings-v1")],
                sa="bookinfo-ratings"),
        Service("mysqldb", "bookinfo", "10.96.2.20", [ServicePort(3306, "tcp")], [ep(26, "mysqldb-v1")]),
        Service("mongodb", "bookinfo", "10.96.2.21", [ServicePort(27017, "mongo")], [ep(27, "mongodb-v1")]),
        Service("redis", "data", "10.96.3.10", [ServicePort(6379, "tcp-redis")], [ep(30, "redis", tls=False)]),
        Service("postgres", "data", "10.96.3.11", [ServicePort(5432, "tcp-postgres")], [ep(31, "postgres")]),
        Service("kafka", "data", "10.96.3.12", [ServicePort(9092, "tcp-kafka")], [ep(32, "kafka-0"), ep(33, "kafka-1")]),
        Service("zookeeper", "data", "10.96.3.13", [ServicePort(2181, "tcp-client")], [ep(34, "zookeeper")]),
        Service("rabbitmq", "data", "10.96.3.14", [ServicePort(5672, "tcp-amqp"), ServicePort(15672, "http-mgmt")],
                [ep(35, "rabbitmq")]),
        Service("httpbin", "default", "10.96.4.10", [ServicePort(8000, "")], [ep(40, "httpbin")], sa="httpbin"),
        Service("grafana", "istio-system", "10.96.1.30", [ServicePort(3000, "http-service")], [ep(41, "grafana")]),
        Service("prometheus", "istio-system", "10.96.1.31", [ServicePort(9090, "http")], [ep(42, "prometheus", tls=False)]),
        Service("zipkin", "istio-system", "10.96.1.32", [ServicePort(9411, "http-query")], [ep(43, "jaeger")]),
        Service("tracing", "istio-system", "10.96.1.33", [ServicePort(80, "http-query")], [ep(43, "jaeger",
                                                                                           port_map={80: 16686})]),
        Service("kiali", "istio-system", "10.96.1.34", [ServicePort(20001, "http")], [ep(44, "kiali")], sa="kiali"),
        Service("jaeger-collector", "istio-system", "10.96.1.35", [ServicePort(14268, "http-c-binary")],
                [ep(43, "jaeger")]),
    ]
    return mesh + list(extra or [])


# ---------------------------------------------------------------------------------------------------
# Pieces

def addr(ip: str, port: int) -> dict:
    return {"socket_address": {"address": ip, "port_value": port}}


def _ts(type_url: str, value: dict | None = None) -> dict:
    return {"@type": TYPED_STRUCT, "type_url": type_url, "value": value or {}}


def access_log() -> list:
    return [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": FILE_LOG, "path": "/dev/stdout", "log_format": {"text_format_source": {"inline_string":
            "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% "
            "%RESPONSE_FLAGS% %UPSTREAM_CLUSTER% %UPSTREAM_HOST%\n"}}}}]


def sds_ref(name: str, sds: str) -> dict:
    """How istiod names a secret: "default" (the workload certificate) or "ROOTCA". sds="sds-grpc": the agent's
    SDS server over the bootstrap's sds-grpc cluster (Istio's way); "ads": over the ADS stream."""
    if sds == "ads":
        source = {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}
    else:
        source = {"api_config_source": {"api_type": "GRPC", "set_node_on_first_message_only": True,
                                        "transport_api_version": "V3",
                                        "grpc_services": [{"envoy_grpc": {"cluster_name": sds}}]},
                  "initial_fetch_timeout": "0s", "resource_api_version": "V3"}
    return {"name": name, "sds_config": source}


def tls_params() -> dict:
    return {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3",
            "cipher_suites": CIPHERS}


def downstream_tls(alpn: list, sds: str) -> dict:
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": DOWNSTREAM_TLS, "require_client_certificate": True,
        "common_tls_context": {
            "tls_params": tls_params(), "alpn_protocols": alpn,
            "tls_certificate_sds_secret_configs": [sds_ref("default", sds)],
            "combined_validation_context": {
                "default_validation_context": {"match_typed_subject_alt_names": [
                    {"san_type": "URI", "matcher": {"prefix": f"spiffe://{TRUST_DOMAIN}/"}}]},
                "validation_context_sds_secret_config": sds_ref("ROOTCA", sds)}}}}


def upstream_tls(sni: str, sans: list, sds: str) -> dict:
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": UPSTREAM_TLS, "sni": sni,
        "common_tls_context": {
            "tls_params": {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"},
            "alpn_protocols": MTLS_TCP_ALPNS,
            "tls_certificate_sds_secret_configs": [sds_ref("default", sds)],
            "combined_validation_context": {
                "default_validation_context": {"match_subject_alt_names": [{"exact": s} for s in sans]},
                "validation_context_sds_secret_config": sds_ref("ROOTCA", sds)}}}}


# Istio's filters, in two renderings: "wasm" (Istio up to 1.17: null-VM Wasm plugins) and "typed" (newer:
# native extensions, in TypedStructs).

def http_mx(flavor: str) -> dict:
    if flavor == "wasm":
        return {"name": "istio.metadata_exchange", "typed_config": {"@type": HTTP_WASM, "config": {
            "vm_config": {"runtime": "envoy.wasm.runtime.null",
                          "code": {"local": {"inline_string": "envoy.wasm.metadata_exchange"}}},
            "configuration": {"@type": MX}}}}
    return {"name": "istio.metadata_exchange", "typed_config": _ts(PEER_METADATA, {
        "upstream_discovery": [{"istio_headers": {}}, {"workload_discovery": {}}],
        "upstream_propagation": [{"istio_headers": {}}]})}


def _stats_settings(direction: str) -> dict:
    """stats.PluginConfig as istiod renders it with a Telemetry resource that adds a tag."""
    if direction == "outbound":
        return {}
    return {"metrics": [{"name": "requests_total", "dimensions": {"request_protocol": "request.protocol"}}],
            "tcp_reporting_duration": "15s"}


def http_stats(flavor: str, direction: str) -> dict:
    root = f"stats_{direction}"
    if flavor == "wasm":
        return {"name": "istio.stats", "typed_config": {"@type": HTTP_WASM, "config": {
            "root_id": root,
            "vm_config": {"vm_id": root, "runtime": "envoy.wasm.runtime.null",
                          "code": {"local": {"inline_string": "envoy.wasm.stats"}}},
            "configuration": {"@type": STRING_VALUE, "value": "{\n  \"debug\": \"false\",\n  \"stat_prefix\": \"istio\"\n}\n"}}}}
    return {"name": "istio.stats", "typed_config": _ts(STATS, _stats_settings(direction))}


def net_stats(flavor: str, direction: str) -> dict:
    root = f"stats_{direction}"
    if flavor == "wasm":
        return {"name": "istio.stats", "typed_config": _ts(NET_WASM, {"config": {
            "root_id": root,
            "vm_config": {"vm_id": f"tcp_{root}", "runtime": "envoy.wasm.runtime.null",
                          "code": {"local": {"inline_string": "envoy.wasm.stats"}}},
            "configuration": {"@type": STRING_VALUE, "value": "{\n  \"debug\": \"false\",\n  \"stat_prefix\": \"istio\"\n}\n"}}})}
    return {"name": "istio.stats", "typed_config": _ts(STATS, _stats_settings(direction))}


def net_mx() -> dict:
    return {"name": "istio.metadata_exchange", "typed_config": _ts(MX, {"protocol": "istio-peer-exchange",
                                                                          "enable_discovery": True})}


def cluster_mx() -> dict:
    return {"name": "istio.metadata_exchange", "typed_config": _ts(MX, {"protocol": "istio-peer-exchange",
                                                                          "enable_discovery": True})}


def outbound_http_filters(flavor: str) -> list:
    return [
        http_mx(flavor),
        {"name": "envoy.filters.http.grpc_stats", "typed_config": {"@type": GRPC_STATS, "emit_filter_state": True,
                                                                    "stats_for_all_methods": False}},
        {"name": "istio.alpn", "typed_config": {"@type": ALPN, "alpn_override": [
            {"upstream_protocol": "HTTP10", "alpn_override": ["istio-http/1.0", "istio"]},
            {"upstream_protocol": "HTTP11", "alpn_override": ["istio-http/1.1", "istio"]},
            {"upstream_protocol": "HTTP2", "alpn_override": ["istio-h2", "istio"]}]}},
        {"name": "envoy.filters.http.fault", "typed_config": {"@type": FAULT}},
        {"name": "envoy.filters.http.cors", "typed_config": {"@type": CORS}},
        http_stats(flavor, "outbound"),
        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}},
    ]


def inbound_http_filters(flavor: str) -> list:
    return [
        http_mx(flavor),
        {"name": "envoy.filters.http.grpc_stats", "typed_config": {"@type": GRPC_STATS, "emit_filter_state": True,
                                                                    "stats_for_all_methods": False}},
        {"name": "envoy.filters.http.fault", "typed_config": {"@type": FAULT}},
        {"name": "envoy.filters.http.cors", "typed_config": {"@type": CORS}},
        http_stats(flavor, "inbound"),
        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}},
    ]


def hcm(stat_prefix: str, filters: list, *, rds: str | None = None, route_config: dict | None = None,
        inbound: bool = False) -> dict:
    cfg = {
        "@type": HCM, "stat_prefix": stat_prefix, "http_filters": filters,
        "tracing": {"client_sampling": {"value": 100}, "random_sampling": {"value": 1}, "overall_sampling": {"value": 100}},
        "access_log": access_log(),
        "use_remote_address": False,
        "upgrade_configs": [{"upgrade_type": "websocket"}],
        "stream_idle_timeout": "0s",
        "normalize_path": True,
        "request_id_extension": {"typed_config": {"@type": UUID_ID, "use_request_id_for_trace_sampling": True}},
        "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
    }
    if rds:
        cfg["rds"] = {"config_source": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
                      "route_config_name": rds}
    else:
        cfg["route_config"] = route_config
    if inbound:
        cfg["forward_client_cert_details"] = "APPEND_FORWARD"
        cfg["set_current_client_cert_details"] = {"subject": True, "dns": True, "uri": True}
        cfg["server_name"] = "istio-envoy"
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": cfg}


def tcp_proxy(cluster: str, stat_prefix: str | None = None) -> dict:
    return {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": TCP_PROXY, "stat_prefix": stat_prefix or cluster, "cluster": cluster, "access_log": access_log()}}


def circuit_breakers() -> dict:
    return {"thresholds": [{"max_connections": MAX32, "max_pending_requests": MAX32, "max_requests": MAX32,
                            "max_retries": MAX32, "track_remaining": True}]}


def outbound_cluster_name(port: int, host: str, subset: str = "") -> str:
    return f"outbound|{port}|{subset}|{host}"


# ---------------------------------------------------------------------------------------------------
# The push

@dataclass
class Push:
    node: dict
    listeners: list
    routes: list
    clusters: list
    endpoints: list

    def all(self) -> list:
        return self.clusters + self.endpoints + self.listeners + self.routes

    def names(self, type_url: str) -> list:
        res = {LDS: self.listeners, RDS: self.routes, CDS: self.clusters, EDS: self.endpoints}[type_url]
        return [r.get("name") or r.get("cluster_name") for r in res]


def _virtual_outbound(flavor: str) -> dict:
    return {
        "@type": LDS, "name": "virtualOutbound", "address": addr("0.0.0.0", 15001), "use_original_dst": True,
        "traffic_direction": "OUTBOUND", "access_log": access_log(),
        "filter_chains": [
            {"name": "virtualOutbound-blackhole", "filter_chain_match": {"destination_port": 15001},
             "filters": [net_stats(flavor, "outbound"), tcp_proxy("BlackHoleCluster")]},
            {"name": "virtualOutbound-catchall-tcp",
             "filters": [net_stats(flavor, "outbound"), tcp_proxy("PassthroughCluster")]},
        ],
    }


def _inbound_passthrough_route() -> dict:
    return {"name": "InboundPassthroughClusterIpv4", "validate_clusters": False, "virtual_hosts": [{
        "name": "inbound|http|0", "domains": ["*"], "routes": [{
            "name": "default", "match": {"prefix": "/"},
            "route": {"cluster": "InboundPassthroughClusterIpv4", "timeout": "0s",
                      "max_stream_duration": {"max_stream_duration": "0s", "grpc_timeout_header_max": "0s"}},
            "decorator": {"operation": ":0/*"}}]}]}


def _inbound_route(port: int) -> dict:
    cluster = f"inbound|{port}||"
    return {"name": cluster, "validate_clusters": False, "virtual_hosts": [{
        "name": f"inbound|http|{port}", "domains": ["*"], "routes": [{
            "name": "default", "match": {"prefix": "/"},
            "route": {"cluster": cluster, "timeout": "0s",
                      "max_stream_duration": {"max_stream_duration": "0s", "grpc_timeout_header_max": "0s"}},
            "decorator": {"operation": f":{port}/*"}}]}]}


def _virtual_inbound(inbound: list, flavor: str, mtls: bool, sds: str) -> dict:
    chains = [{"name": "virtualInbound-blackhole", "filter_chain_match": {"destination_port": 15006},
               "filters": [net_stats(flavor, "inbound"), tcp_proxy("BlackHoleCluster")]}]

    def variants(name, match, http_filters_of, tcp_filters, tls_http_alpn, tls_tcp_alpn, http: bool, tcp: bool):
        out = []
        if http:
            if mtls:
                out.append({"name": name, "filter_chain_match": dict(match, transport_protocol="tls",
                                                                     application_protocols=MTLS_HTTP_ALPNS),
                            "transport_socket": downstream_tls(tls_http_alpn, sds), "filters": http_filters_of()})
            out.append({"name": name, "filter_chain_match": dict(match, transport_protocol="raw_buffer",
                                                                 application_protocols=INBOUND_HTTP_ALPNS),
                        "filters": http_filters_of()})
        if tcp:
            if mtls:
                out.append({"name": name, "filter_chain_match": dict(match, transport_protocol="tls",
                                                                     application_protocols=MTLS_TCP_ALPNS),
                            "transport_socket": downstream_tls(tls_tcp_alpn, sds), "filters": tcp_filters()})
            out.append({"name": name, "filter_chain_match": dict(match, transport_protocol="raw_buffer"),
                        "filters": tcp_filters()})
        return out

    for ip in inbound:
        cluster = f"inbound|{ip.port}||"
        chains += variants(
            f"0.0.0.0_{ip.port}", {"destination_port": ip.port},
            lambda ip=ip: [net_mx(), hcm(f"inbound_0.0.0.0_{ip.port}", inbound_http_filters(flavor),
                                         route_config=_inbound_route(ip.port), inbound=True)],
            lambda cluster=cluster: [net_mx(), net_stats(flavor, "inbound"), tcp_proxy(cluster)],
            ["h2", "http/1.1"], ["istio-peer-exchange", "h2", "http/1.1"],
            http=ip.protocol == "http", tcp=ip.protocol == "tcp")
    v4 = {"prefix_ranges": [{"address_prefix": "0.0.0.0", "prefix_len": 0}]}
    chains += variants(
        "virtualInbound-catchall-http", v4,
        lambda: [net_mx(), hcm("InboundPassthroughClusterIpv4", inbound_http_filters(flavor),
                               route_config=_inbound_passthrough_route(), inbound=True)],
        None, ["h2", "http/1.1"], None, http=True, tcp=False)
    chains += variants(
        "virtualInbound", v4, None,
        lambda: [net_mx(), net_stats(flavor, "inbound"), tcp_proxy("InboundPassthroughClusterIpv4")],
        None, ["istio-peer-exchange", "h2", "http/1.1"], http=False, tcp=True)
    return {
        "@type": LDS, "name": "virtualInbound", "address": addr("0.0.0.0", 15006),
        "traffic_direction": "INBOUND", "continue_on_listener_filters_timeout": True,
        "listener_filters_timeout": "0s",
        "listener_filters": [
            {"name": "envoy.filters.listener.original_dst", "typed_config": {"@type": ORIGINAL_DST}},
            {"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": TLS_INSPECTOR}},
            {"name": "envoy.filters.listener.http_inspector", "typed_config": {"@type": HTTP_INSPECTOR},
             "filter_disabled": {"or_match": {"rules": [
                 {"destination_port_range": {"start": 3306, "end": 3307}},
                 {"destination_port_range": {"start": 15021, "end": 15022}}]}}},
        ],
        "filter_chains": chains,
    }


def _sniffing_listener_filters() -> list:
    return [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": TLS_INSPECTOR}},
            {"name": "envoy.filters.listener.http_inspector", "typed_config": {"@type": HTTP_INSPECTOR}}]


def _domains(svc: Service, port: int) -> list:
    names = [svc.fqdn, svc.name, f"{svc.name}.{svc.namespace}.svc", f"{svc.name}.{svc.namespace}", svc.ip]
    out = []
    for n in names:
        out += [n, f"{n}:{port}"]
    return out


def _route(svc: Service, port: int) -> dict:
    action = {"cluster": outbound_cluster_name(port, svc.fqdn), "timeout": "0s",
              "retry_policy": {"retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
                               "num_retries": 2,
                               "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts",
                                                         "typed_config": {"@type": PREVIOUS_HOSTS}}],
                               "host_selection_retry_max_attempts": "5", "retriable_status_codes": [503]},
              "max_stream_duration": {"max_stream_duration": "0s", "grpc_timeout_header_max": "0s"}}
    return {"name": "default", "match": {"prefix": "/"}, "route": action,
            "decorator": {"operation": f"{svc.fqdn}:{port}/*"}}


def sidecar_push(pod: Pod, mesh: list, *, inbound: list | None = None, flavor: str = "wasm", mtls: bool = True,
                 sds: str = "sds-grpc") -> Push:
    """Everything istiod sends `pod`'s sidecar for `mesh` (a Sidecar resource importing every namespace,
    outboundTrafficPolicy ALLOW_ANY, PERMISSIVE mTLS): see the module's docstring for the shapes."""
    inbound = inbound or []
    listeners = [_virtual_outbound(flavor), _virtual_inbound(inbound, flavor, mtls, sds)]
    routes, clusters, endpoints = [], [], []

    # Outbound HTTP ports share a listener and a route configuration per port.
    http_ports: dict[int, list] = {}
    sniffed: set[int] = set()
    for svc in mesh:
        for sp in svc.ports:
            if sp.protocol in ("http", "http2", "auto"):
                http_ports.setdefault(sp.port, []).append((svc, sp))
                if sp.protocol == "auto":
                    sniffed.add(sp.port)
    for port in sorted(http_ports):
        name = f"0.0.0.0_{port}"
        http_chain = {"filters": [hcm(f"outbound_0.0.0.0_{port}", outbound_http_filters(flavor), rds=str(port))]}
        lis = {"@type": LDS, "name": name, "address": addr("0.0.0.0", port), "bind_to_port": False,
               "traffic_direction": "OUTBOUND", "access_log": access_log()}
        if port in sniffed:
            # Protocol sniffing: HTTP goes to the HCM, anything else to the (first) service's TCP cluster.
            svc = http_ports[port][0][0]
            http_chain["filter_chain_match"] = {"application_protocols": SNIFFED_HTTP_ALPNS}
            lis["listener_filters"] = _sniffing_listener_filters()
            lis["listener_filters_timeout"] = "0.1s"
            lis["continue_on_listener_filters_timeout"] = True
            lis["filter_chains"] = [http_chain, {"filters": [
                net_stats(flavor, "outbound"), tcp_proxy(outbound_cluster_name(port, svc.fqdn))]}]
        else:
            lis["filter_chains"] = [http_chain]
        listeners.append(lis)
        vhosts = [{"name": f"{svc.fqdn}:{port}", "domains": _domains(svc, port),
                   "routes": [_route(svc, port)], "include_request_attempt_count": True}
                  for svc, sp in sorted(http_ports[port], key=lambda x: x[0].fqdn)]
        vhosts.append({"name": "allow_any", "domains": ["*"], "include_request_attempt_count": True, "routes": [{
            "name": "allow_any", "match": {"prefix": "/"},
            "route": {"cluster": "PassthroughCluster", "timeout": "0s",
                      "max_stream_duration": {"max_stream_duration": "0s", "grpc_timeout_header_max": "0s"}}}]})
        routes.append({"@type": RDS, "name": str(port), "virtual_hosts": vhosts, "validate_clusters": False,
                       "max_direct_response_body_size_bytes": 1048576, "ignore_port_in_host_matching": True})

    # Outbound TCP service ports: one listener per service IP and port.
    for svc in mesh:
        for sp in svc.ports:
            if sp.protocol != "tcp":
                continue
            cluster = outbound_cluster_name(sp.port, svc.fqdn)
            listeners.append({"@type": LDS, "name": f"{svc.ip}_{sp.port}", "address": addr(svc.ip, sp.port),
                              "bind_to_port": False, "traffic_direction": "OUTBOUND",
                              "filter_chains": [{"filters": [net_stats(flavor, "outbound"), tcp_proxy(cluster)]}]})

    # Clusters and their endpoints.
    for svc in mesh:
        for sp in svc.ports:
            name = outbound_cluster_name(sp.port, svc.fqdn)
            c = {"@type": CDS, "name": name, "type": "EDS",
                 "eds_cluster_config": {"eds_config": {"ads": {}, "initial_fetch_timeout": "0s",
                                                       "resource_api_version": "V3"}, "service_name": name},
                 "connect_timeout": "10s", "lb_policy": "LEAST_REQUEST", "circuit_breakers": circuit_breakers(),
                 "common_lb_config": {}, "filters": [cluster_mx()],
                 "metadata": {"filter_metadata": {"istio": {
                     "services": [{"host": svc.fqdn, "name": svc.name, "namespace": svc.namespace}],
                     "default_original_port": sp.port}}}}
            if sp.protocol == "http2":
                c["typed_extension_protocol_options"] = {HTTP_OPTIONS_KEY: {
                    "@type": HTTP_OPTIONS, "explicit_http_config": {"http2_protocol_options": {
                        "max_concurrent_streams": 1073741824}}}}
            elif sp.protocol == "auto":
                c["typed_extension_protocol_options"] = {HTTP_OPTIONS_KEY: {
                    "@type": HTTP_OPTIONS, "use_downstream_protocol_config": {
                        "http_protocol_options": {}, "http2_protocol_options": {"max_concurrent_streams": 1073741824}}}}
            if mtls:
                sans = sorted({f"spiffe://{TRUST_DOMAIN}/ns/{svc.namespace}/sa/{e.sa or svc.sa}"
                               for e in svc.endpoints} or {f"spiffe://{TRUST_DOMAIN}/ns/{svc.namespace}/sa/{svc.sa}"})
                c["transport_socket_matches"] = [
                    {"name": "tlsMode-istio", "match": {"tlsMode": "istio"},
                     "transport_socket": upstream_tls(f"outbound_.{sp.port}_._.{svc.fqdn}", sans, sds)},
                    {"name": "tlsMode-disabled", "match": {},
                     "transport_socket": {"name": "envoy.transport_sockets.raw_buffer",
                                          "typed_config": {"@type": RAW_BUFFER}}}]
            clusters.append(c)
            lb = []
            for e in svc.endpoints:
                md = {"istio": {"workload": f"{e.workload};{svc.namespace};{svc.name};v1;Kubernetes"}}
                if e.tls:
                    md["envoy.transport_socket_match"] = {"tlsMode": "istio"}
                lb.append({"endpoint": {"address": addr(e.ip, e.port_map.get(sp.port, sp.port))},
                           "health_status": "HEALTHY", "metadata": {"filter_metadata": md},
                           "load_balancing_weight": 1})
            endpoints.append({"@type": EDS, "cluster_name": name, "endpoints": [
                {"locality": {}, "lb_endpoints": lb, "load_balancing_weight": len(lb)}] if lb else []})

    passthrough_options = {HTTP_OPTIONS_KEY: {"@type": HTTP_OPTIONS,
                                              "common_http_protocol_options": {"idle_timeout": "300s"},
                                              "use_downstream_protocol_config": {
                                                  "http_protocol_options": {},
                                                  "http2_protocol_options": {"max_concurrent_streams": 1073741824}}}}
    clusters += [
        {"@type": CDS, "name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "10s"},
        {"@type": CDS, "name": "PassthroughCluster", "type": "ORIGINAL_DST", "connect_timeout": "10s",
         "lb_policy": "CLUSTER_PROVIDED", "circuit_breakers": circuit_breakers(),
         "typed_extension_protocol_options": passthrough_options,
         "filters": [cluster_mx()]},
        {"@type": CDS, "name": "InboundPassthroughClusterIpv4", "type": "ORIGINAL_DST", "connect_timeout": "10s",
         "lb_policy": "CLUSTER_PROVIDED", "circuit_breakers": circuit_breakers(),
         "upstream_bind_config": {"source_address": {"address": "127.0.0.6", "port_value": 0}},
         "typed_extension_protocol_options": passthrough_options,
         "filters": [cluster_mx()]},
    ]
    for ip in inbound:
        clusters.append({
            "@type": CDS, "name": f"inbound|{ip.port}||", "type": "ORIGINAL_DST", "connect_timeout": "10s",
            "lb_policy": "CLUSTER_PROVIDED", "circuit_breakers": circuit_breakers(), "cleanup_interval": "60s",
            "upstream_bind_config": {"source_address": {"address": "127.0.0.6", "port_value": 0}},
            "metadata": {"filter_metadata": {"istio": {"services": [
                {"host": f"{pod.app}.{pod.namespace}.svc.cluster.local", "name": pod.app,
                 "namespace": pod.namespace}]}}}})
    return Push(node(pod), listeners, routes, clusters, endpoints)


def secrets(cert_pem: bytes, key_pem: bytes, root_pem: bytes) -> list:
    """The two secrets Istio's agent serves: "default" (the workload's chain and key) and "ROOTCA"
    (the mesh's trust anchors), as inline bytes."""
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return [
        {"@type": SDS, "name": "default", "tls_certificate": {
            "certificate_chain": {"inline_bytes": b64(cert_pem)}, "private_key": {"inline_bytes": b64(key_pem)}}},
        {"@type": SDS, "name": "ROOTCA", "validation_context": {"trusted_ca": {"inline_bytes": b64(root_pem)}}},
    ]


def secrets_from(paths: dict) -> list:
    """secrets() from tlsutil.make_workload's paths ({"cert", "key", "root"})."""
    return secrets(Path(paths["cert"]).read_bytes(), Path(paths["key"]).read_bytes(), Path(paths["root"]).read_bytes())


# ---------------------------------------------------------------------------------------------------
# Node and bootstrap

def node(pod: Pod) -> dict:
    """The node Istio's agent puts in the bootstrap (and so in the first xDS request)."""
    labels = {"app": pod.app, "version": pod.version, "security.istio.io/tlsMode": "istio",
              "service.istio.io/canonical-name": pod.app, "service.istio.io/canonical-revision": pod.version,
              "pod-template-hash": pod.name.rsplit("-", 2)[1]}
    return {
        "id": pod.node_id,
        "cluster": f"{pod.app}.{pod.namespace}",
        "locality": {},
        "metadata": {
            "ANNOTATIONS": {"kubectl.kubernetes.io/default-container": pod.app,
                            "sidecar.istio.io/status": json.dumps({"initContainers": ["istio-init"],
                                                                   "containers": ["istio-proxy"],
                                                                   "volumes": ["istio-envoy", "istio-data",
                                                                               "istio-podinfo", "istio-token",
                                                                               "istiod-ca-cert"],
                                                                   "revision": "default"})},
            "APP_CONTAINERS": pod.app,
            "CLUSTER_ID": "Kubernetes",
            "ENVOY_PROMETHEUS_PORT": 15090,
            "ENVOY_STATUS_PORT": 15021,
            "INSTANCE_IPS": pod.ip,
            "INTERCEPTION_MODE": "REDIRECT",
            "ISTIO_PROXY_SHA": "0" * 40,
            "ISTIO_VERSION": pod.istio_version,
            "LABELS": labels,
            "MESH_ID": TRUST_DOMAIN,
            "NAME": pod.name,
            "NAMESPACE": pod.namespace,
            "NODE_NAME": "worker-1",
            "OWNER": f"kubernetes://apis/apps/v1/namespaces/{pod.namespace}/deployments/{pod.workload}",
            "PILOT_SAN": ["istiod.istio-system.svc"],
            "POD_PORTS": json.dumps([{"containerPort": 80, "protocol": "TCP"}]),
            "PROXY_CONFIG": {"binaryPath": "/usr/local/bin/envoy", "concurrency": 2, "configPath": "./etc/istio/proxy",
                             "discoveryAddress": "istiod.istio-system.svc:15012", "drainDuration": "45s",
                             "proxyAdminPort": 15000, "serviceCluster": "istio-proxy", "statNameLength": 189,
                             "statusPort": 15020, "terminationDrainDuration": "5s"},
            "SERVICE_ACCOUNT": pod.sa,
            "WORKLOAD_NAME": pod.workload,
        },
    }


def bootstrap(pod: Pod, *, xds_pipe: str, sds_pipe: str, admin_port: int = 15000, prom_port: int = 15090,
              status_port: int = 15021, agent_port: int = 15020) -> dict:
    """A sidecar bootstrap in the shape Istio's agent renders (the parts that decide behaviour): node, admin,
    ADS over the xds-grpc unix socket, the sds-grpc cluster, prometheus_stats and agent clusters, and the two
    unnamed static listeners (Prometheus on `prom_port`, readiness on `status_port`)."""
    h2 = {HTTP_OPTIONS_KEY: {"@type": HTTP_OPTIONS, "explicit_http_config": {"http2_protocol_options": {}}}}

    def pipe_cluster(name, path):
        return {"name": name, "type": "STATIC", "connect_timeout": "1s", "typed_extension_protocol_options": h2,
                "max_requests_per_connection": 1,
                "circuit_breakers": {"thresholds": [
                    {"priority": "DEFAULT", "max_connections": 100000, "max_pending_requests": 100000,
                     "max_requests": 100000},
                    {"priority": "HIGH", "max_connections": 100000, "max_pending_requests": 100000,
                     "max_requests": 100000}]},
                "upstream_connection_options": {"tcp_keepalive": {"keepalive_time": 300}},
                "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"pipe": {"path": path}}}}]}]}}

    def loopback_cluster(name, port):
        return {"name": name, "type": "STATIC", "connect_timeout": "0.250s", "lb_policy": "ROUND_ROBIN",
                "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"protocol": "TCP", "address": "127.0.0.1",
                                                                 "port_value": port}}}}]}]}}

    def route_listener(port, prefix, cluster, stat_prefix):
        return {"address": {"socket_address": {"protocol": "TCP", "address": "0.0.0.0", "port_value": port}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                    "@type": HCM, "codec_type": "AUTO", "stat_prefix": stat_prefix,
                    "route_config": {"virtual_hosts": [{"name": "backend", "domains": ["*"], "routes": [
                        {"match": {"prefix": prefix}, "route": {"cluster": cluster}}]}]},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]}}]}]}

    return {
        "node": node(pod),
        "admin": {"address": {"socket_address": {"protocol": "TCP", "address": "127.0.0.1", "port_value": admin_port}}},
        "dynamic_resources": {
            "lds_config": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
            "cds_config": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
            "ads_config": {"api_type": "GRPC", "set_node_on_first_message_only": True, "transport_api_version": "V3",
                           "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]},
        },
        "static_resources": {
            "clusters": [pipe_cluster("xds-grpc", xds_pipe), pipe_cluster("sds-grpc", sds_pipe),
                         loopback_cluster("prometheus_stats", admin_port), loopback_cluster("agent", agent_port)],
            "listeners": [route_listener(prom_port, "/stats/prometheus", "prometheus_stats", "stats"),
                          route_listener(status_port, "/healthz/ready", "agent", "agent")],
        },
    }


def summary(push: Push) -> dict:
    """Counts per type, and the listener names by kind (for assertions and reports)."""
    return {"listeners": len(push.listeners), "routes": len(push.routes), "clusters": len(push.clusters),
            "endpoints": len(push.endpoints),
            "http_port_listeners": [l["name"] for l in push.listeners if l["name"].startswith("0.0.0.0_")],
            "tcp_listeners": [l["name"] for l in push.listeners
                              if not l["name"].startswith(("0.0.0.0_", "virtual"))]}


if __name__ == "__main__":  # print a push as JSON, e.g. to look at it or feed xds_control.py by hand
    import sys
    p = sidecar_push(Pod("10.244.0.9"), default_mesh(), inbound=[InboundPort(80, "http")],
                     flavor=sys.argv[1] if len(sys.argv) > 1 else "wasm")
    print(json.dumps({"summary": summary(p), "resources": p.all()}, indent=1))
