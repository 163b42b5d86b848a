"""Request headers a client must not be trusted with (issue 10), checked at the origin that echoes what it
received (peers/origin.py): Envoy's header sanitizing.

- Internal or external: with use_remote_address the trusted client address is the connection's peer (or,
  with xff_num_trusted_hops N, the Nth address from the right of the client's x-forwarded-for), and the
  request is internal only when the client sent no x-forwarded-for and that address is internal; without
  use_remote_address the request is internal only when x-forwarded-for, less the N trusted hops, is one
  internal address. Internal addresses: internal_address_config.cidr_ranges, else (Envoy up to 1.32, the
  version of our Istio bootstrap) 10/8, 172.16/12, 192.168/16, 127.0.0.1, fd00::/8 and ::1.
- A client's x-envoy-internal never passes; internal requests get `x-envoy-internal: true`. External ones
  lose the x-envoy-* headers that steer Envoys (retries, timeouts, tracing...) and the route
  configuration's internal_only_headers; edge requests (external with use_remote_address) also lose
  x-envoy-decorator-operation / -downstream-service-cluster / -node and get x-envoy-external-address and a
  fresh x-request-id.
- x-forwarded-for: repeated headers are one list (joined in order) before the client address is appended;
  x-forwarded-proto: the connection's scheme unless a trusted hop said it.
- An HTTP/1.1 `Upgrade: h2c` offer is ignored: forwarded as a plain request that ends.
"""

from __future__ import annotations

import uuid

import harness
import tlsutil
from peers import env, h1, h2peers

# Removed from every external request (Envoy's ConnectionManagerUtility::cleanInternalHeaders).
EXTERNAL_ONLY = [
    "x-envoy-retriable-status-codes", "x-envoy-retriable-header-names", "x-envoy-retry-on",
    "x-envoy-retry-grpc-on", "x-envoy-max-retries", "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-timeout-ms", "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response", "x-envoy-expected-rq-timeout-ms", "x-envoy-force-trace",
    "x-envoy-ip-tags", "x-envoy-original-url", "x-envoy-hedge-on-per-try-timeout",
]
# Removed from edge requests only (external, and use_remote_address).
EDGE_ONLY = ["x-envoy-decorator-operation", "x-envoy-downstream-service-cluster",
             "x-envoy-downstream-service-node"]


def _envoy_headers() -> list[tuple[str, str]]:
    """Every sanitized x-envoy-* header once, names in odd case (matching ignores case)."""
    out = [("X-Envoy-Internal", "true")]
    out += [(n.upper() if i % 2 else n, f"v{i}") for i, n in enumerate(EXTERNAL_ONLY)]
    out += [(n, f"e{i}") for i, n in enumerate(EDGE_ONLY)]
    out.append(("x-envoy-custom-app-header", "kept"))
    return out


def _seen(e, name: str) -> list[str]:
    return e.origin.last().headers_named(name)


def _get(e, path: str, headers) -> None:
    resp = h1.get(e.port, path, headers=headers, timeout=10)
    assert resp.status == 200 and resp.complete, resp


# ---------------------------------------------------------------------------------------------------
# Item 1: x-envoy-internal and the internal-only x-envoy-* headers; x-forwarded-* from outside


def test_item1_envoy_headers_follow_internal_or_external(fleet):
    # Default HCM (no use_remote_address), no x-forwarded-for: external, not edge.
    e = env.simple(fleet)
    _get(e, "/ext", _envoy_headers())
    assert _seen(e, "x-envoy-internal") == [], "a client's x-envoy-internal reached the upstream"
    for name in EXTERNAL_ONLY:
        assert _seen(e, name) == [], f"{name} from an external client reached the upstream"
    for i, name in enumerate(EDGE_ONLY):
        assert _seen(e, name) == [f"e{i}"], f"{name}: only edge requests lose it"
    assert _seen(e, "x-envoy-custom-app-header") == ["kept"]
    assert _seen(e, "x-envoy-external-address") == [], "not an edge request"

    # The same over HTTP/2.
    with h2peers.H2Client(e.port) as c:
        st = c.get("/ext-h2", headers=[(k.lower(), v) for k, v in _envoy_headers()])
        assert st.status == 200, st
    assert _seen(e, "x-envoy-internal") == []
    assert all(_seen(e, n) == [] for n in EXTERNAL_ONLY), e.origin.last().headers

    # Without use_remote_address, one internal address in x-forwarded-for makes the request internal.
    _get(e, "/xff-internal", [("x-forwarded-for", "10.1.2.3"), ("x-envoy-retry-on", "5xx")])
    assert _seen(e, "x-envoy-internal") == ["true"]
    assert _seen(e, "x-envoy-retry-on") == ["5xx"]
    for xff in ("203.0.113.7", "10.0.0.1,10.0.0.2", "not-an-ip"):
        _get(e, "/xff-external", [("x-forwarded-for", xff), ("x-envoy-retry-on", "5xx"),
                                  ("x-envoy-internal", "true")])
        assert _seen(e, "x-envoy-internal") == [], xff
        assert _seen(e, "x-envoy-retry-on") == [], xff
        assert _seen(e, "x-forwarded-for") == [xff], "without use_remote_address XFF is not appended to"


def test_item1_use_remote_address_decides_by_the_peer(fleet):
    # use_remote_address, loopback peer, no XFF: internal (127.0.0.1 is internal by default).
    e = env.simple(fleet, use_remote_address=True)
    _get(e, "/int", [("x-envoy-internal", "false"), ("x-envoy-retry-on", "5xx"),
                     ("x-envoy-decorator-operation", "op"), ("x-request-id", "client-rid-1")])
    assert _seen(e, "x-envoy-internal") == ["true"], "internal requests are marked"
    assert _seen(e, "x-envoy-retry-on") == ["5xx"]
    assert _seen(e, "x-envoy-decorator-operation") == ["op"]
    assert _seen(e, "x-forwarded-for") == ["127.0.0.1"]
    assert _seen(e, "x-envoy-external-address") == []
    assert _seen(e, "x-request-id") == ["client-rid-1"], "an internal request keeps its x-request-id"

    # A client that sends x-forwarded-for is never internal with use_remote_address: an edge request.
    _get(e, "/edge", [("x-forwarded-for", "10.0.0.9"), ("x-envoy-internal", "true"),
                      ("x-envoy-retry-on", "5xx"), ("x-envoy-decorator-operation", "op"),
                      ("x-envoy-external-address", "10.0.0.9"), ("x-request-id", "client-rid-2")])
    assert _seen(e, "x-envoy-internal") == []
    assert _seen(e, "x-envoy-retry-on") == []
    assert _seen(e, "x-envoy-decorator-operation") == [], "edge requests lose it"
    assert _seen(e, "x-envoy-external-address") == ["127.0.0.1"], "the trusted client, not the client's claim"
    assert _seen(e, "x-forwarded-for") == ["10.0.0.9,127.0.0.1"]
    rid = _seen(e, "x-request-id")
    assert len(rid) == 1 and rid[0] != "client-rid-2", "an edge request gets a new x-request-id"
    uuid.UUID(rid[0])


def test_item1_internal_address_config_cidr_ranges(fleet):
    # Only 10/8 is internal here: the loopback peer is external, so this is an edge request.
    iac = {"cidr_ranges": [{"address_prefix": "10.0.0.0", "prefix_len": 8}]}
    e = env.simple(fleet, use_remote_address=True, internal_address_config=iac)
    _get(e, "/cidr", _envoy_headers() + [("x-forwarded-proto", "https")])
    assert _seen(e, "x-envoy-internal") == []
    for name in EXTERNAL_ONLY + EDGE_ONLY:
        assert _seen(e, name) == [], f"{name} from an external client reached the upstream"
    assert _seen(e, "x-envoy-custom-app-header") == ["kept"]
    assert _seen(e, "x-envoy-external-address") == ["127.0.0.1"]
    assert _seen(e, "x-forwarded-proto") == ["http"], "an untrusted x-forwarded-proto is overwritten"
    assert _seen(e, "x-forwarded-for") == ["127.0.0.1"]

    # unix_sockets alone leaves the IP ranges at their defaults: loopback is internal again.
    e2 = env.simple(fleet, use_remote_address=True, internal_address_config={"unix_sockets": True})
    _get(e2, "/unix", [("x-envoy-retry-on", "5xx")])
    assert _seen(e2, "x-envoy-internal") == ["true"]
    assert _seen(e2, "x-envoy-retry-on") == ["5xx"]


# ---------------------------------------------------------------------------------------------------
# Item 2: RouteConfiguration.internal_only_headers


def _with_internal_only(cfg: dict, names: list[str]) -> dict:
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["route_config"]["internal_only_headers"] = names
    return cfg


def test_item2_internal_only_headers_are_dropped_from_external_requests(fleet):
    names = ["x-internal-secret", "X-Tenant-Admin"]
    sent = [("X-Internal-Secret", "s3cr3t"), ("x-tenant-admin", "yes"), ("x-tenant-admin", "again"),
            ("x-ordinary", "1")]
    origin = env.origin(fleet)
    external = fleet.start(_with_internal_only(harness.simple_http_config(origin.port), names))
    resp = h1.get(external.listener_port("http"), "/ext", headers=sent)
    assert resp.status == 200, resp
    rec = origin.last()
    assert rec.headers_named("x-internal-secret") == [], rec.headers
    assert rec.headers_named("x-tenant-admin") == [], rec.headers
    assert rec.headers_named("x-ordinary") == ["1"]

    internal = fleet.start(_with_internal_only(harness.simple_http_config(origin.port, use_remote_address=True),
                                               names))
    resp = h1.get(internal.listener_port("http"), "/int", headers=sent)
    assert resp.status == 200, resp
    rec = origin.last()
    assert rec.headers_named("x-internal-secret") == ["s3cr3t"], "internal requests keep them"
    assert rec.headers_named("x-tenant-admin") == ["yes", "again"]


# ---------------------------------------------------------------------------------------------------
# Item 3: an HTTP/1.1 Upgrade: h2c offer is ignored


def _assert_no_h2c_offer(rec) -> None:
    assert rec.header("upgrade") is None, rec.headers
    assert rec.header("http2-settings") is None, rec.headers
    assert not {"upgrade", "http2-settings"} & h1.connection_tokens(rec.headers), rec.headers


def test_item3_h2c_upgrade_offer_is_forwarded_as_a_plain_request(fleet):
    e = env.simple(fleet)
    # curl offers h2c on plain http (Upgrade: h2c, HTTP2-Settings, Connection: Upgrade, HTTP2-Settings).
    r = harness.curl(["--http2", "-i", "-w", "\n%{http_version} %{http_code}", f"{e.url}/h2c/curl"], timeout=10)
    assert r.returncode == 0, f"curl: {r.returncode} {r.stderr!r} {r.stdout[:300]!r}"
    out = r.stdout.decode("latin-1")
    assert out.startswith("HTTP/1.1 200"), out[:300]
    assert out.rstrip().endswith("1.1 200"), out[-100:]
    rec = e.origin.last()
    assert (rec.method, rec.target) == ("GET", "/h2c/curl")
    _assert_no_h2c_offer(rec)

    # The same by hand, with a body, then more requests on the same connection.
    offer = [("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "h2c"), ("HTTP2-Settings", "AAMAAABkAAQAoAAA")]
    with h1.Client(e.port, timeout=10) as c:
        body = b"x" * 70000
        resp = c.request("POST", "/_/echo-body", headers=offer, body=body)
        assert resp.status == 200 and resp.complete, resp
        assert resp.body == body
        rec = e.origin.last()
        assert rec.body_len == len(body) and rec.body_complete
        _assert_no_h2c_offer(rec)
        resp = c.request("GET", "/h2c/again", headers=offer)
        assert resp.status == 200 and resp.complete, resp
        assert e.origin.last().target == "/h2c/again"
        resp = c.request("GET", "/after")
        assert resp.status == 200 and resp.complete, resp
        assert e.origin.last().target == "/after"


# ---------------------------------------------------------------------------------------------------
# Item 4: repeated x-forwarded-for headers are one list


def test_item4_repeated_xff_headers_are_merged_in_order(fleet):
    e = env.simple(fleet, use_remote_address=True, xff_num_trusted_hops=1)
    _get(e, "/xff", [("X-Forwarded-For", "198.51.100.1"), ("x-other", "between"),
                     ("x-forwarded-for", "198.51.100.2, 203.0.113.3")])
    assert _seen(e, "x-forwarded-for") == ["198.51.100.1,198.51.100.2, 203.0.113.3,127.0.0.1"]
    # The trusted hop's view: the last address of the whole list, not of the first header.
    assert _seen(e, "x-envoy-external-address") == ["203.0.113.3"]

    plain = env.simple(fleet)
    _get(plain, "/xff-plain", [("x-forwarded-for", "10.0.0.1"), ("x-forwarded-for", "10.0.0.2")])
    assert _seen(plain, "x-forwarded-for") == ["10.0.0.1,10.0.0.2"]
    assert _seen(plain, "x-envoy-internal") == [], "two addresses: not one internal client"


# ---------------------------------------------------------------------------------------------------
# Item 5: x-forwarded-for / x-forwarded-proto consistent with the trust rules


def test_item5_forwarded_proto_and_for_follow_the_trusted_hops(fleet, tmp_path):
    # use_remote_address, no trusted hops: the client's x-forwarded-proto is overwritten.
    e0 = env.simple(fleet, use_remote_address=True)
    _get(e0, "/p0", [("x-forwarded-proto", "https")])
    assert _seen(e0, "x-forwarded-proto") == ["http"]

    # One trusted hop: its x-forwarded-proto stands, its x-forwarded-for names the client.
    e1 = env.simple(fleet, use_remote_address=True, xff_num_trusted_hops=1)
    _get(e1, "/p1", [("x-forwarded-proto", "https"), ("x-forwarded-for", "203.0.113.50")])
    assert _seen(e1, "x-forwarded-proto") == ["https"]
    assert _seen(e1, "x-forwarded-for") == ["203.0.113.50,127.0.0.1"]
    assert _seen(e1, "x-envoy-external-address") == ["203.0.113.50"]
    _get(e1, "/p1b", [])
    assert _seen(e1, "x-forwarded-proto") == ["http"], "set when absent"
    assert _seen(e1, "x-envoy-internal") == ["true"]

    # skip_xff_append: x-forwarded-for untouched, the rest as with use_remote_address.
    es = env.simple(fleet, use_remote_address=True, skip_xff_append=True)
    _get(es, "/skip", [("x-forwarded-for", "203.0.113.60"), ("x-forwarded-proto", "https")])
    assert _seen(es, "x-forwarded-for") == ["203.0.113.60"]
    assert _seen(es, "x-forwarded-proto") == ["http"]

    # Without use_remote_address x-forwarded-proto is only added when absent.
    en = env.simple(fleet)
    _get(en, "/n", [("x-forwarded-proto", "https")])
    assert _seen(en, "x-forwarded-proto") == ["https"]

    # Over TLS the connection's scheme is https.
    ca = tmp_path / "ca"
    tlsutil.make_root(ca)
    server = tlsutil.make_workload(ca, tmp_path / "server", "default", "server", dns=["server.test"])
    origin = env.origin(fleet)
    cfg = harness.simple_http_config(origin.port, use_remote_address=True)
    cfg["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {"tls_certificates": [{
                "certificate_chain": {"filename": str(server["cert"])},
                "private_key": {"filename": str(server["key"])},
            }]},
        },
    }
    proc = fleet.start(cfg)
    port = proc.listener_port("http")
    r = harness.curl(["-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(server["root"]),
                      "--resolve", f"server.test:{port}:127.0.0.1", "-H", "x-forwarded-proto: http",
                      f"https://server.test:{port}/tls"], timeout=10)
    assert r.returncode == 0 and r.stdout == b"200", r
    assert origin.last().headers_named("x-forwarded-proto") == ["https"]
