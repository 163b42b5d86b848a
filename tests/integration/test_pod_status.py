"""The pod-facing status port (--status-port; Istio's 15021/15020) through the real binary:
/healthz/ready, the application probes Strait runs for the kubelet (STRAIT_KUBE_APP_PROBERS: httpGet,
HTTPS, tcpSocket and grpc against real servers), /stats/prometheus merged with the application's
metrics (STRAIT_PROMETHEUS_SCRAPE), malformed environment refused by name, and node metadata from
STRAIT_META_* / ISTIO_META_* in the bootstrap the control plane sees."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import harness
import tlsutil
from harness import bootstrap


class App:
    """The application: answers every GET with `status` and `body`, remembers the request headers."""

    def __init__(self, status: int = 200, body: bytes = b"ok\n", tls_dir=None):
        app = self
        self.status, self.body, self.seen = status, body, []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                app.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                self.send_response(app.status)
                self.send_header("content-length", str(len(app.body)))
                self.end_headers()
                self.wfile.write(app.body)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls_dir is not None:
            root = tlsutil.make_root(tls_dir / "ca")
            leaf = tlsutil.make_workload(tls_dir / "ca", tls_dir / "app", "default", "app", dns=["localhost"])
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(leaf["cert"]), str(leaf["key"]))
            assert root.exists()
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class GrpcHealth:
    """grpc.health.v1.Health/Check served by python3-grpcio, messages encoded by hand."""

    def __init__(self, status: int):
        import grpc  # python3-grpcio

        self.status, self.services = status, []

        def check(request: bytes, context) -> bytes:
            # HealthCheckRequest { string service = 1; }
            self.services.append(request[2:].decode() if request[:1] == b"\x0a" else "")
            return bytes([0x08, self.status])  # HealthCheckResponse { ServingStatus status = 1; }

        handler = grpc.method_handlers_generic_handler(
            "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(check)})
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def close(self):
        self.server.stop(0)


SERVING, NOT_SERVING = 1, 2


def status_get(port: int, path: str, timeout: float = 5.0) -> harness.AdminResponse:
    return harness.http_request(f"http://127.0.0.1:{port}", path, "GET", timeout)


def start_pod_strait(fleet, monkeypatch, env: dict[str, str], extra: list[str] | None = None):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    port = harness.free_port()
    proc = fleet.start(bootstrap([], []), extra=["--status-port", str(port)] + list(extra or []))
    return proc, port


def probers(**probes) -> str:
    return json.dumps({f"/app-health/app/{k}": v for k, v in probes.items()})


def test_healthz_ready_and_unknown_paths(fleet, monkeypatch):
    proc, port = start_pod_strait(fleet, monkeypatch, {})
    r = status_get(port, "/healthz/ready")
    assert r.status == 200, r
    assert status_get(port, "/nope").status == 404
    assert status_get(port, "/app-health/app/readyz").status == 404  # no probe configured
    # Bound on the wildcard address (the kubelet probes the pod IP), not on loopback only.
    assert f"0.0.0.0:{port}" in proc.logs()
    if socket.has_ipv6:
        try:
            six = harness.http_request(f"http://[::1]:{port}", "/healthz/ready", "GET", 2.0)
            assert six.status == 200
        except OSError:
            pass  # a host without IPv6 loopback: served on IPv4 only


def test_http_probe_up_500_down_and_headers(fleet, monkeypatch):
    up = harness.track(fleet, App(200))
    failing = harness.track(fleet, App(500))
    gone = harness.closed_port()
    env = {"STRAIT_KUBE_APP_PROBERS": probers(
        readyz={"httpGet": {"path": "/ready", "port": up.port, "scheme": "HTTP",
                            "httpHeaders": [{"name": "X-Probe", "value": "yes"}, {"name": "Host", "value": "app.local"}]},
                "timeoutSeconds": 1},
        livez={"httpGet": {"path": "/live", "port": failing.port}},
        startupz={"httpGet": {"path": "/start", "port": gone}})}
    proc, port = start_pod_strait(fleet, monkeypatch, env)
    r = status_get(port, "/app-health/app/readyz")
    assert r.status == 200, r
    path, headers = up.seen[-1]
    assert path == "/ready"
    assert headers.get("x-probe") == "yes"
    assert headers.get("host") == "app.local"
    assert headers.get("user-agent", "").startswith("kube-probe/")
    assert status_get(port, "/app-health/app/livez").status == 503
    assert failing.seen and failing.seen[-1][0] == "/live"
    t0 = time.monotonic()
    assert status_get(port, "/app-health/app/startupz").status == 503
    assert time.monotonic() - t0 < 2.0
    # A redirect counts as success (Kubernetes: 200 <= status < 400).
    up.status = 302
    assert status_get(port, "/app-health/app/readyz").status == 200
    up.status = 404
    assert status_get(port, "/app-health/app/readyz").status == 503
    stats = proc.stats()
    assert stats.get("status_server.app_probe_passed", 0) >= 2
    assert stats.get("status_server.app_probe_failed", 0) >= 3


def test_http_probe_times_out_without_blocking_the_loop(fleet, monkeypatch):
    hold = fleet.hold()  # accepts and never answers
    env = {"STRAIT_KUBE_APP_PROBERS": probers(readyz={"httpGet": {"path": "/", "port": hold.port}, "timeoutSeconds": 2})}
    proc, port = start_pod_strait(fleet, monkeypatch, env)
    result = {}

    def probe():
        t0 = time.monotonic()
        result["status"] = status_get(port, "/app-health/app/readyz", timeout=6).status
        result["took"] = time.monotonic() - t0

    t = threading.Thread(target=probe)
    t.start()
    time.sleep(0.3)
    # Meanwhile the loop answers everything else at once.
    t0 = time.monotonic()
    assert status_get(port, "/healthz/ready").status == 200
    assert proc.get("/ready").status == 200
    assert time.monotonic() - t0 < 0.5
    t.join(8)
    assert result["status"] == 503
    assert 1.8 <= result["took"] < 4.0, result


def test_https_probe_without_verification(fleet, monkeypatch, tmp_path):
    app = harness.track(fleet, App(200, tls_dir=tmp_path))
    env = {"STRAIT_KUBE_APP_PROBERS": probers(
        readyz={"httpGet": {"path": "/secure", "port": app.port, "scheme": "HTTPS"}},
        livez={"httpGet": {"path": "/plain", "port": app.port, "scheme": "HTTP"}})}
    proc, port = start_pod_strait(fleet, monkeypatch, env)
    assert status_get(port, "/app-health/app/readyz").status == 200
    assert app.seen and app.seen[-1][0] == "/secure"
    # Plain HTTP to a TLS port fails.
    assert status_get(port, "/app-health/app/livez").status == 503


def test_tcp_probe_up_and_down(fleet, monkeypatch):
    echo = fleet.echo()
    gone = harness.closed_port()
    env = {"ISTIO_KUBE_APP_PROBERS": probers(readyz={"tcpSocket": {"port": echo.port}},
                                             livez={"tcpSocket": {"port": str(gone)}})}
    proc, port = start_pod_strait(fleet, monkeypatch, env)
    assert status_get(port, "/app-health/app/readyz").status == 200
    assert status_get(port, "/app-health/app/livez").status == 503


def test_grpc_probe_serving_and_not_serving(fleet, monkeypatch):
    pytest.importorskip("grpc", reason="python3-grpcio is not installed")
    serving = harness.track(fleet, GrpcHealth(SERVING))
    not_serving = harness.track(fleet, GrpcHealth(NOT_SERVING))
    env = {"STRAIT_KUBE_APP_PROBERS": probers(
        readyz={"grpc": {"port": serving.port, "service": "shop"}},
        livez={"grpc": {"port": not_serving.port}},
        startupz={"grpc": {"port": harness.closed_port()}})}
    proc, port = start_pod_strait(fleet, monkeypatch, env)
    assert status_get(port, "/app-health/app/readyz").status == 200
    assert serving.services[-1] == "shop"
    assert status_get(port, "/app-health/app/livez").status == 503
    assert status_get(port, "/app-health/app/startupz").status == 503
    serving.status = NOT_SERVING
    assert status_get(port, "/app-health/app/readyz").status == 503


def test_prometheus_merged_with_the_application(fleet, monkeypatch):
    app = harness.track(fleet, App(200, b"# TYPE app_requests_total counter\napp_requests_total 42\n"))
    env = {"STRAIT_PROMETHEUS_SCRAPE": json.dumps({"scrape": "true", "path": "/metrics", "port": str(app.port)})}
    proc, port = start_pod_strait(fleet, monkeypatch, env)
    body = status_get(port, "/stats/prometheus").text
    assert "app_requests_total 42" in body
    assert "envoy_server_live" in body or "server_live" in body
    assert app.seen[-1][0] == "/metrics"
    # The application goes away: Strait's part still comes, and the failure is counted.
    app.close()
    t0 = time.monotonic()
    r = status_get(port, "/stats/prometheus")
    assert r.status == 200
    assert "app_requests_total" not in r.text
    assert "server_live" in r.text
    assert time.monotonic() - t0 < 3.0
    stats = proc.stats()
    assert stats.get("status_server.app_scrape_failure", 0) >= 1
    assert stats.get("status_server.app_scrape_success", 0) >= 1


def test_prometheus_without_scrape_is_straits_own(fleet, monkeypatch):
    proc, port = start_pod_strait(fleet, monkeypatch, {"ISTIO_PROMETHEUS_ANNOTATIONS": '{"scrape": "false"}'})
    body = status_get(port, "/stats/prometheus").text
    assert "server_live" in body


@pytest.mark.parametrize("name,value,needle", [
    ("STRAIT_KUBE_APP_PROBERS", "{not json", "STRAIT_KUBE_APP_PROBERS"),
    ("ISTIO_KUBE_APP_PROBERS", '{"/app-health/a/readyz": {"httpGet": {"path": "/"}}}', '"/app-health/a/readyz".httpGet.port'),
    ("STRAIT_KUBE_APP_PROBERS", '{"/app-health/a/readyz": {"exec": {"command": ["true"]}}}', '"/app-health/a/readyz".exec'),
    ("STRAIT_KUBE_APP_PROBERS", '{"/healthz/ready": {"tcpSocket": {"port": 1}}}', '"/healthz/ready"'),
    ("STRAIT_PROMETHEUS_SCRAPE", '{"scrape": "true", "port": "http"}', "STRAIT_PROMETHEUS_SCRAPE: port"),
    ("STRAIT_METAJSON_LABELS", "[1, 2]", "STRAIT_METAJSON_LABELS"),
    ("ISTIO_METAJSON_ANNOTATIONS", "{broken", "ISTIO_METAJSON_ANNOTATIONS"),
])
def test_bad_environment_is_refused_by_name(monkeypatch, tmp_path, name, value, needle):
    monkeypatch.setenv(name, value)
    r = harness.run_strait(["--mode", "validate"], cwd=tmp_path)
    assert r.returncode == 1, r
    assert needle in r.stderr, r.stderr
    port = harness.free_port()
    r = harness.run_strait(["--status-port", str(port), "--concurrency", "1"], cwd=tmp_path)
    assert r.returncode == 1 and needle in r.stderr, r.stderr


def test_status_port_taken_is_refused(fleet, tmp_path):
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        taken = s.getsockname()[1]
        cfg = harness.write_bootstrap(tmp_path, bootstrap([], []))
        r = harness.run_strait(["-c", str(cfg), "--status-port", str(taken), "--concurrency", "1"], cwd=tmp_path)
    assert r.returncode == 1
    assert f"--status-port {taken}" in r.stderr and "in use" in r.stderr, r.stderr


def test_node_metadata_from_env_and_istio_node_id(fleet, monkeypatch):
    monkeypatch.setenv("ISTIO_META_CLUSTER_ID", "from-istio")
    monkeypatch.setenv("STRAIT_META_CLUSTER_ID", "Kubernetes")
    monkeypatch.setenv("ISTIO_META_MESH_ID", "mesh1")
    monkeypatch.setenv("STRAIT_META_FILE_KEY", "env-wins")
    monkeypatch.setenv("ISTIO_METAJSON_LABELS", '{"app": "shop", "version": "v1"}')
    config = bootstrap([], [])
    config["node"]["metadata"] = {"FILE_KEY": "file", "FILE_ONLY": "kept"}
    node_id = "sidecar~10.0.0.5~shop-1.default~default.svc.cluster.local"
    proc = fleet.start(config, extra=["--service-node", node_id])
    dump = proc.get("/config_dump").json()
    node = dump["configs"][0]["bootstrap"]["node"]
    assert node["id"] == node_id
    md = node["metadata"]
    assert md["CLUSTER_ID"] == "Kubernetes"  # STRAIT_ wins over ISTIO_
    assert md["MESH_ID"] == "mesh1"
    assert md["FILE_KEY"] == "env-wins"  # the environment overrides the file's key
    assert md["FILE_ONLY"] == "kept"
    assert md["LABELS"] == {"app": "shop", "version": "v1"}
    assert proc.get("/server_info").json()["node"]["id"] == node_id
