"""End-to-end xDS: the strait binary on an ADS bootstrap, fed by the Node test management server
(tests/xds_server/server.js, driven through xds_control.py), with real traffic through the listeners it
receives to small HTTP/1.1 origins running in threads here (each tags its answers `x-origin: <name>`).

Covered (state of the world and delta where it matters):
  1. CDS+EDS+LDS+RDS from scratch: /ready 503 until the first CDS and LDS are applied, then 200; traffic
     reaches the origins; every response is ACKed (version and newest nonce echoed); `node` only on the
     stream's first request; EDS/RDS subscriptions name exactly what the clusters/listeners use.
  2. RDS update: traffic follows a route swap within 2 s (new connections), and requests on existing
     keep-alive connections follow RDS and EDS changes too (as in Envoy), under load without failures.
  3. EDS moves a cluster between origins under continuous keep-alive load: zero failed requests, and
     the answers come from the new origin a second after the ACK.
  4. NACKs (invalid RE2 regex, unknown non-optional HTTP filter, a name twice in one response): the
     message names the resource and field, the version stays the last accepted one, traffic goes on;
     an unknown *optional* filter is accepted.
  4b. Partial acceptance: a response with one bad listener (or assignment) applies the others and is
     NACKed naming only the bad one; a listener's own fault is NACKed in LDS even while it waits for its
     RouteConfiguration, never blamed on that RouteConfiguration.
  5. Listener added (accepts) and removed (refuses new connections, an in-flight request completes).
  6. Control plane killed and restarted on the same port: no failed request, the stream comes back
     with `node`, a later change takes effect.
  7. Stats and /config_dump (Envoy's names and shapes).
  Plus: initial_fetch_timeout, prompt connect and reconnect after `/kill`, `google_grpc` target, a
  tcp_proxy listener over a STATIC cluster.

Strait's names where they differ from Envoy's (as of 2282c67): RDS/EDS counters are aggregate
`xds.rds.update_*` / `xds.eds.update_*` (Envoy: `http.<stat_prefix>.rds.<name>.update_*`, per-cluster
`cluster.<name>.update_*`); both are accepted. The last rejected update per type is in /config_dump's
`strait.admin.XdsStatus` section.

Skips (with the reason) when node/npm are missing; the server's npm dependencies are installed by
tests/xds_server/setup.sh (npm ci) when node_modules is missing. Traffic stays on 127.0.0.1; every loop
is bounded; every process started here is stopped by its PID.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import harness

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tests" / "xds_server"))

import xds_control  # noqa: E402
from xds_control import (CDS, EDS, LDS, RDS, XdsServerError, XdsServerEx,  # noqa: E402
                         ads_bootstrap_ex)

MODES = ["sotw", "delta"]
NODE_ID = "sidecar~127.0.0.1~e2e-test.default~default.svc.cluster.local"
SWITCH_LIMIT = 2.0        # seconds for a pushed change to show in traffic
SETTLE = 1.0              # after the ACK of a change, every new request must see it
NOPE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.nope.v3.Nope"
NOPE_PROTO = """syntax = "proto3";
package envoy.extensions.filters.http.nope.v3;
// An HTTP filter no proxy implements: its type URL is what the tests need.
message Nope { string note = 1; }
"""

# Resource names, distinct enough to be searched for in NACK messages.
CLUSTER_A = "cluster-a"
CLUSTER_B = "cluster-b"
SERVICE_A = "svc-a"           # cluster-a's eds_cluster_config.service_name (cluster-b has none)
LISTENER = "listener-main"
ROUTES = "routes-main"
STAT_PREFIX = "ingress_main"


# ---------------------------------------------------------------------------------------------------
# Resources (Envoy v3 JSON with "@type", as the Node server takes them)


def ads_source() -> dict:
    return {"ads": {}, "resource_api_version": "V3"}


def eds_cluster(name: str, service_name: str | None = None) -> dict:
    eds = {"eds_config": ads_source()}
    if service_name:
        eds["service_name"] = service_name
    return {"@type": CDS, "name": name, "type": "EDS", "connect_timeout": "1s", "lb_policy": "ROUND_ROBIN",
            "eds_cluster_config": eds}


def static_cluster(name: str, ports: list[int]) -> dict:
    return {"@type": CDS, **harness.static_cluster(name, ports)}


def cla(name: str, ports: list[int], address: str = "127.0.0.1") -> dict:
    return {"@type": EDS, "cluster_name": name, "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": harness.socket_address(p, address)}} for p in ports]}]}


def route_config(name: str, routes: list[dict]) -> dict:
    return {"@type": RDS, "name": name, "virtual_hosts": [harness.virtual_host("all", ["*"], routes)]}


def hcm(stat_prefix: str, *, rds_name: str | None = None, routes: list[dict] | None = None,
        http_filters: list[dict] | None = None) -> dict:
    cfg = {"@type": harness.HCM_TYPE, "stat_prefix": stat_prefix, "codec_type": "AUTO",
           "http_filters": http_filters if http_filters is not None else [harness.router_filter()]}
    if rds_name is not None:
        cfg["rds"] = {"config_source": ads_source(), "route_config_name": rds_name}
    else:
        cfg["route_config"] = {"name": f"{stat_prefix}-inline", "virtual_hosts": [
            harness.virtual_host("all", ["*"], routes or [])]}
    return cfg


def http_listener(name: str, port: int, **hcm_kw) -> dict:
    stat_prefix = hcm_kw.pop("stat_prefix", name.replace("-", "_"))
    return {"@type": LDS, "name": name, "address": harness.socket_address(port),
            "filter_chains": [{"filters": [harness.hcm_filter(hcm(stat_prefix, **hcm_kw))]}]}


def tcp_listener(name: str, port: int, cluster: str) -> dict:
    return {"@type": LDS, **harness.tcp_proxy_listener(name, cluster, port=port)}


def route(prefix: str, cluster: str) -> dict:
    return harness.route_to(cluster, prefix)


def main_routes(a: str = CLUSTER_A, b: str = CLUSTER_B) -> dict:
    """/a -> a, /b -> b, everything else -> a."""
    return route_config(ROUTES, [route("/a", a), route("/b", b), route("/", CLUSTER_A)])


def nope_filter(optional: bool) -> dict:
    f = {"name": "envoy.filters.http.nope", "typed_config": {"@type": NOPE_TYPE, "note": "no such filter"}}
    if optional:
        f["is_optional"] = True
    return f


# ---------------------------------------------------------------------------------------------------
# Origins and clients


class Origin:
    """An HTTP/1.1 keep-alive origin in threads. Every answer is 200 with `x-origin: <name>` and the body
    `origin=<name> path=<path>`; `/slow?delay=S` waits S seconds (at most 10) first."""

    def __init__(self, name: str):
        self.name = name
        self.lock = threading.Lock()
        self.count = 0
        self.in_flight = 0
        self.conns: set[socket.socket] = set()
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 60

            def setup(self):
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with origin.lock:
                    origin.conns.add(self.connection)

            def finish(self):
                with origin.lock:
                    origin.conns.discard(self.connection)
                super().finish()

            def do_GET(self):  # noqa: N802
                with origin.lock:
                    origin.count += 1
                    origin.in_flight += 1
                try:
                    url = urllib.parse.urlsplit(self.path)
                    if url.path.startswith("/slow"):
                        q = urllib.parse.parse_qs(url.query)
                        time.sleep(min(10.0, float(q.get("delay", ["1"])[0])))
                    body = f"origin={origin.name} path={self.path}\n".encode()
                    self.send_response(200)
                    self.send_header("x-origin", origin.name)
                    self.send_header("content-type", "text/plain")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                finally:
                    with origin.lock:
                        origin.in_flight -= 1

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256

        self.server = Server((harness.LOOPBACK, 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                       daemon=True)
        self.thread.start()

    def requests(self) -> int:
        with self.lock:
            return self.count

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.thread.join(timeout=2)


class Reply:
    def __init__(self, status: int | None, origin: str | None, body: bytes = b"", error: str | None = None):
        self.status = status
        self.origin = origin
        self.body = body
        self.error = error

    def __repr__(self) -> str:
        return f"Reply(status={self.status}, origin={self.origin}, error={self.error}, body={self.body[:200]!r})"


def fetch(port: int, path: str, timeout: float = 5.0) -> Reply:
    """One GET on a new connection; never raises for network errors (they are in Reply.error)."""
    conn = http.client.HTTPConnection(harness.LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"host": "svc.test"})
        resp = conn.getresponse()
        body = resp.read()
        return Reply(resp.status, resp.getheader("x-origin"), body)
    except (OSError, http.client.HTTPException) as err:
        return Reply(None, None, error=repr(err))
    finally:
        conn.close()


def wait_origin(port: int, path: str, origin: str, timeout: float = SWITCH_LIMIT) -> float:
    """Polls until GET path is answered by `origin`; returns the seconds it took. Fails at the deadline."""
    start = time.monotonic()
    deadline = start + timeout
    last = None
    while True:
        last = fetch(port, path, timeout=2.0)
        if last.status == 200 and last.origin == origin:
            return time.monotonic() - start
        if time.monotonic() > deadline:
            raise AssertionError(f"GET {path} on :{port} not answered by origin {origin!r} within "
                                 f"{timeout} s; last answer: {last!r}")
        time.sleep(0.02)


def wait_refused(port: int, timeout: float = SWITCH_LIMIT) -> float:
    start = time.monotonic()
    deadline = start + timeout
    while True:
        try:
            with socket.create_connection((harness.LOOPBACK, port), timeout=0.5):
                pass
        except ConnectionRefusedError:
            return time.monotonic() - start
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"connections to :{port} still accepted {timeout} s after the listener's removal")
        time.sleep(0.02)


class Load:
    """A bounded client loop: `threads` keep-alive connections sending GET `path` until stop(), the
    deadline (`duration`) or `max_requests` in total. Records (start, end, status, origin, error)."""

    def __init__(self, port: int, path: str, threads: int = 2, duration: float = 5.0,
                 max_requests: int = 5000, pace: float = 0.0):
        self.port = port
        self.path = path
        self.duration = duration
        self.max_requests = max_requests
        self.pace = pace
        self.lock = threading.Lock()
        self.records: list[tuple[float, float, int | None, str | None, str | None]] = []
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        self.started = time.monotonic()
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        deadline = self.started + self.duration
        conn = None
        while not self.stopped.is_set() and time.monotonic() < deadline:
            with self.lock:
                if len(self.records) >= self.max_requests:
                    return
            t0 = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(harness.LOOPBACK, self.port, timeout=5.0)
                    conn.connect()
                    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.request("GET", self.path, headers={"host": "svc.test"})
                resp = conn.getresponse()
                resp.read()
                rec = (t0, time.monotonic(), resp.status, resp.getheader("x-origin"), None)
                if resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as err:
                rec = (t0, time.monotonic(), None, None, repr(err))
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.01)
            with self.lock:
                self.records.append(rec)
            if self.pace:
                time.sleep(self.pace)
        if conn is not None:
            conn.close()

    def stop(self) -> list[tuple]:
        self.stopped.set()
        for t in self.threads:
            t.join(timeout=10)
        assert not any(t.is_alive() for t in self.threads), "load threads did not stop"
        with self.lock:
            return list(self.records)

    def count(self) -> int:
        with self.lock:
            return len(self.records)

    @staticmethod
    def failures(records) -> list[tuple]:
        return [r for r in records if r[2] != 200]

    @staticmethod
    def origins_between(records, t_from: float, t_to: float) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in records:
            if r[0] >= t_from and r[1] <= t_to and r[2] == 200:
                out[r[3]] = out.get(r[3], 0) + 1
        return out


# ---------------------------------------------------------------------------------------------------
# The control plane's records


def last_response_seq(xds) -> int:
    return xds.call("GET", "/responses?since=999999999")["last_seq"]


def last_request_seq(xds) -> int:
    return xds.call("GET", "/requests?since=999999999")["last_seq"]


def reply_to(xds, response: dict) -> dict | None:
    """The ACK/NACK answering `response` (same stream, its nonce), if any."""
    for r in xds.requests(type_url=response["type_url"], stream=response["stream"]):
        if r["response_nonce"] == response["nonce"] and r["kind"] in ("ack", "nack"):
            return r
    return None


def wait_reply(xds, type_url: str, since_resp: int, timeout: float = 10.0, nonce: str | None = None
               ) -> tuple[dict, dict]:
    """Waits for the newest response of `type_url` sent after response seq `since_resp` (or the one with
    `nonce`) to be ACKed or NACKed; returns (response, reply)."""
    deadline = time.monotonic() + timeout
    while True:
        resps = [r for r in xds.responses(since=since_resp, type_url=type_url)
                 if nonce is None or r["nonce"] == nonce]
        if resps:
            reply = reply_to(xds, resps[-1])
            if reply is not None:
                return resps[-1], reply
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no ACK/NACK of the {type_url.rsplit('.', 1)[-1]} response within {timeout} s; responses: "
                f"{json.dumps(resps)[-1500:]}; requests: "
                f"{json.dumps(xds.requests(type_url=type_url))[-2500:]}")
        time.sleep(0.05)


def last_acked_version(xds, type_url: str, stream: int) -> str | None:
    """SotW: the version_info of the newest ACK of the type on the stream; delta: None (no versions)."""
    acks = xds.requests(type_url=type_url, stream=stream, kind="ack")
    assert acks, f"no ACK of {type_url} on stream {stream}"
    return acks[-1].get("version_info")


def short(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]


# ---------------------------------------------------------------------------------------------------
# Stats and /config_dump


def stat_value(stats: dict[str, int], *names: str) -> int:
    """The first of `names` present in `stats` (fails listing the xDS-looking names otherwise)."""
    for n in names:
        if n in stats:
            return stats[n]
    near = sorted(k for k in stats if any(w in k for w in ("cds", "lds", "rds", "eds", "control_plane", "xds")))
    raise AssertionError(f"none of the stats {list(names)} present; xDS-related stats: {near[:80]}")


def rds_rejected_names() -> tuple[str, ...]:
    # Envoy's per-route-config name first; Strait (2282c67) has only an aggregate xds.rds.* counter.
    return (f"http.{STAT_PREFIX}.rds.{ROUTES}.update_rejected", "xds.rds.update_rejected")


def wait_stat(proc, names: tuple[str, ...], pred, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        value = stat_value(proc.stats(), *names)
        if pred(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def config_dump(proc) -> tuple[dict, str]:
    resp = proc.get("/config_dump?include_eds")
    if resp.status != 200:
        resp = proc.get("/config_dump")
    assert resp.status == 200, f"/config_dump: {resp!r}"
    return resp.json(), resp.text


def dump_section(dump: dict, type_suffix: str) -> dict:
    for c in dump.get("configs", []):
        if str(c.get("@type", "")).endswith(type_suffix):
            return c
    raise AssertionError(f"/config_dump has no {type_suffix} in configs (types: "
                         f"{[c.get('@type') for c in dump.get('configs', [])]})")


# ---------------------------------------------------------------------------------------------------
# The environment: control plane, origins, strait


class XdsEnv:
    def __init__(self, fleet, xds, mode: str, workdir: Path, nope_proto: Path):
        self.fleet = fleet
        self.xds = xds
        self.mode = mode
        self.delta = mode == "delta"
        self.workdir = workdir
        self.nope_proto = nope_proto
        self.origins: dict[str, Origin] = {}
        self.proc: harness.StraitProcess | None = None
        self.port: int | None = None

    def origin(self, name: str) -> Origin:
        o = harness.track(self.fleet, Origin(name))
        self.origins[name] = o
        return o

    def bootstrap(self, **kw) -> dict:
        return ads_bootstrap_ex(self.xds.ads_port, delta=self.delta, node_id=NODE_ID, **kw)

    def start(self, *, wait_ready: bool = True, drain_time_s: int = 1, ready_timeout: float = 15.0,
              **bootstrap_kw) -> harness.StraitProcess:
        self.proc = self.fleet.start(self.bootstrap(**bootstrap_kw), wait_ready=False, drain_time_s=drain_time_s)
        self.proc.wait_admin()
        if wait_ready:
            self.proc.wait_ready(ready_timeout)
        return self.proc

    def standard_resources(self) -> list[dict]:
        a = self.origins.get("a") or self.origin("a")
        b = self.origins.get("b") or self.origin("b")
        if self.port is None:
            self.port = harness.free_port()
        return [eds_cluster(CLUSTER_A, SERVICE_A), eds_cluster(CLUSTER_B),
                cla(SERVICE_A, [a.port]), cla(CLUSTER_B, [b.port]),
                http_listener(LISTENER, self.port, rds_name=ROUTES, stat_prefix=STAT_PREFIX),
                main_routes()]

    def standard(self, **start_kw) -> harness.StraitProcess:
        """Two EDS clusters (a, b), one RDS listener (/a -> a, /b -> b); waits until traffic flows."""
        self.xds.set_resources(self.standard_resources())
        proc = self.start(**start_kw)
        self.wait_converged()
        return proc

    def wait_converged(self) -> None:
        try:
            wait_origin(self.port, "/a", "a", timeout=10)
            wait_origin(self.port, "/b", "b", timeout=10)
        except AssertionError as err:
            self.proc.fail(f"{err}\nxDS requests: {json.dumps(self.xds.requests())[-4000:]}")

    def stream(self) -> dict:
        """The newest stream the control plane has seen."""
        streams = self.xds.streams()
        assert streams, "strait never opened an ADS stream"
        return streams[-1]

    def restart_control_plane(self, snapshot: list[dict], tag: str) -> XdsServerEx:
        port = self.xds.ads_port
        new = XdsServerEx(self.workdir / tag, port=port, resources=snapshot, protos=[self.nope_proto])
        self.xds = new  # the fixture stops whatever is current
        new.start()
        return new


@pytest.fixture
def mode() -> str:
    return "sotw"


@pytest.fixture
def env(fleet, tmp_path, mode):
    if not xds_control.node_available():
        pytest.skip("node/npm not found (deploy/install-deps.sh test)")
    nope = tmp_path / "nope.proto"
    nope.write_text(NOPE_PROTO)
    server = XdsServerEx(tmp_path / "xds", protos=[nope])
    try:
        server.start()
    except (XdsServerError, subprocess.CalledProcessError, OSError) as err:
        pytest.fail(f"test xDS server failed to start: {err}", pytrace=False)
    e = XdsEnv(fleet, server, mode, tmp_path, nope)
    yield e
    if e.xds is not server:
        server.stop()
    e.xds.stop()


# ---------------------------------------------------------------------------------------------------
# 1. From scratch: ready, traffic, ACKs, node once


@pytest.mark.parametrize("mode", MODES)
def test_ads_from_scratch_ready_traffic_acks(env, mode):
    xds = env.xds
    xds.settings(hold_types=["cds", "lds"])
    proc = env.start(wait_ready=False)
    xds.wait_request(lambda r: r["type_url"] == CDS, timeout=10)
    xds.wait_request(lambda r: r["type_url"] == LDS, timeout=10)
    # Nothing answered yet: not ready (initial_fetch_timeout is 5 s).
    for _ in range(5):
        resp = proc.get("/ready", timeout=2)
        assert resp.status == 503, f"/ready before any CDS/LDS response: {resp!r}"
        time.sleep(0.1)
    xds.settings(hold_types=[])
    xds.set_resources(env.standard_resources())
    proc.wait_ready(10)
    env.wait_converged()
    for path, origin in (("/a/x", "a"), ("/b/y", "b"), ("/other", "a")):
        r = fetch(env.port, path)
        assert r.status == 200 and r.origin == origin, f"GET {path}: {r!r}"
        assert f"origin={origin} path={path}".encode() in r.body, r

    stream = env.stream()
    sid = stream["id"]
    assert stream["node_id"] == NODE_ID, stream
    assert len(xds.streams()) == 1, f"more than one ADS stream: {xds.streams()}"

    # Every type: the newest response is ACKed with its nonce (and, SotW, its version); nothing NACKed;
    # every ACK echoes the version of the response whose nonce it carries.
    for type_url in (CDS, EDS, LDS, RDS):
        resps = xds.responses(type_url=type_url, stream=sid)
        assert resps, f"no {short(type_url)} response sent"
        resp, reply = wait_reply(xds, type_url, 0)
        assert reply["kind"] == "ack", f"{short(type_url)}: {reply}"
        by_nonce = {r["nonce"]: r for r in resps}
        reqs = xds.requests(type_url=type_url, stream=sid)
        assert not [r for r in reqs if r["kind"] in ("nack", "stale")], f"{short(type_url)}: {reqs}"
        for ack in (r for r in reqs if r["kind"] == "ack"):
            answered = by_nonce[ack["response_nonce"]]
            if mode == "sotw":
                assert ack["version_info"] == answered["version_info"], (ack, answered)
            assert "error_detail" not in ack or not ack["error_detail"], ack

    # Subscriptions: EDS names the clusters' service names, RDS the listener's route config.
    if mode == "sotw":
        eds_req = xds.requests(type_url=EDS, stream=sid)[-1]
        assert sorted(eds_req["resource_names"]) == sorted([SERVICE_A, CLUSTER_B]), eds_req
        rds_req = xds.requests(type_url=RDS, stream=sid)[-1]
        assert rds_req["resource_names"] == [ROUTES], rds_req
    else:
        subs = {t: set() for t in (EDS, RDS)}
        for t in subs:
            for r in xds.requests(type_url=t, stream=sid):
                subs[t] |= set(r["resource_names_subscribe"])
                subs[t] -= set(r["resource_names_unsubscribe"])
        assert subs[EDS] == {SERVICE_A, CLUSTER_B}, subs
        assert subs[RDS] == {ROUTES}, subs

    # node: on the stream's first request only, with the bootstrap's id, cluster and metadata.
    reqs = xds.requests(stream=sid)
    first = reqs[0]
    assert first["has_node"], f"first request without node: {first}"
    node = first["node"]
    assert node["id"] == NODE_ID and node["cluster"] == "test.default", node
    assert node.get("metadata", {}).get("NAMESPACE") == "default", node
    assert node.get("metadata", {}).get("LABELS") == {"app": "test", "version": "v1"}, node
    later = [r for r in reqs[1:] if r["has_node"]]
    assert not later, f"node sent again on {len(later)} later requests: {later[:2]}"
    # CDS is subscribed before LDS (Envoy's order), both wildcard.
    assert first["type_url"] == CDS, first
    if mode == "sotw":
        cds0 = xds.requests(type_url=CDS, stream=sid)[0]
        assert cds0["resource_names"] in ([], ["*"]), cds0
    else:
        cds0 = xds.requests(type_url=CDS, stream=sid)[0]
        assert cds0["resource_names_subscribe"] in ([], ["*"]), cds0


@pytest.mark.parametrize("mode", MODES)
def test_initial_fetch_timeout_makes_ready_without_control_plane_answer(env, mode):
    xds = env.xds
    xds.settings(hold_types=["cds", "lds"])
    started = time.monotonic()
    proc = env.start(wait_ready=False, initial_fetch_timeout="2s")
    xds.wait_request(lambda r: r["type_url"] == LDS, timeout=10)
    resp = proc.get("/ready", timeout=2)
    assert resp.status == 503, f"/ready with CDS/LDS unanswered, before initial_fetch_timeout: {resp!r}"
    proc.wait_ready(10)
    took = time.monotonic() - started
    assert took >= 1.5, f"/ready 200 after {took:.2f} s, before initial_fetch_timeout (2 s) passed"
    # The late answer still applies.
    xds.settings(hold_types=[])
    xds.set_resources(env.standard_resources())
    env.wait_converged()


@pytest.mark.parametrize("mode", MODES)
def test_connects_and_reconnects_promptly(env, mode):
    """The first request goes out right after start, and a stream the server ends (`/kill`, UNAVAILABLE)
    is replaced within the backoff's first step (500 ms base, full jitter) plus a connect, each time (a
    stream that got a response resets the backoff). Guards against connects that only progress when
    gRPC's backup poller runs (every 5 s)."""
    xds = env.xds
    xds.set_resources(env.standard_resources())
    started = time.time()
    proc = env.start(wait_ready=False)
    first = xds.wait_request(lambda r: True, timeout=15)
    took = first["time_ms"] / 1000 - started
    assert took < 2.0, f"first ADS request {took:.2f} s after strait started"
    proc.wait_ready(10)
    env.wait_converged()
    for i in range(3):
        _, reply = wait_reply(xds, CDS, 0)  # the current stream got (and ACKed) a response
        n = len(xds.streams())
        killed_at = time.time()
        assert xds.kill(), "no stream to kill"
        streams = xds.wait_streams(n + 1, timeout=10)
        new = streams[-1]
        gap = new["opened_ms"] / 1000 - killed_at
        assert gap < 2.0, f"kill #{i + 1}: new stream {gap:.2f} s after the old one ended"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not xds.requests(stream=new["id"], type_url=CDS, kind="ack"):
            time.sleep(0.05)
        assert xds.requests(stream=new["id"], type_url=CDS, kind="ack"), f"kill #{i + 1}: no CDS ACK on the new stream"
        first = xds.requests(stream=new["id"])[0]
        assert first["has_node"], f"kill #{i + 1}: first request of the new stream without node: {first}"
    traffic_still_flows(env)


# ---------------------------------------------------------------------------------------------------
# 2. RDS update


@pytest.mark.parametrize("mode", MODES)
def test_rds_update_moves_traffic(env, mode):
    env.standard()
    seq = last_response_seq(env.xds)
    env.xds.set_resources([main_routes(a=CLUSTER_B, b=CLUSTER_A)])
    t1 = wait_origin(env.port, "/a", "b")
    t2 = wait_origin(env.port, "/b", "a")
    _, reply = wait_reply(env.xds, RDS, seq)
    assert reply["kind"] == "ack", reply
    seq = last_response_seq(env.xds)
    env.xds.set_resources([main_routes()])
    t3 = wait_origin(env.port, "/a", "a")
    t4 = wait_origin(env.port, "/b", "b")
    _, reply = wait_reply(env.xds, RDS, seq)
    assert reply["kind"] == "ack", reply
    print(f"route swap seen after {t1:.3f}/{t2:.3f} s, swap back after {t3:.3f}/{t4:.3f} s")
    # Each worker took the new configs and says what the longest one held its loop: wall time, and its
    # own CPU time, which cannot be more (perf/xds_scale.py reports both at 10,000 clusters).
    stats = env.proc.stats(r"config_apply_max")
    walls = {k: v for k, v in stats.items() if k.endswith(".config_apply_max_usec")}
    cpus = {k: v for k, v in stats.items() if k.endswith(".config_apply_max_cpu_usec")}
    assert walls and len(walls) == len(cpus), stats
    for name, wall in walls.items():
        assert wall >= 1, stats
        assert cpus[name.replace("_usec", "_cpu_usec")] <= wall + 1, stats


@pytest.mark.parametrize("mode", MODES)
def test_keepalive_connection_follows_rds_and_eds(env, mode):
    """Envoy applies RDS and EDS updates to the next request on an existing downstream connection (only
    a changed Listener drains old connections). One keep-alive connection, a request before and after
    each change."""
    env.standard()
    xds = env.xds
    a, b = env.origins["a"], env.origins["b"]
    conn = http.client.HTTPConnection(harness.LOOPBACK, env.port, timeout=5)

    def get(path: str) -> str | None:
        conn.request("GET", path, headers={"host": "svc.test"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200, (path, resp.status)
        return resp.getheader("x-origin")

    problems = []
    try:
        assert get("/a") == "a"
        seq = last_response_seq(xds)
        xds.set_resources([main_routes(a=CLUSTER_B)])  # RDS: /a -> cluster-b (origin b)
        _, reply = wait_reply(xds, RDS, seq)
        assert reply["kind"] == "ack", reply
        time.sleep(0.2)
        got = get("/a")
        if got != "b":
            problems.append(f"RDS: after /a -> cluster-b was ACKed, /a on the existing connection went to "
                            f"origin {got} (a new connection: {fetch(env.port, '/a').origin})")
        seq = last_response_seq(xds)
        xds.set_resources([cla(CLUSTER_B, [a.port])])  # EDS: cluster-b -> origin a
        _, reply = wait_reply(xds, EDS, seq)
        assert reply["kind"] == "ack", reply
        time.sleep(0.2)
        got = get("/b")
        if got != "a":
            problems.append(f"EDS: after cluster-b moved to origin a (ACKed), /b on the existing connection "
                            f"went to origin {got} (a new connection: {fetch(env.port, '/b').origin})")
    finally:
        conn.close()
    assert b.requests() > 0
    assert not problems, "; ".join(problems)


def test_removed_endpoint_and_cluster_release_connections_and_stats(env):
    """What config updates take away is let go: the pooled connection to an endpoint EDS removed is
    closed at once (not after the hour of idle timeout), and a cluster CDS removed leaves /stats. Without
    this, pools and stats of every endpoint and cluster ever seen pile up in a long-lived sidecar."""
    proc = env.standard()
    xds = env.xds
    a, b = env.origins["a"], env.origins["b"]

    def open_conns(o: Origin) -> int:
        with o.lock:
            return len(o.conns)

    for _ in range(3):
        assert fetch(env.port, "/b").origin == "b"
    deadline = time.monotonic() + 5
    while open_conns(b) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_conns(b) >= 1, "no pooled keep-alive connection to origin b"

    # EDS: cluster-b's only endpoint becomes origin a's. The idle pooled connection to b must close.
    seq = last_response_seq(xds)
    xds.set_resources([cla(CLUSTER_B, [a.port])])
    _, reply = wait_reply(xds, EDS, seq)
    assert reply["kind"] == "ack", reply
    deadline = time.monotonic() + 5
    while open_conns(b) > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_conns(b) == 0, f"{open_conns(b)} connection(s) to the removed endpoint still open"
    assert fetch(env.port, "/b").origin == "a"

    # CDS: cluster-b goes (its route first points elsewhere). Its stats leave /stats.
    assert proc.stats().get("cluster.cluster-b.upstream_rq_total", 0) >= 1
    seq = last_response_seq(xds)
    xds.set_resources([main_routes(b=CLUSTER_A)])
    _, reply = wait_reply(xds, RDS, seq)
    assert reply["kind"] == "ack", reply
    seq = last_response_seq(xds)
    xds.remove(CDS, [CLUSTER_B])
    _, reply = wait_reply(xds, CDS, seq)
    assert reply["kind"] == "ack", reply
    stats = proc.wait_stats(lambda st: not any(k.startswith("cluster.cluster-b.") for k in st), timeout=5)
    left = sorted(k for k in stats if k.startswith("cluster.cluster-b."))
    assert not left, f"stats of the removed cluster are still listed: {left[:5]}"
    assert stats.get("cluster.cluster-a.upstream_rq_total", 0) >= 1  # the other cluster's stay
    assert fetch(env.port, "/b").origin == "a"
    # Its ClusterLoadAssignment is dropped with the subscription (no removal ever comes for it).
    dump, _ = config_dump(proc)
    eps = [e.get("endpoint_config", {}).get("cluster_name")
           for e in dump_section(dump, "EndpointsConfigDump").get("dynamic_endpoint_configs", [])]
    assert CLUSTER_B not in eps and SERVICE_A in eps, f"dynamic_endpoint_configs: {eps}"


@pytest.mark.parametrize("mode", MODES)
def test_rds_update_under_keepalive_load_without_failures(env, mode):
    env.standard(drain_time_s=1)
    xds = env.xds
    load = Load(env.port, "/a/load", threads=2, duration=8.0, max_requests=40000, pace=0.002)
    try:
        time.sleep(1.0)
        seq = last_response_seq(xds)
        xds.set_resources([main_routes(a=CLUSTER_B)])
        _, reply = wait_reply(xds, RDS, seq, timeout=5)
        assert reply["kind"] == "ack", reply
        acked = time.monotonic()
        time.sleep(SETTLE + 1.5)  # past strait's --drain-time-s 1
        end = time.monotonic()
    finally:
        records = load.stop()
    failures = Load.failures(records)
    after = Load.origins_between(records, acked + SETTLE, end)
    problems = []
    if failures:
        problems.append(f"{len(failures)} of {len(records)} requests failed around an RDS update; "
                        f"first: {failures[:3]}")
    if not after or set(after) != {"b"}:
        problems.append(f"{SETTLE} s after the RDS ACK (/a -> cluster-b), keep-alive answers came from {after}")
    assert not problems, "; ".join(problems)


# ---------------------------------------------------------------------------------------------------
# 3. EDS under load


@pytest.mark.parametrize("mode", MODES)
def test_eds_moves_endpoints_under_load_without_failures(env, mode):
    env.standard()
    xds = env.xds
    a, b = env.origins["a"], env.origins["b"]
    load = Load(env.port, "/a/load", threads=2, duration=8.0, max_requests=40000, pace=0.002)
    try:
        time.sleep(1.0)
        seq = last_response_seq(xds)
        xds.set_resources([cla(SERVICE_A, [b.port])])
        _, reply = wait_reply(xds, EDS, seq, timeout=5)
        assert reply["kind"] == "ack", reply
        acked_1 = time.monotonic()
        time.sleep(SETTLE + 1.0)
        seq = last_response_seq(xds)
        moved_back_at = time.monotonic()
        xds.set_resources([cla(SERVICE_A, [a.port])])
        _, reply = wait_reply(xds, EDS, seq, timeout=5)
        assert reply["kind"] == "ack", reply
        acked_2 = time.monotonic()
        time.sleep(SETTLE + 1.0)
        end = time.monotonic()
    finally:
        records = load.stop()
    failures = Load.failures(records)
    assert records, "the load loop sent nothing"
    assert not failures, (f"{len(failures)} of {len(records)} requests failed while EDS moved the endpoints; "
                          f"first: {failures[:5]}")
    after_first = Load.origins_between(records, acked_1 + SETTLE, moved_back_at)
    after_second = Load.origins_between(records, acked_2 + SETTLE, end)
    assert after_first and set(after_first) == {"b"}, (
        f"{SETTLE} s after the ACK of the move to b, answers came from {after_first}")
    assert after_second and set(after_second) == {"a"}, (
        f"{SETTLE} s after the ACK of the move back to a, answers came from {after_second}")
    print(f"{len(records)} requests, 0 failures; after move: {after_first}, after move back: {after_second}")


# ---------------------------------------------------------------------------------------------------
# 4. NACKs


def check_nack(env, type_url: str, seq: int, must_name: list[str], field_words: list[str],
               accepted_version: str, nonce: str | None = None) -> str:
    resp, reply = wait_reply(env.xds, type_url, seq, nonce=nonce)
    assert reply["kind"] == "nack", f"{short(type_url)} response {resp} was answered with {reply}"
    detail = reply.get("error_detail") or {}
    msg = detail.get("message", "")
    assert msg, f"NACK without error_detail.message: {reply}"
    for word in must_name:
        assert word in msg, f"NACK message does not name {word!r}: {msg!r}"
    assert any(w in msg for w in field_words), f"NACK message names none of {field_words}: {msg!r}"
    assert detail.get("code", 0) != 0, f"NACK error_detail.code is 0: {reply}"
    if env.mode == "sotw":
        assert reply["version_info"] == accepted_version, (
            f"NACK carries version {reply['version_info']!r}, not the last accepted {accepted_version!r}")
    return msg


def traffic_still_flows(env) -> None:
    for path, origin in (("/a", "a"), ("/b", "b")):
        r = fetch(env.port, path)
        assert r.status == 200 and r.origin == origin, f"after the NACK, GET {path}: {r!r}"


@pytest.mark.parametrize("mode", MODES)
def test_nack_invalid_regex_keeps_last_good_routes(env, mode):
    proc = env.standard()
    xds = env.xds
    sid = env.stream()["id"]
    good = last_acked_version(xds, RDS, sid)
    rejected0 = stat_value(proc.stats(), *rds_rejected_names())
    seq = last_response_seq(xds)
    bad = route_config(ROUTES, [{"match": {"safe_regex": {"regex": "(("}}, "route": {"cluster": CLUSTER_B}},
                                route("/", CLUSTER_B)])
    xds.set_resources([bad])
    msg = check_nack(env, RDS, seq, [ROUTES], ["regex"], good)
    print("NACK message:", msg)
    traffic_still_flows(env)
    rejected = wait_stat(proc, rds_rejected_names(), lambda v: v > rejected0)
    assert rejected == rejected0 + 1, f"RDS update_rejected {rejected0} -> {rejected}"
    # A good update afterwards is accepted and applied.
    seq = last_response_seq(xds)
    xds.set_resources([main_routes(a=CLUSTER_B)])
    _, reply = wait_reply(xds, RDS, seq)
    assert reply["kind"] == "ack", reply
    wait_origin(env.port, "/a", "b")


@pytest.mark.parametrize("mode", MODES)
def test_nack_unknown_http_filter_and_accept_optional_one(env, mode):
    proc = env.standard()
    xds = env.xds
    sid = env.stream()["id"]
    good = last_acked_version(xds, LDS, sid)
    rejected0 = stat_value(proc.stats(), "listener_manager.lds.update_rejected")
    seq = last_response_seq(xds)
    bad = http_listener(LISTENER, env.port, stat_prefix=STAT_PREFIX, rds_name=ROUTES,
                        http_filters=[nope_filter(optional=False), harness.router_filter()])
    xds.set_resources([bad])
    msg = check_nack(env, LDS, seq, [LISTENER], [NOPE_TYPE, "http_filters"], good)
    print("NACK message:", msg)
    traffic_still_flows(env)
    rejected = wait_stat(proc, ("listener_manager.lds.update_rejected",), lambda v: v > rejected0)
    assert rejected == rejected0 + 1, f"lds update_rejected {rejected0} -> {rejected}"

    # Optional: accepted (the filter is skipped). The new listener routes everything inline to b, so
    # traffic shows that it is the one in force.
    seq = last_response_seq(xds)
    ok = http_listener(LISTENER, env.port, stat_prefix="ingress_optional", routes=[route("/", CLUSTER_B)],
                       http_filters=[nope_filter(optional=True), harness.router_filter()])
    xds.set_resources([ok])
    _, reply = wait_reply(xds, LDS, seq)
    assert reply["kind"] == "ack", f"listener with an optional unknown filter: {reply}"
    wait_origin(env.port, "/a", "b")


@pytest.mark.parametrize("mode", MODES)
def test_nack_same_resource_twice_in_one_response(env, mode):
    proc = env.standard()
    xds = env.xds
    sid = env.stream()["id"]
    good = last_acked_version(xds, CDS, sid)
    rejected0 = stat_value(proc.stats(), "cluster_manager.cds.update_rejected")
    seq = last_response_seq(xds)
    ca, cb = eds_cluster(CLUSTER_A, SERVICE_A), eds_cluster(CLUSTER_B)
    if mode == "sotw":
        sent = xds.push_raw({"type_url": CDS, "version_info": "dup-1", "resources": [ca, cb, ca]})
    else:
        sent = xds.push_raw({"type_url": CDS, "system_version_info": "dup-1", "resources": [
            {"name": CLUSTER_A, "version": "dup-1", "resource": ca},
            {"name": CLUSTER_A, "version": "dup-1", "resource": ca}]})
    assert len(sent["sent"]) == 1, sent
    msg = check_nack(env, CDS, seq, [CLUSTER_A], ["duplicate", "twice"], good, nonce=sent["sent"][0]["nonce"])
    print("NACK message:", msg)
    traffic_still_flows(env)
    rejected = wait_stat(proc, ("cluster_manager.cds.update_rejected",), lambda v: v > rejected0)
    assert rejected == rejected0 + 1, f"cds update_rejected {rejected0} -> {rejected}"
    # The stream goes on: a normal change is still accepted and applied.
    seq = last_response_seq(xds)
    xds.set_resources([main_routes(b=CLUSTER_A)])
    _, reply = wait_reply(xds, RDS, seq)
    assert reply["kind"] == "ack", reply
    wait_origin(env.port, "/b", "a")


# ---------------------------------------------------------------------------------------------------
# 4b. Partial acceptance (Envoy's): one bad resource is refused by name, the others are applied


def wait_listening(port: int, timeout: float = SWITCH_LIMIT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port} within {timeout} s")


@pytest.mark.parametrize("mode", MODES)
def test_partial_lds_applies_good_listeners_and_nacks_the_bad_one_by_name(env, mode):
    proc = env.standard()
    xds = env.xds
    sid = env.stream()["id"]
    good = last_acked_version(xds, LDS, sid)
    rejected0 = stat_value(proc.stats(), "listener_manager.lds.update_rejected")
    good_port, bad_port = harness.free_port(), harness.free_port()
    seq = last_response_seq(xds)
    xds.set_resources([
        http_listener("listener-new-good", good_port, stat_prefix="ingress_new_good", routes=[route("/", CLUSTER_B)]),
        http_listener("listener-new-bad", bad_port, stat_prefix="ingress_new_bad", rds_name=ROUTES,
                      http_filters=[nope_filter(optional=False), harness.router_filter()]),
    ])
    msg = check_nack(env, LDS, seq, ["listener-new-bad"], [NOPE_TYPE, "http_filters"], good)
    print("NACK message:", msg)
    assert "listener-new-good" not in msg, f"the NACK blames the good listener too: {msg!r}"
    assert re.search(r"\b1 of [23] Listener", msg), f"the NACK does not say how many listeners were refused: {msg!r}"
    # The good new listener serves; the one held before is untouched; the bad one never bound.
    wait_listening(good_port)
    r = fetch(good_port, "/a")
    assert r.status == 200 and r.origin == "b", f"the valid listener of the partly refused update: {r!r}"
    traffic_still_flows(env)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", bad_port), timeout=0.5).close()
    rejected = wait_stat(proc, ("listener_manager.lds.update_rejected",), lambda v: v > rejected0)
    assert rejected == rejected0 + 1, f"lds update_rejected {rejected0} -> {rejected}"
    dump, _ = config_dump(proc)
    held = {l.get("name") for l in dump_section(dump, "ListenersConfigDump").get("dynamic_listeners", [])}
    assert "listener-new-good" in held and "listener-new-bad" not in held, f"/config_dump listeners: {held}"
    # Fixing the bad listener in a later response applies it and is ACKed.
    seq = last_response_seq(xds)
    xds.set_resources([http_listener("listener-new-bad", bad_port, stat_prefix="ingress_new_bad",
                                     routes=[route("/", CLUSTER_A)])])
    _, reply = wait_reply(xds, LDS, seq)
    assert reply["kind"] == "ack", reply
    wait_listening(bad_port)
    r = fetch(bad_port, "/x")
    assert r.status == 200 and r.origin == "a", r


@pytest.mark.parametrize("mode", MODES)
def test_partial_eds_applies_good_assignment_and_nacks_the_bad_one(env, mode):
    env.standard()
    xds = env.xds
    sid = env.stream()["id"]
    good = last_acked_version(xds, EDS, sid)
    b = env.origins["b"]
    seq = last_response_seq(xds)
    bad = cla(CLUSTER_B, [b.port])
    bad["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["address"] = "not-an-ip"
    xds.set_resources([cla(SERVICE_A, [b.port]), bad])  # a's endpoints move to origin b; b's are bad
    msg = check_nack(env, EDS, seq, [CLUSTER_B], ["not-an-ip", "address"], good)
    print("NACK message:", msg)
    assert f"'{SERVICE_A}'" not in msg, f"the NACK blames the good assignment too: {msg!r}"
    wait_origin(env.port, "/a", "b")                         # the good one applied
    r = fetch(env.port, "/b")
    assert r.status == 200 and r.origin == "b", f"cluster-b keeps its last good endpoints: {r!r}"


@pytest.mark.parametrize("mode", MODES)
def test_listener_fault_is_nacked_with_the_listener_not_with_its_routes(env, mode):
    """A listener waiting for its RouteConfiguration is checked whole when it arrives: its own fault is
    NACKed in LDS at once, not found later and blamed on the RouteConfiguration that completes it."""
    env.standard()
    xds = env.xds
    sid = env.stream()["id"]
    good_lds = last_acked_version(xds, LDS, sid)
    port = harness.free_port()
    seq = last_response_seq(xds)
    xds.set_resources([http_listener("listener-late", port, stat_prefix="ingress_late", rds_name="routes-late",
                                     http_filters=[nope_filter(optional=False), harness.router_filter()])])
    msg = check_nack(env, LDS, seq, ["listener-late"], [NOPE_TYPE], good_lds)
    print("NACK message:", msg)
    # Its RouteConfiguration, sent anyway, is not NACKed for the listener's fault.
    seq = last_response_seq(xds)
    xds.set_resources([route_config("routes-late", [route("/", CLUSTER_A)]), main_routes(a=CLUSTER_B)])
    _, reply = wait_reply(xds, RDS, seq)
    assert reply["kind"] == "ack", f"an RDS update after a listener's fault: {reply}"
    wait_origin(env.port, "/a", "b")


# ---------------------------------------------------------------------------------------------------
# 5. Listener added and removed


@pytest.mark.parametrize("mode", MODES)
def test_listener_added_then_removed_while_request_in_flight(env, mode):
    env.standard(drain_time_s=3)
    xds = env.xds
    a = env.origins["a"]
    port2 = harness.free_port()
    seq = last_response_seq(xds)
    xds.set_resources([http_listener("listener-extra", port2, routes=[route("/", CLUSTER_A)])])
    _, reply = wait_reply(xds, LDS, seq)
    assert reply["kind"] == "ack", reply
    wait_origin(port2, "/extra", "a")
    wait_origin(env.port, "/b", "b")  # the first listener is untouched

    # A request in flight on an existing connection when the listener goes.
    conn = http.client.HTTPConnection(harness.LOOPBACK, port2, timeout=10)
    try:
        conn.request("GET", "/slow?delay=1.5", headers={"host": "svc.test"})
        deadline = time.monotonic() + 3
        while a.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert a.in_flight >= 1, "the slow request never reached the origin"
        seq = last_response_seq(xds)
        xds.remove(LDS, ["listener-extra"])
        took = wait_refused(port2)
        still_in_flight = a.in_flight >= 1
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200 and resp.getheader("x-origin") == "a", (resp.status, body)
        _, reply = wait_reply(xds, LDS, seq)
        assert reply["kind"] == "ack", reply
    finally:
        conn.close()
    assert still_in_flight, "the slow request finished before the listener stopped accepting (test too slow)"
    print(f"listener removed: connections refused after {took:.3f} s; in-flight request completed")
    wait_origin(env.port, "/a", "a")  # the other listener still serves
    stats = env.proc.stats()
    assert stat_value(stats, "listener_manager.lds.update_success") >= 3, stats


# ---------------------------------------------------------------------------------------------------
# 6. Control plane killed and restarted


@pytest.mark.parametrize("mode", MODES)
def test_control_plane_restart_traffic_never_stops(env, mode):
    proc = env.standard()
    old = env.xds
    b = env.origins["b"]
    snapshot = old.all_resources()
    assert stat_value(proc.stats(), "control_plane.connected_state") == 1
    load = Load(env.port, "/a/cp", threads=2, duration=60.0, max_requests=30000, pace=0.005)
    try:
        time.sleep(0.5)
        old.kill_hard()
        down = wait_stat(proc, ("control_plane.connected_state",), lambda v: v == 0, timeout=5)
        assert down == 0, "control_plane.connected_state still 1 after the control plane died"
        time.sleep(1.5)
        assert proc.alive()
        n_before = load.count()
        new = env.restart_control_plane(snapshot, "xds-restarted")
        # The stream comes back with node on its first request.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not [s for s in new.streams() if s["node_id"] == NODE_ID]:
            time.sleep(0.1)
        streams = new.streams()
        assert streams and streams[0]["node_id"] == NODE_ID, f"no stream with node after the restart: {streams}"
        sid = streams[0]["id"]
        first = new.requests(stream=sid)[0]
        assert first["has_node"], first
        up = wait_stat(proc, ("control_plane.connected_state",), lambda v: v == 1, timeout=5)
        assert up == 1, "control_plane.connected_state not 1 after the reconnect"
        for t in (CDS, LDS):
            _, reply = wait_reply(new, t, 0)
            assert reply["kind"] == "ack", reply
        if mode == "delta":
            cds_first = new.requests(type_url=CDS, stream=sid)[0]
            irv = cds_first["initial_resource_versions"]
            assert set(irv) == {CLUSTER_A, CLUSTER_B}, f"delta reconnect: initial_resource_versions {irv}"
        else:
            cds_first = new.requests(type_url=CDS, stream=sid)[0]
            assert cds_first["version_info"] not in ("",), f"SotW reconnect without the last version: {cds_first}"
        # A change after the restart takes effect (seen on new connections: whether existing keep-alive
        # connections follow EDS/RDS is test_keepalive_connection_follows_rds_and_eds's business).
        seq = last_response_seq(new)
        new.set_resources([cla(SERVICE_A, [b.port])])
        _, reply = wait_reply(new, EDS, seq)
        assert reply["kind"] == "ack", reply
        wait_origin(env.port, "/a", "b")
        seq = last_response_seq(new)
        new.set_resources([main_routes(b=CLUSTER_A)])
        _, reply = wait_reply(new, RDS, seq)
        assert reply["kind"] == "ack", reply
        wait_origin(env.port, "/b", "b")  # /b -> cluster-a, which is now at origin b
        time.sleep(0.5)
    finally:
        records = load.stop()
    failures = Load.failures(records)
    assert not failures, (f"{len(failures)} of {len(records)} requests failed across the control plane's "
                          f"restart; first: {failures[:5]}")
    assert len(records) > n_before > 0
    print(f"{len(records)} requests, 0 failures across the restart")


# ---------------------------------------------------------------------------------------------------
# 7. Stats and /config_dump


@pytest.mark.parametrize("mode", MODES)
def test_stats_and_config_dump(env, mode):
    proc = env.standard()
    xds = env.xds
    stats = proc.stats()
    assert stat_value(stats, "cluster_manager.cds.update_success") >= 1
    assert stat_value(stats, "listener_manager.lds.update_success") >= 1
    assert stat_value(stats, "control_plane.connected_state") == 1
    rds_rej0 = stat_value(stats, *rds_rejected_names())
    cds_rej0 = stat_value(stats, "cluster_manager.cds.update_rejected")
    lds_rej0 = stat_value(stats, "listener_manager.lds.update_rejected")

    dump, _ = config_dump(proc)
    clusters = dump_section(dump, "ClustersConfigDump")
    active = {c.get("cluster", {}).get("name"): c for c in clusters.get("dynamic_active_clusters", [])}
    assert {CLUSTER_A, CLUSTER_B} <= set(active), f"dynamic_active_clusters: {list(active)}"
    for name in (CLUSTER_A, CLUSTER_B):
        assert active[name].get("version_info") and active[name].get("last_updated"), active[name]
    assert "xds-grpc" in json.dumps(clusters.get("static_clusters", [])), "static xds-grpc cluster not in the dump"
    listeners = dump_section(dump, "ListenersConfigDump")
    dyn = {l.get("name"): l for l in listeners.get("dynamic_listeners", [])}
    assert LISTENER in dyn, f"dynamic_listeners: {list(dyn)}"
    st = dyn[LISTENER].get("active_state") or {}
    assert st.get("version_info") and st.get("last_updated") and st.get("listener", {}).get("name") == LISTENER, st
    routes = dump_section(dump, "RoutesConfigDump")
    rcs = {r.get("route_config", {}).get("name"): r for r in routes.get("dynamic_route_configs", [])}
    assert ROUTES in rcs and rcs[ROUTES].get("version_info") and rcs[ROUTES].get("last_updated"), rcs
    endpoints = dump_section(dump, "EndpointsConfigDump")
    eps = {e.get("endpoint_config", {}).get("cluster_name"): e for e in endpoints.get("dynamic_endpoint_configs", [])}
    assert {SERVICE_A, CLUSTER_B} <= set(eps), f"dynamic_endpoint_configs: {list(eps)}"
    for name in (SERVICE_A, CLUSTER_B):
        assert eps[name].get("version_info") and eps[name].get("last_updated"), eps[name]

    # NACKs raise the rejected counters; the last error shows in the dump.
    seq = last_response_seq(xds)
    xds.set_resources([route_config(ROUTES, [{"match": {"safe_regex": {"regex": "(("}},
                                              "route": {"cluster": CLUSTER_B}}])])
    _, reply = wait_reply(xds, RDS, seq)
    assert reply["kind"] == "nack", reply
    rds_msg = reply["error_detail"]["message"]
    assert wait_stat(proc, rds_rejected_names(), lambda v: v > rds_rej0) == rds_rej0 + 1
    _, text = config_dump(proc)
    assert rds_msg in text or json.dumps(rds_msg)[1:-1] in text, (
        f"the RDS NACK's message {rds_msg!r} is not in /config_dump")

    seq = last_response_seq(xds)
    xds.set_resources([http_listener(LISTENER, env.port, stat_prefix=STAT_PREFIX, rds_name=ROUTES,
                                     http_filters=[nope_filter(False), harness.router_filter()])])
    _, reply = wait_reply(xds, LDS, seq)
    assert reply["kind"] == "nack", reply
    lds_msg = reply["error_detail"]["message"]
    assert wait_stat(proc, ("listener_manager.lds.update_rejected",), lambda v: v > lds_rej0) == lds_rej0 + 1
    _, text = config_dump(proc)
    assert lds_msg in text or json.dumps(lds_msg)[1:-1] in text, (
        f"the LDS NACK's message {lds_msg!r} is not in /config_dump")

    seq = last_response_seq(xds)
    ca = eds_cluster(CLUSTER_A, SERVICE_A)
    if mode == "sotw":
        xds.push_raw({"type_url": CDS, "version_info": "dup", "resources": [ca, ca]})
    else:
        xds.push_raw({"type_url": CDS, "system_version_info": "dup", "resources": [
            {"name": CLUSTER_A, "version": "d", "resource": ca}, {"name": CLUSTER_A, "version": "d", "resource": ca}]})
    _, reply = wait_reply(xds, CDS, seq)
    assert reply["kind"] == "nack", reply
    cds_msg = reply["error_detail"]["message"]
    problems = []
    got = wait_stat(proc, ("cluster_manager.cds.update_rejected",), lambda v: v > cds_rej0)
    if got != cds_rej0 + 1:
        problems.append(f"cluster_manager.cds.update_rejected {cds_rej0} -> {got} after a CDS NACK "
                        f"(duplicate name, NACKed by the client itself)")
    _, text = config_dump(proc)
    if cds_msg not in text and json.dumps(cds_msg)[1:-1] not in text:
        problems.append(f"the CDS NACK's message {cds_msg!r} is not in /config_dump")

    # Versions in the dump stay the last accepted ones.
    dump, _ = config_dump(proc)
    clusters2 = dump_section(dump, "ClustersConfigDump")
    active2 = {c.get("cluster", {}).get("name"): c for c in clusters2.get("dynamic_active_clusters", [])}
    assert active2[CLUSTER_A]["version_info"] == active[CLUSTER_A]["version_info"], (active2[CLUSTER_A], active[CLUSTER_A])
    traffic_still_flows(env)
    stats = proc.stats()
    attempt, success = (stat_value(stats, "cluster_manager.cds.update_attempt"),
                        stat_value(stats, "cluster_manager.cds.update_success"))
    if attempt < success + 1:
        problems.append(f"cluster_manager.cds.update_attempt {attempt} does not count the rejected update "
                        f"(update_success {success})")
    assert not problems, "; ".join(problems)


# ---------------------------------------------------------------------------------------------------
# Other bootstrap and resource shapes


def test_google_grpc_target_static_cluster_and_tcp_proxy(env, fleet):
    """ads_config.grpc_services[0].google_grpc.target_uri; a STATIC cluster with load_assignment from
    CDS; a tcp_proxy listener from LDS."""
    echo = fleet.echo()
    port = harness.free_port()
    env.xds.set_resources([static_cluster("tcp-backend", [echo.port]), tcp_listener("listener-tcp", port, "tcp-backend")])
    proc = env.start(google_grpc=True)
    deadline = time.monotonic() + 10
    while not harness.is_listening(port) and time.monotonic() < deadline:
        time.sleep(0.05)
    sent, sent_sha, received, received_sha = harness.roundtrip_echo(port, 256 * 1024, timeout=20)
    assert (received, received_sha) == (sent, sent_sha)
    assert env.stream()["node_id"] == NODE_ID
    for t in (CDS, LDS):
        _, reply = wait_reply(env.xds, t, 0)
        assert reply["kind"] == "ack", reply
    assert proc.alive()
