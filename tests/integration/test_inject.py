"""deploy/k8s/inject.py (deploy/inject): the sidecar injection, and the Kubernetes files around it."""

import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading

import pytest

yaml = pytest.importorskip("yaml", reason="inject.py needs PyYAML (Debian package python3-yaml)")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
K8S = os.path.join(REPO, "deploy", "k8s")
INJECT = os.path.join(K8S, "inject.py")
WRAPPER = os.path.join(REPO, "deploy", "inject")
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


def test_istio_metrics_can_be_turned_off(tmp_path):
    docs = docs_of(inject(read("sample-app.yaml"), "--no-istio-metrics").stdout)
    pod = deployment(docs)["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in by_name(pod["initContainers"], "strait")["env"]}
    assert env["STRAIT_META_STRAIT_ISTIO_METRICS"] == "false"


@pytest.fixture(scope="module")
def injected():
    return docs_of(inject(read("sample-app.yaml")).stdout)


def env_of(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def arg_after(args, flag):
    return args[args.index(flag) + 1]


def test_init_container_captures_traffic_with_only_net_admin_and_net_raw(injected):
    pod = deployment(injected)["spec"]["template"]["spec"]
    init = pod["initContainers"][0]
    assert init["name"] == "strait-init"
    assert init["image"] == "localhost/strait-init:0.1.0"
    assert init["command"] == ["/usr/local/bin/strait-iptables.sh"]
    flags = flag_values(init["args"])
    assert flags["-p"] == "15001" and flags["-z"] == "15006"
    assert flags["-u"] == "1337" and flags["-g"] == "1337"
    assert flags["-b"] == "*"
    assert flags["-d"].split(",") == ["15000", "15001", "15006", "15020", "15021", "15090"]
    assert flags["-i"] == "*"
    assert flags["-x"] == "169.254.169.254/32"  # from the pod template's annotation
    sc = init["securityContext"]
    assert sc["capabilities"] == {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}
    assert sc["runAsUser"] == 0 and sc["runAsNonRoot"] is False
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False


def test_sidecar_is_a_native_sidecar_as_1337_gated_on_readiness(injected):
    tmpl = deployment(injected)["spec"]["template"]
    pod = tmpl["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["strait-init", "strait"]
    assert [c["name"] for c in pod["containers"]] == ["echo"]
    s = by_name(pod["initContainers"], "strait")
    assert s["image"] == "localhost/strait:0.1.0"
    assert s["restartPolicy"] == "Always"
    health = {"path": "/healthz/ready", "port": 15021}
    assert s["startupProbe"]["httpGet"] == health and s["readinessProbe"]["httpGet"] == health
    assert "lifecycle" not in s
    sc = s["securityContext"]
    assert sc["runAsUser"] == 1337 and sc["runAsGroup"] == 1337 and sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert s["resources"] == {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}}
    assert {(p["name"], p["containerPort"]) for p in s["ports"]} == {("strait-status", 15020), ("strait-health", 15021)}
    args = s["args"]
    assert args[:2] == ["-c", "/etc/strait/bootstrap.yaml"]
    assert arg_after(args, "--service-node") == \
        "sidecar~$(INSTANCE_IP)~$(POD_NAME).$(POD_NAMESPACE)~$(POD_NAMESPACE).svc.cluster.local"
    assert arg_after(args, "--service-cluster") == "echo"
    assert [args[i + 1] for i, a in enumerate(args) if a == "--status-port"] == ["15020", "15021"]
    assert arg_after(args, "--min-drain-time-s") == "5" and arg_after(args, "--drain-time-s") == "20"
    env = env_of(s)
    field = {k: v["fieldRef"]["fieldPath"] for k, v in env.items() if isinstance(v, dict)}
    assert field == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace",
                     "INSTANCE_IP": "status.podIP", "SERVICE_ACCOUNT": "spec.serviceAccountName",
                     "STRAIT_META_NAME": "metadata.name", "STRAIT_META_NAMESPACE": "metadata.namespace",
                     "STRAIT_META_INSTANCE_IPS": "status.podIPs",
                     "STRAIT_META_SERVICE_ACCOUNT": "spec.serviceAccountName"}
    assert env["STRAIT_META_CLUSTER_ID"] == "Kubernetes" and env["STRAIT_META_WORKLOAD_NAME"] == "echo"
    assert json.loads(env["STRAIT_METAJSON_LABELS"]) == {"app": "echo"}
    assert env["STRAIT_META_STRAIT_ISTIO_METRICS"] == "true"  # Istio's stats filters count, as in a mesh
    assert s["volumeMounts"] == [{"name": "strait-bootstrap", "mountPath": "/etc/strait", "readOnly": True}]
    assert {"name": "strait-bootstrap", "configMap": {"name": "strait-bootstrap"}} in pod["volumes"]
    ann = tmpl["metadata"]["annotations"]
    assert ann["strait.io/status"] == "injected"
    assert ann["kubectl.kubernetes.io/default-container"] == "echo"
    assert (ann["prometheus.io/scrape"], ann["prometheus.io/port"], ann["prometheus.io/path"]) == \
        ("true", "15020", "/stats/prometheus")


def test_application_probe_is_rewritten_and_the_rest_untouched(injected):
    original = docs_of(read("sample-app.yaml"))
    assert [d["kind"] for d in injected] == [d["kind"] for d in original]
    assert injected[0] == original[0]  # the Service
    before = by_name(deployment(original)["spec"]["template"]["spec"]["containers"], "echo")
    after = by_name(deployment(injected)["spec"]["template"]["spec"]["containers"], "echo")
    assert after["readinessProbe"] == {"periodSeconds": 5, "httpGet": {
        "path": "/app-health/echo/readyz", "port": 15020, "scheme": "HTTP"}}
    assert {k: v for k, v in after.items() if k != "readinessProbe"} == \
        {k: v for k, v in before.items() if k != "readinessProbe"}
    side = by_name(deployment(injected)["spec"]["template"]["spec"]["initContainers"], "strait")
    assert json.loads(env_of(side)["STRAIT_KUBE_APP_PROBERS"]) == {
        "/app-health/echo/readyz": {"tcpSocket": {"port": 8080}, "timeoutSeconds": 1}}
    for key in ("replicas", "selector"):
        assert deployment(injected)["spec"][key] == deployment(original)["spec"][key]


def test_http_tcp_and_grpc_probes_of_every_container_go_through_strait():
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "p", "labels": {"app": "web", "tier": "front"},
                        "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9102"}},
           "spec": {"containers": [
               {"name": "web", "image": "web", "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": "http", "httpHeaders": [
                    {"name": "x", "value": "y"}]}, "timeoutSeconds": 2, "periodSeconds": 3},
                "livenessProbe": {"tcpSocket": {"port": 8080}},
                "startupProbe": {"grpc": {"port": 9090}, "failureThreshold": 30}},
               {"name": "side", "image": "side", "livenessProbe": {"exec": {"command": ["true"]}}}]}}
    out = docs_of(inject(yaml.safe_dump(pod)).stdout)[0]
    web = by_name(out["spec"]["containers"], "web")
    assert web["readinessProbe"] == {"timeoutSeconds": 2, "periodSeconds": 3, "httpGet": {
        "path": "/app-health/web/readyz", "port": 15020, "scheme": "HTTP"}}
    assert web["livenessProbe"]["httpGet"]["path"] == "/app-health/web/livez"
    assert web["startupProbe"] == {"failureThreshold": 30, "httpGet": {
        "path": "/app-health/web/startupz", "port": 15020, "scheme": "HTTP"}}
    assert by_name(out["spec"]["containers"], "side")["livenessProbe"] == {"exec": {"command": ["true"]}}
    env = env_of(by_name(out["spec"]["initContainers"], "strait"))
    assert json.loads(env["STRAIT_KUBE_APP_PROBERS"]) == {
        "/app-health/web/readyz": {"httpGet": {"path": "/ready", "port": 8080, "httpHeaders": [
            {"name": "x", "value": "y"}]}, "timeoutSeconds": 2},
        "/app-health/web/livez": {"tcpSocket": {"port": 8080}, "timeoutSeconds": 1},
        "/app-health/web/startupz": {"grpc": {"port": 9090}, "timeoutSeconds": 1}}
    assert json.loads(env["STRAIT_PROMETHEUS_SCRAPE"]) == {"scrape": "true", "path": "/metrics", "port": "9102"}
    assert json.loads(env["STRAIT_METAJSON_LABELS"]) == {"app": "web", "tier": "front"}
    assert out["metadata"]["annotations"]["prometheus.io/port"] == "15020"
    assert out["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] == "web"


def test_example_deployment_is_the_injected_sample(injected):
    assert docs_of(read("example-deployment.yaml")) == injected, \
        "regenerate: deploy/inject < deploy/k8s/sample-app.yaml > deploy/k8s/example-deployment.yaml " \
        "(then put its header comment back)"


def test_injecting_twice_changes_nothing(injected):
    text = yaml.safe_dump_all(injected, sort_keys=False)
    r = inject(text)
    assert docs_of(r.stdout) == injected
    assert "already injected" in r.stderr


def test_istio_annotations_classic_mode_images_and_certificates():
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "annotations": {
            "traffic.sidecar.istio.io/includeInboundPorts": "8080, 9090",
            "traffic.sidecar.istio.io/excludeInboundPorts": "9000",
            "traffic.strait.io/excludeInboundPorts": "9001",  # ours wins over the alias
            "traffic.sidecar.istio.io/includeOutboundIPRanges": "10.0.0.0/8,fd00::/8",
            "traffic.sidecar.istio.io/excludeOutboundPorts": "25",
            "traffic.strait.io/includeOutboundPorts": "443",
            "sidecar.istio.io/proxyCPU": "200m", "sidecar.strait.io/proxyMemoryLimit": "1Gi"}},
        "spec": {"containers": [{"name": "app", "image": "app"}]},
    }
    out = docs_of(inject(yaml.safe_dump(pod), "--capture", "nftables", "--classic-sidecar", "--ipv6",
                         "--hub", "reg.example/mesh", "--tag", "1.2", "--workload-cert", "cert-manager",
                         "--exit-on-zero-active-connections").stdout)[0]
    spec = out["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["strait-init"]
    assert [c["name"] for c in spec["containers"]] == ["strait", "app"]
    init, side = spec["initContainers"][0], spec["containers"][0]
    assert init["command"] == ["/usr/local/bin/strait-nftables.sh"] and init["image"] == "reg.example/mesh/strait-init:1.2"
    assert side["image"] == "reg.example/mesh/strait:1.2"
    assert "--ipv6" in init["args"] and "--exit-on-zero-active-connections" in side["args"]
    flags = flag_values(init["args"])
    assert flags["-b"] == "8080,9090"
    assert flags["-d"] == "15000,15001,15006,15020,15021,15090,9001"
    assert flags["-i"] == "10.0.0.0/8,fd00::/8" and flags["-o"] == "25" and flags["-q"] == "443"
    assert "restartPolicy" not in side and "startupProbe" not in side
    assert side["lifecycle"]["postStart"]["exec"]["command"] == ["/usr/local/bin/strait-wait", "15021", "/healthz/ready", "60"]
    assert side["resources"] == {"requests": {"cpu": "200m", "memory": "32Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
    vol = by_name(spec["volumes"], "strait-workload-certs")
    assert vol["csi"]["driver"] == "csi.cert-manager.io"
    assert vol["csi"]["volumeAttributes"]["csi.cert-manager.io/issuer-name"] == "strait-ca"
    assert {"name": "strait-workload-certs", "mountPath": "/var/run/secrets/strait/workload", "readOnly": True} \
        in side["volumeMounts"]
    for kind, expect in (("spiffe", {"csi": {"driver": "csi.spiffe.io", "readOnly": True}}),
                         ("sds", {"hostPath": {"path": "/var/run/strait/sds", "type": "Directory"}})):
        o = docs_of(inject(yaml.safe_dump(pod), "--workload-cert", kind).stdout)[0]
        v = by_name(o["spec"]["volumes"], "strait-workload-certs")
        assert {k: v[k] for k in v if k != "name"} == expect
    # The wrapper is the same tool, and --image overrides the hub and tag.
    r = subprocess.run([WRAPPER, "--image", "x/y:z"], input=yaml.safe_dump(pod), capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    assert docs_of(r.stdout)[0]["spec"]["initContainers"][1]["image"] == "x/y:z"


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
    for s, workload in zip(specs, "sdjcl"):
        assert [c["name"] for c in s["containers"]] == ["app"]
        assert [c["name"] for c in s["initContainers"]] == ["strait-init", "strait"]
        assert env_of(s["initContainers"][1])["STRAIT_META_WORKLOAD_NAME"] == workload
    assert out[5] == docs[5]


def test_host_network_and_opted_out_pods_are_left_alone():
    docs = [
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "h"},
         "spec": {"hostNetwork": True, "containers": [{"name": "app", "image": "app"}]}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "o", "annotations": {"strait.io/inject": "false"}},
         "spec": {"containers": [{"name": "app", "image": "app"}]}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "i", "annotations": {"sidecar.istio.io/inject": "false"}},
         "spec": {"containers": [{"name": "app", "image": "app"}]}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "l", "labels": {"strait.io/inject": "false"}},
         "spec": {"containers": [{"name": "app", "image": "app"}]}},
    ]
    r = inject(yaml.safe_dump_all(docs))
    assert docs_of(r.stdout) == docs
    assert "hostNetwork" in r.stderr and r.stderr.count("left alone") == 4


def _pod(annotations=None, container=None, pod_sc=None):
    c = {"name": "a", "image": "a", **(container or {})}
    spec = {"containers": [c], **({"securityContext": pod_sc} if pod_sc else {})}
    return yaml.safe_dump({"kind": "Pod", "metadata": {"name": "x", "annotations": annotations or {}}, "spec": spec})


@pytest.mark.parametrize("text,message", [
    ("kind: Deployment\nmetadata: {name: x}\nspec: {}\n", "no spec.template"),
    ("kind: Pod\nmetadata: {name: x}\nspec: {containers: []}\n", "no spec.containers"),
    (_pod(container={"ports": [{"containerPort": 15001}]}), "reserves"),
    (_pod(container={"ports": [{"containerPort": 15020}]}), "reserves"),
    (_pod({"traffic.strait.io/excludeInboundPorts": "ssh"}),
     "annotation traffic.strait.io/excludeInboundPorts: 'ssh' is not a port number"),
    (_pod({"traffic.sidecar.istio.io/includeInboundPorts": "70000"}), "'70000' is not a port number"),
    (_pod({"traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.0.0.0/33"}),
     "annotation traffic.strait.io/excludeOutboundIPRanges: '10.0.0.0/33' is not an IPv4 or IPv6 CIDR"),
    (_pod({"traffic.strait.io/includeOutboundIPRanges": "10.0.0.0/8,bogus"}), "'bogus' is not an IPv4 or IPv6 CIDR"),
    (_pod({"sidecar.istio.io/proxyMemory": "lots"}), "'lots' is not a Kubernetes quantity"),
    (_pod(pod_sc={"runAsUser": 1337}), "runs as uid 1337"),
    (_pod(container={"securityContext": {"runAsUser": 1337}}), "runs as uid 1337"),
    (_pod(container={"readinessProbe": {"httpGet": {"port": "nope"}}}), "neither a number nor a port name"),
    ("kind: [unclosed\n", "not valid YAML"),
    ("", "no documents"),
])
def test_bad_input_exits_1_with_a_message(text, message):
    r = inject(text, check=False)
    assert r.returncode == 1 and message in r.stderr and r.stdout == "", r.stderr


def test_an_app_running_as_another_uid_in_a_1337_pod_is_accepted():
    r = inject(_pod(pod_sc={"runAsUser": 1337}, container={"securityContext": {"runAsUser": 1000}}))
    assert docs_of(r.stdout)[0]["metadata"]["annotations"]["strait.io/status"] == "injected"


def _health_stub(status):
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.path == "/healthz/ready" and status == 200
            body = b"ok\n"
            self.send_response(200 if ok else 503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.fixture(scope="module")
def strait_wait(tmp_path_factory):
    if shutil.which("cc") is None:
        pytest.skip("no C compiler (deploy/install-deps.sh build installs build-essential)")
    out = tmp_path_factory.mktemp("wait") / "strait-wait"
    r = subprocess.run(["cc", "-Os", "-Wall", "-Wextra", "-Werror", "-o", str(out),
                        os.path.join(REPO, "deploy", "strait-wait.c")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return str(out)


@pytest.mark.parametrize("status,expect_rc0", [(200, True), (503, False)])
def test_classic_sidecar_post_start_waits_for_readiness(strait_wait, status, expect_rc0):
    """The postStart command, with the image's strait-wait built from source, against a stub of 15021
    (its port swapped in)."""
    pod = docs_of(inject(_pod(), "--classic-sidecar").stdout)[0]
    cmd = pod["spec"]["containers"][0]["lifecycle"]["postStart"]["exec"]["command"]
    assert cmd[0] == "/usr/local/bin/strait-wait" and cmd[1] == "15021"
    srv = _health_stub(status)
    try:
        seconds = "60" if expect_rc0 else "1"  # keep the failing wait short
        r = subprocess.run([strait_wait, str(srv.server_address[1]), cmd[2], seconds], capture_output=True,
                           timeout=30)
        assert (r.returncode == 0) == expect_rc0, r.stderr
    finally:
        srv.shutdown()
    with socket.socket() as s:  # nothing listening: fails after the wait rather than hanging
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert subprocess.run([strait_wait, str(free), "/healthz/ready", "1"], capture_output=True,
                          timeout=10).returncode == 1


def test_configmap_bootstrap_is_the_embedded_default(tmp_path):
    """The ConfigMap carries, verbatim, the bootstrap strait runs on without -c (HTTP detection, not
    tcp_proxy only): regenerate it with deploy/k8s/gen-bootstrap-configmap.py when they differ."""
    cm = yaml.safe_load(read("bootstrap-configmap.yaml"))
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "strait-bootstrap"
    with open(os.path.join(REPO, "proxy", "config", "default_bootstrap.h")) as f:
        embedded = re.search(r'kDefaultBootstrapYaml\s*=\s*R"\((.*?)\)";', f.read(), re.S).group(1)
    assert cm["data"]["bootstrap.yaml"] == embedded.lstrip("\n"), \
        "bootstrap-configmap.yaml drifted from proxy/config/default_bootstrap.h: run deploy/k8s/gen-bootstrap-configmap.py"
    r = subprocess.run([sys.executable, os.path.join(K8S, "gen-bootstrap-configmap.py"), "--check"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    boot = yaml.safe_load(cm["data"]["bootstrap.yaml"])
    for listener in boot["static_resources"]["listeners"]:
        names = [f["name"] for f in listener["listener_filters"]]
        assert "envoy.filters.listener.http_inspector" in names, listener["name"]
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
