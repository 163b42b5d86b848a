#!/usr/bin/python3
"""Add the Strait sidecar to Kubernetes workloads, without a mutating webhook.

    deploy/k8s/inject.py [options] < app.yaml > app-injected.yaml
    kubectl apply -f deploy/k8s/bootstrap-configmap.yaml -f app-injected.yaml

Reads YAML (or JSON) documents on stdin and prints them on stdout. Every pod template found
(Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob, Pod, and those inside a List) gets:
  * the init container "strait-init" (image with deploy/strait-iptables.sh or strait-nftables.sh),
    root with NET_ADMIN and NET_RAW only, which installs the capture rules;
  * the container "strait" (the proxy) as uid/gid 1337, read-only root, no capabilities, with the
    bootstrap ConfigMap mounted at /etc/strait and a readiness probe;
  * the annotation strait.io/status: injected.
Other documents pass through unchanged. Comments in the input are not kept (PyYAML drops them).

Pod template annotations tune the capture, like Istio's traffic.sidecar.istio.io/* ones:
  strait.io/inject: "false"                       leave this workload alone
  traffic.strait.io/includeInboundPorts           -b  ("*" default)
  traffic.strait.io/excludeInboundPorts           added to -d (15000,15001,15006,15021,15090)
  traffic.strait.io/includeOutboundIPRanges       -i  ("*" default)
  traffic.strait.io/excludeOutboundIPRanges       -x
  traffic.strait.io/includeOutboundPorts          -q
  traffic.strait.io/excludeOutboundPorts          -o

Running it on its own output changes nothing. A pod with hostNetwork: true is never injected (its
capture rules would capture the node's traffic). Exit status 1 with a message on bad input.
Needs PyYAML (Debian: python3-yaml).
"""

import argparse
import copy
import sys

try:
    import yaml
except ImportError:  # pragma: no cover - depends on the machine
    sys.exit("inject.py: needs PyYAML (Debian package python3-yaml)")

PROXY_UID = 1337
PROXY_GID = 1337
OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
ADMIN_PORT = 15000
HEALTH_PORT = 15021
PROM_PORT = 15090
DEFAULT_EXCLUDED_INBOUND = [ADMIN_PORT, OUTBOUND_PORT, INBOUND_PORT, HEALTH_PORT, PROM_PORT]
STATUS_ANNOTATION = "strait.io/status"
INJECT_ANNOTATION = "strait.io/inject"
TRAFFIC = "traffic.strait.io/"
SIDECAR_NAME = "strait"
INIT_NAME = "strait-init"
BOOTSTRAP_VOLUME = "strait-bootstrap"

# The readiness check against the admin's /ready on loopback, with nothing but bash (the runtime image
# has no curl). The kubelet cannot reach 127.0.0.1:15000 itself, so it runs this inside the container.
ADMIN_READY_SCRIPT = (
    f"exec 3<>/dev/tcp/127.0.0.1/{ADMIN_PORT} && "
    "printf 'GET /ready HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && "
    "IFS= read -r status <&3 && [[ $status == *' 200 '* ]]"
)

POD_TEMPLATE_PATHS = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


class InjectError(Exception):
    pass


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="inject.py",
        description="Add the Strait sidecar and its traffic-capture init container to Kubernetes workloads "
                    "read on stdin (YAML or JSON); print the result on stdout.")
    ap.add_argument("--image", default="strait:0.1.0", help="sidecar image (default: %(default)s)")
    ap.add_argument("--init-image", default="strait-init:0.1.0", help="init image (default: %(default)s)")
    ap.add_argument("--capture", choices=["iptables", "nftables"], default="iptables",
                    help="which capture script the init container runs (default: %(default)s)")
    ap.add_argument("--bootstrap-configmap", default="strait-bootstrap",
                    help="ConfigMap holding bootstrap.yaml (default: %(default)s)")
    ap.add_argument("--concurrency", type=int, default=2, help="strait worker threads (default: %(default)s)")
    ap.add_argument("--readiness", choices=["admin", "health"], default="admin",
                    help="admin: exec probe of the admin's /ready on 127.0.0.1:15000 (works today); "
                         "health: httpGet /healthz/ready on port 15021 (once strait serves it). Default: %(default)s")
    ap.add_argument("--native-sidecar", action="store_true",
                    help="make strait a Kubernetes native sidecar (an init container with restartPolicy: Always; "
                         "Kubernetes 1.29+): it starts before and stops after the application")
    ap.add_argument("--ipv6", action="store_true", help="also capture IPv6 (passes --ipv6 to the init script)")
    ap.add_argument("--log-level", default="info", help="strait --log-level (default: %(default)s)")
    a = ap.parse_args(argv)
    if a.concurrency < 1:
        ap.error("--concurrency must be at least 1")
    return a


def _ports(value, what):
    out = []
    for item in str(value).split(","):
        item = item.strip()
        if not item:
            continue
        if not item.isdigit() or not 1 <= int(item) <= 65535:
            raise InjectError(f"{what}: {item!r} is not a port number")
        out.append(int(item))
    return out


def capture_args(annotations, opts):
    """The init script's arguments for a pod with these annotations."""
    excluded = list(DEFAULT_EXCLUDED_INBOUND)
    for p in _ports(annotations.get(TRAFFIC + "excludeInboundPorts", ""), TRAFFIC + "excludeInboundPorts"):
        if p not in excluded:
            excluded.append(p)
    include_in = str(annotations.get(TRAFFIC + "includeInboundPorts", "*")).strip()
    if include_in not in ("*", ""):
        include_in = ",".join(map(str, _ports(include_in, TRAFFIC + "includeInboundPorts")))
    args = [
        "-p", str(OUTBOUND_PORT),
        "-z", str(INBOUND_PORT),
        "-u", str(PROXY_UID),
        "-g", str(PROXY_GID),
        "-b", include_in,
        "-d", ",".join(map(str, excluded)),
        "-i", str(annotations.get(TRAFFIC + "includeOutboundIPRanges", "*")).replace(" ", ""),
        "-x", str(annotations.get(TRAFFIC + "excludeOutboundIPRanges", "")).replace(" ", ""),
        "-o", ",".join(map(str, _ports(annotations.get(TRAFFIC + "excludeOutboundPorts", ""),
                                       TRAFFIC + "excludeOutboundPorts"))),
        "-q", ",".join(map(str, _ports(annotations.get(TRAFFIC + "includeOutboundPorts", ""),
                                       TRAFFIC + "includeOutboundPorts"))),
    ]
    if opts.ipv6:
        args.append("--ipv6")
    return args


def init_container(annotations, opts):
    script = {"iptables": "strait-iptables.sh", "nftables": "strait-nftables.sh"}[opts.capture]
    return {
        "name": INIT_NAME,
        "image": opts.init_image,
        "command": [f"/usr/local/bin/{script}"],
        "args": capture_args(annotations, opts),
        "securityContext": {
            # iptables/nft need root and these two capabilities in the pod's network namespace; nothing else.
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": False,
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": False,  # iptables takes its lock in /run
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"cpu": "100m", "memory": "64Mi"},
        },
    }


def readiness_probe(opts):
    if opts.readiness == "health":
        return {"httpGet": {"path": "/healthz/ready", "port": HEALTH_PORT},
                "initialDelaySeconds": 1, "periodSeconds": 2, "timeoutSeconds": 3, "failureThreshold": 30}
    return {"exec": {"command": ["/bin/bash", "-c", ADMIN_READY_SCRIPT]},
            "initialDelaySeconds": 1, "periodSeconds": 2, "timeoutSeconds": 3, "failureThreshold": 30}


def sidecar_container(service_cluster, opts):
    c = {
        "name": SIDECAR_NAME,
        "image": opts.image,
        "args": [
            "-c", "/etc/strait/bootstrap.yaml",
            "--concurrency", str(opts.concurrency),
            "--log-level", opts.log_level,
            "--service-node", "$(POD_NAME).$(POD_NAMESPACE)",
            "--service-cluster", service_cluster,
            # Below the pod's default terminationGracePeriodSeconds (30 s): the drain ends before the kill.
            "--drain-time-s", "20",
        ],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "INSTANCE_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        ],
        # Istio's reserved ports, declared so a clash with the application's ports is visible. Both
        # are excluded from inbound capture.
        "ports": [
            {"name": "strait-health", "containerPort": HEALTH_PORT, "protocol": "TCP"},
            {"name": "strait-prom", "containerPort": PROM_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": readiness_probe(opts),
        "securityContext": {
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_GID,
            "runAsNonRoot": True,
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "resources": {
            "requests": {"cpu": "50m", "memory": "32Mi"},
            "limits": {"cpu": "1", "memory": "256Mi"},
        },
        "volumeMounts": [{"name": BOOTSTRAP_VOLUME, "mountPath": "/etc/strait", "readOnly": True}],
    }
    wait_ready = {"exec": {"command": ["/bin/bash", "-c",
                                       "for _ in $(seq 300); do (" + ADMIN_READY_SCRIPT + ") 2>/dev/null && exit 0; "
                                       "sleep 0.1; done; echo 'strait not ready after 30s' >&2; exit 1"]}}
    if opts.native_sidecar:
        # A native sidecar: the kubelet starts the application once this startup probe passes, and
        # stops strait only after the application has exited.
        c["restartPolicy"] = "Always"
        c["startupProbe"] = dict(readiness_probe(opts), periodSeconds=1, failureThreshold=60)
    else:
        # A classic sidecar listed first: the kubelet does not start the next container before postStart
        # returns, so the application's first connections find the proxy listening.
        c["lifecycle"] = {"postStart": wait_ready}
    return c


def _names(containers):
    return {c.get("name") for c in containers or [] if isinstance(c, dict)}


def inject_pod_template(template, service_cluster, opts, where):
    if not isinstance(template, dict):
        raise InjectError(f"{where}: pod template is not a mapping")
    meta = template.setdefault("metadata", {}) or {}
    template["metadata"] = meta
    annotations = meta.get("annotations") or {}
    spec = template.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("containers"), list) or not spec["containers"]:
        raise InjectError(f"{where}: no spec.containers in the pod template")
    if str(annotations.get(INJECT_ANNOTATION, "true")).lower() == "false":
        print(f"inject.py: {where}: {INJECT_ANNOTATION} is false, left alone", file=sys.stderr)
        return
    if spec.get("hostNetwork"):
        print(f"inject.py: {where}: hostNetwork pod, left alone (capture would take the node's traffic)",
              file=sys.stderr)
        return
    present = _names(spec.get("containers")) | _names(spec.get("initContainers"))
    if SIDECAR_NAME in present or INIT_NAME in present or annotations.get(STATUS_ANNOTATION) == "injected":
        print(f"inject.py: {where}: already injected, left as is", file=sys.stderr)
        return
    for c in spec["containers"]:
        for port in c.get("ports") or []:
            if port.get("containerPort") in (OUTBOUND_PORT, INBOUND_PORT, ADMIN_PORT, HEALTH_PORT, PROM_PORT):
                raise InjectError(f"{where}: container {c.get('name')!r} uses port {port['containerPort']}, "
                                  "which the Strait sidecar reserves")

    sidecar = sidecar_container(service_cluster, opts)
    inits = list(spec.get("initContainers") or [])
    # strait-init first: the rules must be in place before any other container opens a connection.
    inits.insert(0, init_container(annotations, opts))
    if opts.native_sidecar:
        inits.insert(1, sidecar)
        spec["initContainers"] = inits
    else:
        spec["initContainers"] = inits
        spec["containers"] = [sidecar] + spec["containers"]
    volumes = list(spec.get("volumes") or [])
    if BOOTSTRAP_VOLUME in _names(volumes):
        raise InjectError(f"{where}: a volume named {BOOTSTRAP_VOLUME!r} already exists")
    volumes.append({"name": BOOTSTRAP_VOLUME, "configMap": {"name": opts.bootstrap_configmap}})
    spec["volumes"] = volumes
    annotations = dict(annotations)
    annotations[STATUS_ANNOTATION] = "injected"
    meta["annotations"] = annotations


def inject_doc(doc, opts, index):
    if not isinstance(doc, dict):
        return doc
    kind = doc.get("kind")
    name = (doc.get("metadata") or {}).get("name", "?")
    where = f"document {index + 1} ({kind} {name})"
    if kind == "List":
        doc["items"] = [inject_doc(item, opts, index) for item in doc.get("items") or []]
        return doc
    if kind == "Pod":
        labels = (doc.get("metadata") or {}).get("labels") or {}
        inject_pod_template(doc, labels.get("app", name), opts, where)
        return doc
    path = POD_TEMPLATE_PATHS.get(kind)
    if path is None:
        return doc
    node = doc
    for key in path:
        if not isinstance(node, dict) or key not in node:
            raise InjectError(f"{where}: no {'.'.join(path)}")
        node = node[key]
    labels = (node.get("metadata") or {}).get("labels") or {} if isinstance(node, dict) else {}
    inject_pod_template(node, labels.get("app", name), opts, where)
    return doc


def main(argv=None):
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        docs = list(yaml.safe_load_all(sys.stdin))
    except yaml.YAMLError as e:
        print(f"inject.py: stdin is not valid YAML: {e}", file=sys.stderr)
        return 1
    try:
        out = [inject_doc(copy.deepcopy(d), opts, i) for i, d in enumerate(docs) if d is not None]
    except InjectError as e:
        print(f"inject.py: {e}", file=sys.stderr)
        return 1
    if not out:
        print("inject.py: no documents on stdin", file=sys.stderr)
        return 1
    yaml.safe_dump_all(out, sys.stdout, sort_keys=False, default_flow_style=False, explicit_start=True, width=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
