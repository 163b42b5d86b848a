"""Route tables: virtual host domains, path / header / query matching, rewrites, direct responses,
redirects, header manipulation, per-route timeouts, weighted splits and path normalisation. The shapes
follow shared/examples/http-routes.yaml, with ports rewritten to named test origins that echo what they
received (peers/origin.py), so each answer says which cluster served it and what it saw."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import harness
from harness import route_to, virtual_host
from peers import env, h1, h2peers

ORIGINS = ["api_v1", "api_v2", "exact_host", "suffix_host", "prefix_host", "star_host", "path_exact",
           "regex", "rewrite", "norm_a", "norm_b", "greeter"]


def _hdr(key: str, value: str) -> dict:
    return {"header": {"key": key, "value": value}}


def _routes_config(origins: dict) -> dict:
    routes_vh = virtual_host("shop", ["shop.example", "shop.example:*"], [
        # From http-routes.yaml: gRPC prefix to the HTTP/2 cluster, canary by header, weighted split.
        {"match": {"prefix": "/helloworld.Greeter/"}, "route": {"cluster": "greeter", "timeout": "2s"}},
        {"match": {"prefix": "/api/", "headers": [{"name": "x-canary", "string_match": {"exact": "1"}}]},
         "route": {"cluster": "api_v2"}},
        {"match": {"prefix": "/api/", "query_parameters": [{"name": "version", "string_match": {"exact": "2"}}]},
         "route": {"cluster": "api_v2"}},
        {"match": {"prefix": "/api/"},
         "route": {"weighted_clusters": {"clusters": [{"name": "api_v1", "weight": 90},
                                                      {"name": "api_v2", "weight": 10}]},
                   "timeout": "3s",
                   "retry_policy": {"retry_on": "5xx,reset,connect-failure", "num_retries": 2,
                                    "per_try_timeout": "1s"}}},
        {"match": {"safe_regex": {"regex": "^/static/[a-z0-9/._-]+$"}}, "route": {"cluster": "regex"}},
        {"match": {"path": "/exact"}, "route": {"cluster": "path_exact"}},
        {"match": {"prefix": "/old/"}, "route": {"cluster": "rewrite", "prefix_rewrite": "/new/"}},
        {"match": {"prefix": "/host-rewrite/"},
         "route": {"cluster": "rewrite", "host_rewrite_literal": "upstream.internal"}},
        {"match": {"prefix": "/moved"},
         "redirect": {"host_redirect": "new.example", "path_redirect": "/landing"}},
        {"match": {"prefix": "/direct"},
         "direct_response": {"status": 200, "body": {"inline_string": "direct answer\n"}}},
        {"match": {"prefix": "/headers/"},
         "route": {"cluster": "rewrite"},
         "request_headers_to_add": [_hdr("x-added-by-route", "r1")],
         "request_headers_to_remove": ["x-remove-me"],
         "response_headers_to_add": [_hdr("x-resp-added", "yes")],
         "response_headers_to_remove": ["x-origin-conn"]},
        {"match": {"prefix": "/short-timeout/"},
         "route": {"cluster": "rewrite", "timeout": "1s", "prefix_rewrite": "/_/"}},
        {"match": {"prefix": "/long-timeout/"},
         "route": {"cluster": "rewrite", "timeout": "5s", "prefix_rewrite": "/_/"}},
        {"match": {"prefix": "/by-header/"}, "route": {"cluster_header": "X-Target"}},
        {"match": {"path": "/b"}, "route": {"cluster": "norm_b"}},
        {"match": {"prefix": "/a/"}, "route": {"cluster": "norm_a"}},
    ], request_headers_to_add=[_hdr("x-vhost", "shop")])
    vhosts = [
        routes_vh,
        virtual_host("exact", ["exact.test"], [route_to("exact_host")]),
        virtual_host("suffix", ["*.suffix.test"], [route_to("suffix_host")]),
        virtual_host("prefix", ["prefix.*"], [route_to("prefix_host")]),
        virtual_host("star", ["*.star.test"], [route_to("star_host")]),
        virtual_host("fallback", ["*"], [
            {"match": {"prefix": "/"}, "direct_response": {"status": 404, "body": {"inline_string": "no such host\n"}}},
        ]),
    ]
    clusters = []
    for name, o in origins.items():
        if name == "greeter":
            clusters.append(harness.http2_cluster(name, [o.port], connect_timeout="0.5s"))
        else:
            clusters.append(harness.static_cluster(name, [o.port], connect_timeout="0.5s"))
    listener = harness.http_listener("http", "ingress_http", vhosts, normalize_path=True, merge_slashes=True)
    return harness.bootstrap([listener], clusters)


def _env(fleet) -> SimpleNamespace:
    origins = {}
    for name in ORIGINS:
        origins[name] = env.h2origin(fleet, name) if name == "greeter" else env.origin(fleet, name)
    proc = fleet.start(_routes_config(origins))
    return SimpleNamespace(proc=proc, port=proc.listener_port("http"), o=origins)


def _get(e, path: str, host: str = "shop.example", headers=(), **kw) -> h1.Response:
    return h1.get(e.port, path, headers=list(headers), host=host, **kw)


def _served_by(resp: h1.Response) -> str:
    assert resp.status == 200, resp
    return resp.header("x-origin")


# ---------------------------------------------------------------------------------------------------
# Virtual hosts


def test_host_exact_match(fleet):
    e = _env(fleet)
    assert _served_by(_get(e, "/", host="exact.test")) == "exact_host"


def test_host_match_ignores_case(fleet):
    e = _env(fleet)
    assert _served_by(_get(e, "/", host="EXACT.Test")) == "exact_host"


def test_host_suffix_wildcard(fleet):
    e = _env(fleet)
    assert _served_by(_get(e, "/", host="api.suffix.test")) == "suffix_host"
    assert _served_by(_get(e, "/", host="a.b.suffix.test")) == "suffix_host"


def test_host_prefix_wildcard(fleet):
    e = _env(fleet)
    assert _served_by(_get(e, "/", host="prefix.anything.example")) == "prefix_host"


def test_suffix_wildcard_wins_over_prefix_wildcard(fleet):
    # Envoy's order: exact, then the longest suffix wildcard, then the longest prefix wildcard, then `*`.
    e = _env(fleet)
    assert _served_by(_get(e, "/", host="prefix.star.test")) == "star_host"


def test_host_with_port_matches_domain_with_port_wildcard(fleet):
    e = _env(fleet)
    resp = _get(e, "/exact", host="shop.example:8443")
    assert _served_by(resp) == "path_exact"


def test_unknown_host_gets_direct_response_404(fleet):
    e = _env(fleet)
    resp = _get(e, "/anything", host="unknown.example")
    assert resp.status == 404, resp
    assert resp.body == b"no such host\n"
    assert sum(o.request_count() for o in e.o.values()) == 0, "a direct response must not reach an origin"


def test_host_routing_over_http2_uses_authority(fleet):
    e = _env(fleet)
    with h2peers.H2Client(e.port) as c:
        st = c.get("/", authority="exact.test")
        miss = c.get("/", authority="nope.example")
    assert st.status == 200 and st.header("x-origin") == "exact_host", st
    assert miss.status == 404 and bytes(miss.data) == b"no such host\n", miss


# ---------------------------------------------------------------------------------------------------
# Path, header and query matching


def test_exact_path_match(fleet):
    e = _env(fleet)
    assert _served_by(_get(e, "/exact")) == "path_exact"
    assert _get(e, "/exact/more").status == 404, "path: /exact must not match /exact/more"
    assert _get(e, "/exactly").status == 404


def test_exact_path_match_ignores_query(fleet):
    e = _env(fleet)
    resp = _get(e, "/exact?x=1")
    assert _served_by(resp) == "path_exact"
    assert resp.json()["path"] == "/exact?x=1"


def test_safe_regex_match(fleet):
    e = _env(fleet)
    assert _served_by(_get(e, "/static/css/site.css")) == "regex"
    assert _get(e, "/static/UPPER.css").status == 404, "the regex allows lowercase only"


def test_grpc_prefix_routes_to_http2_cluster(fleet):
    e = _env(fleet)
    resp = _get(e, "/helloworld.Greeter/SayHello")
    assert _served_by(resp) == "greeter"
    assert resp.json()["protocol"] == "h2"


def test_header_match_routes_canary(fleet):
    e = _env(fleet)
    for _ in range(10):
        assert _served_by(_get(e, "/api/items", headers=[("x-canary", "1")])) == "api_v2"


def test_header_match_value_must_be_exact(fleet):
    e = _env(fleet)
    served = {_served_by(_get(e, "/api/items", headers=[("x-canary", "10")])) for _ in range(20)}
    assert "api_v1" in served, "x-canary: 10 must not match exact '1' (expected the weighted route)"


def test_query_parameter_match(fleet):
    e = _env(fleet)
    for _ in range(10):
        assert _served_by(_get(e, "/api/items?version=2")) == "api_v2"
    served = {_served_by(_get(e, "/api/items?version=3")) for _ in range(20)}
    assert "api_v1" in served


def test_cluster_header_names_the_cluster(fleet):
    e = _env(fleet)
    for target in ("api_v2", "regex", "api_v2"):
        assert _served_by(_get(e, "/by-header/x", headers=[("x-target", target)])) == target
    # No such cluster, or no header: cluster_not_found (503), nothing reaches an origin.
    for headers in ([("x-target", "nope")], [], [("x-target", "")]):
        resp = _get(e, "/by-header/x", headers=headers)
        assert resp.status == 503 and resp.header("x-origin") is None, (headers, resp)
    assert harness.stat(e.proc.stats(), "http.ingress_http.downstream_rq_5xx") == 3


def test_no_route_in_matching_vhost_is_404(fleet):
    e = _env(fleet)
    resp = _get(e, "/nothing/here")
    assert resp.status == 404, resp
    assert resp.header("x-origin") is None


# ---------------------------------------------------------------------------------------------------
# Actions


def test_prefix_rewrite_is_visible_at_origin(fleet):
    e = _env(fleet)
    resp = _get(e, "/old/path/file.txt?q=1")
    assert _served_by(resp) == "rewrite"
    assert resp.json()["path"] == "/new/path/file.txt?q=1"


def test_host_rewrite_literal_is_visible_at_origin(fleet):
    e = _env(fleet)
    resp = _get(e, "/host-rewrite/x")
    assert _served_by(resp) == "rewrite"
    assert e.o["rewrite"].last().headers_named("host") == ["upstream.internal"]


def test_direct_response(fleet):
    e = _env(fleet)
    resp = _get(e, "/direct")
    assert resp.status == 200 and resp.body == b"direct answer\n"
    assert resp.header("content-length") == str(len(b"direct answer\n"))


def test_redirect_301_with_location(fleet):
    e = _env(fleet)
    resp = _get(e, "/moved")
    assert resp.status == 301, resp
    assert resp.header("location") == "http://new.example/landing"


def test_request_headers_to_add_and_remove(fleet):
    e = _env(fleet)
    resp = _get(e, "/headers/x", headers=[("x-remove-me", "secret"), ("x-keep-me", "k")])
    assert _served_by(resp) == "rewrite"
    rec = e.o["rewrite"].last()
    assert rec.headers_named("x-added-by-route") == ["r1"], rec.headers
    assert rec.headers_named("x-vhost") == ["shop"], "virtual host request_headers_to_add missing"
    assert rec.header("x-remove-me") is None, "request_headers_to_remove did not remove the header"
    assert rec.header("x-keep-me") == "k"


def test_response_headers_to_add_and_remove(fleet):
    e = _env(fleet)
    resp = _get(e, "/headers/y")
    assert resp.status == 200
    assert resp.header("x-resp-added") == "yes", resp.headers
    assert resp.header("x-origin-conn") is None, "response_headers_to_remove did not remove x-origin-conn"
    assert resp.header("x-origin") == "rewrite"


def test_per_route_timeout_fires(fleet):
    e = _env(fleet)
    start = time.monotonic()
    resp = _get(e, "/short-timeout/slow?delay=3", timeout=10)
    took = time.monotonic() - start
    assert resp.status == 504, resp
    assert 0.8 <= took <= 2.5, f"a 1s route timeout answered after {took:.2f}s"


def test_per_route_timeout_allows_slower_route(fleet):
    e = _env(fleet)
    resp = _get(e, "/long-timeout/slow?delay=1.5", timeout=10)
    assert _served_by(resp) == "rewrite"
    assert resp.json()["path"] == "/_/slow?delay=1.5"


def test_weighted_split_90_10(fleet):
    e = _env(fleet)
    n = 1000
    counts = {"api_v1": 0, "api_v2": 0}
    clients = [h1.Client(e.port) for _ in range(4)]
    try:
        for i in range(n):
            resp = clients[i % 4].request("GET", f"/api/split/{i}", host="shop.example")
            counts[_served_by(resp)] += 1
    finally:
        for c in clients:
            c.close()
    share = counts["api_v1"] / n
    # Binomial(1000, 0.9): sd ~ 0.0095; [0.85, 0.95] is more than 5 sd either side.
    assert 0.85 <= share <= 0.95, f"api_v1 got {counts['api_v1']} of {n} ({share:.1%}), api_v2 {counts['api_v2']}"
    assert counts["api_v1"] + counts["api_v2"] == n


# ---------------------------------------------------------------------------------------------------
# Path normalisation (normalize_path: true, merge_slashes: true on this HCM)


def test_dot_dot_segment_routes_as_normalised_path(fleet):
    e = _env(fleet)
    resp = _get(e, "/a/../b")
    assert _served_by(resp) == "norm_b", "/a/../b must route as /b"
    assert e.o["norm_b"].last().target == "/b", "the origin must see the normalised path"
    assert e.o["norm_a"].request_count() == 0


def test_dot_segment_and_double_slash_are_normalised(fleet):
    e = _env(fleet)
    assert _served_by(_get(e, "/./b")) == "norm_b"
    assert _served_by(_get(e, "//b")) == "norm_b"
    assert e.o["norm_b"].last().target == "/b"


def test_normalisation_keeps_query(fleet):
    e = _env(fleet)
    resp = _get(e, "/a/x/../../b?k=v")
    assert _served_by(resp) == "norm_b"
    assert e.o["norm_b"].last().target == "/b?k=v"


def test_route_table_across_requests_on_one_connection(fleet):
    # One request per route kind on one keep-alive connection: the route table works across requests.
    e = _env(fleet)
    with h1.Client(e.port) as c:
        seen = []
        for path, headers in (("/exact", []), ("/static/x.js", []), ("/old/z", []), ("/api/q", [("x-canary", "1")])):
            resp = c.request("GET", path, headers, host="shop.example")
            seen.append(resp.header("x-origin"))
            json.loads(resp.body)
    assert seen == ["path_exact", "regex", "rewrite", "api_v2"]
