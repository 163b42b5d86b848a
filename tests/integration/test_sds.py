"""SDS over ADS with the Node test management server: a listener whose certificate and trust anchors
come as Secret resources. Until they arrive /ready is 503 and TLS connections are refused; then the
listener serves mTLS; a pushed rotation takes effect for new handshakes without touching open
connections; an invalid secret is NACKed naming it and the old certificate keeps serving."""

from __future__ import annotations

import socket
import ssl
import sys
import time
from pathlib import Path

import pytest

import harness
import tlsutil

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tests" / "xds_server"))

import xds_control  # noqa: E402
from xds_control import CDS, LDS, SDS, XdsServer, ads_bootstrap  # noqa: E402

DOWNSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"


@pytest.fixture
def xds(tmp_path):
    if not xds_control.node_available():
        pytest.skip("node/npm not installed: the test management server cannot run")
    server = XdsServer(tmp_path / "xds")
    server.start()
    yield server
    server.stop()


def secret_cert(name: str, paths: dict) -> dict:
    return {"@type": SDS, "name": name, "tls_certificate": {
        "certificate_chain": {"inline_string": Path(paths["cert"]).read_text()},
        "private_key": {"inline_string": Path(paths["key"]).read_text()}}}


def secret_ca(name: str, root: Path) -> dict:
    return {"@type": SDS, "name": name, "validation_context": {"trusted_ca": {"inline_string": root.read_text()}}}


def sds_ref(name: str) -> dict:
    return {"name": name, "sds_config": {"ads": {}, "resource_api_version": "V3"}}


def resources(listen_port: int, echo_port: int) -> list[dict]:
    tls = {"@type": DOWNSTREAM_TLS, "require_client_certificate": True, "common_tls_context": {
        "tls_certificate_sds_secret_configs": [sds_ref("default")],
        "combined_validation_context": {
            "default_validation_context": {"match_typed_subject_alt_names": [
                {"san_type": "URI", "matcher": {"prefix": "spiffe://cluster.local/"}}]},
            "validation_context_sds_secret_config": sds_ref("ROOTCA")}}}
    return [
        {"@type": CDS, "name": "backend", "type": "STATIC", "connect_timeout": "1s",
         "load_assignment": {"cluster_name": "backend", "endpoints": [{"lb_endpoints": [
             {"endpoint": {"address": harness.socket_address(echo_port)}}]}]}},
        {"@type": LDS, "name": "tls_in", "address": harness.socket_address(listen_port),
         "filter_chains": [{"transport_socket": {"name": "tls", "typed_config": tls},
                            "filters": [{"name": harness.TCP_PROXY_FILTER, "typed_config": {
                                "@type": harness.TCP_PROXY_TYPE, "stat_prefix": "in", "cluster": "backend"}}]}]},
    ]


def client_ctx(pki) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(str(pki["root"]))
    ctx.load_cert_chain(str(pki["client"]["cert"]), str(pki["client"]["key"]))
    return ctx


def serial_of(port: int, pki) -> str:
    with socket.create_connection((harness.LOOPBACK, port), timeout=5) as raw:
        with client_ctx(pki).wrap_socket(raw) as s:
            return s.getpeercert()["serialNumber"].lower().lstrip("0")


def wait_for(pred, timeout: float = 10.0, step: float = 0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = pred()
            if last:
                return last
        except (OSError, ssl.SSLError) as err:
            last = err
        time.sleep(step)
    return last


def test_sds_warming_rotation_and_nack(fleet, xds, tmp_path):
    base = tmp_path / "pki"
    root = tlsutil.make_root(base / "ca")
    pki = {"root": root, "client": tlsutil.make_workload(base / "ca", base / "client", "default", "client")}
    gen1 = tlsutil.make_workload(base / "ca", base / "gen1", "default", "server")
    gen2 = tlsutil.make_workload(base / "ca", base / "gen2", "default", "server")
    echo = fleet.echo()
    port = harness.free_port()
    xds.set_resources(resources(port, echo.port))
    proc = fleet.start(ads_bootstrap(xds.ads_port), wait_ready=False)
    proc.wait_admin()

    # The listener is there but its secrets are not: not ready, and TLS is refused (never plaintext).
    xds.wait_request(lambda r: r["type_url"] == SDS and set(r.get("resource_names", [])) >= {"default", "ROOTCA"},
                     timeout=10)
    assert wait_for(lambda: proc.get("/ready").status == 503)
    assert wait_for(lambda: harness.is_listening(port))
    with pytest.raises((ssl.SSLError, OSError)):
        serial_of(port, pki)
    assert echo.accept_count() == 0

    # Secrets arrive: ready, and mTLS serves the first certificate.
    xds.set_resources([secret_cert("default", gen1), secret_ca("ROOTCA", root)])
    proc.wait_ready(10)
    s1 = tlsutil.cert_info(gen1["cert"])["serial"].lower().lstrip("0")
    assert wait_for(lambda: serial_of(port, pki) == s1), "the SDS certificate is not served"
    raw = socket.create_connection((harness.LOOPBACK, port), timeout=5)
    held = client_ctx(pki).wrap_socket(raw)

    # Rotation: new handshakes get the new certificate; the open connection carries on.
    xds.set_resources([secret_cert("default", gen2)])
    s2 = tlsutil.cert_info(gen2["cert"])["serial"].lower().lstrip("0")
    assert wait_for(lambda: serial_of(port, pki) == s2), "the rotated certificate is not served"
    held.sendall(b"after rotation")
    assert held.recv(64) == b"after rotation"
    held.close()

    # A secret whose key does not belong to its certificate is NACKed; the last good one keeps serving.
    bad = secret_cert("default", {"cert": gen1["cert"], "key": gen2["key"]})
    xds.set_resources([bad])
    nack = xds.wait_request(lambda r: r["type_url"] == SDS and r.get("kind") == "nack", timeout=10)
    assert "default" in nack.get("error_detail", {}).get("message", ""), nack
    assert serial_of(port, pki) == s2
    dump = proc.get("/config_dump").text
    assert "PRIVATE KEY" not in dump
    assert '"name":"default"' in dump and "[redacted]" in dump, "the SDS secret is not listed (redacted)"
    assert proc.stats().get("xds.sds.update_rejected", 0) >= 1


@pytest.fixture
def agent(tmp_path):
    """The test management server on a unix socket, as Istio's node agent serves SDS to its proxy."""
    if not xds_control.node_available():
        pytest.skip("node/npm not installed: the test management server cannot run")
    sock = tmp_path / "agent" / "sds.sock"
    sock.parent.mkdir()
    server = XdsServer(tmp_path / "xds-agent", unix=str(sock))
    server.start()
    server.socket_path = sock
    yield server
    server.stop()


def test_sds_on_its_own_stream_over_a_unix_socket(fleet, agent, tmp_path):
    """Istio's shape: a static cluster sds-grpc with a pipe endpoint, listener and cluster TLS contexts
    whose sds_config names it; no ADS at all. Secrets arrive, rotate, and a bad one is refused."""
    base = tmp_path / "pki"
    root = tlsutil.make_root(base / "ca")
    pki = {"root": root, "client": tlsutil.make_workload(base / "ca", base / "client", "default", "client")}
    gen1 = tlsutil.make_workload(base / "ca", base / "gen1", "default", "server")
    gen2 = tlsutil.make_workload(base / "ca", base / "gen2", "default", "server")
    echo = fleet.echo()
    sds = {"name": "default", "sds_config": {"resource_api_version": "V3", "api_config_source": {
        "api_type": "GRPC", "transport_api_version": "V3",
        "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}]}}}
    ca_sds = dict(sds, name="ROOTCA")
    tls = {"@type": DOWNSTREAM_TLS, "require_client_certificate": True, "common_tls_context": {
        "tls_certificate_sds_secret_configs": [sds], "validation_context_sds_secret_config": ca_sds}}
    listener = harness.tcp_proxy_listener("tls_in", "backend")
    listener["filter_chains"][0]["transport_socket"] = {"name": "tls", "typed_config": tls}
    sds_cluster = {"name": "sds-grpc", "type": "STATIC", "connect_timeout": "1s",
                   "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                       "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                       "explicit_http_config": {"http2_protocol_options": {}}}},
                   "load_assignment": {"cluster_name": "sds-grpc", "endpoints": [{"lb_endpoints": [
                       {"endpoint": {"address": {"pipe": {"path": str(agent.socket_path)}}}}]}]}}
    config = harness.bootstrap([listener], [harness.static_cluster("backend", [echo.port]), sds_cluster])
    proc = fleet.start(config, wait_ready=False)
    proc.wait_admin()
    agent.wait_request(lambda r: r["type_url"] == SDS and set(r.get("resource_names", [])) >= {"default", "ROOTCA"},
                       timeout=10)
    assert proc.get("/ready").status == 503
    agent.set_resources([secret_cert("default", gen1), secret_ca("ROOTCA", root)])
    proc.wait_ready(10)
    port = proc.listener_port("tls_in")
    s1 = tlsutil.cert_info(gen1["cert"])["serial"].lower().lstrip("0")
    assert wait_for(lambda: serial_of(port, pki) == s1)
    agent.set_resources([secret_cert("default", gen2)])
    s2 = tlsutil.cert_info(gen2["cert"])["serial"].lower().lstrip("0")
    assert wait_for(lambda: serial_of(port, pki) == s2)
    agent.set_resources([secret_cert("default", {"cert": gen1["cert"], "key": gen2["key"]})])
    agent.wait_request(lambda r: r["type_url"] == SDS and r.get("kind") == "nack", timeout=10)
    assert serial_of(port, pki) == s2
    stats = proc.stats()
    assert stats["sds.sds-grpc.update_success"] >= 2
    assert stats["sds.sds-grpc.update_rejected"] >= 1
