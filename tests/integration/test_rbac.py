"""RBAC on the peer's SPIFFE identity through the real binary: the network filter closes connections
from identities a policy does not allow (nothing reaches the upstream), the HTTP filter answers 403
"RBAC: access denied" by identity, method and path, deny wins, shadow rules only count, and a route can
turn the filter off."""

from __future__ import annotations

import socket
import ssl
import subprocess

import pytest

import harness
import tlsutil
from harness import bootstrap, socket_address, static_cluster
from test_tls import downstream_tls, read_to_close, tls_listener

NET_RBAC = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
HTTP_RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
HTTP_RBAC_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
CLIENT = "spiffe://cluster.local/ns/default/sa/client"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    base = tmp_path_factory.mktemp("rbac-pki")
    root = tlsutil.make_root(base / "ca")
    return {
        "root": root,
        "server": tlsutil.make_workload(base / "ca", base / "server", "default", "server"),
        "client": tlsutil.make_workload(base / "ca", base / "client", "default", "client"),
        "intruder": tlsutil.make_workload(base / "ca", base / "intruder", "other", "intruder"),
    }


def principal(exact: str) -> dict:
    return {"authenticated": {"principal_name": {"exact": exact}}}


def ctx(pki, who: str) -> ssl.SSLContext:
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    c.check_hostname = False
    c.load_verify_locations(str(pki["root"]))
    c.load_cert_chain(str(pki[who]["cert"]), str(pki[who]["key"]))
    return c


def test_network_rbac_allows_only_the_named_identity(fleet, pki):
    sink = fleet.echo()
    listener = tls_listener("in", "app", downstream_tls(pki["server"], pki["root"], require_client=True))
    rbac = {"@type": NET_RBAC, "stat_prefix": "in.", "rules": {"action": "ALLOW", "policies": {
        "only-client": {"permissions": [{"any": True}], "principals": [principal(CLIENT)]}}}}
    listener["filter_chains"][0]["filters"].insert(0, {"name": "envoy.filters.network.rbac", "typed_config": rbac})
    proc = fleet.start(bootstrap([listener], [static_cluster("app", [sink.port])]))
    port = proc.listener_port("in")

    with socket.create_connection((harness.LOOPBACK, port), timeout=5) as raw:
        with ctx(pki, "client").wrap_socket(raw) as s:
            s.sendall(b"allowed")
            assert s.recv(64) == b"allowed"
    assert sink.wait_accepts(1) == 1

    with socket.create_connection((harness.LOOPBACK, port), timeout=5) as raw:
        try:
            with ctx(pki, "intruder").wrap_socket(raw) as s:
                s.sendall(b"denied")
                got = read_to_close(s, timeout=5)
        except (ssl.SSLError, OSError):
            got = b""
    assert got == b""
    assert sink.accept_count() == 1, "a denied identity reached the upstream"
    stats = proc.wait_stats(lambda st: st.get("in.rbac.denied", 0) >= 1)
    assert stats["in.rbac.allowed"] == 1
    assert stats["in.rbac.denied"] == 1


def test_http_rbac_by_identity_method_and_path_with_shadow_and_per_route_off(fleet, pki):
    hcm = {
        "@type": HCM,
        "stat_prefix": "in_http",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/open"}, "direct_response": {"status": 200, "body": {"inline_string": "open"}},
             "typed_per_filter_config": {"envoy.filters.http.rbac": {"@type": HTTP_RBAC_ROUTE}}},
            {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}},
        ]}]},
        "http_filters": [
            # Deny first: nobody may POST to /admin, whatever the identity.
            {"name": "envoy.filters.http.rbac", "typed_config": {"@type": HTTP_RBAC, "rules": {"action": "DENY", "policies": {
                "no-admin-writes": {"permissions": [{"and_rules": {"rules": [
                    {"header": {"name": ":method", "string_match": {"exact": "POST"}}},
                    {"url_path": {"path": {"prefix": "/admin"}}}]}}], "principals": [{"any": True}]}}},
                "shadow_rules": {"action": "ALLOW", "policies": {
                    "shadow-nobody": {"permissions": [{"any": True}], "principals": [principal("spiffe://nobody")]}}}}},
            harness.router_filter(),
        ],
    }
    hcm["http_filters"].insert(1, {"name": "envoy.filters.http.rbac.allow", "typed_config": {"@type": HTTP_RBAC, "rules": {
        "action": "ALLOW", "policies": {"client-only": {"permissions": [{"any": True}], "principals": [principal(CLIENT)]}}}}})
    listener = {"name": "https", "address": socket_address(0), "filter_chains": [{
        "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}],
        "transport_socket": downstream_tls(pki["server"], pki["root"], require_client=True)}]}
    proc = fleet.start(bootstrap([listener], [static_cluster("unused", [9])]))
    port = proc.listener_port("https")

    def curl(who: str, path: str, method: str = "GET") -> tuple[int, str]:
        r = subprocess.run(["curl", "-sS", "-k", "-X", method, "--cert", str(pki[who]["cert"]), "--key",
                            str(pki[who]["key"]), "-o", "-", "-w", "\n%{http_code}", f"https://127.0.0.1:{port}{path}"],
                           capture_output=True, timeout=15)
        assert r.returncode == 0, r.stderr.decode()
        body, _, code = r.stdout.decode().rpartition("\n")
        return int(code), body

    assert curl("client", "/data") == (200, "ok")
    assert curl("intruder", "/data") == (403, "RBAC: access denied")
    assert curl("client", "/admin/x", "POST")[0] == 403      # deny wins over the allow that follows
    assert curl("client", "/admin/x", "GET") == (200, "ok")
    assert curl("client", "/%61dmin/x", "POST")[0] == 403    # the path is normalised first
    # The first filter is turned off on /open; the allow filter still applies there.
    assert curl("client", "/open", "POST") == (200, "open")
    assert curl("intruder", "/open")[0] == 403
    stats = proc.stats()
    assert stats["http.in_http.rbac.denied"] >= 2
    assert stats["http.in_http.rbac.allowed"] >= 3
    # Shadow rules never decide, they only count (nobody is the shadow principal: all shadow-denied).
    assert stats["http.in_http.rbac.shadow_denied"] >= 3
    assert stats.get("http.in_http.rbac.shadow_allowed", 0) == 0
