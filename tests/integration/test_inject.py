"""deploy/k8s/inject.py: the webhook-free sidecar injection, and the Kubernetes files around it."""

import http.server
import os
import socket
import subprocess
import sys
import threading

import pytest

yaml = pytest.importorskip("yaml", reason="inject.py needs PyYAML (Debian package python3-yaml)")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
K8S = os.path.join(REPO, "deploy", "k8s")
INJECT = os.path.join(K8S, "inject.py")
STRAIT_BIN = os.environ.get("STRAIT_BIN") or os.path.join(REPO, "build", "proxy", "strait")


def inject(text, *args, check=True):
    r = subprocess.run([sys.executable, INJECT, *args], input=text, capture_output=True, text=True, timeout=30)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def docs_of(text):
    return [d for d in yaml.safe_load_all(text) if d is not None]


def read(name):
    with open(os.path.join(K8S, name)) as f:
        return f.read()


def deployment(docs):
    return next(d for d in docs if d["kind"] == "Deployment")


def by_name(items, name):
    return next(c for c in items if c["name"] == name)


def flag_values(args):
    """-x value pairs of the init container's args as a dict."""
    out = {}
    it = iter(args)
    for a in it:
        if a.startswith("-") and a != "--ipv6":
            out[a] = next(it)
    return out


@pytest.fixture(scope="module")
def injected():
    return docs_of(inject(read("sample-app.yaml")).stdout)


def test_init_container_captures_traffic_with_only_net_admin_and_net_raw(injected):
    pod = deployment(injected)["spec"]["template"]["spec"]
    init = pod["initContainers"][0]
    assert init["name"] == "strait-init"
    assert init["image"] == "strait-init:0.1.0"
    assert init["command"] == ["/usr/local/bin/strait-iptables.sh"]
    flags = flag_values(init["args"])
    assert flags["-p"] == "15001" and flags["-z"] == "15006"
    assert flags["-u"] == "1337" and flags["-g"] == "1337"
    assert flags["-b"] == "*"
    assert flags["-d"].split(",") == ["15000", "15001", "15006", "15021", "15090"]
    assert flags["-i"] == "*"
    assert flags["-x"] == "169.254.169.254/32"  # from the pod template's annotation
    sc = init["securityContext"]
    assert sc["capabilities"] == {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}
    assert sc["runAsUser"] == 0 and sc["runAsNonRoot"] is False
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False


def test_sidecar_runs_as_1337_with_probe_ports_and_bootstrap(injected):
    tmpl = deployment(injected)["spec"]["template"]
    pod = tmpl["spec"]
    names = [c["name"] for c in pod["containers"]]
    assert names == ["strait", "echo"], "strait must come first so postStart holds the application back"
    s = by_name(pod["containers"], "strait")
    assert s["image"] == "strait:0.1.0"
    sc = s["securityContext"]
    assert sc["runAsUser"] == 1337 and sc["runAsGroup"] == 1337 and sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert "add" not in sc["capabilities"]
    assert {(p["name"], p["containerPort"]) for p in s["ports"]} == {("strait-health", 15021), ("strait-prom", 15090)}
    assert s["args"][:2] == ["-c", "/etc/strait/bootstrap.yaml"]
    assert "--service-node" in s["args"] and s["args"][s["args"].index("--service-cluster") + 1] == "echo"
    probe = s["readinessProbe"]["exec"]["command"]
    assert probe[:2] == ["/bin/bash", "-c"] and "/dev/tcp/127.0.0.1/15000" in probe[2] and "/ready" in probe[2]
    assert "postStart" in s["lifecycle"]
    assert s["volumeMounts"] == [{"name": "strait-bootstrap", "mountPath": "/etc/strait", "readOnly": True}]
    assert {"name": "strait-bootstrap", "configMap": {"name": "strait-bootstrap"}} in pod["volumes"]
    assert tmpl["metadata"]["annotations"]["strait.io/status"] == "injected"


def test_application_container_and_other_documents_are_untouched(injected):
    original = docs_of(read("sample-app.yaml"))
    assert [d["kind"] for d in injected] == [d["kind"] for d in original]
    assert injected[0] == original[0]  # the Service
    app_before = by_name(deployment(original)["spec"]["template"]["spec"]["containers"], "echo")
    app_after = by_name(deployment(injected)["spec"]["template"]["spec"]["containers"], "echo")
    assert app_after == app_before
    for key in ("replicas", "selector"):
        assert deployment(injected)["spec"][key] == deployment(original)["spec"][key]


def test_example_deployment_is_the_injected_sample(injected):
    assert docs_of(read("example-deployment.yaml")) == injected, \
        "regenerate: deploy/k8s/inject.py < deploy/k8s/sample-app.yaml > deploy/k8s/example-deployment.yaml " \
        "(then put its header comment back)"


def test_injecting_twice_changes_nothing(injected):
    text = yaml.safe_dump_all(injected, sort_keys=False)
    r = inject(text)
    assert docs_of(r.stdout) == injected
    assert "already injected" in r.stderr


def test_annotations_tune_the_capture_and_options_switch_modes():
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "annotations": {
            "traffic.strait.io/includeInboundPorts": "8080, 9090",
            "traffic.strait.io/excludeInboundPorts": "9000",
            "traffic.strait.io/includeOutboundIPRanges": "10.0.0.0/8,fd00::/8",
            "traffic.strait.io/excludeOutboundPorts": "25",
            "traffic.strait.io/includeOutboundPorts": "443"}},
        "spec": {"containers": [{"name": "app", "image": "app"}]},
    }
    out = docs_of(inject(yaml.safe_dump(pod), "--capture", "nftables", "--native-sidecar", "--ipv6",
                         "--readiness", "health", "--image", "reg/strait:1", "--init-image", "reg/init:1").stdout)[0]
    spec = out["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["strait-init", "strait"]
    assert [c["name"] for c in spec["containers"]] == ["app"]
    init, side = spec["initContainers"]
    assert init["command"] == ["/usr/local/bin/strait-nftables.sh"] and init["image"] == "reg/init:1"
    assert "--ipv6" in init["args"]
    flags = flag_values(init["args"])
    assert flags["-b"] == "8080,9090"
    assert flags["-d"] == "15000,15001,15006,15021,15090,9000"
    assert flags["-i"] == "10.0.0.0/8,fd00::/8" and flags["-o"] == "25" and flags["-q"] == "443"
    assert side["restartPolicy"] == "Always" and side["image"] == "reg/strait:1"
    assert side["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021}
    assert "startupProbe" in side and "lifecycle" not in side


def test_every_workload_kind_gets_injected():
    tmpl = {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "app", "image": "app"}]}}
    docs = [
        {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "s"}, "spec": {"template": tmpl}},
        {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "d"}, "spec": {"template": tmpl}},
        {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}, "spec": {"template": tmpl}},
        {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"},
         "spec": {"jobTemplate": {"spec": {"template": tmpl}}}},
        {"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "l"}, "spec": {"template": tmpl}}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {"a": "b"}},
    ]
    out = docs_of(inject(yaml.safe_dump_all(docs)).stdout)
    specs = [out[0]["spec"]["template"]["spec"], out[1]["spec"]["template"]["spec"],
             out[2]["spec"]["template"]["spec"], out[3]["spec"]["jobTemplate"]["spec"]["template"]["spec"],
             out[4]["items"][0]["spec"]["template"]["spec"]]
    for s in specs:
        assert [c["name"] for c in s["containers"]] == ["strait", "app"]
        assert s["initContainers"][0]["name"] == "strait-init"
    assert out[5] == docs[5]


def test_host_network_and_opted_out_pods_are_left_alone():
    docs = [
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "h"},
         "spec": {"hostNetwork": True, "containers": [{"name": "app", "image": "app"}]}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "o", "annotations": {"strait.io/inject": "false"}},
         "spec": {"containers": [{"name": "app", "image": "app"}]}},
    ]
    r = inject(yaml.safe_dump_all(docs))
    assert docs_of(r.stdout) == docs
    assert "hostNetwork" in r.stderr and "left alone" in r.stderr


@pytest.mark.parametrize("text,message", [
    ("kind: Deployment\nmetadata: {name: x}\nspec: {}\n", "no spec.template"),
    ("kind: Pod\nmetadata: {name: x}\nspec: {containers: []}\n", "no spec.containers"),
    ("kind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: a, ports: [{containerPort: 15001}]}]}\n",
     "reserves"),
    ("kind: Pod\nmetadata: {name: x, annotations: {traffic.strait.io/excludeInboundPorts: 'ssh'}}\n"
     "spec: {containers: [{name: a}]}\n", "is not a port number"),
    ("kind: [unclosed\n", "not valid YAML"),
    ("", "no documents"),
])
def test_bad_input_exits_1_with_a_message(text, message):
    r = inject(text, check=False)
    assert r.returncode == 1 and message in r.stderr and r.stdout == ""


def _admin_stub(status):
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.path == "/ready" and status == 200
            body = b"LIVE\n" if ok else b"PRE_INITIALIZING\n"
            self.send_response(200 if ok else 503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.mark.parametrize("status,expect_rc0", [(200, True), (503, False)])
def test_admin_readiness_probe_script(injected, status, expect_rc0):
    """The exec probe, run by bash against a stub admin (its port swapped in for 15000)."""
    side = by_name(deployment(injected)["spec"]["template"]["spec"]["containers"], "strait")
    srv = _admin_stub(status)
    try:
        port = srv.server_address[1]
        for cmd in (side["readinessProbe"]["exec"]["command"], side["lifecycle"]["postStart"]["exec"]["command"]):
            script = cmd[2].replace("/dev/tcp/127.0.0.1/15000", f"/dev/tcp/127.0.0.1/{port}")
            if not expect_rc0:
                script = script.replace("$(seq 300)", "$(seq 3)")  # keep the failing wait short
            r = subprocess.run(["/bin/bash", "-c", script], capture_output=True, timeout=20)
            assert (r.returncode == 0) == expect_rc0, (cmd[2], r.returncode, r.stderr)
    finally:
        srv.shutdown()
    # And with nothing listening at all, the probe fails rather than hangs.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    script = side["readinessProbe"]["exec"]["command"][2].replace("127.0.0.1/15000", f"127.0.0.1/{free}")
    assert subprocess.run(["/bin/bash", "-c", script], capture_output=True, timeout=10).returncode != 0


def test_configmap_bootstrap_is_valid_for_strait(tmp_path):
    cm = yaml.safe_load(read("bootstrap-configmap.yaml"))
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "strait-bootstrap"
    boot = yaml.safe_load(cm["data"]["bootstrap.yaml"])
    assert boot["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 15000}
    ports = {l["address"]["socket_address"]["port_value"] for l in boot["static_resources"]["listeners"]}
    assert ports == {15001, 15006}
    if not (os.path.isfile(STRAIT_BIN) and os.access(STRAIT_BIN, os.X_OK)):
        pytest.fail(f"no strait binary at {STRAIT_BIN} to run --mode validate: build it or set STRAIT_BIN",
                    pytrace=False)
    f = tmp_path / "bootstrap.yaml"
    f.write_text(cm["data"]["bootstrap.yaml"])
    r = subprocess.run([STRAIT_BIN, "--mode", "validate", "-c", str(f)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("capture", ["iptables", "nftables"])
def test_capture_script_accepts_the_injected_arguments(capture):
    """The init container's exact command and arguments, run with --dry-run against our scripts."""
    out = docs_of(inject(read("sample-app.yaml"), "--capture", capture, "--ipv6").stdout)
    init = deployment(out)["spec"]["template"]["spec"]["initContainers"][0]
    script = os.path.join(REPO, "deploy", os.path.basename(init["command"][0]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRAIT_")}
    r = subprocess.run([script, *init["args"], "--dry-run"], capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 0, r.stderr
    assert "169.254.169.254" in r.stdout and "15001" in r.stdout and "15006" in r.stdout
