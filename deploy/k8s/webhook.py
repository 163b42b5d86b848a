#!/usr/bin/python3
"""The Strait sidecar injector as a mutating admission webhook: inject.py's logic behind HTTPS.

    webhook.py --cert tls.crt --key tls.key [--address 0.0.0.0] [--port 8443] [inject options...]

POST /inject takes an AdmissionReview (admission.k8s.io/v1) for a Pod and answers an AdmissionReview
with the same uid, allowed: true, and a JSONPatch (RFC 6902, base64 in response.patch) that turns the
pod into what `deploy/inject` prints for it. The webhook never denies: a pod it must not inject
(hostNetwork, opted out, already injected, or an input inject.py refuses such as a bad annotation)
is allowed unchanged, with the reason in response.warnings (kubectl shows them). GET /healthz is 200.
The inject options (--hub, --tag, --classic-sidecar, --workload-cert, ...) are inject.py's.
Only the Python standard library is needed (the server imports inject.py from its own directory).
"""

import base64
import copy
import http.server
import json
import os
import ssl
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import inject  # noqa: E402

MAX_BODY = 4 << 20  # an AdmissionReview for one pod; the API server's own limit is 3 MiB


def _pointer(path):
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def json_patch(before, after, path=()):
    """RFC 6902 operations turning before into after: members added, removed or replaced; a changed
    list is replaced whole (the pod's container lists are short)."""
    if isinstance(before, dict) and isinstance(after, dict):
        ops = [{"op": "remove", "path": _pointer(path + (k,))} for k in before if k not in after]
        for k, v in after.items():
            if k not in before:
                ops.append({"op": "add", "path": _pointer(path + (k,)), "value": v})
            else:
                ops += json_patch(before[k], v, path + (k,))
        return ops
    if before == after:
        return []
    return [{"op": "replace", "path": _pointer(path), "value": after}]


def review(body, opts):
    """The AdmissionReview answering body (parsed JSON); raises ValueError on a malformed request."""
    if not isinstance(body, dict) or body.get("kind") != "AdmissionReview" or \
            body.get("apiVersion") != "admission.k8s.io/v1":
        raise ValueError("not an admission.k8s.io/v1 AdmissionReview")
    req = body.get("request")
    if not isinstance(req, dict) or not isinstance(req.get("uid"), str):
        raise ValueError("AdmissionReview without request.uid")
    resp = {"uid": req["uid"], "allowed": True}
    pod = req.get("object")
    kind = (req.get("kind") or {}).get("kind")
    warnings = []
    if kind != "Pod" or not isinstance(pod, dict):
        warnings.append(f"strait injector: request for {kind!r}, not a Pod: left unchanged")
    else:
        meta = pod.get("metadata") or {}
        name = meta.get("name") or (meta.get("generateName") or "") + "*"
        where = f"pod {req.get('namespace', meta.get('namespace', '?'))}/{name}"
        mutated = copy.deepcopy(pod)
        try:
            warnings += inject.inject_pod_template(mutated, inject.workload_name_of_pod(meta), opts, where)
        except inject.InjectError as e:
            warnings.append(f"not injected: {e}")
            mutated = pod
        ops = json_patch(pod, mutated)
        if ops:
            resp["patchType"] = "JSONPatch"
            resp["patch"] = base64.b64encode(json.dumps(ops).encode()).decode()
    if warnings:
        resp["warnings"] = [f"strait: {w}" for w in warnings]
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    opts = None

    def _send(self, code, body, ctype="application/json"):
        data = body if isinstance(body, bytes) else body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/healthz":
            self._send(200, "ok\n", "text/plain")
        else:
            self._send(404, "not found\n", "text/plain")

    def do_POST(self):
        if self.path.split("?")[0] != "/inject":
            self._send(404, "not found\n", "text/plain")
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._send(411, "Content-Length required\n", "text/plain")
            return
        if not 0 < length <= MAX_BODY:
            self._send(413, f"body must be 1..{MAX_BODY} bytes\n", "text/plain")
            return
        try:
            out = review(json.loads(self.rfile.read(length)), self.opts)
        except (ValueError, UnicodeDecodeError) as e:
            self._send(400, f"bad AdmissionReview: {e}\n", "text/plain")
            return
        r = out["response"]
        self.log_message("uid=%s patched=%s warnings=%s", r["uid"], "patch" in r, r.get("warnings", []))
        self._send(200, json.dumps(out))

    def log_message(self, fmt, *args):
        sys.stderr.write("webhook: %s %s\n" % (self.address_string(), fmt % args))


def main(argv=None):
    ap = inject.build_parser("webhook.py")
    ap.description = "The Strait sidecar injector as a mutating admission webhook (AdmissionReview v1 over HTTPS)."
    ap.add_argument("--cert", required=True, help="the server certificate chain (PEM)")
    ap.add_argument("--key", required=True, help="its private key (PEM)")
    ap.add_argument("--address", default="0.0.0.0", help="listen address (default: %(default)s)")
    ap.add_argument("--port", type=int, default=8443, help="listen port (default: %(default)s; 0 picks one)")
    opts = inject.parse_args(sys.argv[1:] if argv is None else argv, "webhook.py", ap)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(opts.cert, opts.key)
    except (OSError, ssl.SSLError) as e:
        print(f"webhook.py: --cert/--key: {e}", file=sys.stderr)
        return 1
    Handler.opts = opts
    srv = http.server.ThreadingHTTPServer((opts.address, opts.port), Handler)
    srv.daemon_threads = True
    # The handshake happens on the first read, in the request's own thread, not in accept().
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True, do_handshake_on_connect=False)
    print(f"webhook: listening on https://{opts.address}:{srv.server_address[1]}/inject", file=sys.stderr, flush=True)
    try:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
