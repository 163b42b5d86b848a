"""Tracing through the real binary: W3C traceparent and B3 propagated across two chained sidecars
(client -> strait A (OUTBOUND) -> strait B (INBOUND) -> origin), spans exported over OTLP/HTTP to a
local collector that decodes them with Python classes protoc generates from our own .proto files,
sampling (0% still propagates; a parent's sampled flag and x-envoy-force-trace are honoured), a
collector that is down (requests unaffected, spans dropped and counted), a collector cluster with
mTLS (spans go in TLS with the sidecar's identity, never in the clear) and bad tracing config refused
by field."""

from __future__ import annotations

import importlib
import shutil
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import harness
import tlsutil
from peers import env, h1

OTEL_TYPE = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"
API_DIR = Path(__file__).resolve().parents[2] / "xds" / "api"
OTLP_PROTOS = ["opentelemetry/proto/common/v1/common.proto", "opentelemetry/proto/resource/v1/resource.proto",
               "opentelemetry/proto/trace/v1/trace.proto",
               "opentelemetry/proto/collector/trace/v1/trace_service.proto"]

_pb = None


def otlp_classes(tmp_root: Path):
    """Generates the OTLP Python classes from our .proto subset (protoc --python_out), once."""
    global _pb
    if _pb is not None:
        return _pb
    if shutil.which("protoc") is None:
        pytest.skip("protoc not found (protobuf-compiler)")
    try:
        import google.protobuf  # noqa: F401
    except ImportError:
        pytest.skip("python3-protobuf is not installed (deploy/install-deps.sh test)")
    out = tmp_root / "otlp_py"
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(["protoc", f"-I{API_DIR}", f"--python_out={out}", *OTLP_PROTOS], check=True)
    sys.path.insert(0, str(out))
    _pb = importlib.import_module("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
    return _pb


class Collector:
    """A small OTLP/HTTP receiver: POST /v1/traces with an ExportTraceServiceRequest body."""

    def __init__(self, pb, tls: ssl.SSLContext | None = None):
        self.pb = pb
        self.spans: list[dict] = []
        self.posts: list[dict] = []
        self.peer_uris: list[str] = []  # with `tls`: the URI SANs of each client certificate seen
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                req = owner.pb.ExportTraceServiceRequest()
                req.ParseFromString(body)
                if isinstance(self.connection, ssl.SSLSocket):
                    cert = self.connection.getpeercert() or {}
                    with owner.lock:
                        owner.peer_uris += [v for k, v in cert.get("subjectAltName", ()) if k == "URI"]
                owner._add(self.path, dict(self.headers), req)
                reply = owner.pb.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((harness.LOOPBACK, 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _add(self, path: str, headers: dict, req) -> None:
        with self.lock:
            self.posts.append({"path": path, "headers": {k.lower(): v for k, v in headers.items()}})
            for rs in req.resource_spans:
                service = {kv.key: kv.value.string_value for kv in rs.resource.attributes}.get("service.name")
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        attrs = {}
                        for kv in s.attributes:
                            v = kv.value
                            attrs[kv.key] = v.int_value if v.WhichOneof("value") == "int_value" else v.string_value
                        self.spans.append({
                            "service": service, "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                            "parent": s.parent_span_id.hex(), "name": s.name, "kind": s.kind,
                            "start": s.start_time_unix_nano, "end": s.end_time_unix_nano,
                            "attrs": attrs, "status": s.status.code})

    def wait_spans(self, pred, n: int, timeout: float = 6.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                got = [s for s in self.spans if pred(s)]
            if len(got) >= n or time.monotonic() > deadline:
                return got
            time.sleep(0.05)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def otel_provider(cluster: str, service: str, scheme: str = "http", **extra) -> dict:
    return {"name": "envoy.tracers.opentelemetry",
            "typed_config": {"@type": OTEL_TYPE, "service_name": service,
                             "http_service": {"http_uri": {"uri": f"{scheme}://collector.local/v1/traces",
                                                           "cluster": cluster, "timeout": "0.5s"},
                                              "request_headers_to_add": [
                                                  {"header": {"key": "x-otlp-token", "value": "t0k"}}]},
                             **extra}}


def sidecar_config(name: str, direction: str, upstream_port: int, collector_port: int, *,
                   tracing: dict | None = None, decorator: str | None = None) -> dict:
    route = harness.route_to("next")
    if decorator:
        route["decorator"] = {"operation": decorator}
    vh = harness.virtual_host("all", ["*"], [route])
    t = {"provider": otel_provider("otel", name)} if tracing is None else tracing
    listener = harness.http_listener(name, name, [vh], tracing=t,
                                     listener_extra={"traffic_direction": direction})
    return harness.bootstrap([listener], [harness.static_cluster("next", [upstream_port]),
                                          harness.static_cluster("otel", [collector_port])])


@pytest.fixture
def collector(fleet, tmp_path):
    return harness.track(fleet, Collector(otlp_classes(tmp_path)))


def chain(fleet, collector_port: int, **b_kw):
    """origin <- B (INBOUND) <- A (OUTBOUND); returns (origin, proc_a, port_a, proc_b)."""
    origin = env.origin(fleet)
    proc_b = fleet.start(sidecar_config("side_b", "INBOUND", origin.port, collector_port, **b_kw))
    port_b = proc_b.listener_port("side_b")
    proc_a = fleet.start(sidecar_config("side_a", "OUTBOUND", port_b, collector_port))
    return origin, proc_a, proc_a.listener_port("side_a"), proc_b


def traceparent_of(origin) -> tuple[str, str, str]:
    tp = h1.header_get(origin.last().headers, "traceparent")
    assert tp is not None, f"no traceparent reached the origin: {origin.last().headers}"
    version, trace, parent, flags = tp.split("-")
    assert version == "00"
    return trace, parent, flags


def test_traceparent_and_spans_link_across_two_sidecars(fleet, collector):
    origin, _a, port_a, _b = chain(fleet, collector.port, decorator="echo-op")
    r = h1.get(port_a, "/hello?x=1", headers=[("host", "svc.local"), ("x-request-id", "rid-chain-1")])
    assert r.status == 200
    trace, parent, flags = traceparent_of(origin)
    assert flags == "01"
    assert h1.header_get(origin.last().headers, "x-request-id") == "rid-chain-1"  # kept end to end

    spans = collector.wait_spans(lambda s: s["trace_id"] == trace, 2)
    assert len(spans) == 2, collector.spans
    by_service = {s["service"]: s for s in spans}
    a, b = by_service["side_a"], by_service["side_b"]
    # A started the trace (root, CLIENT on an OUTBOUND listener); B is its child (SERVER, INBOUND),
    # and the origin's parent is B's span.
    assert a["parent"] == ""
    assert a["kind"] == 3 and b["kind"] == 2
    assert b["parent"] == a["span_id"]
    assert parent == b["span_id"]
    assert a["name"] == "svc.local/hello"  # host + path, query cut
    assert b["name"] == "echo-op"          # the route's decorator
    for s in (a, b):
        assert s["attrs"]["http.method"] == "GET"
        assert s["attrs"]["http.status_code"] == 200
        assert s["attrs"]["guid:x-request-id"] == "rid-chain-1"
        assert s["attrs"]["upstream_cluster"] == "next"
        assert s["status"] == 0
        assert 0 < s["start"] <= s["end"]
    assert collector.posts[0]["path"] == "/v1/traces"
    assert collector.posts[0]["headers"]["content-type"] == "application/x-protobuf"
    assert collector.posts[0]["headers"]["x-otlp-token"] == "t0k"
    assert collector.posts[0]["headers"]["host"] == "collector.local"


def test_incoming_traceparent_and_b3_are_honoured(fleet, collector):
    origin, proc_a, port_a, _b = chain(fleet, collector.port)
    incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert h1.get(port_a, "/w3c", headers=[("traceparent", incoming), ("tracestate", "k=v")]).status == 200
    trace, _, _ = traceparent_of(origin)
    assert trace == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert h1.header_get(origin.last().headers, "tracestate") == "k=v"
    a = collector.wait_spans(lambda s: s["trace_id"] == trace and s["service"] == "side_a", 1)
    assert a and a[0]["parent"] == "00f067aa0ba902b7"

    b3_trace, b3_span = "463ac35c9f6413ad48485a3953bb6124", "a2fb4a1d1a96d312"
    r = h1.get(port_a, "/b3", headers=[("x-b3-traceid", b3_trace), ("x-b3-spanid", b3_span),
                                        ("x-b3-sampled", "1")])
    assert r.status == 200
    hdrs = origin.last().headers
    trace, parent, flags = traceparent_of(origin)
    assert (trace, flags) == (b3_trace, "01")
    assert h1.header_get(hdrs, "x-b3-traceid") == b3_trace
    assert h1.header_get(hdrs, "x-b3-spanid") == parent  # B's span, in B3 as well
    spans = collector.wait_spans(lambda s: s["trace_id"] == b3_trace, 2)
    by_service = {s["service"]: s for s in spans}
    assert by_service["side_a"]["parent"] == b3_span
    assert by_service["side_b"]["parent"] == by_service["side_a"]["span_id"]
    assert h1.header_get(hdrs, "x-b3-parentspanid") == by_service["side_a"]["span_id"]

    # b3 single header, unsampled: propagated with the decision, no span sent.
    single = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0"
    assert h1.get(port_a, "/b3single", headers=[("b3", single)]).status == 200
    trace, _, flags = traceparent_of(origin)
    assert (trace, flags) == ("80f198ee56343ba864fe8b2a57d3eff7", "00")
    assert h1.header_get(origin.last().headers, "b3").startswith("80f198ee56343ba864fe8b2a57d3eff7-")
    time.sleep(1.5)
    assert not [s for s in collector.spans if s["trace_id"] == trace]
    assert proc_a.stats()["tracing.opentelemetry.spans_sent"] >= 2


def test_zero_sampling_propagates_but_sends_nothing(fleet, collector):
    tracing = {"random_sampling": {"value": 0}, "provider": otel_provider("otel", "side_b")}
    origin, _a, _port_a, proc_b = chain(fleet, collector.port, tracing=tracing)
    port_b = proc_b.listener_port("side_b")
    for i in range(5):
        assert h1.get(port_b, f"/s{i}").status == 200
        _trace, _parent, flags = traceparent_of(origin)
        assert flags == "00"
    # A parent that sampled is followed, and so is x-envoy-force-trace from an internal client.
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert h1.get(port_b, "/parent", headers=[("traceparent", parent)]).status == 200
    # (x-forwarded-for with one hop makes the request internal: an external one loses the header.)
    assert h1.get(port_b, "/forced", headers=[("x-envoy-force-trace", "1"),
                                              ("x-forwarded-for", "10.1.2.3")]).status == 200
    forced_trace, _, flags = traceparent_of(origin)
    assert flags == "01"
    got = collector.wait_spans(lambda s: s["service"] == "side_b", 2)
    time.sleep(1.2)  # anything else would have been flushed by now
    b_spans = [s for s in collector.spans if s["service"] == "side_b"]
    assert sorted(s["trace_id"] for s in b_spans) == sorted(["0af7651916cd43dd8448eb211c80319c", forced_trace]), got
    st = proc_b.stats()
    assert st["http.side_b.tracing.not_traceable"] >= 6
    assert st["http.side_b.tracing.service_forced"] == 1


def test_collector_down_does_not_slow_or_fail_requests(fleet):
    dead = harness.closed_port()
    origin = env.origin(fleet)
    proc = fleet.start(sidecar_config("side_b", "INBOUND", origin.port, dead))
    port = proc.listener_port("side_b")
    client = h1.Client(port)
    t0 = time.monotonic()
    n = 300
    for i in range(n):
        assert client.request("GET", f"/d{i}").status == 200
    elapsed = time.monotonic() - t0
    client.close()
    assert elapsed < 15, f"{n} requests took {elapsed:.1f}s with the collector down"
    st = proc.wait_stats(lambda s: s.get("tracing.opentelemetry.spans_dropped", 0) >= n, timeout=8)
    assert st.get("tracing.opentelemetry.spans_sent", 0) == 0
    assert st["tracing.opentelemetry.spans_dropped"] >= n
    assert st.get("tracing.opentelemetry.http_reports_failed", 0) >= 1


def test_no_tracing_config_leaves_headers_alone(fleet):
    s = env.simple(fleet)
    assert h1.get(s.port, "/plain", headers=[("b3", "0")]).status == 200
    hdrs = s.origin.last().headers
    assert h1.header_get(hdrs, "traceparent") is None
    assert h1.header_get(hdrs, "b3") == "0"


def test_collector_behind_a_dns_cluster(fleet, collector):
    """The collector cluster's hosts are read at each send: a STRICT_DNS cluster, empty when the HCM is
    translated, gets its spans once resolved."""
    origin = env.origin(fleet)
    cfg = sidecar_config("side_b", "INBOUND", origin.port, collector.port)
    otel = cfg["static_resources"]["clusters"][1]
    otel.update({"type": "STRICT_DNS", "dns_lookup_family": "V4_ONLY"})
    otel["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["address"] = \
        "localhost"
    proc = fleet.start(cfg)
    proc.wait_stats(lambda s: s.get("cluster.otel.membership_total", 0) >= 1, timeout=5)
    assert h1.get(proc.listener_port("side_b"), "/dns").status == 200
    trace, _, _ = traceparent_of(origin)
    assert collector.wait_spans(lambda s: s["trace_id"] == trace, 1), collector.spans


def test_other_tracer_propagates_without_spans(fleet, collector):
    """Istio names Zipkin on its HCMs: accepted (a warning), context propagated, nothing exported."""
    zipkin = {"provider": {"name": "envoy.tracers.zipkin",
                           "typed_config": {"@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
                                            "collector_cluster": "otel", "collector_endpoint": "/api/v2/spans",
                                            "collector_endpoint_version": "HTTP_JSON"}}}
    origin = env.origin(fleet)
    proc = fleet.start(sidecar_config("side_b", "INBOUND", origin.port, collector.port, tracing=zipkin))
    assert h1.get(proc.listener_port("side_b"), "/z").status == 200
    _trace, _parent, flags = traceparent_of(origin)
    assert flags == "01"
    assert "is not supported: trace context is propagated" in proc.logs()
    time.sleep(1.2)
    assert collector.spans == []


@pytest.mark.parametrize("tracing, field, words", [
    ({"provider": {"name": "envoy.tracers.opentelemetry",
                   "typed_config": {"@type": OTEL_TYPE, "grpc_service": {"envoy_grpc": {"cluster_name": "otel"}}}}},
     "tracing.provider.typed_config.grpc_service", "OTLP over gRPC is not supported"),
    ({"provider": otel_provider("nope", "x")}, "http_service.http_uri.cluster", "unknown cluster 'nope'"),
    ({"provider": otel_provider("otel", "x", scheme="grpc")}, "http_service.http_uri.uri",
     "the scheme must be http or https"),
    ({"random_sampling": {"value": 150}}, "tracing.random_sampling.value", "not within 0..100"),
])
def test_bad_tracing_config_is_refused(tmp_path, tracing, field, words):
    cfg = sidecar_config("side_b", "INBOUND", 1, 2, tracing=tracing)
    path = harness.write_bootstrap(tmp_path, cfg)
    r = harness.run_strait(["--mode", "validate", "-c", str(path)])
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert field in out and words in out, out


SPIFFE_SIDECAR = "spiffe://cluster.local/ns/default/sa/sidecar"
SPIFFE_COLLECTOR = "spiffe://cluster.local/ns/observability/sa/collector"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return tlsutil.make_pki(tmp_path_factory.mktemp("pki"), sidecar=("default", "sidecar"),
                            collector=("observability", "collector"))


def tls_collector_config(pki, origin_port: int, collector_port: int) -> dict:
    """side_b with its otel cluster in mTLS: the sidecar's certificate, the collector's SPIFFE ID checked."""
    cfg = sidecar_config("side_b", "INBOUND", origin_port, collector_port,
                         tracing={"provider": otel_provider("otel", "side_b", scheme="https")})
    otel = cfg["static_resources"]["clusters"][1]
    assert otel["name"] == "otel"
    otel["transport_socket"] = tlsutil.upstream_mtls(pki["root"], pki["sidecar"], SPIFFE_COLLECTOR)
    return cfg


def test_spans_go_to_a_collector_cluster_over_mtls(fleet, pki, tmp_path):
    """The collector cluster's transport_socket applies to the export, as to any traffic of the cluster:
    spans arrive over TLS, the collector sees the sidecar's SPIFFE identity, the cluster's ssl stats count
    the handshake."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(pki["collector"]["cert"]), str(pki["collector"]["key"]))
    server.load_verify_locations(str(pki["root"]))
    server.verify_mode = ssl.CERT_REQUIRED
    collector = harness.track(fleet, Collector(otlp_classes(tmp_path), tls=server))
    origin = env.origin(fleet)
    proc = fleet.start(tls_collector_config(pki, origin.port, collector.port))
    assert h1.get(proc.listener_port("side_b"), "/secure").status == 200
    trace, _, _ = traceparent_of(origin)
    spans = collector.wait_spans(lambda s: s["trace_id"] == trace, 1)
    assert len(spans) == 1, (collector.spans, proc.logs()[-2000:])
    assert spans[0]["service"] == "side_b"
    assert collector.peer_uris and set(collector.peer_uris) == {SPIFFE_SIDECAR}
    assert collector.posts[0]["headers"]["host"] == "collector.local"
    # "sent" is counted when the collector's answer comes back, which may be just after the collector
    # has the spans: wait for it rather than read once.
    stats = proc.wait_stats(lambda s: s.get("tracing.opentelemetry.http_reports_sent", 0) >= 1)
    assert stats.get("cluster.otel.ssl.handshake", 0) >= 1, stats
    assert stats.get("tracing.opentelemetry.http_reports_sent", 0) >= 1, stats


def test_tls_collector_cluster_never_gets_spans_in_the_clear(fleet, pki, tmp_path):
    """A plaintext server behind a TLS collector cluster: the export fails its handshake and the batch is
    dropped and counted; no span goes out unencrypted."""
    collector = harness.track(fleet, Collector(otlp_classes(tmp_path)))  # plain HTTP
    origin = env.origin(fleet)
    proc = fleet.start(tls_collector_config(pki, origin.port, collector.port))
    assert h1.get(proc.listener_port("side_b"), "/secret-path").status == 200
    proc.wait_stats(lambda s: s.get("tracing.opentelemetry.http_reports_failed", 0) >= 1, timeout=8)
    stats = proc.stats()
    assert stats.get("tracing.opentelemetry.spans_dropped", 0) >= 1, stats
    assert stats.get("tracing.opentelemetry.spans_sent", 0) == 0, stats
    assert collector.posts == [] and collector.spans == []
