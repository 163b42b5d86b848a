"""xDS edge cases (issue 10), through the real binary fed by the Node test management server
(tests/xds_server/server.js via xds_control.py), state of the world and delta:

  1. A resource is held by the name it was sent under (SotW: its own name or its discovery.v3.Resource
     wrapper's; delta: Resource.name), which is the name removals use. A resource whose own name (Listener,
     Cluster, RouteConfiguration and Secret `name`, ClusterLoadAssignment `cluster_name`) differs from the
     name it was sent under is NACKed naming both (Envoy rejects such RDS/EDS/SDS resources too); wrapped
     resources with the right name are accepted, and removals (delta `removed_resources`, SotW absence)
     take every type away.
  2. The unknown-field records in /config_dump's XdsStatus `unknown_fields` live as long as their
     resource: an update without unknown fields, a removal, or the resource being dropped (an endpoint
     assignment whose cluster went) ends them; a rejected update leaves none.
  3. A CDS update removing a cluster that a tcp_proxy listener, an inline route or an RDS route still
     names is ACKed (as in Envoy); HTTP requests to it get 503 (details cluster_not_found), tcp_proxy
     connections are closed; once the cluster is back, traffic flows again with no other change. A
     static bootstrap naming an unknown cluster is still refused.

Skips when node/npm are missing. Traffic stays on 127.0.0.1; every process started here is stopped by
its PID.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import harness
import tlsutil

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tests" / "xds_server"))

import xds_control  # noqa: E402
from xds_control import CDS, EDS, LDS, RDS, SDS, XdsServer, XdsServerError, ads_bootstrap  # noqa: E402

MODES = ["sotw", "delta"]
WRAPPER = "type.googleapis.com/envoy.service.discovery.v3.Resource"
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
SHORT = {CDS: "Cluster", LDS: "Listener", RDS: "RouteConfiguration", EDS: "ClusterLoadAssignment", SDS: "Secret"}


# ---------------------------------------------------------------------------------------------------
# Resources (Envoy v3 JSON with "@type")


def ads_source() -> dict:
    return {"ads": {}, "resource_api_version": "V3"}


def static_cluster(name: str, port: int, **extra) -> dict:
    return {"@type": CDS, **harness.static_cluster(name, [port]), **extra}


def eds_cluster(name: str, service_name: str) -> dict:
    return {"@type": CDS, "name": name, "type": "EDS", "connect_timeout": "1s",
            "eds_cluster_config": {"eds_config": ads_source(), "service_name": service_name}}


def tls_cluster(name: str, port: int, ca_secret: str) -> dict:
    """A STATIC cluster whose trust anchors come over SDS (so the Secret type is subscribed)."""
    c = static_cluster(name, port)
    c["transport_socket"] = {"name": "tls", "typed_config": {
        "@type": UPSTREAM_TLS, "sni": "backend.test", "common_tls_context": {
            "validation_context_sds_secret_config": {"name": ca_secret, "sds_config": ads_source()}}}}
    return c


def cla(name: str, port: int, **extra) -> dict:
    return {"@type": EDS, "cluster_name": name, "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": harness.socket_address(port)}}]}], **extra}


def route_config(name: str, cluster: str) -> dict:
    return {"@type": RDS, "name": name, "virtual_hosts": [
        harness.virtual_host("all", ["*"], [harness.route_to(cluster, "/")])]}


def http_listener(name: str, port: int, *, rds: str | None = None, cluster: str | None = None) -> dict:
    hcm = {"@type": harness.HCM_TYPE, "stat_prefix": name.replace("-", "_"), "codec_type": "AUTO",
           "http_filters": [harness.router_filter()]}
    if rds is not None:
        hcm["rds"] = {"config_source": ads_source(), "route_config_name": rds}
    else:
        hcm["route_config"] = {"name": f"{name}-inline", "virtual_hosts": [
            harness.virtual_host("all", ["*"], [harness.route_to(cluster, "/")])]}
    return {"@type": LDS, "name": name, "address": harness.socket_address(port),
            "filter_chains": [{"filters": [harness.hcm_filter(hcm)]}]}


def tcp_listener(name: str, port: int, cluster: str, **extra) -> dict:
    return {"@type": LDS, **harness.tcp_proxy_listener(name, cluster, stat_prefix=name.replace("-", "_"),
                                                       port=port), **extra}


def secret_ca(name: str, root: Path) -> dict:
    return {"@type": SDS, "name": name, "validation_context": {"trusted_ca": {"inline_string": root.read_text()}}}


def name_of(resource: dict) -> str:
    return resource["cluster_name"] if resource["@type"] == EDS else resource["name"]


# ---------------------------------------------------------------------------------------------------
# An HTTP origin and clients


class Origin:
    """HTTP/1.1 origin in threads: 200 with `x-origin: <name>`."""

    def __init__(self, name: str):
        origin_name = name

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                body = f"origin={origin_name}\n".encode()
                self.send_response(200)
                self.send_header("x-origin", origin_name)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

        self.server = Server((harness.LOOPBACK, 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=2)


def get(port: int, path: str = "/", timeout: float = 3.0) -> tuple[int | None, str | None]:
    """One GET on a new connection: (status, x-origin), or (None, error)."""
    conn = http.client.HTTPConnection(harness.LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"host": "svc.test"})
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("x-origin")
    except (OSError, http.client.HTTPException) as err:
        return None, repr(err)
    finally:
        conn.close()


def wait_get(port: int, want: tuple, timeout: float = 5.0, path: str = "/") -> None:
    deadline = time.monotonic() + timeout
    while True:
        got = get(port, path)
        if got == want:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"GET {path} on :{port}: {got}, wanted {want}")
        time.sleep(0.05)


def wait_listening(port: int, listening: bool = True, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while harness.is_listening(port) != listening:
        if time.monotonic() > deadline:
            raise AssertionError(f":{port} {'not listening' if listening else 'still listening'} after {timeout} s")
        time.sleep(0.05)


def tcp_echoes(port: int, payload: bytes = b"ping through tcp_proxy") -> bool:
    try:
        with harness.connect(port, timeout=3) as s:
            s.sendall(payload)
            return harness.recv_exact(s, len(payload), timeout=3) == payload
    except (OSError, TimeoutError, ConnectionError):
        return False


# ---------------------------------------------------------------------------------------------------
# The control plane's records, /config_dump


def last_response_seq(xds) -> int:
    return xds.call("GET", "/responses?since=999999999")["last_seq"]


def answer(xds, type_url: str, *, since: int | None = None, nonce: str | None = None, timeout: float = 10.0) -> dict:
    """The ACK/NACK of the newest `type_url` response sent after response seq `since` (or of `nonce`)."""
    deadline = time.monotonic() + timeout
    while True:
        resps = [r for r in xds.responses(since=since or 0, type_url=type_url) if nonce is None or r["nonce"] == nonce]
        if resps:
            last = resps[-1]
            for r in xds.requests(type_url=type_url, stream=last["stream"]):
                if r["response_nonce"] == last["nonce"] and r["kind"] in ("ack", "nack"):
                    return r
        if time.monotonic() > deadline:
            raise AssertionError(f"no ACK/NACK of a {SHORT[type_url]} response within {timeout} s; responses: "
                                 f"{json.dumps(resps)[-1500:]}; requests: "
                                 f"{json.dumps(xds.requests(type_url=type_url))[-2500:]}")
        time.sleep(0.05)


def expect_ack(xds, type_url: str, **kw) -> dict:
    r = answer(xds, type_url, **kw)
    assert r["kind"] == "ack", f"{SHORT[type_url]} update answered with {r}"
    return r


def expect_nack(xds, type_url: str, words: list[str], **kw) -> str:
    r = answer(xds, type_url, **kw)
    assert r["kind"] == "nack", f"{SHORT[type_url]} update expected to be NACKed, answered with {r}"
    msg = (r.get("error_detail") or {}).get("message", "")
    for w in words:
        assert w in msg, f"NACK message does not name {w!r}: {msg!r}"
    return msg


def config_dump(proc) -> dict:
    resp = proc.get("/config_dump?include_eds")
    assert resp.status == 200, resp
    return resp.json()


def section(dump: dict, suffix: str) -> dict:
    for c in dump.get("configs", []):
        if str(c.get("@type", "")).endswith(suffix):
            return c
    raise AssertionError(f"/config_dump has no {suffix}")


def dumped_names(proc) -> dict[str, set[str]]:
    """The dynamic resources /config_dump shows, by type."""
    d = config_dump(proc)
    return {
        CDS: {c["cluster"]["name"] for c in section(d, "ClustersConfigDump").get("dynamic_active_clusters", [])},
        LDS: {l["name"] for l in section(d, "ListenersConfigDump").get("dynamic_listeners", [])},
        RDS: {r["route_config"]["name"] for r in section(d, "RoutesConfigDump").get("dynamic_route_configs", [])},
        EDS: {e["endpoint_config"]["cluster_name"]
              for e in section(d, "EndpointsConfigDump").get("dynamic_endpoint_configs", [])},
        SDS: {s["name"] for s in section(d, "SecretsConfigDump").get("dynamic_active_secrets", [])},
    }


def unknown_fields(proc) -> dict[str, str]:
    return section(config_dump(proc), "XdsStatus").get("unknown_fields", {})


def wait_for(pred, what: str, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} (within {timeout} s)")
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------------
# Environment


class Env:
    def __init__(self, fleet, xds, mode: str, tmp_path: Path):
        self.fleet = fleet
        self.xds = xds
        self.mode = mode
        self.delta = mode == "delta"
        self.tmp_path = tmp_path
        self.proc = None

    def origin(self, name: str) -> Origin:
        return harness.track(self.fleet, Origin(name))

    def start(self) -> harness.StraitProcess:
        b = ads_bootstrap(self.xds.ads_port, delta=self.delta)
        for key in ("lds_config", "cds_config"):
            b["dynamic_resources"][key]["initial_fetch_timeout"] = "5s"
        self.proc = self.fleet.start(b, wait_ready=False)
        self.proc.wait_admin()
        self.proc.wait_ready(15)
        return self.proc

    def push(self, type_url: str, items: list[tuple[str, dict]], *, removed: list[str] = (), version: str) -> str:
        """A raw response: SotW wraps each (name, resource) in a discovery.v3.Resource carrying `name`
        (None: sent bare); delta sends Resource{name, version, resource}. Returns its nonce."""
        if self.delta:
            body = {"type_url": type_url, "system_version_info": version, "removed_resources": list(removed),
                    "resources": [{"name": n, "version": version, "resource": r} for n, r in items]}
        else:
            assert not removed
            body = {"type_url": type_url, "version_info": version, "resources": [
                r if n is None else {"@type": WRAPPER, "name": n, "version": version, "resource": r} for n, r in items]}
        sent = self.xds.push_raw(body)["sent"]
        assert len(sent) == 1, f"push of {SHORT[type_url]} reached {sent}"
        return sent[0]["nonce"]


@pytest.fixture
def mode() -> str:
    return "sotw"


@pytest.fixture
def env(fleet, tmp_path, mode):
    if not xds_control.node_available():
        pytest.skip("node/npm not found (deploy/install-deps.sh test)")
    server = XdsServer(tmp_path / "xds")
    try:
        server.start()
    except (XdsServerError, subprocess.CalledProcessError, OSError) as err:
        pytest.fail(f"test xDS server failed to start: {err}", pytrace=False)
    yield Env(fleet, server, mode, tmp_path)
    server.stop()


# ---------------------------------------------------------------------------------------------------
# 1. Held, and removed, by the name sent under


@pytest.mark.parametrize("mode", MODES)
def test_resources_are_held_and_removed_by_the_name_they_were_sent_under(env, mode):
    xds = env.xds
    a, b = env.origin("a"), env.origin("b")
    root = tlsutil.make_root(env.tmp_path / "pki" / "ca")
    port, port2, port3 = harness.free_port(), harness.free_port(), harness.free_port()
    base = {
        CDS: [static_cluster("c-static", b.port), eds_cluster("c-eds", "svc-a"), tls_cluster("c-tls", b.port, "ca-a")],
        EDS: [cla("svc-a", a.port)],
        LDS: [http_listener("l-rds", port, rds="routes-a")],
        RDS: [route_config("routes-a", "c-eds")],
        SDS: [secret_ca("ca-a", root)],
    }
    xds.set_resources([r for rs in base.values() for r in rs])
    proc = env.start()
    wait_get(port, (200, "a"))
    xds.wait_request(lambda r: r["type_url"] == SDS and r["kind"] == "ack")

    # A resource whose own name differs from the name it was sent under is NACKed, whatever its type;
    # nothing of it is held (the subscribed names stay in force).
    mismatched = {
        CDS: ("c-wire", static_cluster("c-inner", a.port)),
        LDS: ("l-wire", http_listener("l-inner", port2, cluster="c-static")),
        RDS: ("routes-a", route_config("routes-other", "c-static")),
        EDS: ("svc-a", cla("svc-other", b.port)),
        SDS: ("ca-a", secret_ca("ca-other", root)),
    }
    for i, (type_url, (wire, inner)) in enumerate(mismatched.items()):
        # SotW CDS/LDS responses are the whole set: the others go along, bare.
        rest = [(None, r) for r in base[type_url]] if not env.delta and type_url in (CDS, LDS) else []
        nonce = env.push(type_url, rest + [(wire, inner)], version=f"mismatch-{i}")
        msg = expect_nack(xds, type_url, [wire, name_of(inner)], nonce=nonce)
        print(f"{SHORT[type_url]} NACK: {msg}")
    held = dumped_names(proc)
    for type_url, (wire, inner) in mismatched.items():
        assert name_of(inner) not in held[type_url], f"{name_of(inner)} held after the NACK: {held}"
        assert wire not in held[type_url] or any(name_of(r) == wire for r in base[type_url]), held
    assert held[RDS] == {"routes-a"} and held[EDS] == {"svc-a"}, held
    assert not harness.is_listening(port2)
    wait_get(port, (200, "a"))

    if not env.delta:
        # Wrapped resources under their own names are accepted; SotW absence removes them.
        cds = [(c["name"], c) for c in base[CDS]] + [("c-extra", static_cluster("c-extra", b.port))]
        expect_ack(xds, CDS, nonce=env.push(CDS, cds, version="wrapped-1"))
        lds = [(l["name"], l) for l in base[LDS]] + [("l-extra", http_listener("l-extra", port3, cluster="c-extra"))]
        expect_ack(xds, LDS, nonce=env.push(LDS, lds, version="wrapped-2"))
        wait_listening(port3)
        wait_get(port3, (200, "b"))
        expect_ack(xds, RDS, nonce=env.push(RDS, [("routes-a", route_config("routes-a", "c-static"))], version="wrapped-3"))
        wait_get(port, (200, "b"))
        held = dumped_names(proc)
        assert "c-extra" in held[CDS] and "l-extra" in held[LDS], held
        # The server's own state (without the extras) goes out whole: they are gone.
        seq = last_response_seq(xds)
        xds.set_resources(base[CDS] + base[LDS])
        expect_ack(xds, CDS, since=seq)
        expect_ack(xds, LDS, since=seq)
        wait_listening(port3, False)
        held = dumped_names(proc)
        assert "c-extra" not in held[CDS] and "l-extra" not in held[LDS], held
        return

    # Delta: removed_resources takes away what was sent under that name, for every type.
    extra = {
        CDS: static_cluster("c-extra", b.port),
        LDS: http_listener("l-extra", port3, cluster="c-extra"),
    }
    seq = last_response_seq(xds)
    xds.set_resources(list(extra.values()))
    expect_ack(xds, CDS, since=seq)
    expect_ack(xds, LDS, since=seq)
    wait_get(port3, (200, "b"))
    seq = last_response_seq(xds)
    xds.remove(LDS, ["l-extra"])
    expect_ack(xds, LDS, since=seq)
    wait_listening(port3, False)
    # (The Secret first: /config_dump shows secrets from the last snapshot, which a Secret-only update
    # does not rebuild, so its removal shows once the next removals have rebuilt it.)
    for type_url, name in ((SDS, "ca-a"), (CDS, "c-extra"), (RDS, "routes-a"), (EDS, "svc-a")):
        seq = last_response_seq(xds)
        xds.remove(type_url, [name])
        expect_ack(xds, type_url, since=seq)
        held = dumped_names(proc)
        if type_url != SDS:
            assert name not in held[type_url], f"{SHORT[type_url]} '{name}' still held after its removal: {held}"
    held = dumped_names(proc)
    assert held[LDS] == {"l-rds"} and held[CDS] == {"c-static", "c-eds", "c-tls"}, held
    assert not held[RDS] and not held[EDS] and not held[SDS], held
    # The listener and cluster whose RouteConfiguration and endpoints went keep their last version.
    wait_get(port, (200, "a"))


# ---------------------------------------------------------------------------------------------------
# 2. Unknown-field records follow their resource


@pytest.mark.parametrize("mode", MODES)
def test_unknown_field_records_end_with_their_resource(env, mode, fleet):
    xds = env.xds
    echo = fleet.echo()
    a = env.origin("a")
    port = harness.free_port()
    c_unk = static_cluster("c-unk", echo.port, ignore_health_on_host_removal=True)        # Cluster #32
    l_unk = tcp_listener("l-unk", port, "c-unk", tcp_backlog_size=64)                      # Listener #24
    c_eds = eds_cluster("c-eds-u", "svc-u")
    cla_unk = cla("svc-u", a.port, policy={"endpoint_stale_after": "5s"})                 # policy.#4
    xds.set_resources([c_unk, l_unk, c_eds, cla_unk])
    proc = env.start()
    wait_for(lambda: tcp_echoes(port), "tcp_proxy to c-unk does not echo")
    seen = wait_for(lambda: (u := unknown_fields(proc)) and len(u) >= 3 and u,
                    f"unknown fields of three resources: {unknown_fields(proc)}")
    assert seen == {"Cluster 'c-unk'": "#32", "Listener 'l-unk'": "#24",
                    "ClusterLoadAssignment 'svc-u'": "policy.#4"}, seen

    # A rejected update leaves no record of the resources it carried.
    bad = static_cluster("c-bad", 70000, ignore_health_on_host_removal=True)
    rest = [] if env.delta else [(None, c) for c in (c_unk, c_eds)]
    expect_nack(xds, CDS, ["c-bad"], nonce=env.push(CDS, rest + [("c-bad", bad)], version="bad-1"))
    assert "Cluster 'c-bad'" not in unknown_fields(proc), unknown_fields(proc)

    # The resource updated without unknown fields: its record goes.
    seq = last_response_seq(xds)
    xds.set_resources([static_cluster("c-unk", echo.port)])
    expect_ack(xds, CDS, since=seq)
    u = unknown_fields(proc)
    assert "Cluster 'c-unk'" not in u and "Listener 'l-unk'" in u, u

    # The resource removed (delta removed_resources; SotW absence): its record goes.
    seq = last_response_seq(xds)
    xds.remove(LDS, ["l-unk"])
    expect_ack(xds, LDS, since=seq)
    wait_listening(port, False)
    u = unknown_fields(proc)
    assert "Listener 'l-unk'" not in u and "ClusterLoadAssignment 'svc-u'" in u, u

    # The endpoints dropped because their cluster went: their record goes with them.
    seq = last_response_seq(xds)
    xds.remove(CDS, ["c-eds-u"])
    expect_ack(xds, CDS, since=seq)
    assert "svc-u" not in dumped_names(proc)[EDS]
    assert unknown_fields(proc) == {}, unknown_fields(proc)


@pytest.mark.parametrize("mode", MODES)
def test_unknown_fields_inside_typed_configs_are_listed_and_behaviour_changing_ones_refused(env, mode, fleet):
    """A typed_config's payload is searched too (an HCM's `add_user_agent`, #6, is listed); fields whose absence
    would change what a resource does (tcp_proxy's `tunneling_config`, #12), and upstream network
    filters other than Istio's inert metadata exchange (a cluster's `filters`), get the resource refused,
    by name, while the rest of the response is applied."""
    xds = env.xds
    echo = fleet.echo()
    a = env.origin("a")
    p_http, p_tcp, p_tunnel = harness.free_port(), harness.free_port(), harness.free_port()
    web = static_cluster("c-web", a.port)
    traced = http_listener("l-traced", p_http, cluster="c-web")
    traced["filter_chains"][0]["filters"][0]["typed_config"]["add_user_agent"] = True
    xds.set_resources([web, static_cluster("c-echo", echo.port), traced, tcp_listener("l-tcp", p_tcp, "c-echo")])
    proc = env.start()
    wait_get(p_http, (200, "a"))
    seen = wait_for(lambda: unknown_fields(proc).get("Listener 'l-traced'"), "the HCM's unknown field is not listed")
    assert "typed_config<HttpConnectionManager>.#6" in seen, seen

    # A cluster with upstream network filters, and a tcp_proxy that tunnels: refused, named; the good
    # cluster of the same response is applied.
    seq = last_response_seq(xds)
    filtered = static_cluster("c-filtered", echo.port, filters=[{"name": "envoy.filters.network.upstream.nope"}])
    xds.set_resources([filtered, static_cluster("c-new", echo.port)])
    msg = expect_nack(xds, CDS, ["c-filtered", "filters"], since=seq)
    assert "c-new" not in msg, msg
    wait_for(lambda: "c-new" in dumped_names(proc)[CDS], "the valid cluster of the response was not applied")
    assert "c-filtered" not in dumped_names(proc)[CDS]

    seq = last_response_seq(xds)
    tunnel = tcp_listener("l-tunnel", p_tunnel, "c-echo")
    tunnel["filter_chains"][0]["filters"][0]["typed_config"]["tunneling_config"] = {"hostname": "host.example:443"}
    xds.set_resources([tunnel])
    expect_nack(xds, LDS, ["l-tunnel", "tunneling_config"], since=seq)
    assert not harness.is_listening(p_tunnel)
    assert tcp_echoes(p_tcp), "the listener held before stops echoing"


# ---------------------------------------------------------------------------------------------------
# 3. A cluster still named by listeners and routes goes, then comes back


@pytest.mark.parametrize("mode", MODES)
def test_cds_removes_a_cluster_still_in_use_then_it_returns(env, mode, fleet):
    xds = env.xds
    echo = fleet.echo()
    a = env.origin("a")
    p_inline, p_rds, p_tcp = harness.free_port(), harness.free_port(), harness.free_port()
    web, tcp = static_cluster("web", a.port), static_cluster("tcp", echo.port)
    other = static_cluster("other", a.port)  # keeps the SotW CDS set from ever being empty
    listeners = [http_listener("l-inline", p_inline, cluster="web"), http_listener("l-rds", p_rds, rds="routes-web"),
                 tcp_listener("l-tcp", p_tcp, "tcp")]
    xds.set_resources([web, tcp, other, route_config("routes-web", "web"), *listeners])
    proc = env.start()
    for p in (p_inline, p_rds):
        wait_get(p, (200, "a"))
    wait_for(lambda: tcp_echoes(p_tcp), "tcp_proxy to 'tcp' does not echo")
    accepts = echo.accept_count()

    # CDS takes both clusters away: ACKed, the listeners and routes that name them stay.
    seq = last_response_seq(xds)
    xds.remove(CDS, ["web", "tcp"])
    expect_ack(xds, CDS, since=seq)
    held = dumped_names(proc)
    assert held[CDS] == {"other"}, held
    assert held[LDS] == {"l-inline", "l-rds", "l-tcp"} and held[RDS] == {"routes-web"}, held
    for p in (p_inline, p_rds):
        wait_get(p, (503, None))
    logs = proc.logs(limit=400000)
    assert logs.count("local reply 503 (cluster_not_found)") >= 2, "no cluster_not_found local replies in the log"
    no_route0 = proc.stats().get("tcp.l_tcp.downstream_cx_no_route", 0)
    with harness.connect(p_tcp, timeout=3) as s:
        s.sendall(b"anyone there?")
        how, _ = harness.wait_closed(s, 3.0)
    assert how in ("eof", "reset"), f"tcp_proxy connection to a removed cluster not closed ({how})"
    assert echo.accept_count() == accepts, "a connection reached the removed cluster's endpoint"
    assert proc.stats().get("tcp.l_tcp.downstream_cx_no_route", 0) > no_route0

    # The clusters come back (CDS only): traffic flows again through the same listeners and routes.
    seq = last_response_seq(xds)
    xds.set_resources([web, tcp])
    expect_ack(xds, CDS, since=seq)
    for p in (p_inline, p_rds):
        wait_get(p, (200, "a"))
    wait_for(lambda: tcp_echoes(p_tcp), "tcp_proxy does not echo after the cluster came back")
    assert not xds.responses(since=seq, type_url=LDS) and not xds.responses(since=seq, type_url=RDS), (
        "LDS/RDS were pushed again: the returning cluster was not picked up on its own")

    # Bootstrap (static) resources keep their strict validation.
    static = harness.bootstrap([harness.tcp_proxy_listener("static-tcp", "nowhere")],
                               [harness.static_cluster("somewhere", [echo.port])])
    path = harness.write_bootstrap(env.tmp_path, static, "static-unknown-cluster.yaml")
    done = harness.run_strait(["--mode", "validate", "-c", str(path)])
    assert done.returncode != 0 and "unknown cluster 'nowhere'" in done.stdout + done.stderr, done
