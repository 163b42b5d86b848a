"""A whole Istio sidecar push, replayed through the project's xDS server to the real binary.

istio_shapes.py generates what istiod sends one sidecar in a cluster of ~25 services (28 listeners:
virtualOutbound, virtualInbound with its per-port and passthrough chains, 0.0.0.0_<port> HTTP listeners
over RDS with Istio's HTTP filters, <ip>_<port> TCP listeners; route configurations by port; EDS clusters
with Istio's metadata exchange filter and tlsMode transport_socket_matches, Passthrough/BlackHole/
InboundPassthrough clusters; their ClusterLoadAssignments; the SDS secrets "default" and "ROOTCA"), with
the bootstrap and node Istio's agent renders (ADS and SDS over unix sockets: xds-grpc, sds-grpc).

Two network-namespace pods with deploy/strait-iptables.sh capture: pod A (10.200.0.1) runs strait as
uid 1337 on that push; pod B (10.200.0.2) runs the applications (an HTTP server, a TCP echo server) that
are the endpoints of two of the services (echo-http.test:8080, echo-tcp.test:9000; cluster IPs in
10.96.0.0/12, routed to pod B's link in pod A as a Kubernetes node would).

Checked, for each rendering of Istio's filters (Wasm plugins, as Istio up to 1.17 renders them, and
the native TypedStruct forms of newer releases): every resource of every type is ACKed (no NACK; a
refusal fails the test with the proxy's own message), /config_dump holds exactly the pushed resources,
/ready is 200, the node id and metadata reached the server, and traffic flows: HTTP by service name,
FQDN and cluster IP through virtualOutbound -> 0.0.0.0_8080 -> route "8080" -> EDS cluster; TCP through
virtualOutbound -> 10.96.5.20_9000 -> tcp_proxy -> EDS cluster; an address no service has through
virtualOutbound's PassthroughCluster chain.

Needs root, ip netns, setpriv, iptables, curl and node (skipped with the reason otherwise).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

import istio_shapes as ist
import netns_pods as np_
import tlsutil
from netns_pods import A_ADDR4, B_ADDR4

sys.path.insert(0, os.path.join(np_.REPO, "tests", "xds_server"))
import xds_control  # noqa: E402

STRAIT_BIN = os.environ.get("STRAIT_BIN") or os.path.join(np_.REPO, "build", "proxy", "strait")
ISTIO_PROTOS = [os.path.join(np_.REPO, "xds", "api", "istio", d, "config.proto")
                for d in ("alpn", "metadata_exchange", "stats", "peer_metadata")]
SERVICE_CIDR = "10.96.0.0/12"
TYPES = {"Listener": ist.LDS, "RouteConfiguration": ist.RDS, "Cluster": ist.CDS,
         "ClusterLoadAssignment": ist.EDS}

HTTP_PORT, TCP_PORT, PASS_PORT = 8080, 9000, 7000
HTTP_SVC = ist.Service("echo-http", "test", "10.96.5.10", [ist.ServicePort(HTTP_PORT, "http-web")],
                       [ist.Endpoint(B_ADDR4, "echo-http-v1", tls=False)], sa="echo")
TCP_SVC = ist.Service("echo-tcp", "test", "10.96.5.20", [ist.ServicePort(TCP_PORT, "tcp-echo")],
                      [ist.Endpoint(B_ADDR4, "echo-tcp-v1", tls=False)], sa="echo")
CLIENT = ist.Pod(A_ADDR4, name="sleep-7f8d9c6b5-x2kqz", namespace="default", app="sleep", sa="sleep")


def reason():
    r = np_.unavailable_reason() or np_.capture_tool_missing("iptables")
    if r:
        return r
    if shutil.which("curl") is None:
        return "'curl' is not installed (deploy/install-deps.sh test installs it)"
    if not xds_control.node_available():
        return "node is not installed: the test management server cannot run"
    return None


def require_binary():
    if not (os.path.isfile(STRAIT_BIN) and os.access(STRAIT_BIN, os.X_OK)):
        pytest.fail(f"no strait binary at {STRAIT_BIN}: build it or set STRAIT_BIN", pytrace=False)


def make_pki(base: Path, identities: list) -> dict:
    """A mesh root and one SPIFFE workload certificate per (namespace, service account)."""
    root = tlsutil.make_root(base / "ca")
    return {"root": root, **{(ns, sa): tlsutil.make_workload(base / "ca", base / f"{ns}-{sa}", ns, sa)
                             for ns, sa in identities}}


class Sidecar:
    """One pod's control plane (the xDS server on a unix socket, serving ADS and SDS as istiod and
    Istio's agent do) and its strait."""

    def __init__(self, p, ns, pod: ist.Pod, push: ist.Push, secrets: list, workdir: Path, binary: str):
        self.p, self.ns, self.pod, self.push = p, ns, pod, push
        sock_dir = tempfile.mkdtemp(prefix="strait-istio-push-")
        p.tmpdirs.append(sock_dir)
        os.chmod(sock_dir, 0o777)
        self.sock = os.path.join(sock_dir, "XDS")
        self.xds = xds_control.XdsServer(workdir, unix=self.sock, resources=push.all() + secrets,
                                         protos=ISTIO_PROTOS)
        self.xds.start()
        deadline = time.monotonic() + 10
        while not os.path.exists(self.sock) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.chmod(self.sock, 0o777)  # strait runs as uid 1337
        boot = ist.bootstrap(pod, xds_pipe=self.sock, sds_pipe=self.sock)
        cfg = os.path.join(sock_dir, "envoy-rev.json")
        with open(cfg, "w") as f:
            json.dump(boot, f)
        os.chmod(cfg, 0o644)
        self.proc = p.spawn(ns, [binary, "-c", cfg, "--concurrency", "2"], f"strait-{ns}", as_proxy=True)

    def wait_ready(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"strait in {self.ns} exited {self.proc.returncode}:\n{self.log()}")
            last = np_.admin(self.p, self.ns, "/ready", timeout=2)
            if last[0] == 200:
                return
            time.sleep(0.2)
        raise AssertionError(f"strait in {self.ns} not ready in {timeout}s (last /ready {last}); "
                             f"refusals: {self.refusals()}\n{self.log()[-6000:]}")

    def log(self):
        return self.p.log_of(self.proc)

    def refusals(self) -> list:
        return [(r["type_url"].rsplit(".", 1)[-1], r.get("error_detail", {}).get("message"))
                for r in self.xds.requests(kind="nack")]

    def wait_all_acked(self, timeout=30.0):
        """Every type's newest version ACKed, and no NACK at all; fails with the proxy's messages."""
        want = {t: self.xds.resources(t)[t]["version"] for t in (*TYPES.values(), ist.SDS)}
        deadline = time.monotonic() + timeout
        missing = want
        while time.monotonic() < deadline:
            nacks = self.refusals()
            assert not nacks, "strait refused part of the push:\n" + "\n".join(f"  {t}: {m}" for t, m in nacks)
            acks = self.xds.requests(kind="ack")
            missing = {t: v for t, v in want.items()
                       if not any(a["type_url"] == t and a.get("version_info") == v for a in acks)}
            if not missing:
                return
            time.sleep(0.2)
        raise AssertionError(f"not ACKed within {timeout}s: {missing}\n{self.log()[-4000:]}")

    def config_dump(self) -> dict:
        code, body = np_.admin(self.p, self.ns, "/config_dump?include_eds", timeout=10)
        assert code == 200, (code, body[:500])
        return {c["@type"].rsplit(".", 1)[-1]: c for c in json.loads(body)["configs"]}

    def close(self):
        self.xds.stop()


def dumped_names(dump: dict) -> dict:
    return {
        ist.LDS: sorted(l["name"] for l in dump["ListenersConfigDump"].get("dynamic_listeners", [])),
        ist.CDS: sorted(c["cluster"]["name"] for c in dump["ClustersConfigDump"].get("dynamic_active_clusters", [])),
        ist.RDS: sorted(r["route_config"]["name"] for r in dump["RoutesConfigDump"].get("dynamic_route_configs", [])),
        ist.EDS: sorted(e["endpoint_config"]["cluster_name"]
                        for e in dump["EndpointsConfigDump"].get("dynamic_endpoint_configs", [])),
        ist.SDS: sorted(s["name"] for s in dump["SecretsConfigDump"].get("dynamic_active_secrets", [])),
    }


def echo_done(p, proc, sha, timeout=10.0):
    deadline = time.monotonic() + timeout
    done = []
    while time.monotonic() < deadline:
        _, done = p.echo_connections(proc)
        if any(d["sha256"] == sha for d in done):
            return done
        time.sleep(0.05)
    raise AssertionError(f"the echo server never finished a connection with sha256 {sha}: {done}")


def delta(after, before, name):
    return after.get(name, 0) - before.get(name, 0)


@pytest.fixture(scope="module", params=["wasm", "typed"])
def mesh(request, tmp_path_factory):
    r = reason()
    if r:
        pytest.skip(r)
    require_binary()
    flavor = request.param
    with np_.PodPair(f"ipush{flavor[0]}") as p:
        binary = STRAIT_BIN
        if not np_.readable_by(binary, np_.PROXY_UID, np_.PROXY_GID):
            binary = np_.exposed_copy(binary, p.tmpdirs)
        p.sh(["ip", "-n", p.a, "route", "add", SERVICE_CIDR, "dev", "eth0"])
        p.capture(p.a, "iptables")
        apps = {"http": np_.http_server(p, p.b, HTTP_PORT, "echo-http"),
                "tcp": p.echo_server(p.b, TCP_PORT, log=True), "pass": p.echo_server(p.b, PASS_PORT, log=True)}
        work = tmp_path_factory.mktemp(f"istio-push-{flavor}")
        pki = make_pki(work / "pki", [("default", "sleep")])
        push = ist.sidecar_push(CLIENT, ist.default_mesh([HTTP_SVC, TCP_SVC]), inbound=[ist.InboundPort(80, "http")],
                                flavor=flavor)
        side = Sidecar(p, p.a, CLIENT, push, ist.secrets_from(pki[("default", "sleep")]), work / "xds", binary)
        try:
            side.flavor, side.apps = flavor, apps
            yield side
        finally:
            print(f"----- strait in pod A ({flavor}; exit {side.proc.poll()}) -----\n{side.log()[-6000:]}")
            side.close()


def test_the_whole_push_is_acked_and_in_config_dump(mesh):
    s = ist.summary(mesh.push)
    assert 25 <= s["listeners"] <= 30, s
    mesh.wait_all_acked()
    mesh.wait_ready()
    dump = mesh.config_dump()
    names = dumped_names(dump)
    for t in TYPES.values():
        assert names[t] == sorted(mesh.push.names(t)), (t, set(names[t]) ^ set(mesh.push.names(t)))
    # The secrets came over their own SDS stream (sds-grpc) and were ACKed there; they are in use:
    # /certs shows the workload's SPIFFE certificate and the mesh root. (Strait's /config_dump lists
    # only secrets that came over ADS in dynamic_active_secrets.)
    code, body = np_.admin(mesh.p, mesh.ns, "/certs")
    assert code == 200 and CLIENT.spiffe in body, body[:2000]
    certs = json.loads(body)["certificates"]
    assert certs and all(c["ca_cert"] and c["cert_chain"] for c in certs), body[:2000]
    # Istio's upstream metadata exchange filter on every mesh cluster is accepted (inert) and shown.
    clusters = {c["cluster"]["name"]: c["cluster"] for c in dump["ClustersConfigDump"]["dynamic_active_clusters"]}
    mx = clusters[f"outbound|{HTTP_PORT}||{HTTP_SVC.fqdn}"].get("filters", [])
    assert [f["name"] for f in mx] == ["istio.metadata_exchange"], mx
    # Strait's own status: every type accepted at the version pushed, nothing rejected.
    status = dump["XdsStatus"]["types"]
    for t in (*TYPES.values(), ist.SDS):
        entry = status.get(t) or status.get(t.rsplit("/", 1)[-1]) or {}
        assert not entry.get("last_rejected", {}).get("error"), (t, entry)
    code, body = np_.admin(mesh.p, mesh.ns, "/ready")
    assert code == 200, body
    # The node Istio's agent sends reached the control plane with the first request.
    streams = mesh.xds.streams()
    assert any(st["node_id"] == CLIENT.node_id for st in streams), streams
    first = next(r for r in mesh.xds.requests() if r.get("has_node"))
    md = first["node"]["metadata"]
    assert md["ISTIO_VERSION"] == CLIENT.istio_version and md["INTERCEPTION_MODE"] == "REDIRECT", md
    assert md["LABELS"]["security.istio.io/tlsMode"] == "istio", md


def test_http_to_a_service_by_name_fqdn_and_ip(mesh):
    mesh.wait_ready()
    p = mesh.p
    cluster = f"outbound|{HTTP_PORT}||{HTTP_SVC.fqdn}"
    before = np_.stats(p, p.a)
    hosts = [HTTP_SVC.name, HTTP_SVC.fqdn, f"{HTTP_SVC.name}.{HTTP_SVC.namespace}:{HTTP_PORT}", None]
    for host in hosts:
        cmd = ["curl", "-sS", "-m", "5", f"http://{HTTP_SVC.ip}:{HTTP_PORT}/id"]
        if host:
            cmd[1:1] = ["-H", f"Host: {host}"]
        r = p.run(p.a, cmd, check=False)
        assert r.returncode == 0 and r.stdout == "echo-http", (host, r.stdout, r.stderr)
    s = np_.wait_stats(p, p.a, lambda s: delta(s, before, f"cluster.{cluster}.upstream_rq_2xx") >= len(hosts),
                       "the service's cluster answered")
    assert delta(s, before, f"listener.0.0.0.0_{HTTP_PORT}.downstream_cx_total") == len(hosts)
    assert delta(s, before, "listener.0.0.0.0_15001.downstream_cx_total") == 0
    assert delta(s, before, "cluster.PassthroughCluster.upstream_rq_total") == 0
    prefix = f"http.outbound_0.0.0.0_{HTTP_PORT}.inert."
    kinds = (["wasm_istio_metadata_exchange", "wasm_stats_outbound"] if mesh.flavor == "wasm"
             else ["peer_metadata", "istio_stats"]) + ["grpc_stats"]
    for kind in kinds:
        assert delta(s, before, prefix + kind + ".requests_total") == len(hosts), (kind, sorted(
            k for k in s if k.startswith(prefix)))


def test_tcp_to_a_service_through_its_ip_port_listener(mesh):
    mesh.wait_ready()
    p = mesh.p
    cluster = f"outbound|{TCP_PORT}||{TCP_SVC.fqdn}"
    before = np_.stats(p, p.a)
    payload = os.urandom(256 * 1024)
    got = p.client(p.a, TCP_SVC.ip, TCP_PORT, payload, timeout=30)
    assert got == payload, f"echoed {len(got)} of {len(payload)} bytes"
    echo_done(p, mesh.apps["tcp"], hashlib.sha256(payload).hexdigest())
    s = np_.wait_stats(p, p.a, lambda s: delta(s, before, f"tcp.{cluster}.downstream_cx_total") >= 1, "tcp_proxy used")
    assert delta(s, before, f"listener.{TCP_SVC.ip}_{TCP_PORT}.downstream_cx_total") == 1
    assert delta(s, before, f"tcp.{cluster}.downstream_cx_rx_bytes_total") == len(payload)
    assert delta(s, before, "listener.0.0.0.0_15001.downstream_cx_total") == 0
    assert delta(s, before, "istio_inert.stats.cx_total") == 1


def test_unknown_destination_takes_virtual_outbounds_passthrough(mesh):
    mesh.wait_ready()
    p = mesh.p
    before = np_.stats(p, p.a)
    payload = os.urandom(64 * 1024)
    got = p.client(p.a, B_ADDR4, PASS_PORT, payload, timeout=30)
    assert got == payload
    echo_done(p, mesh.apps["pass"], hashlib.sha256(payload).hexdigest())
    s = np_.wait_stats(p, p.a, lambda s: delta(s, before, "cluster.PassthroughCluster.upstream_cx_total") >= 1,
                       "passthrough used")
    assert delta(s, before, "listener.0.0.0.0_15001.downstream_cx_total") == 1
    assert delta(s, before, "tcp.PassthroughCluster.downstream_cx_total") == 1
