#!/usr/bin/python3
"""Add the Strait sidecar to Kubernetes workloads: the library behind deploy/inject and webhook.py.

    deploy/k8s/inject.py [options] < app.yaml > app-injected.yaml      (or deploy/inject)
    kubectl apply -f deploy/k8s/bootstrap-configmap.yaml -f app-injected.yaml

Reads YAML (or JSON) documents on stdin and prints them on stdout. Every pod template found
(Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob, Pod, and those inside a List) gets:
  * the init container "strait-init" (deploy/strait-iptables.sh or strait-nftables.sh), root with
    NET_ADMIN and NET_RAW only, which installs the capture rules;
  * the proxy "strait" as a native sidecar (an init container with restartPolicy: Always, Kubernetes
    1.29+) whose startupProbe on 15021 /healthz/ready holds the application back until Strait is
    ready, or with --classic-sidecar the first container with a postStart hook that waits for the same;
    uid/gid 1337, read-only root, no capabilities, no privilege escalation;
  * the downward-API environment and node metadata Istio's control plane reads (STRAIT_META_*), the
    node id in Istio's shape (sidecar~IP~POD.NS~NS.svc.cluster.local), status ports 15020/15021;
  * the application's httpGet, tcpSocket and grpc probes rewritten to httpGet 15020
    /app-health/<container>/<livez|readyz|startupz> (Strait runs the originals, which it reads from
    STRAIT_KUBE_APP_PROBERS), so probes keep meaning something when the inbound port is captured;
  * kubectl.kubernetes.io/default-container, prometheus.io/* pointing at Strait's merged metrics (the
    application's own prometheus.io/* move into STRAIT_PROMETHEUS_SCRAPE), strait.io/status: injected.
Other documents pass through unchanged. Comments in the input are not kept (PyYAML drops them).

Pod template annotations (Istio's names are accepted as aliases; ours win when both are set):
  strait.io/inject: "false"                   sidecar.istio.io/inject           leave this pod alone
  traffic.strait.io/includeInboundPorts       traffic.sidecar.istio.io/...      -b  ("*" default)
  traffic.strait.io/excludeInboundPorts       ...                               added to -d
  traffic.strait.io/includeOutboundIPRanges                                     -i  ("*" default)
  traffic.strait.io/excludeOutboundIPRanges                                     -x
  traffic.strait.io/includeOutboundPorts                                        -q
  traffic.strait.io/excludeOutboundPorts                                        -o
  sidecar.strait.io/proxyCPU, proxyMemory,    sidecar.istio.io/proxyCPU, ...    the sidecar's requests
    proxyCPULimit, proxyMemoryLimit                                              and limits

Values are checked at injection (ports 1-65535, CIDRs, quantities): a bad one is an error naming the
annotation, not an init container that crash-loops. Running it on its own output changes nothing.
Not injected, with a message: hostNetwork pods (capture would take the node's traffic) and opted-out
pods. Refused (exit 1): application containers running as uid 1337 (their traffic would bypass the
proxy) or declaring a port Strait reserves. The command needs PyYAML (Debian: python3-yaml); the
library functions, which webhook.py uses, need only the standard library.
"""

import argparse
import copy
import ipaddress
import json
import os
import re
import sys

try:
    import yaml
except ImportError:  # pragma: no cover - depends on the machine; webhook.py needs only the standard library
    yaml = None

PROXY_UID = 1337
PROXY_GID = 1337
ADMIN_PORT = 15000
OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
STATUS_PORT = 15020  # /app-health/..., merged /stats/prometheus
HEALTH_PORT = 15021  # /healthz/ready
PROM_PORT = 15090
RESERVED_PORTS = (ADMIN_PORT, OUTBOUND_PORT, INBOUND_PORT, STATUS_PORT, HEALTH_PORT, PROM_PORT)
DEFAULT_EXCLUDED_INBOUND = [ADMIN_PORT, OUTBOUND_PORT, INBOUND_PORT, STATUS_PORT, HEALTH_PORT, PROM_PORT]
STATUS_ANNOTATION = "strait.io/status"
INJECT_ANNOTATION = "strait.io/inject"
TRAFFIC = "traffic.strait.io/"
SIDECAR_ANN = "sidecar.strait.io/"
# Our annotation names and the Istio names accepted for them.
ALIASES = {
    INJECT_ANNOTATION: "sidecar.istio.io/inject",
    **{TRAFFIC + k: "traffic.sidecar.istio.io/" + k for k in (
        "includeInboundPorts", "excludeInboundPorts", "includeOutboundIPRanges", "excludeOutboundIPRanges",
        "includeOutboundPorts", "excludeOutboundPorts")},
    **{SIDECAR_ANN + k: "sidecar.istio.io/" + k for k in (
        "proxyCPU", "proxyMemory", "proxyCPULimit", "proxyMemoryLimit")},
}
SIDECAR_NAME = "strait"
INIT_NAME = "strait-init"
BOOTSTRAP_VOLUME = "strait-bootstrap"
CERT_VOLUME = "strait-workload-certs"
DEFAULT_HUB = os.environ.get("STRAIT_HUB", "localhost")
DEFAULT_TAG = os.environ.get("STRAIT_TAG", "0.1.0")
WAIT_BIN = "/usr/local/bin/strait-wait"  # in the sidecar image (deploy/strait-wait.c)
PROBE_KINDS = {"livenessProbe": "livez", "readinessProbe": "readyz", "startupProbe": "startupz"}
PROBE_HANDLERS = ("httpGet", "tcpSocket", "grpc")
PROBE_TIMING = ("initialDelaySeconds", "periodSeconds", "timeoutSeconds", "successThreshold",
                "failureThreshold", "terminationGracePeriodSeconds")
# Where the workload certificate volume is mounted in the sidecar, per source.
CERT_MOUNTS = {
    "cert-manager": "/var/run/secrets/strait/workload",
    "spiffe": "/run/secrets/workload-spiffe-uds",
    "sds": "/var/run/strait/sds",
}
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")

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


def build_parser(prog="inject.py"):
    ap = argparse.ArgumentParser(
        prog=prog,
        description="Add the Strait sidecar and its traffic-capture init container to Kubernetes workloads "
                    "read on stdin (YAML or JSON); print the result on stdout.")
    ap.add_argument("--hub", default=DEFAULT_HUB,
                    help="registry prefix of both images (env STRAIT_HUB; default: %(default)s, where "
                         "`podman load` puts deploy/build-image.sh's archives)")
    ap.add_argument("--tag", default=DEFAULT_TAG, help="tag of both images (env STRAIT_TAG; default: %(default)s)")
    ap.add_argument("--image", help="the sidecar image in full (default: HUB/strait:TAG)")
    ap.add_argument("--init-image", help="the init image in full (default: HUB/strait-init:TAG)")
    ap.add_argument("--capture", choices=["iptables", "nftables"], default="iptables",
                    help="which capture script the init container runs (default: %(default)s)")
    ap.add_argument("--bootstrap-configmap", default="strait-bootstrap",
                    help="ConfigMap holding bootstrap.yaml (default: %(default)s)")
    ap.add_argument("--concurrency", type=int, default=2, help="strait worker threads (default: %(default)s)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--native-sidecar", dest="classic_sidecar", action="store_false",
                      help="(the default) strait is a native sidecar: an init container with restartPolicy: "
                           "Always (Kubernetes 1.29+), started before and stopped after the application")
    mode.add_argument("--classic-sidecar", dest="classic_sidecar", action="store_true",
                      help="for clusters before 1.29: strait is the first container, and a postStart hook "
                           "holds the application until it is ready (Jobs then need the app to stop strait)")
    ap.add_argument("--ipv6", action="store_true", help="also capture IPv6 (passes --ipv6 to the init script)")
    ap.add_argument("--log-level", default="info", help="strait --log-level (default: %(default)s)")
    ap.add_argument("--cluster-id", default="Kubernetes", help="STRAIT_META_CLUSTER_ID (default: %(default)s)")
    ap.add_argument("--istio-metrics", action=argparse.BooleanOptionalAction, default=True,
                    help="let Istio's stats filters, when the control plane sends them, count istio_* metrics "
                         "(node metadata STRAIT_ISTIO_METRICS; default: on)")
    ap.add_argument("--drain-time-s", type=int, default=20,
                    help="strait --drain-time-s (default: %(default)s; below the pod's 30 s grace period)")
    ap.add_argument("--min-drain-time-s", type=int, default=5,
                    help="strait --min-drain-time-s: outbound keeps working this long after SIGTERM "
                         "(default: %(default)s)")
    ap.add_argument("--exit-on-zero-active-connections", action="store_true",
                    help="strait ends its drain as soon as no connection is left")
    ap.add_argument("--cpu-request", default="50m", help="sidecar CPU request (default: %(default)s)")
    ap.add_argument("--memory-request", default="32Mi", help="sidecar memory request (default: %(default)s)")
    ap.add_argument("--cpu-limit", default="1", help="sidecar CPU limit (default: %(default)s)")
    ap.add_argument("--memory-limit", default="256Mi", help="sidecar memory limit (default: %(default)s)")
    ap.add_argument("--workload-cert", choices=["none", "cert-manager", "spiffe", "sds"], default="none",
                    help="mount the workload certificate into the sidecar from cert-manager's CSI driver "
                         "(csi.cert-manager.io), the SPIFFE CSI driver (csi.spiffe.io) or a node's SDS "
                         "socket directory (hostPath); the bootstrap or xDS must then refer to it")
    ap.add_argument("--cert-manager-issuer", default="strait-ca",
                    help="cert-manager issuer name (default: %(default)s)")
    ap.add_argument("--cert-manager-issuer-kind", default="ClusterIssuer", choices=["Issuer", "ClusterIssuer"])
    ap.add_argument("--trust-domain", default="cluster.local",
                    help="SPIFFE trust domain of cert-manager certificates (default: %(default)s)")
    ap.add_argument("--sds-socket-dir", default="/var/run/strait/sds",
                    help="the node directory holding the SDS socket (default: %(default)s)")
    ap.set_defaults(classic_sidecar=False)
    return ap


def parse_args(argv, prog="inject.py", ap=None):
    ap = ap or build_parser(prog)
    a = ap.parse_args(argv)
    if a.concurrency < 1:
        ap.error("--concurrency must be at least 1")
    for name in ("cpu_request", "memory_request", "cpu_limit", "memory_limit"):
        if not QUANTITY.match(getattr(a, name)):
            ap.error(f"--{name.replace('_', '-')}: {getattr(a, name)!r} is not a Kubernetes quantity")
    a.image = a.image or f"{a.hub}/strait:{a.tag}"
    a.init_image = a.init_image or f"{a.hub}/strait-init:{a.tag}"
    return a


def annotation(annotations, name, default=None):
    """Our annotation, else its Istio alias, else default."""
    if name in annotations:
        return annotations[name]
    alias = ALIASES.get(name)
    if alias and alias in annotations:
        return annotations[alias]
    return default


def _ports(value, what):
    out = []
    for item in str(value).split(","):
        item = item.strip()
        if not item:
            continue
        if not item.isdigit() or not 1 <= int(item) <= 65535:
            raise InjectError(f"annotation {what}: {item!r} is not a port number (1-65535)")
        out.append(int(item))
    return out


def _cidrs(value, what, star_ok):
    text = str(value).replace(" ", "")
    if text == "*" and star_ok:
        return text
    for item in filter(None, text.split(",")):
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise InjectError(f"annotation {what}: {item!r} is not an IPv4 or IPv6 CIDR") from None
    return text


def capture_args(annotations, opts):
    """The init script's arguments for a pod with these annotations."""
    def ann(key, default=""):
        return annotation(annotations, TRAFFIC + key, default)
    excluded = list(DEFAULT_EXCLUDED_INBOUND)
    for p in _ports(ann("excludeInboundPorts"), TRAFFIC + "excludeInboundPorts"):
        if p not in excluded:
            excluded.append(p)
    include_in = str(ann("includeInboundPorts", "*")).strip()
    if include_in not in ("*", ""):
        include_in = ",".join(map(str, _ports(include_in, TRAFFIC + "includeInboundPorts")))
    args = [
        "-p", str(OUTBOUND_PORT),
        "-z", str(INBOUND_PORT),
        "-u", str(PROXY_UID),
        "-g", str(PROXY_GID),
        "-b", include_in,
        "-d", ",".join(map(str, excluded)),
        "-i", _cidrs(ann("includeOutboundIPRanges", "*"), TRAFFIC + "includeOutboundIPRanges", True),
        "-x", _cidrs(ann("excludeOutboundIPRanges"), TRAFFIC + "excludeOutboundIPRanges", False),
        "-o", ",".join(map(str, _ports(ann("excludeOutboundPorts"), TRAFFIC + "excludeOutboundPorts"))),
        "-q", ",".join(map(str, _ports(ann("includeOutboundPorts"), TRAFFIC + "includeOutboundPorts"))),
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


def _resources(annotations, opts):
    def q(key, default):
        v = str(annotation(annotations, SIDECAR_ANN + key, default)).strip()
        if not QUANTITY.match(v):
            raise InjectError(f"annotation {SIDECAR_ANN + key}: {v!r} is not a Kubernetes quantity")
        return v
    return {"requests": {"cpu": q("proxyCPU", opts.cpu_request), "memory": q("proxyMemory", opts.memory_request)},
            "limits": {"cpu": q("proxyCPULimit", opts.cpu_limit), "memory": q("proxyMemoryLimit", opts.memory_limit)}}


def _field_env(name, path):
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _health_probe(**timing):
    return dict({"httpGet": {"path": "/healthz/ready", "port": HEALTH_PORT}}, **timing)


def sidecar_container(ctx, annotations, opts):
    args = [
        "-c", "/etc/strait/bootstrap.yaml",
        "--concurrency", str(opts.concurrency),
        "--log-level", opts.log_level,
        # Istio's node id shape; the kubelet expands $(VAR) from the env below.
        "--service-node", "sidecar~$(INSTANCE_IP)~$(POD_NAME).$(POD_NAMESPACE)~$(POD_NAMESPACE).svc.cluster.local",
        "--service-cluster", ctx["service_cluster"],
        "--drain-time-s", str(opts.drain_time_s),
        "--min-drain-time-s", str(opts.min_drain_time_s),
        "--status-port", str(STATUS_PORT),
        "--status-port", str(HEALTH_PORT),
    ]
    if opts.exit_on_zero_active_connections:
        args.append("--exit-on-zero-active-connections")
    env = [
        _field_env("POD_NAME", "metadata.name"),
        _field_env("POD_NAMESPACE", "metadata.namespace"),
        _field_env("INSTANCE_IP", "status.podIP"),
        _field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        # Node metadata (merged into the bootstrap's node.metadata by strait).
        _field_env("STRAIT_META_NAME", "metadata.name"),
        _field_env("STRAIT_META_NAMESPACE", "metadata.namespace"),
        _field_env("STRAIT_META_INSTANCE_IPS", "status.podIPs"),
        _field_env("STRAIT_META_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        {"name": "STRAIT_META_CLUSTER_ID", "value": opts.cluster_id},
        {"name": "STRAIT_META_WORKLOAD_NAME", "value": ctx["workload_name"]},
        # Istio's metrics (istio_requests_total, ...) from the istio.stats filters istiod sends, as
        # Envoy in an Istio mesh counts them; without those filters in the config it changes nothing.
        {"name": "STRAIT_META_STRAIT_ISTIO_METRICS", "value": "true" if opts.istio_metrics else "false"},
        # The downward API cannot give the labels as JSON, so they are written here at injection.
        {"name": "STRAIT_METAJSON_LABELS", "value": json.dumps(ctx["labels"], sort_keys=True, separators=(",", ":"))},
    ]
    if ctx["probers"]:
        env.append({"name": "STRAIT_KUBE_APP_PROBERS",
                    "value": json.dumps(ctx["probers"], sort_keys=True, separators=(",", ":"))})
    if ctx["scrape"]:
        env.append({"name": "STRAIT_PROMETHEUS_SCRAPE",
                    "value": json.dumps(ctx["scrape"], sort_keys=True, separators=(",", ":"))})
    mounts = [{"name": BOOTSTRAP_VOLUME, "mountPath": "/etc/strait", "readOnly": True}]
    if opts.workload_cert != "none":
        mounts.append({"name": CERT_VOLUME, "mountPath": CERT_MOUNTS[opts.workload_cert], "readOnly": True})
    c = {
        "name": SIDECAR_NAME,
        "image": opts.image,
        "args": args,
        "env": env,
        # Excluded from inbound capture, so the kubelet's probes and Prometheus reach Strait itself.
        "ports": [
            {"name": "strait-status", "containerPort": STATUS_PORT, "protocol": "TCP"},
            {"name": "strait-health", "containerPort": HEALTH_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": _health_probe(periodSeconds=2, timeoutSeconds=3, failureThreshold=30),
        "securityContext": {
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_GID,
            "runAsNonRoot": True,
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "resources": _resources(annotations, opts),
        "volumeMounts": mounts,
    }
    if opts.classic_sidecar:
        # A classic sidecar listed first: the kubelet does not start the next container before postStart
        # returns. strait-wait (a static helper in the image, which has no shell) polls 15021 for 60 s.
        c["lifecycle"] = {"postStart": {"exec": {"command": [
            WAIT_BIN, str(HEALTH_PORT), "/healthz/ready", "60"]}}}
    else:
        # A native sidecar: the kubelet starts the next init container and the application only once
        # this startup probe has passed, and stops strait after the application has exited.
        c["restartPolicy"] = "Always"
        c["startupProbe"] = _health_probe(periodSeconds=1, timeoutSeconds=3, failureThreshold=600)
    return c


def cert_volume(opts):
    if opts.workload_cert == "cert-manager":
        # csi-driver substitutes ${POD_NAMESPACE} and ${SERVICE_ACCOUNT_NAME} per pod.
        attrs = {
            "csi.cert-manager.io/issuer-name": opts.cert_manager_issuer,
            "csi.cert-manager.io/issuer-kind": opts.cert_manager_issuer_kind,
            "csi.cert-manager.io/uri-sans":
                f"spiffe://{opts.trust_domain}/ns/${{POD_NAMESPACE}}/sa/${{SERVICE_ACCOUNT_NAME}}",
            "csi.cert-manager.io/common-name": "${SERVICE_ACCOUNT_NAME}.${POD_NAMESPACE}",
        }
        return {"name": CERT_VOLUME, "csi": {"driver": "csi.cert-manager.io", "readOnly": True,
                                             "volumeAttributes": attrs}}
    if opts.workload_cert == "spiffe":
        return {"name": CERT_VOLUME, "csi": {"driver": "csi.spiffe.io", "readOnly": True}}
    return {"name": CERT_VOLUME, "hostPath": {"path": opts.sds_socket_dir, "type": "Directory"}}


def _port_number(container, port, where):
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) and not isinstance(port, bool):
        return port
    if isinstance(port, str) and port.isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return p["containerPort"]
    raise InjectError(f"{where}: probe port {port!r} is neither a number nor a port name of the container")


def rewrite_probes(container, where):
    """Rewrites the container's httpGet/tcpSocket/grpc probes to Strait's /app-health/ on 15020;
    returns {path: original handler} for STRAIT_KUBE_APP_PROBERS."""
    probers = {}
    name = container.get("name")
    for field, kind in PROBE_KINDS.items():
        probe = container.get(field)
        if not isinstance(probe, dict):
            continue
        handler = next((h for h in PROBE_HANDLERS if h in probe), None)
        if handler is None:
            continue  # exec probes run inside the container and need nothing
        original = copy.deepcopy(probe[handler])
        pwhere = f"{where}: container {name!r} {field}"
        if handler == "httpGet" and original.get("host"):
            continue  # a probe of another host is not captured: keep it as is
        original["port"] = _port_number(container, original.get("port"), pwhere)
        path = f"/app-health/{name}/{kind}"
        probers[path] = {handler: original, "timeoutSeconds": probe.get("timeoutSeconds", 1)}
        new = {k: v for k, v in probe.items() if k in PROBE_TIMING}
        new["httpGet"] = {"path": path, "port": STATUS_PORT, "scheme": "HTTP"}
        container[field] = new
    return probers


def _check_app_container(c, pod_uid, where):
    cname = c.get("name")
    for port in c.get("ports") or []:
        if port.get("containerPort") in RESERVED_PORTS:
            raise InjectError(f"{where}: container {cname!r} uses port {port['containerPort']}, "
                              "which the Strait sidecar reserves (15000, 15001, 15006, 15020, 15021, 15090)")
    uid = ((c.get("securityContext") or {}).get("runAsUser", pod_uid))
    if uid == PROXY_UID:
        raise InjectError(f"{where}: container {cname!r} runs as uid {PROXY_UID}, Strait's own: its traffic "
                          "would bypass the capture rules; run it as another uid")


def _names(containers):
    return {c.get("name") for c in containers or [] if isinstance(c, dict)}


def inject_pod_template(template, workload_name, opts, where):
    """Injects one pod template in place. Returns the messages for the user (empty when injected
    silently); raises InjectError on input it must refuse."""
    if not isinstance(template, dict):
        raise InjectError(f"{where}: pod template is not a mapping")
    meta = template.get("metadata") or {}
    template["metadata"] = meta
    annotations = meta.get("annotations") or {}
    labels = meta.get("labels") or {}
    spec = template.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("containers"), list) or not spec["containers"]:
        raise InjectError(f"{where}: no spec.containers in the pod template")
    opt_out = annotation(annotations, INJECT_ANNOTATION, labels.get(INJECT_ANNOTATION, labels.get(
        ALIASES[INJECT_ANNOTATION], "true")))
    if str(opt_out).lower() == "false":
        return [f"{where}: {INJECT_ANNOTATION} is false, left alone"]
    if spec.get("hostNetwork"):
        return [f"{where}: hostNetwork pod, left alone (capture would take the node's traffic)"]
    present = _names(spec.get("containers")) | _names(spec.get("initContainers"))
    if SIDECAR_NAME in present or INIT_NAME in present or annotations.get(STATUS_ANNOTATION) == "injected":
        return [f"{where}: already injected, left as is"]
    pod_uid = (spec.get("securityContext") or {}).get("runAsUser")
    for c in spec["containers"]:
        _check_app_container(c, pod_uid, where)
    for v in spec.get("volumes") or []:
        if v.get("name") in (BOOTSTRAP_VOLUME, CERT_VOLUME):
            raise InjectError(f"{where}: a volume named {v['name']!r} already exists")

    probers = {}
    for c in spec["containers"]:
        probers.update(rewrite_probes(c, where))
    scrape = {}
    if str(annotations.get("prometheus.io/scrape", "")).lower() == "true":
        scrape = {"scrape": "true", "path": str(annotations.get("prometheus.io/path", "/metrics")),
                  "port": str(annotations.get("prometheus.io/port", ""))}
        if scrape["port"] and not (scrape["port"].isdigit() and 1 <= int(scrape["port"]) <= 65535):
            raise InjectError(f"{where}: annotation prometheus.io/port: {scrape['port']!r} is not a port number")
    ctx = {"service_cluster": labels.get("app", workload_name), "workload_name": workload_name,
           "labels": labels, "probers": probers, "scrape": scrape}
    sidecar = sidecar_container(ctx, annotations, opts)
    app_name = spec["containers"][0].get("name")
    inits = list(spec.get("initContainers") or [])
    # strait-init first: the rules must be in place before any other container opens a connection.
    # The native sidecar next, so user init containers already find the proxy listening.
    inits.insert(0, init_container(annotations, opts))
    if opts.classic_sidecar:
        spec["containers"] = [sidecar] + spec["containers"]
    else:
        inits.insert(1, sidecar)
    spec["initContainers"] = inits
    volumes = list(spec.get("volumes") or [])
    volumes.append({"name": BOOTSTRAP_VOLUME, "configMap": {"name": opts.bootstrap_configmap}})
    if opts.workload_cert != "none":
        volumes.append(cert_volume(opts))
    spec["volumes"] = volumes
    annotations = dict(annotations)
    annotations[STATUS_ANNOTATION] = "injected"
    annotations.setdefault("kubectl.kubernetes.io/default-container", app_name)
    annotations.update({"prometheus.io/scrape": "true", "prometheus.io/port": str(STATUS_PORT),
                        "prometheus.io/path": "/stats/prometheus"})
    meta["annotations"] = annotations
    return []


def workload_name_of_pod(meta):
    """A bare pod's workload: its name, or for a pod made by a ReplicaSet/Job its generateName
    without the pod-template-hash."""
    if meta.get("name"):
        return meta["name"]
    base = str(meta.get("generateName") or "pod").rstrip("-")
    h = (meta.get("labels") or {}).get("pod-template-hash")
    if h and base.endswith("-" + h):
        base = base[: -len(h) - 1]
    return base


def inject_doc(doc, opts, index, messages):
    if not isinstance(doc, dict):
        return doc
    kind = doc.get("kind")
    name = (doc.get("metadata") or {}).get("name", "?")
    where = f"document {index + 1} ({kind} {name})"
    if kind == "List":
        doc["items"] = [inject_doc(item, opts, index, messages) for item in doc.get("items") or []]
        return doc
    if kind == "Pod":
        messages += inject_pod_template(doc, workload_name_of_pod(doc.get("metadata") or {}), opts, where)
        return doc
    path = POD_TEMPLATE_PATHS.get(kind)
    if path is None:
        return doc
    node = doc
    for key in path:
        if not isinstance(node, dict) or key not in node:
            raise InjectError(f"{where}: no {'.'.join(path)}")
        node = node[key]
    messages += inject_pod_template(node, name, opts, where)
    return doc


def main(argv=None, prog="inject.py"):
    opts = parse_args(sys.argv[1:] if argv is None else argv, prog)
    if yaml is None:
        print(f"{prog}: needs PyYAML (Debian package python3-yaml)", file=sys.stderr)
        return 1
    try:
        docs = list(yaml.safe_load_all(sys.stdin))
    except yaml.YAMLError as e:
        print(f"{prog}: stdin is not valid YAML: {e}", file=sys.stderr)
        return 1
    messages = []
    try:
        out = [inject_doc(copy.deepcopy(d), opts, i, messages) for i, d in enumerate(docs) if d is not None]
    except InjectError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    for m in messages:
        print(f"{prog}: {m}", file=sys.stderr)
    if not out:
        print(f"{prog}: no documents on stdin", file=sys.stderr)
        return 1
    yaml.safe_dump_all(out, sys.stdout, sort_keys=False, default_flow_style=False, explicit_start=True, width=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
