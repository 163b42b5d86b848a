"""The admin's /explain through the real binary: which listener, filter chain, virtual host, route and
cluster a request or connection would take and why each alternative was passed over; then the same
request sent through the proxy with curl, to check that the upstream that answered is the cluster
/explain named (each origin answers with `x-origin: <its name>`, and is named like its cluster)."""

from __future__ import annotations

import urllib.parse
from types import SimpleNamespace

import harness
from harness import route_to, virtual_host
from peers import env

TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ORIGINS = ["api_v1", "api_v2", "tcp_a", "tcp_b"]


def _tcp_chain(name: str, cluster: str, match: dict | None = None) -> dict:
    chain = {"name": name, "filters": [{"name": "tcp", "typed_config": {"@type": TCP_PROXY, "stat_prefix": name,
                                                                         "cluster": cluster}}]}
    if match is not None:
        chain["filter_chain_match"] = match
    return chain


def _config(origins: dict, tcp_port: int) -> dict:
    shop = virtual_host("shop", ["shop.example"], [
        {"name": "canary", "match": {"prefix": "/api/", "headers": [{"name": "x-env", "string_match": {"exact": "canary"}}]},
         "route": {"cluster": "api_v2"}},
        {"name": "stable", "match": {"prefix": "/api/"}, "route": {"cluster": "api_v1"}},
        {"name": "split", "match": {"prefix": "/split/"},
         "route": {"weighted_clusters": {"clusters": [{"name": "api_v1", "weight": 70}, {"name": "api_v2", "weight": 30}]}}},
        {"name": "health", "match": {"path": "/health"}, "direct_response": {"status": 200}},
    ])
    admin = virtual_host("admin", ["admin.example", "*.admin.example"], [
        {"name": "ok", "match": {"prefix": "/ok"}, "route": {"cluster": "api_v1"}},
        {"name": "v2", "match": {"safe_regex": {"regex": "^/v2/[0-9]+$"}}, "route": {"cluster": "api_v2"}},
    ])
    web = harness.http_listener("web", "web", [shop, admin])
    tcp = {
        "name": "tcp",
        "address": harness.socket_address(tcp_port),
        "filter_chains": [
            _tcp_chain("other-port", "tcp_b", {"destination_port": 9}),
            _tcp_chain("from-127.0.0.2", "tcp_b",
                       {"source_prefix_ranges": [{"address_prefix": "127.0.0.2", "prefix_len": 32}]}),
            _tcp_chain("any", "tcp_a"),
        ],
    }
    clusters = [harness.static_cluster(name, [o.port], connect_timeout="0.5s") for name, o in origins.items()]
    return harness.bootstrap([web, tcp], clusters)


def _env(fleet) -> SimpleNamespace:
    origins = {name: env.origin(fleet, name) for name in ORIGINS}
    tcp_port = harness.free_port()
    proc = fleet.start(_config(origins, tcp_port))
    return SimpleNamespace(proc=proc, web=proc.listener_port("web"), tcp=tcp_port, o=origins)


def _explain(e, **params):
    """GET /explain with `params` (lists repeat the parameter); the decoded JSON."""
    resp = _explain_raw(e, **params)
    assert resp.status == 200, resp
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    return resp.json()


def _explain_raw(e, **params):
    return e.proc.get("/explain?" + urllib.parse.urlencode(params, doseq=True))


def _rejected(level: dict, name: str) -> str:
    for r in level["rejected"]:
        if r["name"] == name:
            return r["failed"]
    raise AssertionError(f"{name!r} not among the rejected: {level['rejected']!r}")


def _served_by(port: int, path: str, host: str | None = None, headers=(), interface: str | None = None) -> str:
    """Sends a request through the proxy with curl; the answering origin's name (x-origin)."""
    args = ["-i", f"http://127.0.0.1:{port}{path}"]
    if host:
        args += ["-H", f"Host: {host}"]
    for h in headers:
        args += ["-H", h]
    if interface:
        args += ["--interface", interface]
    out = harness.curl(args, timeout=10)
    assert out.returncode == 0, out.stderr
    head = out.stdout.decode("latin-1").split("\r\n\r\n", 1)[0].lower()
    assert head.startswith("http/1.1 200"), head
    for line in head.split("\r\n"):
        if line.startswith("x-origin:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no x-origin in {head!r}")


def test_canary_header_route_and_the_upstream_that_answers(fleet):
    e = _env(fleet)
    canary = _explain(e, listener="web", host="shop.example", path="/api/items", header="x-env: canary")
    assert canary["listener"]["chosen"] == "web"
    assert canary["filter_chain"]["terminal"] == "http_connection_manager"
    assert canary["virtual_host"]["chosen"] == "shop"
    assert _rejected(canary["virtual_host"], "admin") == \
        'domains [admin.example, *.admin.example] do not match host "shop.example"'
    assert canary["route"]["chosen"] == "#0 canary"
    assert canary["route"]["match"] == 'prefix /api/, header x-env: exact "canary"'
    assert canary["cluster"]["name"] == "api_v2"
    assert canary["cluster"]["hosts"][0]["address"] == f"127.0.0.1:{e.o['api_v2'].port}"
    assert canary["cluster"]["hosts"][0]["health"] == "healthy"
    assert _served_by(e.web, "/api/items", "shop.example", ["x-env: canary"]) == canary["cluster"]["name"]

    # Without the header, and with a near miss: the stable route, and the canary says why not.
    for header, has in ((None, "none"), ("x-env: canary2", '"canary2"')):
        params = {"listener": "web", "host": "shop.example", "path": "/api/items"}
        if header:
            params["header"] = header
        stable = _explain(e, **params)
        assert stable["route"]["chosen"] == "#1 stable"
        assert _rejected(stable["route"], "#0 canary") == f'header x-env: exact "canary": the request has {has}'
        assert stable["cluster"]["name"] == "api_v1"
        assert _served_by(e.web, "/api/items", "shop.example", [header] if header else []) == "api_v1"


def test_weighted_clusters_are_listed_with_their_weights(fleet):
    e = _env(fleet)
    split = _explain(e, port=e.web, host="shop.example", path="/split/x")
    assert split["listener"]["chosen"] == "web", "port= finds the listener bound there"
    assert split["route"]["chosen"] == "#2 split"
    assert _rejected(split["route"], "#1 stable") == 'path "/split/x" does not start with "/api/"'
    assert split["action"]["kind"] == "weighted_clusters"
    assert [(c["name"], c["weight"]) for c in split["clusters"]] == [("api_v1", 70), ("api_v2", 30)]
    served = {_served_by(e.web, "/split/x", "shop.example") for _ in range(12)}
    assert served <= {"api_v1", "api_v2"} and served, served


def test_no_route_is_a_404_with_each_routes_failing_matcher(fleet):
    e = _env(fleet)
    miss = _explain(e, listener="web", host="api.admin.example", path="/v2/abc")
    assert miss["virtual_host"]["chosen"] == "admin"
    assert "suffix wildcard" in miss["virtual_host"]["why"]
    assert _rejected(miss["virtual_host"], "shop") == 'domains [shop.example] do not match host "api.admin.example"'
    assert miss["route"]["chosen"] is None
    assert miss["route"]["why"] == "no route of virtual host admin matches"
    assert _rejected(miss["route"], "#0 ok") == 'path "/v2/abc" does not start with "/ok"'
    assert _rejected(miss["route"], "#1 v2") == 'path "/v2/abc" does not fully match "^/v2/[0-9]+$"'
    assert miss["action"] == {"kind": "local_reply", "detail": "route_not_found (NR)", "status": 404}
    out = harness.curl(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: api.admin.example",
                        f"http://127.0.0.1:{e.web}/v2/abc"])
    assert out.stdout == b"404", out
    # The same host with a path the regex takes reaches api_v2.
    hit = _explain(e, listener="web", host="api.admin.example", path="/v2/17")
    assert hit["route"]["chosen"] == "#1 v2"
    assert _served_by(e.web, "/v2/17", "api.admin.example") == hit["cluster"]["name"] == "api_v2"


def test_tcp_filter_chains_by_destination_port_and_source(fleet):
    e = _env(fleet)
    tcp = _explain(e, listener="tcp")
    assert tcp["connection"]["destination"] == f"127.0.0.1:{e.tcp}"
    assert tcp["filter_chain"]["chosen"] == "any"
    assert tcp["filter_chain"]["terminal"] == "tcp_proxy"
    assert _rejected(tcp["filter_chain"], "other-port") == f"destination_port 9 != {e.tcp}"
    assert _rejected(tcp["filter_chain"], "from-127.0.0.2") == \
        "source_prefix_ranges [127.0.0.2/32] do not contain 127.0.0.1"
    assert tcp["cluster"]["name"] == "tcp_a"
    assert _served_by(e.tcp, "/") == tcp["cluster"]["name"]

    other = _explain(e, address=f"127.0.0.1:{e.tcp}", source="127.0.0.2:40000")
    assert other["listener"]["chosen"] == "tcp"
    assert other["filter_chain"]["chosen"] == "from-127.0.0.2"
    assert "names no source_prefix_ranges" in _rejected(other["filter_chain"], "any")
    assert other["cluster"]["name"] == "tcp_b"
    assert _served_by(e.tcp, "/", interface="127.0.0.2") == other["cluster"]["name"]


def test_text_form_and_bad_queries(fleet):
    e = _env(fleet)
    text = _explain_raw(e, listener="web", host="shop.example", path="/api/items", format="text")
    assert text.status == 200 and text.headers.get("content-type", "").startswith("text/plain"), text
    body = text.text
    for line in ("vhost       shop", "route       #1 stable", "cluster     api_v1: STATIC, ROUND_ROBIN, 1 of 1 hosts healthy",
                 '  passed    #0 canary: header x-env: exact "canary": the request has none'):
        assert line in body, body

    no_host = _explain_raw(e, listener="web", path="/x")
    assert no_host.status == 400 and no_host.text.startswith("host:"), no_host
    unknown = _explain_raw(e, listener="nope")
    assert unknown.status == 400 and unknown.text.startswith("listener: no listener named 'nope'"), unknown
    assert "web" in unknown.text and "tcp" in unknown.text
    typo = _explain_raw(e, listener="web", hots="x")
    assert typo.status == 400 and typo.text.startswith("unknown parameter 'hots'"), typo
    assert "/explain" in e.proc.get("/help").text
