"""TLS on the xDS channel itself: the control plane serves ADS over mTLS (it checks our client
certificate, we check its certificate against the mesh root). Both of Envoy's shapes: google_grpc with
ssl_credentials, and envoy_grpc through a static cluster with an UpstreamTlsContext. A control plane
whose certificate is not from our root is never trusted: no config arrives, nothing is served."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

import harness
import tlsutil

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tests" / "xds_server"))

import xds_control  # noqa: E402
from xds_control import CDS, LDS, XdsServer, ads_bootstrap  # noqa: E402

UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


@pytest.fixture
def pki(tmp_path):
    base = tmp_path / "pki"
    return {
        "base": base,
        "root": tlsutil.make_root(base / "ca"),
        "other_root": tlsutil.make_root(base / "other", trust_domain="other.local"),
        "istiod": tlsutil.make_workload(base / "ca", base / "istiod", "istio-system", "istiod",
                                        dns=["localhost", "istiod.istio-system.svc"]),
        "proxy": tlsutil.make_workload(base / "ca", base / "proxy", "default", "web"),
    }


@pytest.fixture
def xds(tmp_path, pki):
    if not xds_control.node_available():
        pytest.skip("node/npm not installed: the test management server cannot run")
    server = XdsServer(tmp_path / "xds")
    server.tls_cert = pki["istiod"]["cert"]
    server.tls_key = pki["istiod"]["key"]
    server.tls_client_ca = pki["root"]
    server.start()
    yield server
    server.stop()


def resources(listen_port: int, echo_port: int) -> list[dict]:
    return [
        {"@type": CDS, "name": "backend", "type": "STATIC", "connect_timeout": "1s",
         "load_assignment": {"cluster_name": "backend", "endpoints": [{"lb_endpoints": [
             {"endpoint": {"address": harness.socket_address(echo_port)}}]}]}},
        {"@type": LDS, "name": "tcp_in", "address": harness.socket_address(listen_port),
         "filter_chains": [{"filters": [{"name": harness.TCP_PROXY_FILTER, "typed_config": {
             "@type": harness.TCP_PROXY_TYPE, "stat_prefix": "in", "cluster": "backend"}}]}]},
    ]


def google_grpc_bootstrap(xds, pki, root) -> dict:
    b = ads_bootstrap(xds.ads_port)
    b["dynamic_resources"]["ads_config"]["grpc_services"] = [{"google_grpc": {
        "target_uri": f"localhost:{xds.ads_port}", "stat_prefix": "xds",
        "channel_credentials": {"ssl_credentials": {
            "root_certs": {"filename": str(root)},
            "private_key": {"filename": str(pki["proxy"]["key"])},
            "cert_chain": {"filename": str(pki["proxy"]["cert"])}}}}}]
    b["static_resources"]["clusters"] = []
    return b


def envoy_grpc_bootstrap(xds, pki, root) -> dict:
    b = ads_bootstrap(xds.ads_port)
    b["static_resources"]["clusters"][0]["transport_socket"] = {"name": "tls", "typed_config": {
        "@type": UPSTREAM_TLS, "sni": "istiod.istio-system.svc", "common_tls_context": {
            "tls_certificates": [{"certificate_chain": {"filename": str(pki["proxy"]["cert"])},
                                  "private_key": {"filename": str(pki["proxy"]["key"])}}],
            "validation_context": {"trusted_ca": {"filename": str(root)}}}}}
    return b


@pytest.mark.parametrize("shape", ["google_grpc", "envoy_grpc"])
def test_ads_over_mtls(fleet, xds, pki, shape):
    echo = fleet.echo()
    port = harness.free_port()
    xds.set_resources(resources(port, echo.port))
    make = google_grpc_bootstrap if shape == "google_grpc" else envoy_grpc_bootstrap
    proc = fleet.start(make(xds, pki, pki["root"]), ready_timeout=20)
    with harness.connect(port) as s:
        s.sendall(b"config came over mTLS")
        assert harness.recv_exact(s, 21) == b"config came over mTLS"
    assert proc.stats()["control_plane.connected_state"] == 1


def test_ads_refuses_a_control_plane_from_another_root(fleet, xds, pki):
    port = harness.free_port()
    xds.set_resources(resources(port, fleet.echo().port))
    proc = fleet.start(envoy_grpc_bootstrap(xds, pki, pki["other_root"]), wait_ready=False)
    proc.wait_admin()
    time.sleep(3)
    assert proc.get("/ready").status == 503
    assert not harness.is_listening(port)
    assert proc.stats().get("control_plane.connected_state", 0) == 0
