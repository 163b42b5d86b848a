"""TLS and mTLS through the real binary: termination, origination, two sidecars with SPIFFE identities,
the failures a mesh must refuse (wrong trust domain, expired, no client certificate, SAN mismatch,
plaintext upstream), certificate rotation from files, /certs, and the filter-chain match on SNI and
transport protocol (PERMISSIVE and STRICT)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

import harness
import tlsutil
from harness import bootstrap, socket_address, static_cluster, tcp_proxy_listener

DOWNSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
TLS_INSPECTOR = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
SPIFFE_A = "spiffe://cluster.local/ns/default/sa/client"
SPIFFE_B = "spiffe://cluster.local/ns/default/sa/server"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A mesh root, workload certificates for a client and a server, and the odd ones out."""
    base = tmp_path_factory.mktemp("pki")
    root = tlsutil.make_root(base / "ca")
    other = tlsutil.make_root(base / "other-ca", trust_domain="other.local")
    out = {
        "root": root,
        "ca_dir": base / "ca",
        "client": tlsutil.make_workload(base / "ca", base / "client", "default", "client"),
        "server": tlsutil.make_workload(base / "ca", base / "server", "default", "server", dns=["server.test"]),
        "foreign": tlsutil.make_workload(base / "other-ca", base / "foreign", "default", "client"),
        "expired": tlsutil.make_workload(base / "ca", base / "expired", "default", "client", seconds=60,
                                         not_before_offset=-7200),
        "base": base,
    }
    assert other.exists()
    return out


def tls_cert(paths: dict) -> dict:
    return {"certificate_chain": {"filename": str(paths["cert"])}, "private_key": {"filename": str(paths["key"])}}


def downstream_tls(paths: dict, root: Path | None = None, require_client: bool = False, sans=None,
                   alpn=None) -> dict:
    common: dict = {"tls_certificates": [tls_cert(paths)]}
    if root is not None:
        vc: dict = {"trusted_ca": {"filename": str(root)}}
        if sans:
            vc["match_typed_subject_alt_names"] = [{"san_type": "URI", "matcher": {"exact": s}} for s in sans]
        common["validation_context"] = vc
    if alpn:
        common["alpn_protocols"] = alpn
    ts = {"@type": DOWNSTREAM_TLS, "common_tls_context": common}
    if require_client:
        ts["require_client_certificate"] = True
    return {"name": "envoy.transport_sockets.tls", "typed_config": ts}


def upstream_tls(root: Path | None, paths: dict | None = None, sans=None, sni: str | None = None) -> dict:
    common: dict = {}
    if paths is not None:
        common["tls_certificates"] = [tls_cert(paths)]
    if root is not None:
        vc: dict = {"trusted_ca": {"filename": str(root)}}
        if sans:
            vc["match_typed_subject_alt_names"] = [{"san_type": "URI", "matcher": {"exact": s}} for s in sans]
        common["validation_context"] = vc
    ts: dict = {"@type": UPSTREAM_TLS, "common_tls_context": common}
    if sni:
        ts["sni"] = sni
    return {"name": "envoy.transport_sockets.tls", "typed_config": ts}


def tls_listener(name: str, cluster: str, transport_socket: dict) -> dict:
    listener = tcp_proxy_listener(name, cluster)
    listener["filter_chains"][0]["transport_socket"] = transport_socket
    return listener


def tls_cluster(name: str, ports, transport_socket: dict) -> dict:
    c = static_cluster(name, ports)
    c["transport_socket"] = transport_socket
    return c


def client_context(pki, identity: str | None = None, verify: bool = True) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    if verify:
        ctx.load_verify_locations(str(pki["root"]))
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if identity is not None:
        ctx.load_cert_chain(str(pki[identity]["cert"]), str(pki[identity]["key"]))
    return ctx


def tls_echo(port: int, ctx: ssl.SSLContext, payload: bytes = b"hello over tls", server_hostname=None,
             timeout: float = 10.0) -> tuple[bytes, dict | None]:
    """Sends `payload` through a TLS connection to `port`, half-closes, returns (echo, peer cert)."""
    with socket.create_connection((harness.LOOPBACK, port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_hostname) as s:
            s.sendall(payload)
            got = b""
            deadline = time.monotonic() + timeout
            while len(got) < len(payload) and time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
            return got, s.getpeercert()


def handshake_fails(port: int, ctx: ssl.SSLContext, payload: bytes = b"secret", timeout: float = 5.0) -> bool:
    """True if the TLS connection fails (handshake error, or closed before any echo arrives)."""
    try:
        got, _ = tls_echo(port, ctx, payload, timeout=timeout)
    except (ssl.SSLError, ConnectionError, OSError):
        return True
    return got == b""


# ---------------------------------------------------------------------------------------------------
# Termination


def test_tls_termination_echoes_and_counts_handshakes(fleet, pki):
    echo = fleet.echo()
    config = bootstrap([tls_listener("tls_in", "backend", downstream_tls(pki["server"]))],
                       [static_cluster("backend", [echo.port])])
    proc = fleet.start(config)
    port = proc.listener_port("tls_in")
    payload = os.urandom(300_000)
    got, peer = tls_echo(port, client_context(pki))
    assert got == b"hello over tls"
    assert ("URI", SPIFFE_B) in peer["subjectAltName"]
    with socket.create_connection((harness.LOOPBACK, port), timeout=10) as raw:
        with client_context(pki).wrap_socket(raw) as s:
            s.sendall(payload)
            got = b""
            while len(got) < len(payload):
                chunk = s.recv(1 << 16)
                if not chunk:
                    break
                got += chunk
    assert got == payload, f"echoed {len(got)} of {len(payload)} bytes"
    stats = proc.wait_stats(lambda s: s.get(f"listener.127.0.0.1_{port}.ssl.handshake", 0) >= 2)
    assert stats[f"listener.127.0.0.1_{port}.ssl.handshake"] >= 2
    # A client that presents no certificate to a listener that does not ask for one.
    assert stats[f"listener.127.0.0.1_{port}.ssl.no_certificate"] >= 2


def test_tls_below_1_2_is_refused(fleet, pki):
    echo = fleet.echo()
    config = bootstrap([tls_listener("tls_in", "backend", downstream_tls(pki["server"]))],
                       [static_cluster("backend", [echo.port])])
    proc = fleet.start(config)
    port = proc.listener_port("tls_in")
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_1", "-CAfile",
                        str(pki["root"])], input=b"", capture_output=True, timeout=10)
    assert r.returncode != 0, r.stdout.decode(errors="replace")
    assert echo.accept_count() == 0


def test_plaintext_to_a_tls_listener_is_not_forwarded(fleet, pki):
    sink = fleet.sink(keep_data=True)
    config = bootstrap([tls_listener("tls_in", "backend", downstream_tls(pki["server"]))],
                       [static_cluster("backend", [sink.port])])
    proc = fleet.start(config)
    port = proc.listener_port("tls_in")
    s = harness.connect(port)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    how, _ = harness.wait_closed(s, 5)
    assert how in ("eof", "reset"), how
    assert sink.accept_count() == 0, "a connection whose handshake failed reached the upstream"
    stats = proc.stats()
    assert stats[f"listener.127.0.0.1_{port}.ssl.connection_error"] >= 1


def test_garbage_instead_of_client_hello_does_not_hurt_others(fleet, pki):
    echo = fleet.echo()
    config = bootstrap([tls_listener("tls_in", "backend", downstream_tls(pki["server"]))],
                       [static_cluster("backend", [echo.port])])
    proc = fleet.start(config)
    port = proc.listener_port("tls_in")
    bad = [harness.connect(port) for _ in range(5)]
    for i, s in enumerate(bad):
        s.sendall(bytes([0x16, 0x03, 0x01, 0x00, 0x10]) + os.urandom(16 + i))
    got, _ = tls_echo(port, client_context(pki))
    assert got == b"hello over tls"
    for s in bad:
        harness.wait_closed(s, 5)
        s.close()
    assert proc.alive()


# ---------------------------------------------------------------------------------------------------
# Two sidecars: plaintext in, mTLS between, plaintext out


def mesh_pair(fleet, pki, upstream_port: int, client_identity="client", expect_sans=(SPIFFE_B,),
              server_sans=(SPIFFE_A,), client_root=None):
    """Sidecar B (mTLS in -> upstream) and sidecar A (plaintext in -> mTLS to B)."""
    b_config = bootstrap(
        [tls_listener("inbound", "app", downstream_tls(pki["server"], pki["root"], require_client=True,
                                                      sans=list(server_sans)))],
        [static_cluster("app", [upstream_port])])
    b = fleet.start(b_config)
    b_port = b.listener_port("inbound")
    identity = pki[client_identity] if client_identity else None
    a_config = bootstrap(
        [tcp_proxy_listener("outbound", "to_b")],
        [tls_cluster("to_b", [b_port], upstream_tls(client_root or pki["root"], identity, sans=list(expect_sans)))])
    a = fleet.start(a_config)
    return a, b, a.listener_port("outbound"), b_port


def read_to_close(s: socket.socket, timeout: float = 10.0) -> bytes:
    """What arrives before the peer closes; a reset counts as a close."""
    try:
        return harness.recv_until_eof(s, timeout=timeout)
    except ConnectionResetError:
        return b""


def plain_echo(port: int, payload: bytes, timeout: float = 10.0) -> bytes:
    with harness.connect(port, timeout=timeout) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        return harness.recv_until_eof(s, timeout=timeout)


def test_mtls_between_two_sidecars_carries_bytes_exactly(fleet, pki):
    echo = fleet.echo()
    a, b, a_port, b_port = mesh_pair(fleet, pki, echo.port)
    payload = os.urandom(2 * harness.MIB)
    assert plain_echo(a_port, payload) == payload
    sa = a.wait_stats(lambda s: s.get("cluster.to_b.ssl.handshake", 0) >= 1)
    sb = b.wait_stats(lambda s: s.get(f"listener.127.0.0.1_{b_port}.ssl.handshake", 0) >= 1)
    assert sa["cluster.to_b.ssl.handshake"] >= 1
    assert sb[f"listener.127.0.0.1_{b_port}.ssl.handshake"] >= 1
    assert sb.get(f"listener.127.0.0.1_{b_port}.ssl.no_certificate", 0) == 0
    # Each side's stats name the peer's SPIFFE ID.
    assert sa["cluster.to_b.ssl.peer." + SPIFFE_B.replace(":", "_") + ".handshake"] >= 1, sa
    assert sb[f"listener.127.0.0.1_{b_port}.ssl.peer." + SPIFFE_A.replace(":", "_") + ".handshake"] >= 1, sb


def test_mtls_session_resumption_on_new_upstream_connections(fleet, pki):
    echo = fleet.echo()
    a, b, a_port, b_port = mesh_pair(fleet, pki, echo.port)
    for i in range(4):
        assert plain_echo(a_port, b"x%d" % i) == b"x%d" % i
    stats = a.wait_stats(lambda s: s.get("cluster.to_b.ssl.session_reused", 0) >= 1)
    assert stats["cluster.to_b.ssl.session_reused"] >= 1, stats


@pytest.mark.parametrize("case", ["san_mismatch", "foreign_trust_domain", "expired", "no_client_cert"])
def test_mtls_refusals_forward_nothing_and_count(fleet, pki, case):
    sink = fleet.sink()
    kw = {}
    if case == "san_mismatch":
        kw["expect_sans"] = ("spiffe://cluster.local/ns/default/sa/someone-else",)
    elif case == "foreign_trust_domain":
        kw["client_identity"] = "foreign"
    elif case == "expired":
        kw["client_identity"] = "expired"
    elif case == "no_client_cert":
        kw["client_identity"] = None
    a, b, a_port, b_port = mesh_pair(fleet, pki, sink.port, **kw)
    with harness.connect(a_port) as s:
        try:
            s.sendall(b"must not arrive")
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # strait may already have closed it: the refusal is what this test wants
        data = read_to_close(s)
    assert data == b""
    time.sleep(0.3)
    assert sink.accept_count() == 0, "the upstream got a connection through a failed handshake"
    lp = f"listener.127.0.0.1_{b_port}.ssl."
    if case == "san_mismatch":
        stats = a.wait_stats(lambda s: s.get("cluster.to_b.ssl.fail_verify_san", 0) >= 1)
        assert stats["cluster.to_b.ssl.fail_verify_san"] >= 1
    elif case in ("foreign_trust_domain", "expired"):
        stats = b.wait_stats(lambda s: s.get(lp + "fail_verify_error", 0) >= 1)
        assert stats[lp + "fail_verify_error"] >= 1
    else:
        stats = b.wait_stats(lambda s: s.get(lp + "fail_verify_no_cert", 0) >= 1)
        assert stats[lp + "fail_verify_no_cert"] >= 1


def test_tls_cluster_never_sends_cleartext_to_a_plaintext_server(fleet, pki):
    sink = fleet.sink(keep_data=True, reply=b"")
    config = bootstrap([tcp_proxy_listener("out", "tls_up")],
                       [tls_cluster("tls_up", [sink.port], upstream_tls(pki["root"], pki["client"]))])
    proc = fleet.start(config)
    port = proc.listener_port("out")
    with harness.connect(port) as s:
        s.sendall(b"TOP-SECRET-PAYLOAD")
        s.shutdown(socket.SHUT_WR)
        read_to_close(s)
    result = sink.result(0)
    result.eof.wait(5)
    data = bytes(result.data)
    assert b"TOP-SECRET-PAYLOAD" not in data
    assert data[:1] == b"\x16", f"the first bytes on the wire were not a TLS handshake: {data[:16]!r}"
    assert proc.alive()


# ---------------------------------------------------------------------------------------------------
# HTTP over TLS with curl


def test_https_with_curl_and_client_certificate(fleet, pki):
    origin_dir = pki["base"]
    server = fleet.sink(reply=b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "https",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                                             "routes": [{"match": {"prefix": "/"},
                                                         "direct_response": {"status": 200, "body": {"inline_string": "secure"}}}]}]},
        "http_filters": [harness.router_filter()],
    }
    listener = {
        "name": "https",
        "address": socket_address(0),
        "filter_chains": [{
            "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}],
            "transport_socket": downstream_tls(pki["server"], pki["root"], require_client=True, alpn=["h2", "http/1.1"]),
        }],
    }
    proc = fleet.start(bootstrap([listener], [static_cluster("unused", [server.port])]))
    port = proc.listener_port("https")
    for http in ("--http1.1", "--http2"):
        r = subprocess.run(["curl", "-sS", http, "--cacert", str(pki["root"]), "--cert", str(pki["client"]["cert"]),
                            "--key", str(pki["client"]["key"]), "--resolve", f"server.test:{port}:127.0.0.1",
                            f"https://server.test:{port}/"], capture_output=True, timeout=15)
        assert r.returncode == 0, r.stderr.decode()
        assert r.stdout == b"secure"
    # Without a client certificate the handshake fails.
    r = subprocess.run(["curl", "-sS", "--cacert", str(pki["root"]), "--resolve", f"server.test:{port}:127.0.0.1",
                        f"https://server.test:{port}/"], capture_output=True, timeout=15)
    assert r.returncode != 0
    assert origin_dir.exists()


# ---------------------------------------------------------------------------------------------------
# Filter chain match: SNI, PERMISSIVE (TLS and plaintext on one port) and STRICT


def test_permissive_port_takes_tls_and_plaintext_and_sni_picks_the_chain(fleet, pki):
    plain_echo_server = fleet.echo()
    tls_sink = fleet.echo()
    sni_sink = fleet.echo()
    proxy = lambda c: [{"name": harness.TCP_PROXY_FILTER,
                        "typed_config": {"@type": harness.TCP_PROXY_TYPE, "stat_prefix": c, "cluster": c}}]
    listener = {
        "name": "inbound",
        "address": socket_address(0),
        "listener_filters": [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": TLS_INSPECTOR}}],
        "filter_chains": [
            {"filter_chain_match": {"transport_protocol": "tls", "server_names": ["special.test"]},
             "filters": proxy("sni"), "transport_socket": downstream_tls(pki["server"])},
            {"filter_chain_match": {"transport_protocol": "tls"},
             "filters": proxy("tls"), "transport_socket": downstream_tls(pki["server"])},
            {"filter_chain_match": {"transport_protocol": "raw_buffer"}, "filters": proxy("plain")},
        ],
    }
    config = bootstrap([listener], [static_cluster("plain", [plain_echo_server.port]),
                                    static_cluster("tls", [tls_sink.port]),
                                    static_cluster("sni", [sni_sink.port])])
    proc = fleet.start(config)
    port = proc.listener_port("inbound")
    assert plain_echo(port, b"plain") == b"plain"
    got, _ = tls_echo(port, client_context(pki), b"tls", server_hostname="other.test")
    assert got == b"tls"
    got, _ = tls_echo(port, client_context(pki), b"sni", server_hostname="special.test")
    assert got == b"sni"
    assert plain_echo_server.wait_accepts(1) == 1
    assert tls_sink.wait_accepts(1) == 1
    assert sni_sink.wait_accepts(1) == 1


def test_strict_port_refuses_plaintext(fleet, pki):
    sink = fleet.sink()
    listener = tls_listener("strict", "app", downstream_tls(pki["server"], pki["root"], require_client=True))
    listener["listener_filters"] = [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": TLS_INSPECTOR}}]
    listener["filter_chains"][0]["filter_chain_match"] = {"transport_protocol": "tls"}
    proc = fleet.start(bootstrap([listener], [static_cluster("app", [sink.port])]))
    port = proc.listener_port("strict")
    s = harness.connect(port)
    s.sendall(b"plaintext request\r\n\r\n")
    how, _ = harness.wait_closed(s, 5)
    assert how in ("eof", "reset")
    assert sink.accept_count() == 0
    stats = proc.stats()
    assert stats[f"listener.127.0.0.1_{port}.no_filter_chain_match"] >= 1


# ---------------------------------------------------------------------------------------------------
# Rotation from files, /certs, config errors


def serial_of(port: int, pki) -> str:
    with socket.create_connection((harness.LOOPBACK, port), timeout=10) as raw:
        with client_context(pki).wrap_socket(raw) as s:
            return s.getpeercert()["serialNumber"].lower()


def test_file_rotation_by_rename_and_symlink_swap_and_half_written_pair(fleet, pki, tmp_path):
    echo = fleet.echo()
    live = tmp_path / "live"
    live.mkdir()
    gen1 = tlsutil.make_workload(pki["ca_dir"], tmp_path / "gen1", "default", "server")
    gen2 = tlsutil.make_workload(pki["ca_dir"], tmp_path / "gen2", "default", "server")
    gen3 = tlsutil.make_workload(pki["ca_dir"], tmp_path / "gen3", "default", "server")
    # Kubernetes' secret volume layout: cert and key are symlinks through ..data to a timestamped dir.
    for gen, name in ((gen1, "..v1"), (gen3, "..v3")):
        d = live / name
        d.mkdir()
        shutil.copy(gen["cert"], d / "cert-chain.pem")
        shutil.copy(gen["key"], d / "key.pem")
    os.symlink("..v1", live / "..data")
    os.symlink("..data/cert-chain.pem", live / "cert-chain.pem")
    os.symlink("..data/key.pem", live / "key.pem")
    paths = {"cert": live / "cert-chain.pem", "key": live / "key.pem"}
    proc = fleet.start(bootstrap([tls_listener("tls_in", "backend", downstream_tls(paths))],
                                 [static_cluster("backend", [echo.port])]))
    port = proc.listener_port("tls_in")
    s1 = tlsutil.cert_info(gen1["cert"])["serial"].lower().lstrip("0")
    assert serial_of(port, pki).lstrip("0") == s1

    # An established connection survives every rotation below.
    raw = socket.create_connection((harness.LOOPBACK, port), timeout=10)
    held = client_context(pki).wrap_socket(raw)

    def wait_serial(want: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        got = ""
        while time.monotonic() < deadline:
            got = serial_of(port, pki).lstrip("0")
            if got == want:
                return got
            time.sleep(0.2)
        return got

    # Symlink swap (atomic rename of a new ..data link).
    os.symlink("..v3", live / "..data_tmp")
    os.replace(live / "..data_tmp", live / "..data")
    s3 = tlsutil.cert_info(gen3["cert"])["serial"].lower().lstrip("0")
    assert wait_serial(s3) == s3

    # Half-written pair: a key that belongs to another certificate. The old pair stays, a counter moves.
    d4 = live / "..v4"
    d4.mkdir()
    shutil.copy(gen2["cert"], d4 / "cert-chain.pem")
    shutil.copy(gen1["key"], d4 / "key.pem")
    os.symlink("..v4", live / "..data_tmp")
    os.replace(live / "..data_tmp", live / "..data")
    stats = proc.wait_stats(lambda s: any(k.endswith("key_rotation_failed") and v >= 1 for k, v in s.items()))
    assert any(k.endswith("key_rotation_failed") and v >= 1 for k, v in stats.items()), stats
    assert serial_of(port, pki).lstrip("0") == s3

    # The second half arrives: now the pair matches and is taken.
    shutil.copy(gen2["key"], d4 / "key.pem.tmp")
    os.replace(d4 / "key.pem.tmp", d4 / "key.pem")
    s2 = tlsutil.cert_info(gen2["cert"])["serial"].lower().lstrip("0")
    assert wait_serial(s2) == s2

    held.sendall(b"still here")
    assert held.recv(64) == b"still here"
    held.close()


def test_certs_admin_lists_identity_and_config_dump_hides_keys(fleet, pki):
    echo = fleet.echo()
    key_pem = Path(pki["server"]["key"]).read_text()
    inline = {"@type": DOWNSTREAM_TLS, "common_tls_context": {"tls_certificates": [{
        "certificate_chain": {"inline_string": Path(pki["server"]["cert"]).read_text()},
        "private_key": {"inline_string": key_pem}}]}}
    listener = tls_listener("tls_in", "backend", {"name": "tls", "typed_config": inline})
    proc = fleet.start(bootstrap([listener], [static_cluster("backend", [echo.port])]))
    certs = proc.get("/certs").json()
    chains = [c for entry in certs["certificates"] for c in entry["cert_chain"]]
    assert any({"uri": SPIFFE_B} in c["subject_alt_names"] for c in chains), certs
    serial = tlsutil.cert_info(pki["server"]["cert"])["serial"].lower().lstrip("0")
    assert any(c["serial_number"].lstrip("0") == serial for c in chains)
    assert all(int(c["days_until_expiration"]) >= 0 for c in chains)
    dump = proc.get("/config_dump").text
    assert "PRIVATE KEY" not in dump
    key_body = [line for line in key_pem.splitlines() if line and "-----" not in line][0]
    assert key_body not in dump
    # The watcher keeps the expiry gauges current (every 500 ms): the CA tool's workload certificate is
    # valid for a day, so its expiry is hours away, not zero and not years.
    stats = proc.wait_stats(lambda st: st.get("server.seconds_until_first_cert_expiring", 0) > 0)
    secs = stats["server.seconds_until_first_cert_expiring"]
    assert 3600 < secs <= 3650 * 86400, secs
    assert stats["server.days_until_first_cert_expiring"] == secs // 86400


def test_bad_tls_config_is_rejected_naming_the_field(tmp_path, pki):
    cfg = bootstrap([tls_listener("tls_in", "backend", downstream_tls({"cert": tmp_path / "missing.pem",
                                                                       "key": tmp_path / "missing-key.pem"}))],
                    [static_cluster("backend", [9])])
    path = harness.write_bootstrap(tmp_path, cfg)
    r = harness.run_strait(["--mode", "validate", "-c", str(path)])
    assert r.returncode == 1
    assert "static_resources.listeners[0].filter_chains[0].transport_socket" in r.stderr, r.stderr
    assert "missing.pem" in r.stderr
    # A key that does not belong to the certificate.
    cfg = bootstrap([tls_listener("tls_in", "backend", downstream_tls({"cert": pki["server"]["cert"],
                                                                       "key": pki["client"]["key"]}))],
                    [static_cluster("backend", [9])])
    path = harness.write_bootstrap(tmp_path, cfg, "b2.yaml")
    r = harness.run_strait(["--mode", "validate", "-c", str(path)])
    assert r.returncode == 1
    assert "does not match" in r.stderr, r.stderr
    # TLS 1.0 as a minimum is refused.
    ts = downstream_tls(pki["server"])
    ts["typed_config"]["common_tls_context"]["tls_params"] = {"tls_minimum_protocol_version": "TLSv1_0"}
    cfg = bootstrap([tls_listener("tls_in", "backend", ts)], [static_cluster("backend", [9])])
    path = harness.write_bootstrap(tmp_path, cfg, "b3.yaml")
    r = harness.run_strait(["--mode", "validate", "-c", str(path)])
    assert r.returncode == 1
    assert "tls_minimum_protocol_version" in r.stderr, r.stderr


def test_transport_socket_matches_pick_tls_by_endpoint_metadata(fleet, pki):
    """Istio's auto-mTLS shape: endpoints labelled tlsMode=istio get TLS, the others plaintext."""
    echo_b = fleet.echo()
    plain = fleet.echo()
    b = fleet.start(bootstrap([tls_listener("inbound", "app", downstream_tls(pki["server"], pki["root"],
                                                                           require_client=True))],
                              [static_cluster("app", [echo_b.port])]))
    b_port = b.listener_port("inbound")
    cluster = {
        "name": "mixed", "type": "STATIC", "connect_timeout": "1s", "lb_policy": "ROUND_ROBIN",
        "load_assignment": {"cluster_name": "mixed", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": socket_address(b_port)},
             "metadata": {"filter_metadata": {"envoy.transport_socket_match": {"tlsMode": "istio"}}}},
            {"endpoint": {"address": socket_address(plain.port)}},
        ]}]},
        "transport_socket_matches": [
            {"name": "tlsMode-istio", "match": {"tlsMode": "istio"},
             "transport_socket": upstream_tls(pki["root"], pki["client"], sans=[SPIFFE_B])},
            {"name": "tlsMode-disabled", "match": {},
             "transport_socket": {"name": "envoy.transport_sockets.raw_buffer", "typed_config": {
                 "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}},
        ],
    }
    a = fleet.start(bootstrap([tcp_proxy_listener("out", "mixed")], [cluster]))
    port = a.listener_port("out")
    for i in range(4):
        assert plain_echo(port, b"m%d" % i) == b"m%d" % i
    assert echo_b.wait_accepts(2) == 2, "the TLS-labelled endpoint did not get its share"
    assert plain.wait_accepts(2) == 2, "the plaintext endpoint did not get its share"
    stats = b.wait_stats(lambda s: s.get(f"listener.127.0.0.1_{b_port}.ssl.handshake", 0) >= 2)
    assert stats[f"listener.127.0.0.1_{b_port}.ssl.handshake"] >= 2
    assert a.stats()["cluster.mixed.ssl.handshake"] >= 2


def test_rotation_under_continuous_load_loses_nothing(fleet, pki, tmp_path):
    """Short-lived certificates (20 s) replaced four times by symlink swap while clients keep making
    requests, each on a new TLS connection (new handshakes) and some on kept-alive ones: no request
    fails, and new handshakes present each new serial in turn."""
    import http.client

    live = tmp_path / "live"
    live.mkdir()
    gens = [tlsutil.make_workload(pki["ca_dir"], tmp_path / f"g{i}", "default", "server", seconds=20) for i in range(5)]
    serials = [tlsutil.cert_info(g["cert"])["serial"].lower().lstrip("0") for g in gens]
    for i, g in enumerate(gens):
        d = live / f"..v{i}"
        d.mkdir()
        shutil.copy(g["cert"], d / "cert-chain.pem")
        shutil.copy(g["key"], d / "key.pem")
    os.symlink("..v0", live / "..data")
    os.symlink("..data/cert-chain.pem", live / "cert-chain.pem")
    os.symlink("..data/key.pem", live / "key.pem")
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "rot",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "fine"}}}]}]},
        "http_filters": [harness.router_filter()],
    }
    listener = {"name": "https", "address": socket_address(0), "filter_chains": [{
        "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}],
        "transport_socket": downstream_tls({"cert": live / "cert-chain.pem", "key": live / "key.pem"},
                                           pki["root"], require_client=True)}]}
    proc = fleet.start(bootstrap([listener], [static_cluster("unused", [9])]))
    port = proc.listener_port("https")
    ctx = client_context(pki, "client")
    stop = threading.Event()
    lock = threading.Lock()
    results = {"ok": 0, "failed": [], "serials": set()}

    def fresh_connections():
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
                c.request("GET", "/")
                r = c.getresponse()
                body = r.read()
                serial = c.sock.getpeercert()["serialNumber"].lower().lstrip("0")
                c.close()
                with lock:
                    if r.status == 200 and body == b"fine":
                        results["ok"] += 1
                        results["serials"].add(serial)
                    else:
                        results["failed"].append(f"{r.status} {body!r}")
            except (OSError, ssl.SSLError, http.client.HTTPException) as err:
                with lock:
                    results["failed"].append(repr(err))

    def kept_alive():
        deadline = time.monotonic() + 30
        c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                c.request("GET", "/")
                r = c.getresponse()
                ok = r.status == 200 and r.read() == b"fine"
                with lock:
                    if ok:
                        results["ok"] += 1
                    else:
                        results["failed"].append("keep-alive answer")
            except (OSError, ssl.SSLError, http.client.HTTPException) as err:
                with lock:
                    results["failed"].append("keep-alive: " + repr(err))
                c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
        c.close()

    threads = [threading.Thread(target=fresh_connections, daemon=True) for _ in range(3)]
    threads += [threading.Thread(target=kept_alive, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(1, 5):
            time.sleep(1.2)
            os.symlink(f"..v{i}", live / "..data_tmp")
            os.replace(live / "..data_tmp", live / "..data")
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    assert not results["failed"], results["failed"][:5]
    assert results["ok"] > 100, results["ok"]
    missing = [s for s in serials if s not in results["serials"]]
    assert not missing, f"new handshakes never presented serials {missing} (saw {sorted(results['serials'])})"
