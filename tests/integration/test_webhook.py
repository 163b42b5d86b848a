"""deploy/k8s/webhook.py: the injector as a mutating admission webhook, spoken to over TLS with curl.

The server runs with a throwaway CA and certificate (tlsutil, certs/strait-ca.sh) for the DNS names
the Service gives it and localhost; curl POSTs saved AdmissionReview requests (k8s_samples/) and
verifies the server against that CA. The returned JSONPatch is applied with python3-jsonpatch (an
independent RFC 6902 implementation) and must give exactly what deploy/k8s/inject.py prints for the
same pod.
"""

import base64
import copy
import json
import os
import shutil
import subprocess
import sys

import pytest

import tlsutil

yaml = pytest.importorskip("yaml", reason="inject.py needs PyYAML (Debian package python3-yaml)")
jsonpatch = pytest.importorskip("jsonpatch", reason="needs python3-jsonpatch (deploy/install-deps.sh test)")

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
K8S = os.path.join(REPO, "deploy", "k8s")
SAMPLES = os.path.join(HERE, "k8s_samples")
sys.path.insert(0, K8S)
import webhook  # noqa: E402  (deploy/k8s/webhook.py, for its JSONPatch diff)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if shutil.which("curl") is None or shutil.which("openssl") is None:
        pytest.skip("curl and openssl are needed (deploy/install-deps.sh test)")
    d = tmp_path_factory.mktemp("webhook")
    tlsutil.make_root(d / "ca")
    certs = tlsutil.make_workload(d / "ca", d / "srv", "strait-system", "strait-webhook",
                                  dns=["strait-webhook.strait-system.svc", "localhost"])
    proc = subprocess.Popen([sys.executable, os.path.join(K8S, "webhook.py"), "--cert", str(certs["cert"]),
                             "--key", str(certs["key"]), "--address", "127.0.0.1", "--port", "0"],
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()  # "webhook: listening on https://127.0.0.1:PORT/inject"
        assert "listening on" in line, line + (proc.stderr.read() if proc.poll() is not None else "")
        port = int(line.rsplit(":", 1)[1].split("/")[0])
        yield {"url": f"https://localhost:{port}", "ca": str(certs["root"]), "proc": proc}
    finally:
        proc.kill()
        proc.wait(timeout=10)


def post(server, body, path="/inject"):
    """(http status, parsed JSON or text) of curl POSTing body over TLS, server verified against the CA."""
    r = subprocess.run(["curl", "-sS", "-m", "10", "--cacert", server["ca"], "-H", "Content-Type: application/json",
                        "--data-binary", "@-", "-o", "-", "-w", "\n%{http_code}", server["url"] + path],
                       input=body if isinstance(body, str) else json.dumps(body), capture_output=True, text=True,
                       timeout=20)
    assert r.returncode == 0, r.stderr
    text, _, code = r.stdout.rpartition("\n")
    try:
        return int(code), json.loads(text)
    except ValueError:
        return int(code), text


def saved_review():
    with open(os.path.join(SAMPLES, "admission-review-pod.json")) as f:
        return json.load(f)


def cli_inject(pod):
    r = subprocess.run([sys.executable, os.path.join(K8S, "inject.py")], input=json.dumps(pod),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)


def patch_of(resp):
    if "patch" not in resp:
        return []
    assert resp["patchType"] == "JSONPatch"
    return json.loads(base64.b64decode(resp["patch"]))


def test_review_patch_gives_what_inject_prints_and_a_second_review_none(server):
    review = saved_review()
    code, out = post(server, review)
    assert code == 200, out
    assert out["apiVersion"] == "admission.k8s.io/v1" and out["kind"] == "AdmissionReview"
    resp = out["response"]
    assert resp["uid"] == review["request"]["uid"] and resp["allowed"] is True
    assert "warnings" not in resp
    pod = review["request"]["object"]
    patched = jsonpatch.apply_patch(copy.deepcopy(pod), patch_of(resp))
    assert patched == cli_inject(pod)
    assert [c["name"] for c in patched["spec"]["initContainers"]] == ["strait-init", "strait"]
    # The injected pod comes back with no patch at all.
    again = copy.deepcopy(review)
    again["request"]["object"] = patched
    again["request"]["uid"] = "second"
    code, out = post(server, again)
    assert code == 200 and out["response"]["uid"] == "second" and out["response"]["allowed"] is True
    assert patch_of(out["response"]) == [] and "patch" not in out["response"]


@pytest.mark.parametrize("change,warning", [
    (lambda pod: pod["spec"].update(hostNetwork=True), "hostNetwork pod, left alone"),
    (lambda pod: pod["metadata"]["annotations"].update({"sidecar.istio.io/inject": "false"}), "left alone"),
    (lambda pod: pod["metadata"]["annotations"].update(
        {"traffic.strait.io/excludeOutboundIPRanges": "10.0.0.0/33"}), "'10.0.0.0/33' is not an IPv4 or IPv6 CIDR"),
    (lambda pod: pod["spec"].update(securityContext={"runAsUser": 1337}), "runs as uid 1337"),
])
def test_pods_it_must_not_inject_are_allowed_unchanged_with_a_warning(server, change, warning):
    review = saved_review()
    change(review["request"]["object"])
    code, out = post(server, review)
    assert code == 200, out
    resp = out["response"]
    assert resp["allowed"] is True and "patch" not in resp
    assert any(warning in w for w in resp["warnings"]), resp["warnings"]


def test_patch_keys_with_slashes_and_tildes_round_trip():
    a = {"metadata": {"annotations": {"a/b": "1", "c~d": "2"}}, "spec": {"x": [1]}}
    b = {"metadata": {"annotations": {"a/b": "9", "e/f": "3"}}, "spec": {"x": [1, 2]}}
    ops = webhook.json_patch(a, b)
    assert {"op": "replace", "path": "/metadata/annotations/a~1b", "value": "9"} in ops
    assert {"op": "remove", "path": "/metadata/annotations/c~0d"} in ops
    assert jsonpatch.apply_patch(copy.deepcopy(a), ops) == b


@pytest.mark.parametrize("body,path,code", [
    ("not json", "/inject", 400),
    (json.dumps({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "x"}}),
     "/inject", 400),
    (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}), "/inject", 400),
    ("{}", "/elsewhere", 404),
])
def test_malformed_requests_get_an_http_error(server, body, path, code):
    got, text = post(server, body, path)
    assert got == code, text


def test_non_pod_review_is_allowed_unchanged(server):
    review = saved_review()
    review["request"]["kind"] = {"group": "apps", "version": "v1", "kind": "Deployment"}
    code, out = post(server, review)
    assert code == 200 and out["response"]["allowed"] is True and "patch" not in out["response"]


def test_healthz_and_tls_only(server):
    r = subprocess.run(["curl", "-sS", "-m", "5", "--cacert", server["ca"], server["url"] + "/healthz"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 0 and r.stdout == "ok\n", r.stderr
    # Plain HTTP to the TLS port gets no answer.
    r = subprocess.run(["curl", "-sS", "-m", "5", server["url"].replace("https", "http") + "/healthz"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode != 0
    assert server["proc"].poll() is None


def test_webhook_configuration_honours_the_opt_out():
    with open(os.path.join(K8S, "webhook.yaml")) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    cfg = next(d for d in docs if d["kind"] == "MutatingWebhookConfiguration")
    hook = cfg["webhooks"][0]
    assert hook["admissionReviewVersions"] == ["v1"] and hook["sideEffects"] == "None"
    assert hook["clientConfig"]["service"]["path"] == "/inject"
    assert hook["rules"] == [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                              "resources": ["pods"], "scope": "Namespaced"}]
    assert hook["namespaceSelector"] == {"matchLabels": {"strait.io/injection": "enabled"}}
    assert {(e["key"], e["operator"], tuple(e["values"])) for e in hook["objectSelector"]["matchExpressions"]} == {
        ("strait.io/inject", "NotIn", ("false",)), ("sidecar.istio.io/inject", "NotIn", ("false",))}
    # The webhook's own pods are labelled out, and it listens where the Service sends.
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert dep["spec"]["template"]["metadata"]["labels"]["strait.io/inject"] == "false"
    svc = next(d for d in docs if d["kind"] == "Service")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert svc["spec"]["ports"][0]["targetPort"] == int(args[args.index("--port") + 1])
