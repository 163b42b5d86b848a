"""The HTTP filters istiod puts in every sidecar: fault injection (delays, HTTP and gRPC aborts, header
control, per-route overrides, percentages, max_active_faults), CORS (preflights and simple requests,
allowed and refused origins), and the inert stand-ins (grpc_stats, istio.alpn, istio.stats,
peer_metadata, Istio's Wasm plugins) that must pass requests through untouched, counted. TypedStruct
wrappers resolve to the filter they wrap. Real strait, loopback origins (peers/origin.py echoes what it
received), python3-grpcio for gRPC."""

from __future__ import annotations

import hashlib
import socket
import struct
import threading
import time

import grpc
import pytest

import harness
from harness import route_to, virtual_host
from peers import env, grpc_peer, h1

FAULT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
CORS_TYPE = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
CORS_POLICY_TYPE = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
FAULT = "envoy.filters.http.fault"
CORS = "envoy.filters.http.cors"


def _fault(**cfg) -> dict:
    return {"name": FAULT, "typed_config": {"@type": FAULT_TYPE, **cfg}}


def _chain(*filters) -> list[dict]:
    return [*filters, harness.router_filter()]


def _pct(n: int, denominator: str = "HUNDRED") -> dict:
    return {"numerator": n, "denominator": denominator}


def _start(fleet, http_filters, routes=None, vh_extra=None, more_vhosts=(), **kw):
    origin = env.origin(fleet)
    vh = virtual_host("all", ["*"], routes or [route_to("backend")], **(vh_extra or {}))
    listener = harness.http_listener("http", "ingress_http", [*more_vhosts, vh], http_filters=http_filters)
    proc = fleet.start(harness.bootstrap([listener], [harness.static_cluster("backend", [origin.port])]), **kw)
    return proc, proc.listener_port("http"), origin


def _stat(proc, name: str) -> int:
    return proc.stats().get(name, 0)


# ---------------------------------------------------------------------------------------------------
# Fault injection


def test_fixed_delay_holds_request_and_body_then_forwards(fleet):
    proc, port, origin = _start(fleet, _chain(_fault(delay={"fixed_delay": "0.4s", "percentage": _pct(100)})))
    body = b"payload-" * 4096
    start = time.monotonic()
    resp = h1.request(port, "POST", "/_/echo-body", headers=[("host", "svc")], body=body, timeout=10)
    elapsed = time.monotonic() - start
    assert resp.status == 200, resp
    assert resp.body == body, "the body held during the delay must reach the origin intact"
    assert elapsed >= 0.35, f"answered after {elapsed:.3f}s; the 0.4s delay was not applied"
    st = proc.stats()
    assert st["http.ingress_http.fault.delays_injected"] == 1
    assert st["http.ingress_http.fault.aborts_injected"] == 0
    assert st["http.ingress_http.fault.active_faults"] == 0


def test_abort_503_never_reaches_the_origin(fleet):
    proc, port, origin = _start(fleet, _chain(_fault(abort={"http_status": 503, "percentage": _pct(100)})))
    for _ in range(3):
        resp = h1.get(port, "/anything", headers=[("host", "svc")])
        assert resp.status == 503, resp
        assert resp.body == b"fault filter abort"
    assert origin.request_count() == 0
    assert _stat(proc, "http.ingress_http.fault.aborts_injected") == 3
    assert _stat(proc, "http.ingress_http.downstream_rq_5xx") == 3


def test_grpc_abort_is_a_grpc_status(fleet):
    server = harness.track(fleet, grpc_peer.GrpcServer())
    cfg = harness.simple_http_config(server.port, h2_upstream=True, cluster="greeter", stat_prefix="grpc_in",
                                     http_filters=_chain(_fault(abort={"grpc_status": 8, "percentage": _pct(100)})))
    proc = fleet.start(cfg)
    client = harness.track(fleet, grpc_peer.GrpcClient(proc.listener_port("http")))
    with pytest.raises(grpc.RpcError) as err:
        client.unary(b"hello", timeout=20)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
    assert err.value.details() == "fault filter abort"
    assert server.metadata_seen == [], "an aborted call must not reach the server"
    assert _stat(proc, "http.grpc_in.fault.aborts_injected") == 1


def test_grpc_call_is_delayed_then_completes(fleet):
    server = harness.track(fleet, grpc_peer.GrpcServer())
    cfg = harness.simple_http_config(server.port, h2_upstream=True, cluster="greeter", stat_prefix="grpc_in",
                                     http_filters=_chain(_fault(delay={"fixed_delay": "0.3s", "percentage": _pct(100)})))
    proc = fleet.start(cfg)
    client = harness.track(fleet, grpc_peer.GrpcClient(proc.listener_port("http")))
    start = time.monotonic()
    resp, call = client.unary.with_call(b"held then sent" * 1000, timeout=20)
    elapsed = time.monotonic() - start
    assert resp == b"held then sent" * 1000 and call.code() == grpc.StatusCode.OK
    assert elapsed >= 0.25, f"answered after {elapsed:.3f}s; the delay was not applied"
    assert _stat(proc, "http.grpc_in.fault.delays_injected") == 1


def test_grpc_call_with_http_abort_maps_to_unavailable(fleet):
    server = harness.track(fleet, grpc_peer.GrpcServer())
    cfg = harness.simple_http_config(server.port, h2_upstream=True, cluster="greeter", stat_prefix="grpc_in",
                                     http_filters=_chain(_fault(abort={"http_status": 503, "percentage": _pct(100)})))
    proc = fleet.start(cfg)
    client = harness.track(fleet, grpc_peer.GrpcClient(proc.listener_port("http")))
    with pytest.raises(grpc.RpcError) as err:
        client.unary(b"hello", timeout=20)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value


def test_header_controlled_faults(fleet):
    proc, port, origin = _start(fleet, _chain(_fault(
        delay={"header_delay": {}, "percentage": _pct(100)},
        abort={"header_abort": {}, "percentage": _pct(100)})))
    assert h1.get(port, "/plain", headers=[("host", "svc")]).status == 200
    resp = h1.get(port, "/teapot", headers=[("host", "svc"), ("x-envoy-fault-abort-request", "418")])
    assert resp.status == 418, resp
    # The percentage header lowers the configured 100% to 0%: no abort.
    resp = h1.get(port, "/spared", headers=[("host", "svc"), ("x-envoy-fault-abort-request", "418"),
                                            ("x-envoy-fault-abort-request-percentage", "0")])
    assert resp.status == 200, resp
    start = time.monotonic()
    resp = h1.get(port, "/slow", headers=[("host", "svc"), ("x-envoy-fault-delay-request", "300")])
    elapsed = time.monotonic() - start
    assert resp.status == 200, resp
    assert elapsed >= 0.25, f"answered after {elapsed:.3f}s; the header delay was not applied"
    assert [r.path for r in origin.requests] == ["/plain", "/spared", "/slow"]
    st = proc.stats()
    assert st["http.ingress_http.fault.aborts_injected"] == 1
    assert st["http.ingress_http.fault.delays_injected"] == 1


def test_percentage_zero_never_faults_and_hundred_always_does(fleet):
    routes = [
        route_to("backend", prefix="/always", **{}),
        route_to("backend", prefix="/"),
    ]
    routes[0]["typed_per_filter_config"] = {
        FAULT: {"@type": FAULT_TYPE, "abort": {"http_status": 500, "percentage": _pct(1000000, "MILLION")}}}
    proc, port, origin = _start(fleet, _chain(_fault(abort={"http_status": 503, "percentage": _pct(0)})),
                                routes=routes)
    never = [h1.get(port, f"/never/{i}", headers=[("host", "svc")]).status for i in range(30)]
    always = [h1.get(port, f"/always/{i}", headers=[("host", "svc")]).status for i in range(30)]
    assert never == [200] * 30
    assert always == [500] * 30
    assert origin.request_count() == 30
    assert _stat(proc, "http.ingress_http.fault.aborts_injected") == 30


def test_per_route_override_replaces_filter_config(fleet):
    # Filter: abort everything. The virtual host turns that off; one route turns a 429 abort on again.
    routes = [route_to("backend", prefix="/limited"), route_to("backend", prefix="/")]
    routes[0]["typed_per_filter_config"] = {
        FAULT: {"@type": FAULT_TYPE, "abort": {"http_status": 429, "percentage": _pct(100)}}}
    vh_extra = {"typed_per_filter_config": {FAULT: {"@type": FAULT_TYPE}}}
    proc, port, origin = _start(fleet, _chain(_fault(abort={"http_status": 503, "percentage": _pct(100)})),
                                routes=routes, vh_extra=vh_extra)
    assert h1.get(port, "/free", headers=[("host", "svc")]).status == 200
    assert h1.get(port, "/limited/x", headers=[("host", "svc")]).status == 429
    assert origin.request_count() == 1


def test_headers_and_downstream_nodes_select_requests(fleet):
    proc, port, origin = _start(fleet, _chain(_fault(
        abort={"http_status": 503, "percentage": _pct(100)},
        headers=[{"name": "x-chaos", "string_match": {"exact": "on"}}],
        downstream_nodes=["node-a"],
        upstream_cluster="backend")))
    get = lambda *hdrs: h1.get(port, "/", headers=[("host", "svc"), *hdrs]).status  # noqa: E731
    assert get() == 200
    assert get(("x-chaos", "on")) == 200  # no node header
    assert get(("x-chaos", "on"), ("x-envoy-downstream-service-node", "node-b")) == 200
    assert get(("x-chaos", "off"), ("x-envoy-downstream-service-node", "node-a")) == 200
    assert get(("x-chaos", "on"), ("x-envoy-downstream-service-node", "node-a")) == 503
    assert origin.request_count() == 4


def test_max_active_faults_overflow_passes_requests_through(fleet):
    proc, port, origin = _start(fleet, _chain(_fault(
        delay={"fixed_delay": "4s", "percentage": _pct(100)}, max_active_faults=1)))
    results = {}

    def slow():
        results["slow"] = h1.get(port, "/first", headers=[("host", "svc")], timeout=15).status

    t = threading.Thread(target=slow, daemon=True)
    t.start()
    st = proc.wait_stats(lambda s: s.get("http.ingress_http.fault.active_faults", 0) == 1, timeout=5)
    assert st.get("http.ingress_http.fault.active_faults") == 1, st
    # The one fault in progress is the limit: this request is not delayed (and not faulted at all).
    assert h1.get(port, "/second", headers=[("host", "svc")]).status == 200
    st = proc.stats()
    assert st["http.ingress_http.fault.faults_overflow"] == 1
    assert st["http.ingress_http.fault.delays_injected"] == 1
    assert [r.path for r in origin.requests] == ["/second"], "the delayed request must still be held"
    t.join(timeout=15)
    assert results.get("slow") == 200
    assert _stat(proc, "http.ingress_http.fault.active_faults") == 0


def test_client_gone_during_delay_cancels_the_request(fleet):
    proc, port, origin = _start(fleet, _chain(_fault(delay={"fixed_delay": "1s", "percentage": _pct(100)})))
    sock = harness.connect(port)
    sock.sendall(b"GET /abandoned HTTP/1.1\r\nhost: svc\r\n\r\n")
    st = proc.wait_stats(lambda s: s.get("http.ingress_http.fault.active_faults", 0) == 1, timeout=5)
    assert st.get("http.ingress_http.fault.active_faults") == 1, st
    # Gone for good: an RST (a FIN alone is an HTTP/1 half-close, after which a client may still read).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    st = proc.wait_stats(lambda s: s.get("http.ingress_http.fault.active_faults", 0) == 0, timeout=5)
    assert st.get("http.ingress_http.fault.active_faults") == 0, st
    time.sleep(1.5)  # past the delay: a cancelled request never goes upstream
    assert origin.request_count() == 0
    assert proc.alive()
    assert h1.get(port, "/after", headers=[("host", "svc")]).status == 200


def test_typed_struct_wrapped_fault_filter(fleet):
    wrapped = {"name": FAULT, "typed_config": {
        "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
        "type_url": FAULT_TYPE,
        "value": {"abort": {"http_status": 503, "percentage": {"numerator": 100}}}}}
    proc, port, origin = _start(fleet, _chain(wrapped))
    resp = h1.get(port, "/", headers=[("host", "svc")])
    assert resp.status == 503 and resp.body == b"fault filter abort", resp
    assert origin.request_count() == 0
    assert _stat(proc, "http.ingress_http.fault.aborts_injected") == 1


def _validate(fleet, http_filters) -> tuple[int, str]:
    origin_port = harness.closed_port()
    vh = virtual_host("all", ["*"], [route_to("backend")])
    cfg = harness.bootstrap([harness.http_listener("http", "ingress_http", [vh], http_filters=http_filters)],
                            [harness.static_cluster("backend", [origin_port])])
    path = harness.write_bootstrap(fleet.workdir, cfg, "validate.yaml")
    done = harness.run_strait(["--mode", "validate", "-c", str(path)])
    return done.returncode, done.stdout + done.stderr


def test_fault_config_errors_are_refused(fleet):
    code, out = _validate(fleet, _chain(_fault(response_rate_limit={"fixed_limit": {"limit_kbps": 1}})))
    assert code == 1 and "http_filters[0].typed_config.response_rate_limit: not implemented" in out, out
    wrapped_unknown = {"name": "x", "typed_config": {
        "@type": "type.googleapis.com/xds.type.v3.TypedStruct",
        "type_url": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua", "value": {}}}
    code, out = _validate(fleet, _chain(wrapped_unknown))
    assert code == 1, out
    assert "envoy.extensions.filters.http.lua.v3.Lua" in out and "xds.type.v3.TypedStruct" in out, out
    bad_value = {"name": FAULT, "typed_config": {
        "@type": "type.googleapis.com/udpa.type.v1.TypedStruct", "type_url": FAULT_TYPE,
        "value": {"abortt": {}}}}
    code, out = _validate(fleet, _chain(bad_value))
    assert code == 1 and "http_filters[0].typed_config.value" in out and "abortt" in out, out


# ---------------------------------------------------------------------------------------------------
# CORS


def _cors_env(fleet):
    # Envoy's older fields (no typed_per_filter_config in this virtual host): the route's origins, the
    # virtual host's expose_headers.
    legacy = virtual_host("legacy", ["legacy.svc"], [
        {"match": {"prefix": "/"},
         "route": {"cluster": "backend", "cors": {"allow_origin_string_match": [{"exact": "https://old.example"}],
                                                  "allow_methods": "GET"}}}],
        cors={"allow_origin_string_match": [{"exact": "https://vh.example"}], "expose_headers": "x-old"})
    routes = [route_to("backend")]
    vh_extra = {"typed_per_filter_config": {CORS: {
        "@type": CORS_POLICY_TYPE,
        "allow_origin_string_match": [{"exact": "https://app.example"}, {"suffix": ".trusted.example"}],
        "allow_methods": "GET,POST,PUT", "allow_headers": "content-type,x-token", "expose_headers": "x-trace",
        "max_age": "3600", "allow_credentials": True}}}
    return _start(fleet, _chain({"name": CORS, "typed_config": {"@type": CORS_TYPE}}), routes=routes,
                  vh_extra=vh_extra, more_vhosts=[legacy])


def test_cors_preflight_allowed_origin_answered_by_strait(fleet):
    proc, port, origin = _cors_env(fleet)
    resp = h1.request(port, "OPTIONS", "/items", headers=[
        ("host", "svc"), ("origin", "https://app.example"), ("access-control-request-method", "PUT")])
    assert resp.status == 200, resp
    assert resp.header("access-control-allow-origin") == "https://app.example"
    assert resp.header("access-control-allow-methods") == "GET,POST,PUT"
    assert resp.header("access-control-allow-headers") == "content-type,x-token"
    assert resp.header("access-control-max-age") == "3600"
    assert resp.header("access-control-allow-credentials") == "true"
    assert origin.request_count() == 0, "a preflight from an allowed origin is answered by the proxy"
    assert _stat(proc, "http.ingress_http.cors.origin_valid") == 1


def test_cors_preflight_refused_origin_gets_no_cors_headers(fleet):
    proc, port, origin = _cors_env(fleet)
    resp = h1.request(port, "OPTIONS", "/items", headers=[
        ("host", "svc"), ("origin", "https://evil.example"), ("access-control-request-method", "PUT")])
    # Forwarded (forward_not_matching_preflights defaults to true): the origin answers, without CORS.
    assert resp.status == 200 and resp.header("x-origin") == "origin", resp
    assert not any(n.lower().startswith("access-control-") for n, _ in resp.headers), resp
    assert _stat(proc, "http.ingress_http.cors.origin_invalid") == 1


def test_cors_simple_request_matching_and_non_matching_origin(fleet):
    proc, port, origin = _cors_env(fleet)
    ok = h1.get(port, "/items", headers=[("host", "svc"), ("origin", "https://api.trusted.example")])
    assert ok.status == 200 and ok.header("x-origin") == "origin", ok
    assert ok.header("access-control-allow-origin") == "https://api.trusted.example"
    assert ok.header("access-control-allow-credentials") == "true"
    assert ok.header("access-control-expose-headers") == "x-trace"
    assert ok.header("access-control-allow-methods") is None  # preflight-only
    bad = h1.get(port, "/items", headers=[("host", "svc"), ("origin", "https://evil.example")])
    assert bad.status == 200, bad
    assert not any(n.lower().startswith("access-control-") for n, _ in bad.headers), bad
    plain = h1.get(port, "/items", headers=[("host", "svc")])
    assert plain.header("access-control-allow-origin") is None
    # The older RouteAction.cors: its own origins.
    old = h1.get(port, "/legacy", headers=[("host", "legacy.svc"), ("origin", "https://old.example")])
    assert old.header("access-control-allow-origin") == "https://old.example", old
    assert old.header("access-control-expose-headers") == "x-old", old
    old_vh = h1.get(port, "/legacy", headers=[("host", "legacy.svc"), ("origin", "https://vh.example")])
    assert old_vh.header("access-control-allow-origin") is None, old_vh
    st = proc.stats()
    assert st["http.ingress_http.cors.origin_valid"] == 2
    assert st["http.ingress_http.cors.origin_invalid"] == 2
    assert origin.request_count() == 5


# ---------------------------------------------------------------------------------------------------
# Inert stand-ins for Istio's filters


def _wasm(name: str, root_id: str, **extra) -> dict:
    return {"name": name, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {"root_id": root_id, "vm_config": {"vm_id": root_id, "runtime": "envoy.wasm.runtime.null",
                                                     "code": {"local": {"inline_string": "envoy.wasm.stats"}}},
                   "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                     "value": "{}"}}}, **extra}


INERT_FILTERS = [
    {"name": "istio.metadata_exchange", "typed_config": {"@type": "type.googleapis.com/io.istio.http.peer_metadata.Config"}},
    _wasm("istio.metadata_exchange_wasm", "istio.metadata_exchange"),
    {"name": "envoy.filters.http.grpc_stats", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
        "emit_filter_state": True, "stats_for_all_methods": False}},
    {"name": "istio.alpn", "typed_config": {
        "@type": "type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig",
        "alpn_override": [{"upstream_protocol": "HTTP11", "alpn_override": ["istio-http/1.1", "istio"]}]}},
    {"name": "istio.stats", "typed_config": {"@type": "type.googleapis.com/stats.PluginConfig"}},
    _wasm("istio.stats_wasm", "stats_inbound"),
]
INERT_STATS = ["peer_metadata", "wasm_istio_metadata_exchange", "grpc_stats", "istio_stats",
               "wasm_stats_inbound"]


def test_inert_filters_pass_requests_untouched_and_count_them(fleet):
    proc, port, origin = _start(fleet, _chain(*INERT_FILTERS))
    body = bytes(range(256)) * 64
    headers = [("host", "svc"), ("x-app", "a1"), ("content-type", "application/octet-stream")]
    for _ in range(3):
        resp = h1.request(port, "POST", "/inert/path?q=1", headers=headers, body=body)
        assert resp.status == 200, resp
    seen = resp.json()
    assert seen["method"] == "POST" and seen["path"] == "/inert/path?q=1", seen
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()
    got = {n.lower(): v for n, v in seen["headers"]}
    assert got["x-app"] == "a1" and got["content-type"] == "application/octet-stream", got
    # Nothing of Istio's metadata exchange is added.
    assert not any(n.startswith("x-envoy-peer-metadata") for n in got), got
    st = proc.stats()
    for kind in INERT_STATS:
        assert st[f"http.ingress_http.inert.{kind}.requests_total"] == 3, kind
    assert "inert in Strait" in proc.logs()


def test_unknown_wasm_plugin_is_refused_unless_optional(fleet):
    code, out = _validate(fleet, _chain(_wasm("custom", "my_plugin")))
    assert code == 1 and "unsupported Wasm plugin" in out and "my_plugin" in out, out
    proc, port, origin = _start(fleet, _chain(_wasm("custom", "my_plugin", is_optional=True)))
    assert h1.get(port, "/", headers=[("host", "svc")]).status == 200
    assert not any(".inert." in k for k in proc.stats()), "a skipped optional filter has no stats"
