"""Python handle on the test xDS server (server.js beside this file): starts it, talks to its HTTP/JSON
control API, and stops it. Standard library only.

    from xds_control import XdsServer
    with XdsServer(workdir) as xds:            # node server.js --ports-file ...; waits until it listens
        xds.set_resources([cluster_json, ...])  # Envoy JSON with "@type"; pushed to open streams
        ... strait with ads_config -> xds.ads_address ...
        xds.wait_request(lambda r: r["kind"] == "ack" and r["type_url"].endswith("Cluster"))

See README.md for the API it wraps.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Iterable

HERE = Path(__file__).resolve().parent

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SDS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


class XdsServerError(RuntimeError):
    pass


def node_available() -> bool:
    return shutil.which("node") is not None and shutil.which("npm") is not None


def ensure_node_modules() -> None:
    """Runs setup.sh (npm ci) when node_modules is missing or stale."""
    subprocess.run([str(HERE / "setup.sh")], check=True, timeout=600)


class XdsServer:
    def __init__(self, workdir: Path | str, *, unix: str | None = None, resources: list | None = None,
                 verbose: bool = False, start_timeout: float = 30.0, port: int = 0,
                 protos: Iterable[Path | str] = ()):
        self.workdir = Path(workdir)
        self.port = int(port)  # fixed: a restarted control plane comes back where clients look for it
        self.protos = [str(p) for p in protos]  # extra --proto files (types Envoy's protos lack)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.unix = unix
        # TLS for the ADS/SDS port (tests set these before start()).
        self.tls_cert = self.tls_key = self.tls_client_ca = None
        self.initial_resources = resources
        self.verbose = verbose
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> "XdsServer":
        ensure_node_modules()
        ports_file = self.workdir / "xds-server-ports.json"
        if ports_file.exists():
            ports_file.unlink()
        args = ["node", str(HERE / "server.js"), "--port", str(self.port), "--control-port", "0",
                "--ports-file", str(ports_file)]
        if self.unix:
            args += ["--unix", self.unix]
        for flag, value in (("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key), ("--tls-client-ca", self.tls_client_ca)):
            if value:
                args += [flag, str(value)]
        for proto in self.protos:
            args += ["--proto", proto]
        if self.initial_resources is not None:
            res_file = self.workdir / "xds-initial-resources.json"
            res_file.write_text(json.dumps(self.initial_resources))
            args += ["--resources", str(res_file)]
        if self.verbose:
            args.append("-v")
        self.stderr_path = self.workdir / "xds-server.stderr"
        self._stderr = open(self.stderr_path, "ab")  # a restart appends
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self._stderr, cwd=HERE)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if ports_file.exists():
                self.info = json.loads(ports_file.read_text())
                return self
            if self.proc.poll() is not None:
                raise XdsServerError(f"xds server exited with {self.proc.returncode}: {self.stderr_text()}")
            time.sleep(0.05)
        self.stop()
        raise XdsServerError(f"xds server did not start in {self.start_timeout} s: {self.stderr_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None
        if getattr(self, "_stderr", None):
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> "XdsServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    # --- addresses ---------------------------------------------------------------------------------

    @property
    def ads_port(self) -> int:
        return int(self.info["ads_port"])

    @property
    def ads_address(self) -> str:
        """host:port of the ADS gRPC server (127.0.0.1:N)."""
        return self.info["ads"]

    @property
    def control_url(self) -> str:
        return self.info["control"]

    # --- control API -------------------------------------------------------------------------------

    def call(self, method: str, path: str, body: dict | None = None, timeout: float = 10.0) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.control_url + path, data=data, method=method,
                                     headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            raise XdsServerError(f"{method} {path}: {e.code} {e.read().decode(errors='replace')}") from None

    def set_resources(self, resources: Iterable[dict], *, push: bool = True, version: str | None = None) -> dict:
        body: dict = {"resources": list(resources), "push": push}
        if version is not None:
            body["version"] = version
        return self.call("POST", "/resources", body)

    def replace(self, types: Iterable[str], resources: Iterable[dict], *, push: bool = True,
                version: str | None = None) -> dict:
        body: dict = {"types": list(types), "resources": list(resources), "push": push}
        if version is not None:
            body["version"] = version
        return self.call("POST", "/replace", body)

    def remove(self, type_url: str, names: Iterable[str], *, push: bool = True) -> dict:
        return self.call("POST", "/remove", {"type_url": type_url, "names": list(names), "push": push})

    def push_raw(self, response: dict) -> dict:
        return self.call("POST", "/push", response)

    def kill(self, stream: int | None = None) -> list[int]:
        return self.call("POST", "/kill", {"stream": stream} if stream else {})["killed"]

    def settings(self, **changes) -> dict:
        return self.call("POST", "/settings", changes) if changes else self.call("GET", "/settings")

    def clear(self) -> dict:
        return self.call("POST", "/clear", {})

    def streams(self) -> list[dict]:
        return self.call("GET", "/streams")["streams"]

    def resources(self, type_url: str | None = None) -> dict:
        q = "?" + urllib.parse.urlencode({"type_url": type_url}) if type_url else ""
        return self.call("GET", "/resources" + q)["resources"]

    def requests(self, since: int = 0, **filters) -> list[dict]:
        """Requests received after seq `since`; filters: type_url (or cds/eds/lds/rds/sds), stream, kind."""
        return self.call("GET", "/requests?" + _query(since, filters))["requests"]

    def responses(self, since: int = 0, **filters) -> list[dict]:
        """Responses sent after seq `since`; filters: type_url, stream."""
        return self.call("GET", "/responses?" + _query(since, filters))["responses"]

    def wait_request(self, pred: Callable[[dict], bool], timeout: float = 10.0, since: int = 0) -> dict:
        """The first request (after seq `since`) for which pred holds; raises on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            for r in self.requests(since):
                if pred(r):
                    return r
            if time.monotonic() > deadline:
                raise XdsServerError(f"no matching request in {timeout} s; got {json.dumps(self.requests(since))[-3000:]}")
            time.sleep(0.05)

    def wait_streams(self, count: int, timeout: float = 10.0) -> list[dict]:
        """Waits until `count` streams were opened in total (open or closed)."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.streams()
            if len(s) >= count:
                return s
            if time.monotonic() > deadline:
                raise XdsServerError(f"{len(s)} streams after {timeout} s, wanted {count}")
            time.sleep(0.05)


def _query(since: int, filters: dict) -> str:
    return urllib.parse.urlencode({"since": since, **{k: v for k, v in filters.items() if v is not None}})


def ads_bootstrap(ads_port: int, node_id: str = "sidecar~127.0.0.1~test.default~default.svc.cluster.local",
                  delta: bool = False, admin_port: int = 0) -> dict:
    """A bootstrap (as a dict) that takes everything from this server over ADS, Istio's way."""
    return {
        "node": {"id": node_id, "cluster": "test.default"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
            },
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [{
                "name": "xds-grpc",
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}},
                    }
                },
                "load_assignment": {
                    "cluster_name": "xds-grpc",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                        "address": "127.0.0.1", "port_value": ads_port}}}}]}],
                },
            }],
        },
    }


if __name__ == "__main__":  # manual use: python3 xds_control.py -> runs a server until Ctrl-C
    import sys
    import tempfile

    with XdsServer(tempfile.mkdtemp(prefix="xds-server-"), verbose="-v" in sys.argv) as s:
        print(json.dumps(s.info), flush=True)
        try:
            while s.proc and s.proc.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    os._exit(0)


# ---------------------------------------------------------------------------------------------------
# Additions for the end-to-end tests (tests/integration/test_xds_e2e.py) and perf/xds_scale.py.
# Everything above is unchanged; these only add to it.


class XdsServerEx(XdsServer):
    """XdsServer with a fixed ADS port (to restart a control plane on the port a client already uses)
    and extra `--proto` files; both are XdsServer options now, this name stays for the tests using it."""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def kill_hard(self) -> None:
        """SIGKILL by PID (no UNAVAILABLE status goes out: the client sees the connection die)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.stop()

    def all_resources(self) -> list[dict]:
        """Every resource held, as the JSON (with "@type") it was given in."""
        out: list[dict] = []
        for entry in self.resources().values():
            out.extend(r["resource"] for r in entry.get("resources", []))
        return out


def ads_bootstrap_ex(ads_port: int, *, delta: bool = False, node_id: str | None = None,
                     initial_fetch_timeout: str | None = "5s", google_grpc: bool = False,
                     metadata: dict | None = None) -> dict:
    """ads_bootstrap() plus node metadata (Istio-shaped), initial_fetch_timeout on LDS and CDS, and
    optionally `google_grpc: {target_uri}` instead of the static xds-grpc cluster."""
    kw = {"node_id": node_id} if node_id else {}
    b = ads_bootstrap(ads_port, delta=delta, **kw)
    b["node"]["metadata"] = metadata if metadata is not None else {
        "NAMESPACE": "default", "INSTANCE_IPS": "127.0.0.1", "LABELS": {"app": "test", "version": "v1"},
        "ISTIO_VERSION": "1.22.0"}
    dyn = b["dynamic_resources"]
    if initial_fetch_timeout is not None:
        dyn["lds_config"]["initial_fetch_timeout"] = initial_fetch_timeout
        dyn["cds_config"]["initial_fetch_timeout"] = initial_fetch_timeout
    if google_grpc:
        dyn["ads_config"]["grpc_services"] = [
            {"google_grpc": {"target_uri": f"127.0.0.1:{ads_port}", "stat_prefix": "xds"}}]
        b["static_resources"] = {}
    return b


def responses_by_nonce(responses: Iterable[dict]) -> dict[tuple[int, str], dict]:
    """{(stream, nonce): response record}."""
    return {(r["stream"], r["nonce"]): r for r in responses}
