"""Every Kubernetes manifest we ship, and what the injector prints for a set of sample workloads,
validated against the Kubernetes OpenAPI schemas (npm kubernetes-models, run by
tests/k8s_validate/validate.js; its dependencies are installed from package-lock.json on first use).

Skips (with the reason) when node/npm are missing. The validator is shown to reject broken manifests,
so a pass means something.
"""

import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
K8S = os.path.join(REPO, "deploy", "k8s")
VALIDATOR_DIR = os.path.join(REPO, "tests", "k8s_validate")
SAMPLES = os.path.join(HERE, "k8s_samples")

# Each sample through the injector with these option sets.
MODES = {
    "native": [],
    "classic": ["--classic-sidecar", "--capture", "nftables", "--ipv6"],
    "cert-manager": ["--workload-cert", "cert-manager", "--hub", "registry.example/mesh", "--tag", "1.0"],
    "spiffe": ["--workload-cert", "spiffe", "--exit-on-zero-active-connections"],
    "sds": ["--workload-cert", "sds", "--image", "registry.example/strait@sha256:" + "0" * 64],
}
SAMPLE_INPUTS = [os.path.join(K8S, "sample-app.yaml"), os.path.join(SAMPLES, "workloads.yaml"),
                 os.path.join(SAMPLES, "pod-probes.yaml")]


@pytest.fixture(scope="module")
def validate():
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node/npm not found (deploy/install-deps.sh test)")
    stamp = os.path.join(VALIDATOR_DIR, "node_modules", ".package-lock.json")
    lock = os.path.join(VALIDATOR_DIR, "package-lock.json")
    if not os.path.exists(stamp) or os.path.getmtime(lock) > os.path.getmtime(stamp):
        r = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=VALIDATOR_DIR,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"npm ci in tests/k8s_validate failed:\n{r.stdout}{r.stderr}"

    def run(*files, stdin=None):
        return subprocess.run(["node", os.path.join(VALIDATOR_DIR, "validate.js"), *files], input=stdin,
                              capture_output=True, text=True, timeout=120)
    return run


def test_static_manifests_are_valid(validate):
    files = sorted(os.path.join(K8S, f) for f in os.listdir(K8S) if f.endswith(".yaml"))
    assert {os.path.basename(f) for f in files} >= {"bootstrap-configmap.yaml", "example-deployment.yaml",
                                                    "sample-app.yaml", "webhook.yaml"}
    r = validate(*files)
    assert r.returncode == 0, r.stdout + r.stderr
    kinds = {line.split()[2].split("/")[0] for line in r.stdout.splitlines()}
    assert kinds >= {"ConfigMap", "Service", "Deployment", "Namespace", "ServiceAccount", "Role", "RoleBinding",
                     "MutatingWebhookConfiguration"}, r.stdout


@pytest.fixture(scope="module")
def injected_results(validate, tmp_path_factory):
    """Every sample through the injector in every mode, validated in one run of the validator:
    {mode: [validator output lines for that mode's files]}, and the run's exit status."""
    d = tmp_path_factory.mktemp("injected")
    outs = {}
    for mode, opts in MODES.items():
        for src in SAMPLE_INPUTS:
            with open(src) as f:
                r = subprocess.run([sys.executable, os.path.join(K8S, "inject.py"), *opts], stdin=f,
                                   capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, r.stderr
            out = d / f"{mode}.{os.path.basename(src)}"
            out.write_text(r.stdout)
            outs.setdefault(mode, []).append(str(out))
    r = validate(*[f for files in outs.values() for f in files])
    lines = r.stdout.splitlines()
    return r.returncode, {m: [ln for ln in lines if f"/{m}." in ln] for m in MODES}, r.stdout + r.stderr


@pytest.mark.parametrize("mode", sorted(MODES))
def test_injector_output_is_valid(injected_results, mode):
    rc, by_mode, text = injected_results
    lines = by_mode[mode]
    assert lines and all(ln.startswith("ok ") for ln in lines), "\n".join(lines)
    kinds = sorted({ln.split()[2].split("/")[0] for ln in lines})
    assert kinds == ["CronJob", "DaemonSet", "Deployment", "Job", "Pod", "Service", "StatefulSet"]
    assert rc == 0, text


@pytest.mark.parametrize("doc,message", [
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  containers:\n  - image: a\n",
     "/spec/containers/0 must have required property 'name'"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  containers:\n  - name: a\n"
     "    ports: [{containerPort: http}]\n", "/spec/containers/0/ports/0/containerPort must be integer"),
    ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  template:\n    spec:\n"
     "      containers: [{name: a}]\n", "/spec must have required property 'selector'"),
    ("apiVersion: admissionregistration.k8s.io/v1\nkind: MutatingWebhookConfiguration\nmetadata: {name: x}\n"
     "webhooks:\n- name: a.b.c\n  clientConfig: {}\n", "must have required property 'sideEffects'"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  initContainers:\n  - name: s\n"
     "    restartPolicy: [Always]\n  containers: [{name: a}]\n", "/spec/initContainers/0/restartPolicy must be string"),
    ("apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: x}\n", "unknown apiVersion/kind"),
])
def test_invalid_manifests_are_rejected(validate, doc, message):
    r = validate("-", stdin="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: fine}\n---\n" + doc)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "ok -#1 ConfigMap/fine" in r.stdout
    invalid = [line for line in r.stdout.splitlines() if line.startswith("invalid -#2")]
    assert len(invalid) == 1 and message.replace("'", "") in invalid[0].replace("'", ""), r.stdout
