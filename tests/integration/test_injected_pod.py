"""The injected pod is executable: what the injector writes is run as the kubelet would run it.

A sample pod (an HTTP app on 8080 with an httpGet readiness probe) goes through deploy/k8s/inject.py.
Then, in two network-namespace "pods" (netns_pods.PodPair), each plays the injected pod:

  * the init container's command and args, exactly as written, as root (the init image's
    /usr/local/bin/<script> is deploy/<script> here);
  * the sidecar's image entrypoint (/usr/local/bin/strait, here STRAIT_BIN) with its args exactly as
    written, as uid/gid 1337 (its securityContext), with its env: downward-API fields filled in
    (POD_NAME, POD_NAMESPACE, INSTANCE_IP, ...), $(VAR) in args expanded the way the kubelet does,
    and the ConfigMap volume (deploy/k8s/bootstrap-configmap.yaml) at the path the args name;
  * the application in pod B: python's http.server on 8080.

Checked: pod A's request to pod B's app crosses both sidecars (their stats say so), and the app's
rewritten readiness probe (httpGet 15020 /app-health/web/readyz) is answered by Strait: 200 while
the app answers, 503 once it is gone; /healthz/ready on 15021 is 200. The probe checks need the
sidecar flags of issue 14 (--status-port ...); on a binary without them the traffic part still runs
(those flags dropped from the args) and the probe part is skipped naming the missing flags.

Needs root, ip netns, iptables and curl (skips with the reason otherwise) and a built strait.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

import netns_pods as np_
from netns_pods import A_ADDR4, B_ADDR4

yaml = pytest.importorskip("yaml", reason="inject.py needs PyYAML (Debian package python3-yaml)")

REPO = np_.REPO
STRAIT_BIN = os.environ.get("STRAIT_BIN") or os.path.join(REPO, "build", "proxy", "strait")
APP_PORT = 8080
NAMESPACE = "shop"

SAMPLE_POD = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "web", "labels": {"app": "web"},
                 # The app's own metrics (here the file /id), merged by Strait into 15020 /stats/prometheus.
                 "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(APP_PORT),
                                 "prometheus.io/path": "/id"}},
    "spec": {"serviceAccountName": "web-sa", "containers": [{
        "name": "web", "image": "registry.example/web:1",
        "ports": [{"name": "http", "containerPort": APP_PORT}],
        "readinessProbe": {"httpGet": {"path": "/id", "port": "http"}, "periodSeconds": 5}}]},
}
# Flags that take no value (everything else in the sidecar's args takes one).
SWITCHES = {"--exit-on-zero-active-connections", "--allow-unknown-static-fields", "--reject-unknown-dynamic-fields"}


def _skip_reason():
    r = np_.unavailable_reason() or np_.capture_tool_missing("iptables")
    if r:
        return r
    if shutil.which("curl") is None:
        return "'curl' is not installed (deploy/install-deps.sh test installs it)"
    return None


def kubelet_expand(text, env):
    """$(VAR) -> env[VAR] when VAR is defined, $$ -> $, anything else left as written (Kubernetes'
    expansion of command, args and env values)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def container_env(container, pod_fields):
    """The container's environment as the kubelet builds it: in order, fieldRefs from the pod,
    values with $(VAR) expanded against the variables defined before them."""
    env = {}
    for e in container.get("env", []):
        if "valueFrom" in e:
            env[e["name"]] = pod_fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[e["name"]] = kubelet_expand(e.get("value", ""), env)
    return env


def unsupported_flags(binary, args):
    """The flags in args this strait refuses (tried one by one with --mode validate)."""
    missing = []
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("--") and a not in ("--service-node", "--service-cluster"):
            take = [a] if a in SWITCHES else [a, args[i + 1]]
            r = subprocess.run([binary, "--mode", "validate", *take], capture_output=True, text=True, timeout=30)
            if r.returncode != 0 and a in (r.stdout + r.stderr):
                missing.append(a)
        i += 1 if a in SWITCHES or not a.startswith("-") else 2
    return sorted(set(missing))


def drop_flags(args, flags):
    out, i = [], 0
    while i < len(args):
        if args[i] in flags:
            i += 1 if args[i] in SWITCHES else 2
            continue
        out.append(args[i])
        i += 1
    return out


@pytest.fixture(scope="module")
def injected():
    r = subprocess.run([sys.executable, os.path.join(REPO, "deploy", "k8s", "inject.py")],
                       input=yaml.safe_dump(SAMPLE_POD), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    pod = yaml.safe_load(r.stdout)
    inits = {c["name"]: c for c in pod["spec"]["initContainers"]}
    return pod, inits["strait-init"], inits["strait"], pod["spec"]["containers"][0]


class PodRunner:
    """Runs an injected pod's containers in one namespace of a PodPair."""

    def __init__(self, pods, pod, init, sidecar, ns, ip, name, bootstrap):
        self.p, self.ns, self.name = pods, ns, name
        self.fields = {"metadata.name": name, "metadata.namespace": NAMESPACE, "status.podIP": ip,
                       "status.podIPs": ip, "spec.serviceAccountName": pod["spec"]["serviceAccountName"]}
        self.init, self.sidecar, self.bootstrap = init, sidecar, bootstrap

    def run_init(self):
        # The init image holds the scripts in /usr/local/bin; the repository's copies are the same files.
        cmd = [kubelet_expand(c, {}) for c in self.init["command"] + self.init["args"]]
        assert cmd[0].startswith("/usr/local/bin/strait-")
        script = os.path.join(np_.DEPLOY, os.path.basename(cmd[0]))
        sc = self.init["securityContext"]
        assert sc["runAsUser"] == 0  # the test runs it as root, as written
        return self.p.run(self.ns, [script, *cmd[1:]])

    def start_sidecar(self, binary, drop=()):
        env = container_env(self.sidecar, self.fields)
        args = [kubelet_expand(a, env) for a in self.sidecar["args"]]
        args = drop_flags(args, drop)
        # The ConfigMap volume: the file the args name, from deploy/k8s/bootstrap-configmap.yaml.
        mount = self.sidecar["volumeMounts"][0]["mountPath"]
        args = [self.bootstrap if a == f"{mount}/bootstrap.yaml" else a for a in args]
        sc = self.sidecar["securityContext"]
        assert (sc["runAsUser"], sc["runAsGroup"]) == (np_.PROXY_UID, np_.PROXY_GID)
        envv = [f"{k}={v}" for k, v in env.items()]
        proc = self.p.spawn(self.ns, ["env", "-i", *envv, binary, *args], f"strait-{self.name}", as_proxy=True)
        self.args, self.env = args, env
        return np_.wait_admin_ready(self.p, self.ns, proc)


def _http(p, ns, url):
    r = p.run(ns, ["curl", "-sS", "-m", "5", "-o", "-", "-w", "\n%{http_code}", url], check=False, timeout=15)
    body, _, code = r.stdout.rpartition("\n")
    return (int(code) if code.isdigit() else 0), body


@pytest.fixture(scope="module")
def pods(injected):
    """Both injected pods running: init rules installed, sidecars ready, B's app on 8080."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    if not (os.path.isfile(STRAIT_BIN) and os.access(STRAIT_BIN, os.X_OK)):
        pytest.fail(f"no strait binary at {STRAIT_BIN}: build it or set STRAIT_BIN", pytrace=False)
    pod, init, sidecar, app = injected
    missing = unsupported_flags(STRAIT_BIN, sidecar["args"])
    with open(os.path.join(REPO, "deploy", "k8s", "bootstrap-configmap.yaml")) as f:
        cm = yaml.safe_load(f)
    with np_.PodPair("im-pod") as p:
        d = tempfile.mkdtemp(prefix="strait-im-cm-")
        p.tmpdirs.append(d)
        os.chmod(d, 0o755)
        bootstrap = os.path.join(d, "bootstrap.yaml")
        with open(bootstrap, "w") as f:
            f.write(cm["data"]["bootstrap.yaml"])
        os.chmod(bootstrap, 0o644)
        binary = STRAIT_BIN if np_.readable_by(STRAIT_BIN, np_.PROXY_UID, np_.PROXY_GID) \
            else np_.exposed_copy(STRAIT_BIN, p.tmpdirs)
        runners = {}
        for ns, ip, name in ((p.a, A_ADDR4, "client-0"), (p.b, B_ADDR4, "web-0")):
            runner = PodRunner(p, pod, init, sidecar, ns, ip, name, bootstrap)
            runner.run_init()
            runner.start_sidecar(binary, drop=missing)
            runners[ns] = runner
        app_proc = np_.http_server(p, p.b, APP_PORT, "web-0")
        yield {"p": p, "runners": runners, "missing": missing, "app": app, "app_proc": app_proc}


def test_injected_pods_carry_application_traffic(pods):
    p, runners = pods["p"], pods["runners"]
    rules = p.run(p.b, ["iptables", "-t", "nat", "-S"]).stdout
    assert "STRAIT_INBOUND" in rules and "--to-ports 15006" in rules
    # The node id the control plane sees, in Istio's shape, from the expanded args.
    b = runners[p.b]
    node = b.args[b.args.index("--service-node") + 1]
    assert node == f"sidecar~{B_ADDR4}~web-0.{NAMESPACE}~{NAMESPACE}.svc.cluster.local"
    assert json.loads(b.env["STRAIT_METAJSON_LABELS"]) == {"app": "web"}
    assert b.env["STRAIT_META_INSTANCE_IPS"] == B_ADDR4 and b.env["STRAIT_META_SERVICE_ACCOUNT"] == "web-sa"
    # A's plain request to B's app crosses A's outbound and B's inbound sidecar.
    code, body = _http(p, p.a, f"http://{B_ADDR4}:{APP_PORT}/id")
    assert (code, body) == (200, "web-0")
    np_.wait_stats(p, p.a, lambda s: s.get("http.outbound_0.0.0.0_15001.downstream_rq_total", 0) >= 1,
                   "pod A's request on its outbound listener")
    np_.wait_stats(p, p.b, lambda s: s.get("http.inbound_0.0.0.0_15006.downstream_rq_total", 0) >= 1,
                   "pod A's request on pod B's inbound listener")


def test_node_metadata_and_merged_metrics(pods):
    p, missing = pods["p"], pods["missing"]
    if missing:
        pytest.skip(f"strait at {STRAIT_BIN} lacks {', '.join(missing)} (the pod-side part of issue 14)")
    code, body = np_.admin(p, p.b, "/config_dump")
    assert code == 200
    dump = json.loads(body)
    boot = next(c for c in dump["configs"] if "bootstrap" in c)["bootstrap"]
    node = boot["node"]
    assert node["id"] == f"sidecar~{B_ADDR4}~web-0.{NAMESPACE}~{NAMESPACE}.svc.cluster.local"
    md = node["metadata"]
    assert (md["NAME"], md["NAMESPACE"], md["INSTANCE_IPS"], md["SERVICE_ACCOUNT"], md["WORKLOAD_NAME"],
            md["CLUSTER_ID"]) == ("web-0", NAMESPACE, B_ADDR4, "web-sa", "web", "Kubernetes"), md
    assert md["LABELS"] == {"app": "web"}, md
    # Prometheus scrapes 15020 (the annotations the injector set): Strait's stats, then the app's.
    code, body = _http(p, p.b, f"http://{B_ADDR4}:15020/stats/prometheus")
    assert code == 200 and "web-0" in body, body[-500:]
    assert "downstream_rq_total" in body


def test_rewritten_app_probe_is_answered_through_strait(pods):
    p, missing = pods["p"], pods["missing"]
    if missing:
        pytest.skip(f"strait at {STRAIT_BIN} lacks {', '.join(missing)} (the pod-side part of issue 14): "
                    "the rewritten probe and /healthz/ready cannot be checked")
    # The kubelet's probes, from the node to the pod IP (not captured: 15020/15021 are excluded).
    probe = pods["app"]["readinessProbe"]["httpGet"]
    assert (probe["port"], probe["path"]) == (15020, "/app-health/web/readyz")
    url = f"http://{B_ADDR4}:{probe['port']}{probe['path']}"
    assert _http(p, p.b, f"http://{B_ADDR4}:15021/healthz/ready")[0] == 200
    assert _http(p, p.b, url)[0] == 200
    os.killpg(pods["app_proc"].pid, 9)
    pods["app_proc"].wait(timeout=5)
    deadline, code = time.monotonic() + 10, 200
    while time.monotonic() < deadline and code == 200:
        code = _http(p, p.b, url)[0]
        time.sleep(0.1)
    assert code == 503, "the app is gone, its rewritten probe must fail"
