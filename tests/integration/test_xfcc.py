"""x-forwarded-client-cert (XFCC) through the real binary, as Envoy's HTTP connection manager does it:
forward_client_cert_details and set_current_client_cert_details, checked at an origin that echoes the
request headers it received (peers/origin.py).

One strait with a listener per mode, each terminating TLS with an optional client certificate (so one
listener serves mTLS and TLS without a client certificate), plus plaintext listeners. Checked per mode:
an incoming XFCC header is removed (SANITIZE, and every mode but ALWAYS_FORWARD_ONLY without mTLS),
forwarded unchanged (FORWARD_ONLY over mTLS, ALWAYS_FORWARD_ONLY always), appended to (APPEND_FORWARD)
or replaced (SANITIZE_SET) by this hop's element, whose By (the URI SAN of strait's own certificate),
Hash (SHA-256 of the client certificate's DER, computed here with hashlib), Subject, URI, DNS, Cert and
Chain (URL-encoded PEM) are compared exactly. Also Istio's inbound HCM as istiod renders it
(APPEND_FORWARD with subject, dns and uri), over HTTP/1.1 and HTTP/2 (curl).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import shutil
import ssl
import urllib.parse

import pytest

import harness
import istio_shapes as ist
import tlsutil
from harness import bootstrap, socket_address, static_cluster
from peers import env
from test_tls import downstream_tls

SERVER_ID = "spiffe://cluster.local/ns/default/sa/server"
CLIENT_ID = "spiffe://cluster.local/ns/default/sa/client"
XFCC = "x-forwarded-client-cert"
INCOMING = 'By=spiffe://cluster.local/ns/edge/sa/gateway;Hash=abc123;URI="spiffe://x/a;b"'
MODES = ["SANITIZE", "FORWARD_ONLY", "APPEND_FORWARD", "SANITIZE_SET", "ALWAYS_FORWARD_ONLY"]
ALL_DETAILS = {"subject": True, "cert": True, "chain": True, "dns": True, "uri": True}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    base = tmp_path_factory.mktemp("xfcc-pki")
    tlsutil.make_root(base / "ca")
    inter = tlsutil.make_intermediate(base / "ca", base / "inter")
    return {
        "root": base / "ca" / "root-cert.pem",
        "server": tlsutil.make_workload(base / "ca", base / "server", "default", "server", dns=["server.test"]),
        "client": tlsutil.make_workload(base / "ca", base / "client", "default", "client",
                                        dns=["client.test", "alt.client.test"]),
        # Issued by an intermediate: its cert-chain.pem (leaf, intermediate) is what the client sends.
        "chained": tlsutil.make_workload(base / "ca", base / "chained", "default", "client", intermediate_dir=inter),
    }


def pem_blocks(path) -> list[str]:
    text = open(path).read()
    return re.findall(r"-----BEGIN CERTIFICATE-----\n.*?-----END CERTIFICATE-----\n", text, re.S)


def leaf_hash(path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem_blocks(path)[0])).hexdigest()


def url_encoded(pem: str) -> str:
    # RFC 3986 unreserved characters stay, everything else is %XX (upper-case hex).
    return urllib.parse.quote(pem, safe="-._~")


def hcm_listener(name: str, tls: dict | None, **hcm_extra) -> dict:
    listener = harness.http_listener(name, name, [harness.virtual_host("all", ["*"], [harness.route_to("origin")])],
                                     **hcm_extra)
    if tls is not None:
        listener["filter_chains"][0]["transport_socket"] = tls
    return listener


def client_ctx(pki, identity: str | None) -> ssl.SSLContext:
    # No trust store on the client: OpenSSL would complete the chain it sends from it (adding the root),
    # and Chain is exactly what the client sent. strait's certificate is not what these tests check.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if identity is not None:
        ctx.load_cert_chain(str(pki[identity]["cert"]), str(pki[identity]["key"]))
    return ctx


def seen_xfcc(port: int, ctx: ssl.SSLContext | None, incoming: list[str], requests: int = 1) -> list[list[str]]:
    """Sends `requests` requests on one connection, each with the `incoming` XFCC headers; returns, per
    request, the XFCC values the origin received."""
    conn = (http.client.HTTPSConnection(harness.LOOPBACK, port, context=ctx, timeout=10) if ctx is not None
            else http.client.HTTPConnection(harness.LOOPBACK, port, timeout=10))
    out = []
    try:
        for i in range(requests):
            conn.putrequest("GET", f"/xfcc/{i}")
            for value in incoming:
                conn.putheader(XFCC, value)
            conn.endheaders()
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200, body
            echo = json.loads(body)
            out.append([v for k, v in echo["headers"] if k.lower() == XFCC])
    finally:
        conn.close()
    return out


@pytest.fixture(scope="module")
def setup(pki, tmp_path_factory):
    """One strait (module-wide: one process for every case) with a TLS listener per mode and two
    plaintext ones; the origin echoes what it received."""
    from conftest import Fleet
    fleet = Fleet(tmp_path_factory.mktemp("xfcc-fleet"))
    try:
        origin = env.origin(fleet)
        tls = downstream_tls(pki["server"], pki["root"], require_client=False)
        listeners = [hcm_listener(f"tls_{m.lower()}", tls, forward_client_cert_details=m,
                                  set_current_client_cert_details=ALL_DETAILS) for m in MODES]
        listeners.append(hcm_listener("tls_uri_only", tls, forward_client_cert_details="APPEND_FORWARD",
                                      set_current_client_cert_details={"uri": True}))
        listeners.append(hcm_listener("tls_default", tls))
        for m in ("APPEND_FORWARD", "ALWAYS_FORWARD_ONLY"):
            listeners.append(hcm_listener(f"plain_{m.lower()}", None, forward_client_cert_details=m))
        proc = fleet.start(bootstrap(listeners, [static_cluster("origin", [origin.port])]))
        yield {"proc": proc, "port": proc.listener_port, "pki": pki}
    finally:
        problems = fleet.close()
    assert not problems, problems


def element(pki, identity: str, details: dict) -> str:
    """The element strait should add for `identity` with `details` (Envoy's key order)."""
    paths = pki[identity]
    info = tlsutil.cert_info(paths["cert"])
    blocks = pem_blocks(paths["cert"])
    parts = [f"By={SERVER_ID}", f"Hash={leaf_hash(paths['cert'])}"]
    if details.get("cert"):
        parts.append(f'Cert="{url_encoded(blocks[0])}"')
    if details.get("chain"):
        parts.append(f'Chain="{url_encoded("".join(blocks))}"')
    if details.get("subject"):
        parts.append('Subject="{}"'.format(info["subject"].replace('"', '\\"')))
    if details.get("uri"):
        parts += [f"URI={u}" for u in info["sans"]]
    if details.get("dns"):
        parts += [f"DNS={d}" for d in info["dns_sans"]]
    return ";".join(parts)


def test_sanitize_is_the_default_and_removes_the_header(setup):
    port, pki = setup["port"], setup["pki"]
    for name in ("tls_default", "tls_sanitize"):
        assert seen_xfcc(port(name), client_ctx(pki, "client"), [INCOMING, "Hash=second"]) == [[]], name
        assert seen_xfcc(port(name), client_ctx(pki, None), [INCOMING]) == [[]], name


def test_forward_only_forwards_unchanged_only_over_mtls(setup):
    port, pki = setup["port"], setup["pki"]
    assert seen_xfcc(port("tls_forward_only"), client_ctx(pki, "client"), [INCOMING]) == [[INCOMING]]
    assert seen_xfcc(port("tls_forward_only"), client_ctx(pki, None), [INCOMING]) == [[]]


def test_always_forward_only_forwards_unchanged_whatever_the_connection(setup):
    port, pki = setup["port"], setup["pki"]
    assert seen_xfcc(port("tls_always_forward_only"), client_ctx(pki, "client"), [INCOMING]) == [[INCOMING]]
    assert seen_xfcc(port("tls_always_forward_only"), client_ctx(pki, None), [INCOMING]) == [[INCOMING]]
    assert seen_xfcc(port("plain_always_forward_only"), None, [INCOMING, "Hash=2"]) == [[INCOMING, "Hash=2"]]


def test_append_forward_appends_this_hops_element_with_exact_values(setup):
    port, pki = setup["port"], setup["pki"]
    ours = element(pki, "client", ALL_DETAILS)
    # Every detail, on three requests of one connection (the element is built once per connection).
    got = seen_xfcc(port("tls_append_forward"), client_ctx(pki, "client"), [INCOMING], requests=3)
    assert got == [[f"{INCOMING},{ours}"]] * 3
    # Repeated incoming headers become one list, in order, before the append.
    got = seen_xfcc(port("tls_append_forward"), client_ctx(pki, "client"), [INCOMING, "Hash=second"])
    assert got == [[f"{INCOMING},Hash=second,{ours}"]]
    # None incoming: this hop's element alone.
    assert seen_xfcc(port("tls_append_forward"), client_ctx(pki, "client"), []) == [[ours]]
    # The pieces, independently: the hash of the client certificate, both DNS SANs, the PEM decodes back.
    assert f";Hash={leaf_hash(pki['client']['cert'])};" in ours
    assert ours.endswith(f";URI={CLIENT_ID};DNS=client.test;DNS=alt.client.test")
    cert = re.search(r'Cert="([^"]*)"', got[0][0]).group(1)
    assert urllib.parse.unquote(cert) == open(pki["client"]["cert"]).read()
    # Without mTLS (TLS without a client certificate, or plaintext) the header is removed.
    assert seen_xfcc(port("tls_append_forward"), client_ctx(pki, None), [INCOMING]) == [[]]
    assert seen_xfcc(port("plain_append_forward"), None, [INCOMING]) == [[]]


def test_append_forward_chain_carries_leaf_and_intermediate(setup):
    port, pki = setup["port"], setup["pki"]
    blocks = pem_blocks(pki["chained"]["cert"])
    assert len(blocks) == 2
    got = seen_xfcc(port("tls_append_forward"), client_ctx(pki, "chained"), [])
    assert got == [[element(pki, "chained", ALL_DETAILS)]]
    chain = urllib.parse.unquote(re.search(r'Chain="([^"]*)"', got[0][0]).group(1))
    assert chain == "".join(blocks)


def test_sanitize_set_replaces_the_header_over_mtls(setup):
    port, pki = setup["port"], setup["pki"]
    ours = element(pki, "client", ALL_DETAILS)
    assert seen_xfcc(port("tls_sanitize_set"), client_ctx(pki, "client"), [INCOMING, "Hash=2"]) == [[ours]]
    assert seen_xfcc(port("tls_sanitize_set"), client_ctx(pki, None), [INCOMING]) == [[]]


def test_uri_only_details(setup):
    port, pki = setup["port"], setup["pki"]
    want = f"By={SERVER_ID};Hash={leaf_hash(pki['client']['cert'])};URI={CLIENT_ID}"
    assert seen_xfcc(port("tls_uri_only"), client_ctx(pki, "client"), []) == [[want]]


def test_istio_inbound_hcm_tells_the_app_its_callers_identity(fleet, pki):
    """Istio's inbound HCM as istiod renders it (istio_shapes.hcm(inbound=True): APPEND_FORWARD with
    subject, dns and uri; Istio's inert filters), on an mTLS chain; the app sees the caller over
    HTTP/1.1 and HTTP/2."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    origin = env.origin(fleet)
    route = {"name": "inbound|8080||", "virtual_hosts": [
        harness.virtual_host("inbound|http|8080", ["*"], [harness.route_to("inbound|8080||")])]}
    hcm = ist.hcm("inbound_0.0.0.0_8080", ist.inbound_http_filters("typed"), route_config=route, inbound=True)
    assert hcm["typed_config"]["forward_client_cert_details"] == "APPEND_FORWARD"
    listener = {"name": "inbound", "address": socket_address(0), "filter_chains": [{
        "filters": [hcm],
        "transport_socket": downstream_tls(pki["server"], pki["root"], require_client=True, alpn=["h2", "http/1.1"])}]}
    # Istio sends it over LDS, where fields our subset lacks (request_id_extension) are kept and
    # counted; a static bootstrap needs the flag for the same.
    proc = fleet.start(bootstrap([listener], [static_cluster("inbound|8080||", [origin.port])]),
                       extra=["--allow-unknown-static-fields"])
    port = proc.listener_port("inbound")
    want = element(pki, "client", {"subject": True, "dns": True, "uri": True})
    for flag in ("--http1.1", "--http2"):
        r = harness.curl([flag, "--cacert", str(pki["root"]), "--cert", str(pki["client"]["cert"]),
                          "--key", str(pki["client"]["key"]), "-H", f"{XFCC}: {INCOMING}",
                          "--resolve", f"server.test:{port}:127.0.0.1", f"https://server.test:{port}/istio"])
        assert r.returncode == 0, r.stderr.decode()
        echo = json.loads(r.stdout)
        assert [v for k, v in echo["headers"] if k.lower() == XFCC] == [f"{INCOMING},{want}"], flag
