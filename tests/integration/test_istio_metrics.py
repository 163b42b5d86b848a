"""Istio's standard metrics by identity through the real binary: two Strait sidecars on loopback, a client
side ("productpage" in namespace front: outbound listeners, reporter=source) and a server side ("ratings" in
bookinfo: inbound listeners with mTLS, reporter=destination), SPIFFE certificates from certs/strait-ca.sh.
Real HTTP (curl), gRPC (python3-grpcio) and a raw TCP connection go through both; each side's
/stats/prometheus is parsed with prometheus_client's parser and the exact counters, label values,
histogram sums/buckets and TCP bytes are checked on both sides, as well as the metadata exchange headers
being added and stripped, the overflow series past the cap, and the status port's merged scrape."""

from __future__ import annotations

import socket
import ssl
import time

import pytest

import harness
import tlsutil
from harness import bootstrap, http2_cluster, http_listener, route_to, static_cluster, tcp_proxy_listener, virtual_host
from peers import env as peers_env
from test_tls import downstream_tls, tls_cluster, upstream_tls

grpc = pytest.importorskip("grpc")
parser = pytest.importorskip("prometheus_client.parser", reason="python3-prometheus-client is not installed")
from peers import grpc_peer  # noqa: E402  (needs grpc)

CLIENT_SA = "spiffe://cluster.local/ns/front/sa/productpage"
SERVER_SA = "spiffe://cluster.local/ns/bookinfo/sa/ratings"
SVC = "ratings.bookinfo.svc.cluster.local"
HTTP_CLUSTER_OUT = f"outbound|9080||{SVC}"
TCP_CLUSTER_OUT = f"outbound|7000||{SVC}"
STATS = {"name": "istio.stats", "typed_config": {"@type": "type.googleapis.com/stats.PluginConfig"}}
MX = {"name": "istio.metadata_exchange",
      "typed_config": {"@type": "type.googleapis.com/io.istio.http.peer_metadata.Config"}}
# The two sides name their directions explicitly, in the two renderings istiod uses: the client's typed,
# the server's in a TypedStruct (the bare MX above works by the HCM's stat_prefix).
MX_OUTBOUND = {"name": "istio.metadata_exchange", "typed_config": {
    "@type": "type.googleapis.com/io.istio.http.peer_metadata.Config",
    "upstream_discovery": [{"istio_headers": {}}, {"workload_discovery": {}}],
    "upstream_propagation": [{"istio_headers": {}}]}}
MX_INBOUND = {"name": "istio.metadata_exchange", "typed_config": {
    "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
    "type_url": "type.googleapis.com/io.istio.http.peer_metadata.Config",
    "value": {"downstream_discovery": [{"istio_headers": {}}, {"workload_discovery": {}}],
              "downstream_propagation": [{"istio_headers": {}}]}}}
BODY = b"q" * 100
RESPONSE_SIZE = 5000


def node(workload: str, ns: str, app: str, version: str, **extra) -> dict:
    md = {"NAME": f"{workload}-5d8f7-x2x9z", "NAMESPACE": ns, "WORKLOAD_NAME": workload, "CLUSTER_ID": "Kubernetes",
          "MESH_ID": "cluster.local", "LABELS": {"app": app, "version": version}, "STRAIT_ISTIO_METRICS": "true"}
    md.update(extra)
    return {"id": f"sidecar~127.0.0.1~{workload}.{ns}~{ns}.svc.cluster.local", "cluster": f"{workload}.{ns}",
            "metadata": md}


def with_node(config: dict, n: dict) -> dict:
    config["node"] = n
    return config


def scrape(proc) -> dict:
    """{family name: [samples]} from /stats/prometheus, parsed by prometheus_client (strict about syntax)."""
    text = proc.get("/stats/prometheus").text
    return {f.name: f for f in parser.text_string_to_metric_families(text)}


def value(families: dict, sample_name: str, **labels) -> float | None:
    """The value of the one sample named `sample_name` whose labels include `labels` (None if none)."""
    family = sample_name
    for suffix in ("_bucket", "_sum", "_count", "_total"):
        if family.endswith(suffix):
            family = family[: -len(suffix)]
            break
    found = [s for s in families[family].samples if s.name == sample_name
             and all(s.labels.get(k) == v for k, v in labels.items())] if family in families else []
    assert len(found) <= 1, found
    return found[0].value if found else None


def labels_of(families: dict, sample_name: str, **labels) -> dict:
    family = sample_name[: -len("_total")] if sample_name.endswith("_total") else sample_name
    found = [s.labels for s in families[family].samples if s.name == sample_name
             and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (labels, [s.labels for s in families[family].samples])
    return found[0]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return tlsutil.make_pki(tmp_path_factory.mktemp("istio-metrics-pki"), server=("bookinfo", "ratings"),
                            client=("front", "productpage"))


@pytest.fixture
def mesh(fleet, pki):
    """Starts the app servers and both sidecars; returns the client sidecar's ports and both processes."""
    origin = peers_env.origin(fleet, "ratings-app")
    grpc_server = harness.track(fleet, grpc_peer.GrpcServer(workers=4))
    echo = fleet.echo()
    # Server side: inbound listeners, mTLS required, only the client's identity accepted.
    mtls = downstream_tls(pki["server"], pki["root"], require_client=True, sans=[CLIENT_SA], alpn=["h2", "http/1.1"])
    vh = virtual_host("in", ["*"], [route_to("inbound|9090||", prefix=f"/{grpc_peer.SERVICE}/"),
                                    route_to("inbound|9080||")])
    in_http = http_listener("in_http", "inbound_0.0.0.0_9080", [vh],
                            http_filters=[MX_INBOUND, STATS, harness.router_filter()])
    in_http["filter_chains"][0]["transport_socket"] = mtls
    in_tcp = tcp_proxy_listener("in_tcp", "inbound|7000||", stat_prefix="inbound|7000||")
    in_tcp["traffic_direction"] = "INBOUND"
    in_tcp["filter_chains"][0]["transport_socket"] = mtls
    in_tcp["filter_chains"][0]["filters"].insert(0, STATS)
    server = fleet.start(with_node(bootstrap(
        [in_http, in_tcp],
        [static_cluster("inbound|9080||", [origin.port]), http2_cluster("inbound|9090||", [grpc_server.port]),
         static_cluster("inbound|7000||", [echo.port])]), node("ratings-v2", "bookinfo", "ratings", "v2")))
    # Client side: plaintext from the app, mTLS to the server side (its identity checked).
    to_server = upstream_tls(pki["root"], pki["client"], sans=[SERVER_SA])
    out_vh = virtual_host("out", ["*"], [route_to(HTTP_CLUSTER_OUT)])
    out_http = http_listener("out_http", "outbound_0.0.0.0_9080", [out_vh],
                             http_filters=[MX_OUTBOUND, STATS, harness.router_filter()])
    out_tcp = tcp_proxy_listener("out_tcp", TCP_CLUSTER_OUT)
    out_tcp["filter_chains"][0]["filters"].insert(0, STATS)
    http_cluster = http2_cluster(HTTP_CLUSTER_OUT, [server.listener_port("in_http")])
    http_cluster["transport_socket"] = to_server
    client = fleet.start(with_node(bootstrap(
        [out_http, out_tcp],
        [http_cluster, tls_cluster(TCP_CLUSTER_OUT, [server.listener_port("in_tcp")], to_server)]),
        node("productpage-v1", "front", "productpage", "v1")))
    return {"client": client, "server": server, "origin": origin,
            "http": client.listener_port("out_http"), "tcp": client.listener_port("out_tcp")}


COMMON_SOURCE = {"source_workload": "productpage-v1", "source_workload_namespace": "front", "source_app": "productpage",
                 "source_version": "v1", "source_cluster": "Kubernetes"}
COMMON_DEST = {"destination_workload": "ratings-v2", "destination_workload_namespace": "bookinfo",
               "destination_app": "ratings", "destination_version": "v2", "destination_cluster": "Kubernetes",
               "destination_service": SVC, "destination_service_name": "ratings",
               "destination_service_namespace": "bookinfo"}


def test_http_and_grpc_metrics_by_identity_on_both_sidecars(mesh):
    for _ in range(3):
        r = harness.curl(["-i", "-X", "POST", "--data-binary", "@-", "-H", f"Host: {SVC}:9080",
                          f"http://127.0.0.1:{mesh['http']}/_/body?size={RESPONSE_SIZE}"], input=BODY)
        assert r.returncode == 0, r.stderr
        head = r.stdout.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
        assert " 200 " in head.splitlines()[0], head
        assert "x-envoy-peer-metadata" not in head, "the client sidecar must strip the server's metadata"
    # The server side read and stripped the client's metadata: the app never sees it.
    for rec in mesh["origin"].find("/_/body"):
        assert not any(n.lower().startswith("x-envoy-peer-metadata") for n, _ in rec.headers), rec.headers

    channel = grpc.insecure_channel(f"127.0.0.1:{mesh['http']}",
                                    options=grpc_peer.CHANNEL_OPTIONS + [("grpc.default_authority", f"{SVC}:9080")])
    try:
        unary = channel.unary_unary(f"/{grpc_peer.SERVICE}/Unary")
        fail = channel.unary_unary(f"/{grpc_peer.SERVICE}/Fail")
        for _ in range(2):
            assert unary(b"ping", timeout=10) == b"ping"
        with pytest.raises(grpc.RpcError) as err:
            fail(b"thing", timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        channel.close()

    # The client side learns the server's identity from its upstream TLS connection (the router's pool
    # hands the connection over); its own principal is not reported on HTTP (Istio's "unknown").
    want = {"client": ({"reporter": "source", **COMMON_SOURCE, **COMMON_DEST, "source_principal": "unknown",
                        "destination_principal": SERVER_SA, "connection_security_policy": "unknown"}),
            "server": ({"reporter": "destination", **COMMON_SOURCE, **COMMON_DEST, "source_principal": CLIENT_SA,
                        "destination_principal": SERVER_SA, "connection_security_policy": "mutual_tls"})}
    for side, labels in want.items():
        proc = mesh[side]
        deadline = time.monotonic() + 5
        while True:
            fams = scrape(proc)
            done = value(fams, "istio_requests_total", request_protocol="grpc", grpc_response_status="5")
            if done == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        http = {**labels, "request_protocol": "http", "response_code": "200", "grpc_response_status": "",
                "response_flags": "-"}
        assert labels_of(fams, "istio_requests_total", request_protocol="http") == http, side
        assert value(fams, "istio_requests_total", **http) == 3, side
        grpc_ok = {**labels, "request_protocol": "grpc", "response_code": "200", "grpc_response_status": "0",
                   "response_flags": "-"}
        assert value(fams, "istio_requests_total", **grpc_ok) == 2, side
        assert value(fams, "istio_requests_total", **{**grpc_ok, "grpc_response_status": "5"}) == 1, side
        # Histograms: the three HTTP requests each had a 100-byte body and a 5000-byte response.
        assert value(fams, "istio_request_bytes_count", **http) == 3
        assert value(fams, "istio_request_bytes_sum", **http) == 3 * len(BODY)
        assert value(fams, "istio_request_bytes_bucket", **http, le="10") == 0
        assert value(fams, "istio_request_bytes_bucket", **http, le="100") == 3
        assert value(fams, "istio_response_bytes_sum", **http) == 3 * RESPONSE_SIZE
        assert value(fams, "istio_response_bytes_bucket", **http, le="1000") == 0
        assert value(fams, "istio_response_bytes_bucket", **http, le="10000") == 3
        assert value(fams, "istio_response_bytes_bucket", **http, le="+Inf") == 3
        assert value(fams, "istio_request_duration_milliseconds_count", **http) == 3
        assert value(fams, "istio_request_duration_milliseconds_bucket", **http, le="+Inf") == 3
        assert 0 < value(fams, "istio_request_duration_milliseconds_sum", **http) < 3 * 10000
        assert fams["istio_requests"].type == "counter"
        assert fams["istio_request_duration_milliseconds"].type == "histogram"
        assert fams["istio_request_duration_milliseconds"].documentation, "a # HELP line"


def test_tcp_metrics_by_identity_on_both_sidecars(mesh):
    payload = bytes(range(250)) * 4
    with harness.connect(mesh["tcp"]) as s:
        s.sendall(payload)
        assert harness.recv_exact(s, len(payload)) == payload
        s.shutdown(socket.SHUT_WR)
        assert harness.recv_until_eof(s) == b""
    source = {"reporter": "source", **COMMON_SOURCE, "source_principal": CLIENT_SA,
              "destination_principal": SERVER_SA, "destination_workload": "unknown",
              "destination_workload_namespace": "bookinfo", "destination_app": "unknown",
              "destination_version": "unknown", "destination_cluster": "unknown", "destination_service": SVC,
              "destination_service_name": "ratings", "destination_service_namespace": "bookinfo",
              "request_protocol": "tcp", "response_flags": "-", "connection_security_policy": "unknown"}
    dest = {"reporter": "destination", "source_workload": "unknown", "source_workload_namespace": "front",
            "source_principal": CLIENT_SA, "source_app": "unknown", "source_version": "unknown",
            "source_cluster": "unknown", "destination_workload": "ratings-v2",
            "destination_workload_namespace": "bookinfo", "destination_principal": SERVER_SA,
            "destination_app": "ratings", "destination_version": "v2", "destination_cluster": "Kubernetes",
            "destination_service": "unknown", "destination_service_name": "unknown",
            "destination_service_namespace": "unknown", "request_protocol": "tcp", "response_flags": "-",
            "connection_security_policy": "mutual_tls"}
    for side, labels in (("client", source), ("server", dest)):
        deadline = time.monotonic() + 5
        while True:
            fams = scrape(mesh[side])
            if value(fams, "istio_tcp_connections_closed_total") == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert labels_of(fams, "istio_tcp_connections_opened_total") == labels, side
        assert value(fams, "istio_tcp_connections_opened_total", **labels) == 1, side
        assert value(fams, "istio_tcp_connections_closed_total", **labels) == 1, side
        assert value(fams, "istio_tcp_received_bytes_total", **labels) == len(payload), side
        assert value(fams, "istio_tcp_sent_bytes_total", **labels) == len(payload), side
        assert "istio_requests" not in fams, "no HTTP went through"


def test_cap_folds_new_label_sets_into_the_overflow_series_and_status_port_serves_them(fleet):
    origin = peers_env.origin(fleet)
    vh = virtual_host("in", ["*"], [route_to("inbound|8080||")])
    listener = http_listener("in", "inbound_0.0.0.0_8080", [vh], http_filters=[STATS, harness.router_filter()])
    status_port = harness.free_port()
    proc = fleet.start(with_node(bootstrap([listener], [static_cluster("inbound|8080||", [origin.port])]),
                                 node("capped", "ns1", "capped", "v1", STRAIT_ISTIO_METRICS_MAX_SERIES="2")),
                       extra=["--status-port", str(status_port)])
    port = proc.listener_port("in")
    codes = [200, 201, 202, 203, 208]
    for code in codes:
        for _ in range(2):
            r = harness.curl(["-o", "/dev/null", "-w", "%{http_code}",
                              f"http://127.0.0.1:{port}/_/fail-early?status={code}&times=1000&key=k{code}"])
            assert r.stdout == str(code).encode(), (code, r.stdout, r.stderr)
    fams = scrape(proc)
    series = [s for s in fams["istio_requests"].samples]
    codes_seen = sorted(s.labels["response_code"] for s in series)
    assert codes_seen == ["200", "201", "overflow"], series
    overflow = labels_of(fams, "istio_requests_total", response_code="overflow")
    assert overflow["reporter"] == "destination"
    assert all(overflow[k] == "overflow" for k in ("source_workload", "destination_service", "response_flags",
                                                   "connection_security_policy")), overflow
    assert value(fams, "istio_requests_total", response_code="overflow") == 6
    assert value(fams, "istio_requests_total", response_code="200") == 2
    assert proc.stats()["istio.series_overflow"] == 6
    # The pod's status port merges Strait's own scrape, Istio's families included.
    body = harness.http_request(f"http://127.0.0.1:{status_port}", "/stats/prometheus").text
    merged = {f.name: f for f in parser.text_string_to_metric_families(body)}
    assert value(merged, "istio_requests_total", response_code="overflow") == 6


def test_bad_cap_is_refused_naming_the_key(fleet, tmp_path):
    cfg = with_node(bootstrap([], []), node("w", "ns", "a", "v", STRAIT_ISTIO_METRICS_MAX_SERIES="many"))
    path = harness.write_bootstrap(tmp_path, cfg)
    r = harness.run_strait(["-c", str(path), "--mode", "validate"])
    assert r.returncode != 0
    assert "node.metadata.STRAIT_ISTIO_METRICS_MAX_SERIES" in r.stderr + r.stdout


def test_off_by_default_istio_filters_stay_inert(fleet):
    origin = peers_env.origin(fleet)
    vh = virtual_host("in", ["*"], [route_to("inbound|8080||")])
    listener = http_listener("in", "inbound_0.0.0.0_8080", [vh], http_filters=[MX, STATS, harness.router_filter()])
    n = node("quiet", "ns1", "quiet", "v1")
    del n["metadata"]["STRAIT_ISTIO_METRICS"]
    proc = fleet.start(with_node(bootstrap([listener], [static_cluster("inbound|8080||", [origin.port])]), n))
    r = harness.curl(["-i", f"http://127.0.0.1:{proc.listener_port('in')}/x"])
    assert r.returncode == 0 and b"x-envoy-peer-metadata" not in r.stdout.lower()
    assert "istio_requests_total" not in proc.get("/stats/prometheus").text
    assert proc.stats()["http.inbound_0.0.0.0_8080.inert.istio_stats.requests_total"] == 1
