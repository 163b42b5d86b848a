"""deploy/demo end to end: `run.sh up`, `run.sh check --json`, `run.sh down`, as a user runs them.

`up` starts two injected pods (network namespaces dmt<pid>-client and -server, the injector's init and
sidecar commands as written), the control plane (the project's xDS server as istiod, one per pod as the
SDS node agent) and the web app. Checked:
  * check: the client pod's call to http://web.demo:8080 reaches the app in the web pod, and check itself
    reports no problem;
  * from each sidecar's own admin (read here, not taken from check's report): the client sidecar's
    upstream TLS handshake verified spiffe://cluster.local/ns/demo/sa/web, the server sidecar's inbound
    handshake verified .../sa/client, every connection into the server sidecar was a TLS one, and each
    serves the certificate of its own identity (/certs); a workload of the same mesh with another
    identity (.../sa/intruder) is refused by the server sidecar's SAN check; both sidecars hold their
    ADS streams with the node ids the injected args give, and refused nothing;
  * down: every process `up` recorded is gone, both namespaces and their /etc/netns entries are removed,
    and the state directory too.

Needs root, ip netns, iptables, curl and node/npm (skipped with the reason otherwise) and a built strait.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import istio_shapes as ist
import netns_pods as np_
import tlsutil
from test_istio_push import reason

pytest.importorskip("yaml", reason="deploy/inject needs PyYAML (Debian package python3-yaml)")
sys.path.insert(0, os.path.join(np_.REPO, "deploy", "demo"))
import demo  # noqa: E402

RUN = os.path.join(np_.REPO, "deploy", "demo", "run.sh")
STRAIT_BIN = os.environ.get("STRAIT_BIN") or os.path.join(np_.REPO, "build", "proxy", "strait")
PREFIX = f"dmt{os.getpid()}"


def run(env, *args, timeout=120):
    return subprocess.run([RUN, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def up():
    r = reason()
    if r:
        pytest.skip(r)
    if not (os.path.isfile(STRAIT_BIN) and os.access(STRAIT_BIN, os.X_OK)):
        pytest.fail(f"no strait binary at {STRAIT_BIN}: build it or set STRAIT_BIN", pytrace=False)
    state = Path(tempfile.mkdtemp(prefix="strait-demo-test-"))  # under /tmp: uid 1337 reaches the sockets
    os.chmod(state, 0o755)
    env = dict(os.environ, STRAIT_BIN=STRAIT_BIN, STRAIT_DEMO_DIR=str(state), STRAIT_DEMO_PREFIX=PREFIX)
    started = time.monotonic()
    r = run(env, "up")
    print(f"run.sh up: {time.monotonic() - started:.1f} s\n{r.stdout}{r.stderr}")
    try:
        assert r.returncode == 0, f"run.sh up exited {r.returncode}:\n{r.stdout}{r.stderr}"
        recorded = json.loads((state / "state.json").read_text())
        yield {"env": env, "state": state, "recorded": recorded, "pods": demo.DemoPods(state, PREFIX)}
    finally:
        if (state / "state.json").exists():
            logs = state / "logs"
            for f in sorted(logs.glob("*.log")) if logs.exists() else []:
                print(f"----- {f.name} -----\n{f.read_text(errors='replace')[-3000:]}")
            run(env, "down")
        shutil.rmtree(state, ignore_errors=True)


def test_check_shows_the_call_crossing_both_sidecars(up):
    r = run(up["env"], "check", "--json", timeout=60)
    report = json.loads(r.stdout)
    assert r.returncode == 0 and report["ok"], report["problems"]
    resp = report["response"]
    assert (resp["status"], resp["origin"], resp["path"]) == (200, demo.SERVER.name, "/hello"), resp
    # The human form says the same.
    r = run(up["env"], "check", timeout=60)
    assert r.returncode == 0 and r.stdout.rstrip().splitlines()[-1].startswith("OK"), r.stdout + r.stderr


def test_the_hop_is_mtls_with_both_spiffe_ids(up):
    p = up["pods"]
    client_id, server_id = demo.CLIENT.spiffe, demo.SERVER.spiffe
    assert (client_id, server_id) == ("spiffe://cluster.local/ns/demo/sa/client",
                                      "spiffe://cluster.local/ns/demo/sa/web")
    before = np_.stats(p, p.b)
    code, body = demo.curl_in(p, p.a, f"http://web.demo:{demo.APP_PORT}/mtls-check")
    assert code == 200 and json.loads(body)["path"] == "/mtls-check", (code, body)
    inbound_rq = f"http.inbound_0.0.0.0_{demo.APP_PORT}.downstream_rq_total"
    sb = np_.wait_stats(p, p.b, lambda s: s.get(inbound_rq, 0) > before.get(inbound_rq, 0),
                        "the request on the server sidecar's inbound HTTP chain")
    sa = np_.stats(p, p.a)
    out = f"cluster.{demo.OUT_CLUSTER}.ssl"
    assert sa.get(f"{out}.handshake", 0) >= 1
    assert sa.get(f"{out}.peer.{server_id.replace('://', '_//')}.handshake", 0) >= 1, \
        sorted(k for k in sa if k.startswith(out))
    assert sa.get(f"{out}.fail_verify_san", 0) == 0
    inl = demo.IN_LISTENER
    assert sb[f"{inl}.ssl.handshake"] >= 1
    assert sb.get(f"{inl}.ssl.peer.{client_id.replace('://', '_//')}.handshake", 0) >= 1, \
        sorted(k for k in sb if k.startswith(f"{inl}.ssl"))
    # Every connection into the server sidecar was TLS (a handshake, or a TLS failure: none here).
    assert sb[f"{inl}.downstream_cx_total"] == sb[f"{inl}.ssl.handshake"] + sb[f"{inl}.ssl.connection_error"]
    assert sb[f"{inl}.ssl.connection_error"] == 0
    assert (demo.own_identities(p, p.a), demo.own_identities(p, p.b)) == ([client_id], [server_id])


# A workload of the same mesh (same root) with another identity, calling the web pod's sidecar directly.
IMPOSTOR_CLIENT = r"""
import socket, ssl, sys
host, port, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
ctx.load_cert_chain(cert, key)
ctx.set_alpn_protocols(["istio-http/1.1"])
try:
    with ctx.wrap_socket(socket.create_connection((host, port), timeout=5)) as t:
        t.sendall(b"GET /impostor HTTP/1.1\r\nHost: web.demo\r\n\r\n")
        print("ANSWERED", t.recv(200)[:12])
except (ssl.SSLError, OSError) as e:
    print("REFUSED", type(e).__name__, e)
"""


def test_the_server_sidecar_refuses_another_identity(up):
    p = up["pods"]
    d = Path(tempfile.mkdtemp(prefix="strait-demo-impostor-"))
    try:
        paths = tlsutil.make_workload(up["state"] / "pki" / "ca", d / "intruder", demo.NAMESPACE, "intruder")
        for path in (d, d / "intruder", *paths.values()):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)  # read by uid 1337
        before = np_.stats(p, p.b)
        inl = demo.IN_LISTENER
        # As uid 1337 in the client pod: its own capture leaves it alone, the server pod's sends it to 15006.
        r = p.run(p.a, ["setpriv", f"--reuid={np_.PROXY_UID}", f"--regid={np_.PROXY_GID}", "--clear-groups",
                        sys.executable, "-c", IMPOSTOR_CLIENT, np_.B_ADDR4, str(demo.APP_PORT),
                        str(paths["cert"]), str(paths["key"])], timeout=20, check=False)
        assert r.stdout.startswith("REFUSED"), r.stdout + r.stderr
        after = np_.wait_stats(p, p.b, lambda s: s.get(f"{inl}.ssl.fail_verify_san", 0) >
                               before.get(f"{inl}.ssl.fail_verify_san", 0), "the refusal of spiffe://.../sa/intruder")
        assert after.get(f"{inl}.ssl.peer.spiffe_//cluster.local/ns/demo/sa/intruder.handshake", 0) == 0
        rq = f"http.inbound_0.0.0.0_{demo.APP_PORT}.downstream_rq_total"
        assert after.get(rq, 0) == before.get(rq, 0), "a request from the impostor reached the app"
        # check still passes, and counts the refusal as a failed TLS connection, not a plaintext one.
        report = json.loads(run(up["env"], "check", "--json", timeout=60).stdout)
        assert report["ok"], report["problems"]
        assert report["server_sidecar"]["tls_failures"] >= 1 and report["server_sidecar"]["plaintext"] == 0
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_both_sidecars_are_driven_by_the_control_plane(up):
    streams = {}
    for name, workdir in up["recorded"]["xds"].items():
        x = demo.xds_handle(workdir)
        assert x.requests(kind="nack") == [], name
        streams[name] = sorted(s["node_id"] for s in x.streams() if s["open"])
    ids = {pod.app: pod.node_id for pod in (demo.CLIENT, demo.SERVER)}
    assert streams == {"istiod": sorted(ids.values()), "agent-client": [ids["client"]],
                       "agent-web": [ids["web"]]}
    code, body = np_.admin(up["pods"], up["pods"].b, "/config_dump")
    assert code == 200
    dump = {c["@type"].rsplit(".", 1)[-1]: c for c in json.loads(body)["configs"]}
    listeners = sorted(l["name"] for l in dump["ListenersConfigDump"]["dynamic_listeners"])
    assert {"virtualInbound", "virtualOutbound", f"0.0.0.0_{demo.APP_PORT}"} <= set(listeners), listeners
    # The secrets came over each pod's own SDS stream and were ACKed there (Strait's /config_dump lists
    # only ADS secrets; /certs, checked above, shows them in use).
    for agent in ("agent-client", "agent-web"):
        acks = demo.xds_handle(up["recorded"]["xds"][agent]).requests(kind="ack", type_url=ist.SDS)
        assert sorted({n for a in acks for n in a["resource_names"]}) == ["ROOTCA", "default"], (agent, acks)


def test_down_leaves_nothing_behind(up):
    recorded, state = up["recorded"], up["state"]
    r = run(up["env"], "down", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(recorded["procs"]) == 6, recorded["procs"]  # 3 xDS servers, 2 sidecars, the app
    alive = [e for e in recorded["procs"] if demo.start_time(e["pid"]) == e["start"]]
    assert alive == [], alive
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(ns in listed for ns in recorded["namespaces"]), listed
    assert sorted(recorded["namespaces"]) == [f"{PREFIX}-client", f"{PREFIX}-server"]
    assert not any(os.path.exists(d) for d in recorded["etc_netns"] if d != "/etc/netns")
    assert not state.exists()
