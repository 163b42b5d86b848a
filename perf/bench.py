#!/usr/bin/env python3
"""Side-by-side benchmark driver for Strait (started by perf/run.sh; see perf/README.md).

Starts an upstream nginx, an iperf3 server and the proxies under test (Strait, HAProxy, nginx) on
127.0.0.1 with free ports, pins the proxies to one CPU and the clients plus upstream to the other,
runs every figure with the peers interleaved round by round, and writes a Markdown table, a CSV of
raw numbers and gnuplot PNGs. Only the Python standard library is used.

Every process it starts is recorded and stopped by PID (SIGTERM, then SIGKILL) on exit, on error and
on SIGINT/SIGTERM/SIGHUP. Every client run has a timeout, and the whole run has a deadline.
"""
import argparse
import csv
import datetime
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

# Durations in seconds. "rate" is the fixed request rate of the latency figure (total, all clients).
# hs_t: seconds of each TLS handshake run against sidecar B (openssl s_time -time, whole seconds).
MODES = {
    "quick": dict(runs=3, wrk_d=1, lat_d=3, lat_warm=0.5, mux_d=2, tcp_t=2, warm=1, hs_t=1, deadline=600),
    "full": dict(runs=5, wrk_d=10, lat_d=30, lat_warm=2, mux_d=10, tcp_t=5, warm=2, hs_t=5, deadline=5400),
}
RATE = 1024                      # req/s in total: h1 16 clients x 64/s, h2 4 clients x 256/s
MTLS_RATE = 1000                 # the mesh figure's fixed rate, as in the issue: 16 clients x 62.5/s
HS_CLIENTS = 2                   # parallel openssl s_time processes in the handshake runs
FIGURES = "throughput,latency,h2,tcp,mtls"
SIZES = [("0", "0 B"), ("1k", "1 KiB"), ("64k", "64 KiB")]
PEER_LABEL = {"direct": "direct", "strait": "Strait", "haproxy": "HAProxy", "nginx": "nginx"}
PROXIES = ["strait", "haproxy", "nginx"]

T0 = time.monotonic()
NICE = []                        # ["nice", "-n", N] when --nice is given: applies to everything we start


def log(msg):
    el = time.monotonic() - T0
    print(f"[{int(el) // 60:02d}:{int(el) % 60:02d}] {msg}", flush=True)


class Abort(Exception):
    pass


def on_signal(signum, _frame):
    raise Abort(f"signal {signal.Signals(signum).name}")


# ----------------------------------------------------------------------------------------------
# processes

def free_port(taken=set()):
    while True:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if port not in taken:
            taken.add(port)
            return port


def children_of(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except OSError:
        return False


class Server:
    """A long-running process we started (pinned with taskset), stopped only by its PID."""
    registry = []

    def __init__(self, name, argv, cpu, logpath, with_children=False):
        self.name, self.argv, self.cpu, self.logpath = name, argv, cpu, logpath
        self.with_children = with_children   # nginx: the master forks the worker
        self.proc = None
        self.known_children = []

    def start(self):
        logf = open(self.logpath, "ab")
        self.proc = subprocess.Popen(NICE + ["taskset", "-c", str(self.cpu)] + self.argv, stdout=logf,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        logf.close()
        Server.registry.append(self)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def pids(self):
        """The PIDs whose CPU and memory count for this server (nginx: master and worker)."""
        if self.proc is None or not alive(self.pid):
            return []
        ps = [self.pid]
        if self.with_children:
            kids = children_of(self.pid)
            self.known_children = sorted(set(self.known_children) | set(kids))
            ps += kids
        return ps

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.proc is None:
            return
        self.pids()
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=4)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=4)
        for k in self.known_children:        # only PIDs we saw as this server's own children
            if alive(k):
                try:
                    os.kill(k, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self in Server.registry:
            Server.registry.remove(self)
        self.proc = None


def stop_all():
    for s in list(reversed(Server.registry)):
        try:
            s.stop()
        except Exception as e:          # keep stopping the others
            print(f"warning: stopping {s.name}: {e}", file=sys.stderr)


def proc_cpu_ticks(pids, which=(11, 12)):
    """utime+stime (fields 14 and 15 of /proc/PID/stat) in clock ticks, summed over pids."""
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(fields[i]) for i in which)
        except OSError:
            pass
    return total


def proc_sched_ns(pids):
    """Sum of on-CPU time (ns) of all live threads: a fine-grained cross-check of utime+stime."""
    total = 0
    for p in pids:
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/schedstat") as f:
                    total += int(f.read().split()[0])
        except OSError:
            pass
    return total


def proc_mem_kb(pids, key):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_times(cpu):
    """(busy, steal, total) jiffies of one CPU from /proc/stat, all processes included."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                idle = v[3] + v[4]
                steal = v[7] if len(v) > 7 else 0
                total = sum(v[:8])
                return total - idle - steal, steal, total
    return 0, 0, 0


def wait_port(port, timeout=10.0, server=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if server is not None and not server.running():
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def run_client(argv, cpu, timeout):
    """Runs a client pinned to `cpu`, bounded by `timeout`; returns (rc, stdout+stderr)."""
    try:
        r = subprocess.run(NICE + ["taskset", "-c", str(cpu)] + argv, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=timeout, stdin=subprocess.DEVNULL)
        return r.returncode, r.stdout.decode(errors="replace")
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace")
        return -1, out + f"\n(timed out after {timeout}s)"


# ----------------------------------------------------------------------------------------------
# configurations

def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def nginx_common(run, name):
    tmp = os.path.join(run, f"{name}-tmp")
    os.makedirs(tmp, exist_ok=True)
    user = "user root;\n" if os.geteuid() == 0 else ""
    temps = "".join(f"  {k}_temp_path {tmp}/{k};\n" for k in
                    ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    head = (f"{user}worker_processes 1;\npid {run}/{name}.pid;\n"
            f"error_log {run}/{name}-error.log error;\n"
            "events { worker_connections 8192; }\n")
    return head, temps


def upstream_conf(run, docroot, p_h1, p_h2):
    head, temps = nginx_common(run, "upstream")
    return head + f"""http {{
{temps}  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  sendfile on;
  open_file_cache max=16 inactive=1h;
  open_file_cache_valid 1h;
  default_type application/octet-stream;
  server {{
    listen 127.0.0.1:{p_h1} backlog=4096;
    listen 127.0.0.1:{p_h2} http2 backlog=4096;
    http2_max_requests 10000000;
    http2_max_concurrent_streams 256;
    root {docroot};
  }}
}}
"""


def nginx_proxy_conf(run, port, up):
    head, temps = nginx_common(run, "nginx-proxy")
    return head + f"""http {{
{temps}  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  upstream up {{
    server 127.0.0.1:{up};
    keepalive 256;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffer_size 16k;
      proxy_buffers 16 16k;
      proxy_max_temp_file_size 0;
    }}
  }}
}}
"""


def haproxy_conf(p_h1, p_h2, p_tcp, up, iperf):
    return f"""global
  nbthread 1
  maxconn 4096

defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s

frontend fe_h1
  bind 127.0.0.1:{p_h1}
  default_backend be_http

frontend fe_h2c
  bind 127.0.0.1:{p_h2} proto h2
  default_backend be_http

backend be_http
  server up 127.0.0.1:{up}

frontend fe_tcp
  mode tcp
  bind 127.0.0.1:{p_tcp}
  default_backend be_tcp

backend be_tcp
  mode tcp
  server iperf 127.0.0.1:{iperf}
"""


def strait_conf(p_http, p_tcp, up, iperf):
    def cluster(name, port):
        return {"name": name, "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                                   "port_value": port}}}}]}]}}
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                 "HttpConnectionManager",
        "stat_prefix": "bench_http", "codec_type": "AUTO",
        "route_config": {"name": "bench", "virtual_hosts": [{
            "name": "all", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream_http"}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    tcp = {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
           "stat_prefix": "bench_tcp", "cluster": "upstream_tcp", "idle_timeout": "300s"}
    boot = {
        "node": {"id": "strait-perf", "cluster": "perf"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {"name": "http", "address": {"socket_address": {"address": "127.0.0.1",
                                                                "port_value": p_http}},
                 "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                 "typed_config": hcm}]}]},
                {"name": "tcp", "address": {"socket_address": {"address": "127.0.0.1",
                                                               "port_value": p_tcp}},
                 "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy",
                                                 "typed_config": tcp}]}]},
            ],
            "clusters": [cluster("upstream_http", up), cluster("upstream_tcp", iperf)],
        },
    }
    return json.dumps(boot, indent=1) + "\n"


# --- the mesh path (figure 7): sidecar A (plaintext in, mTLS out) -> sidecar B (mTLS in, plaintext out)

MESH_TD = "cluster.local"
MESH_ID = {"client": f"spiffe://{MESH_TD}/ns/perf/sa/client", "server": f"spiffe://{MESH_TD}/ns/perf/sa/server"}
MESH_DNS = "server.perf.local"   # extra DNS SAN on B's certificate: nginx and HAProxy check a host name
DOWNSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


def make_mesh_pki(run):
    """A mesh root and two ECDSA P-256 workload identities with certs/strait-ca.sh, into run/pki.
    Returns {"root", "client": {"cert", "key", "pem"}, "server": {...}}; "pem" is cert chain + key in
    one file, as HAProxy wants it."""
    ca = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "certs", "strait-ca.sh")
    base = os.path.join(run, "pki")
    steps = [["root", "--dir", f"{base}/ca", "--trust-domain", MESH_TD]]
    for sa in ("client", "server"):
        steps.append(["workload", "--dir", f"{base}/ca", "--out", f"{base}/{sa}", "--ns", "perf", "--sa", sa]
                     + (["--dns", MESH_DNS] if sa == "server" else []))
    for argv in steps:
        try:
            r = subprocess.run(["bash", ca] + argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               timeout=60, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise Abort(f"strait-ca.sh {argv[0]} timed out")
        if r.returncode != 0:
            raise Abort(f"strait-ca.sh {' '.join(argv)} failed: {r.stdout.decode(errors='replace')[-400:]}")
    out = {"root": f"{base}/ca/root-cert.pem"}
    for sa in ("client", "server"):
        d = f"{base}/{sa}"
        with open(f"{d}/cert-chain.pem") as c, open(f"{d}/key.pem") as k:
            pem = c.read().rstrip("\n") + "\n" + k.read()
        write(f"{d}/combined.pem", pem)
        os.chmod(f"{d}/combined.pem", 0o600)
        out[sa] = {"cert": f"{d}/cert-chain.pem", "key": f"{d}/key.pem", "pem": f"{d}/combined.pem"}
    return out


def strait_mesh_conf(side, port, target, pki):
    """Sidecar A: HTTP listener -> cluster to_b over mTLS (client cert, B's URI SAN checked).
    Sidecar B: HTTPS listener requiring a client certificate from the mesh root -> plaintext upstream."""
    cluster_name = "to_b" if side == "a" else "app"
    cluster = {"name": cluster_name, "type": "STATIC", "connect_timeout": "1s",
               "load_assignment": {"cluster_name": cluster_name, "endpoints": [{"lb_endpoints": [
                   {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                                  "port_value": target}}}}]}]}}
    def certs(sa):
        return [{"certificate_chain": {"filename": pki[sa]["cert"]},
                 "private_key": {"filename": pki[sa]["key"]}}]
    if side == "a":
        cluster["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": UPSTREAM_TLS, "common_tls_context": {
                "tls_certificates": certs("client"),
                "validation_context": {"trusted_ca": {"filename": pki["root"]},
                                       "match_typed_subject_alt_names": [
                                           {"san_type": "URI", "matcher": {"exact": MESH_ID["server"]}}]}}}}
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                 "HttpConnectionManager",
        "stat_prefix": f"mesh_{side}", "codec_type": "AUTO",
        "route_config": {"name": "mesh", "virtual_hosts": [{
            "name": "all", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster_name}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    chain = {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
    if side == "b":
        chain["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": DOWNSTREAM_TLS, "require_client_certificate": True, "common_tls_context": {
                "tls_certificates": certs("server"),
                "validation_context": {"trusted_ca": {"filename": pki["root"]}}}}}
    boot = {
        "node": {"id": f"strait-perf-mesh-{side}", "cluster": "perf"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{"name": f"mesh_{side}", "address": {"socket_address": {
                "address": "127.0.0.1", "port_value": port}}, "filter_chains": [chain]}],
            "clusters": [cluster],
        },
    }
    return json.dumps(boot, indent=1) + "\n"


def haproxy_mesh_conf(side, port, target, pki):
    """A: `server ... ssl crt ca-file verify required` with http-reuse always; B: `bind ... ssl crt
    ca-file verify required`. verifyhost on A checks B's DNS SAN (HAProxy cannot match a URI SAN)."""
    head = f"""global
  nbthread 1
  maxconn 4096

defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s

"""
    if side == "a":
        return head + f"""frontend fe_mesh_a
  bind 127.0.0.1:{port}
  default_backend be_to_b

backend be_to_b
  server b 127.0.0.1:{target} ssl crt {pki['client']['pem']} ca-file {pki['root']} verify required verifyhost {MESH_DNS}
"""
    return head + f"""frontend fe_mesh_b
  bind 127.0.0.1:{port} ssl crt {pki['server']['pem']} ca-file {pki['root']} verify required
  default_backend be_app

backend be_app
  server up 127.0.0.1:{target}
"""


def nginx_mesh_conf(run, side, port, target, pki):
    """A: proxy_pass https:// with a client certificate, verification, session reuse and an upstream
    keepalive pool; B: listen ssl with ssl_verify_client on. TLS 1.3 allowed explicitly on both legs
    (nginx 1.22's defaults stop at TLS 1.2; the other two negotiate 1.3)."""
    head, temps = nginx_common(run, f"mesh-nginx-{side}")
    if side == "a":
        listen = f"listen 127.0.0.1:{port} backlog=4096;"
        scheme = "https"
        extra = f"""      proxy_ssl_certificate {pki['client']['cert']};
      proxy_ssl_certificate_key {pki['client']['key']};
      proxy_ssl_trusted_certificate {pki['root']};
      proxy_ssl_verify on;
      proxy_ssl_verify_depth 2;
      proxy_ssl_name {MESH_DNS};
      proxy_ssl_protocols TLSv1.2 TLSv1.3;
      proxy_ssl_session_reuse on;
"""
        tls = ""
    else:
        listen = f"listen 127.0.0.1:{port} ssl backlog=4096;"
        scheme = "http"
        extra = ""
        tls = f"""    ssl_certificate {pki['server']['cert']};
    ssl_certificate_key {pki['server']['key']};
    ssl_client_certificate {pki['root']};
    ssl_verify_client on;
    ssl_verify_depth 2;
    ssl_protocols TLSv1.2 TLSv1.3;
"""
    return head + f"""http {{
{temps}  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  upstream up {{
    server 127.0.0.1:{target};
    keepalive 256;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
  }}
  server {{
    {listen}
{tls}    location / {{
      proxy_pass {scheme}://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffer_size 16k;
      proxy_buffers 16 16k;
      proxy_max_temp_file_size 0;
{extra}    }}
  }}
}}
"""


# ----------------------------------------------------------------------------------------------
# parsing client output

UNITS_T = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def parse_wrk(out):
    r = {}
    m = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    if m:
        r["requests"] = int(m.group(1))
    for pct, val, unit in re.findall(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        r[f"p{pct}_ms"] = float(val) * UNITS_T[unit]
    errs = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errs += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errs += int(m.group(1))
    r["errors"] = errs
    return r


def parse_h2load(out):
    r = {}
    m = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", out)
    if m:
        r["rps"] = float(m.group(2))
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", out)
    if m:
        r["requests"] = int(m.group(4))
        r["errors"] = int(m.group(5)) + int(m.group(6)) + int(m.group(7))
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if m:
        r["errors"] = r.get("errors", 0) + int(m.group(3)) + int(m.group(4))
        r["ok2xx"] = int(m.group(1))
    return r


def percentile(sorted_vals, q):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, int(round(q / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def latency_from_log(path):
    vals = []
    with open(path) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 3 and parts[1].startswith("2"):
                vals.append(int(parts[2]) / 1000.0)         # us -> ms
    vals.sort()
    return {f"p{q}_ms": percentile(vals, q) for q in (50, 90, 99)} | {"samples": len(vals)}


def parse_s_time(out):
    """openssl s_time -new: 'N connections in T real seconds, B bytes read per connection'."""
    r = {}
    m = re.search(r"(\d+) connections in [\d.]+s; [\d.]+ connections/user sec", out)
    if m:
        r["handshakes"] = int(m.group(1))
    m = re.search(r"(\d+) connections in (\d+) real seconds, (\d+) bytes read per connection", out)
    if m:
        r["handshakes"] = int(m.group(1))
        r["bytes_per_conn"] = int(m.group(3))
    return r


def tls_exchange(port, ctx, request, timeout=3.0):
    """Sends `request` over TLS to 127.0.0.1:port and reads until the server closes. Returns
    (reply bytes, TLS version, cipher); raises OSError / ssl.SSLError (socket.timeout if the server
    does not close within `timeout`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw) as s:
            s.sendall(request)
            got = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
            return got, s.version(), (s.cipher() or ("?",))[0]


def tcp_conns(port):
    """(ESTABLISHED sockets whose local port is `port`, TIME_WAIT sockets on either end of it), from
    /proc/net/tcp: after a keep-alive run, few and none mean A reused its connections to B."""
    estab = tw = 0
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                v = line.split()
                lp, rp, st = int(v[1].rsplit(":", 1)[1], 16), int(v[2].rsplit(":", 1)[1], 16), v[3]
                if st == "01" and lp == port:
                    estab += 1
                elif st == "06" and port in (lp, rp):
                    tw += 1
    except (OSError, ValueError, IndexError, StopIteration):
        pass
    return estab, tw


def tls_client_ctx(pki, with_cert):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(pki["root"])
    if with_cert:
        ctx.load_cert_chain(pki["client"]["cert"], pki["client"]["key"])
    return ctx


def run_clients(argvs, cpu, timeout):
    """Runs several clients at once, each pinned to `cpu`, all bounded by `timeout`; a client still
    running then is killed by its PID. Returns [(rc, stdout+stderr)]."""
    procs = []
    try:
        for argv in argvs:
            f = tempfile.TemporaryFile()
            procs.append((subprocess.Popen(NICE + ["taskset", "-c", str(cpu)] + argv, stdout=f,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL), f))
        end = time.monotonic() + timeout
        out = []
        for pr, f in procs:
            try:
                rc = pr.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pr.kill()
                pr.wait(timeout=5)
                rc = -1
            f.seek(0)
            text = f.read().decode(errors="replace")
            out.append((rc, text + (f"\n(timed out after {timeout}s)" if rc == -1 else "")))
        return out
    finally:                              # on Abort (a signal) too: no client outlives the call
        for pr, f in procs:
            if pr.poll() is None:
                pr.kill()
                pr.wait(timeout=5)
            f.close()


# ----------------------------------------------------------------------------------------------
# the benchmark

class Bench:
    def __init__(self, args):
        self.a = args
        self.m = MODES[args.mode]
        self.pcpu, self.ccpu = args.proxy_cpu, args.client_cpu
        self.rows = []                    # raw CSV rows
        self.notes = []                   # things that went wrong, for the report
        self.broken = {}                  # (peer, proto) -> reason
        self.servers = {}
        self.restarts = {p: 0 for p in PROXIES}
        self.crashes = {}
        self.strait_stats = {}
        self.mem = {}                     # peer -> {"idle_rss_kb", "hwm_h1_kb", "hwm_end_kb"}
        self.step, self.steps = 0, 0
        self.mesh, self.mesh_ports, self.mesh_tls, self.mesh_stats = {}, {}, {}, {}   # figure 7
        self.deadline = time.monotonic() + self.m["deadline"]
        with open("/proc/loadavg") as f:
            self.loadavg_start = " ".join(f.read().split()[:3])

    # --- setup ------------------------------------------------------------------------------
    def setup(self):
        run = self.run = self.a.run_dir
        docroot = os.path.join(run, "www")
        os.makedirs(docroot, exist_ok=True)
        for name, n in (("0", 0), ("1k", 1024), ("64k", 65536)):
            with open(os.path.join(docroot, name), "wb") as f:
                f.write((b"0123456789abcdef" * (n // 16 + 1))[:n])
        P = self.ports = {k: free_port() for k in
                          ("up_h1", "up_h2", "iperf", "strait_http", "strait_tcp", "hap_h1", "hap_h2",
                           "hap_tcp", "nginx_h1")}
        write(os.path.join(run, "upstream.conf"), upstream_conf(run, docroot, P["up_h1"], P["up_h2"]))
        write(os.path.join(run, "nginx-proxy.conf"), nginx_proxy_conf(run, P["nginx_h1"], P["up_h1"]))
        write(os.path.join(run, "haproxy.cfg"),
              haproxy_conf(P["hap_h1"], P["hap_h2"], P["hap_tcp"], P["up_h1"], P["iperf"]))
        write(os.path.join(run, "strait.json"),
              strait_conf(P["strait_http"], P["strait_tcp"], P["up_h1"], P["iperf"]))
        self.urls = {
            "direct": {"h1": f"http://127.0.0.1:{P['up_h1']}", "h2": f"http://127.0.0.1:{P['up_h2']}",
                       "tcp": P["iperf"]},
            "strait": {"h1": f"http://127.0.0.1:{P['strait_http']}",
                       "h2": f"http://127.0.0.1:{P['strait_http']}", "tcp": P["strait_tcp"]},
            "haproxy": {"h1": f"http://127.0.0.1:{P['hap_h1']}", "h2": f"http://127.0.0.1:{P['hap_h2']}",
                        "tcp": P["hap_tcp"]},
            "nginx": {"h1": f"http://127.0.0.1:{P['nginx_h1']}"},
        }
        log(f"run dir {run} (configs and logs); ports {P}")

        # upstream and iperf3 server share the client CPU
        up = Server("upstream-nginx", ["nginx", "-p", run, "-e", f"{run}/upstream-error.log", "-c",
                                       f"{run}/upstream.conf", "-g", "daemon off;"],
                    self.ccpu, f"{run}/upstream.log", with_children=True).start()
        if not (wait_port(P["up_h1"], server=up) and wait_port(P["up_h2"], server=up)):
            raise Abort(f"upstream nginx did not start; see {run}/upstream.log, upstream-error.log")
        self.servers["upstream"] = up
        self.start_iperf()
        for p in PROXIES:
            self.start_proxy(p)
        time.sleep(1.0)
        for p in PROXIES:
            s = self.servers[p]
            self.mem[p] = {"idle_rss_kb": proc_mem_kb(s.pids(), "VmRSS")}
        log("idle RSS: " + ", ".join(f"{PEER_LABEL[p]} {self.mem[p]['idle_rss_kb'] / 1024:.1f} MB"
                                     for p in PROXIES))

    def start_iperf(self):
        s = Server("iperf3", ["iperf3", "-s", "-B", "127.0.0.1", "-p", str(self.ports["iperf"])],
                   self.ccpu, f"{self.run}/iperf3.log").start()
        if not wait_port(self.ports["iperf"], server=s):
            raise Abort(f"iperf3 server did not start; see {self.run}/iperf3.log")
        self.servers["iperf"] = s

    def start_proxy(self, p):
        run, P = self.run, self.ports
        n = self.restarts[p]
        if p == "strait":
            admin = f"{run}/strait-admin.txt"
            if os.path.exists(admin):
                os.unlink(admin)
            s = Server("strait", [self.a.strait, "-c", f"{run}/strait.json", "--concurrency", "1",
                                  "--admin-address-path", admin, "-l", "error", "--drain-time-s", "1"],
                       self.pcpu, f"{run}/strait.log").start()
            ports = [P["strait_http"], P["strait_tcp"]]
        elif p == "haproxy":
            s = Server("haproxy", ["haproxy", "-db", "-f", f"{run}/haproxy.cfg"], self.pcpu,
                       f"{run}/haproxy.log").start()
            ports = [P["hap_h1"], P["hap_h2"], P["hap_tcp"]]
        else:
            s = Server("nginx-proxy", ["nginx", "-p", run, "-e", f"{run}/nginx-proxy-error.log", "-c",
                                       f"{run}/nginx-proxy.conf", "-g", "daemon off;"],
                       self.pcpu, f"{run}/nginx-proxy.log", with_children=True).start()
            ports = [P["nginx_h1"]]
        if not all(wait_port(pt, server=s) for pt in ports):
            s.stop()
            raise Abort(f"{p} did not start (attempt {n + 1}); see {run}/{s.name}.log")
        if p == "strait":
            if not self.wait_ready(f"{run}/strait-admin.txt", s):
                s.stop()
                raise Abort(f"strait never answered /ready; see {run}/strait.log")
        if p == "nginx":
            end = time.monotonic() + 5
            while len(s.pids()) < 2 and time.monotonic() < end:
                time.sleep(0.05)
        self.servers[p] = s
        return s

    def wait_ready(self, admin_file, server, timeout=10):
        end = time.monotonic() + timeout
        while time.monotonic() < end and server.running():
            try:
                with open(admin_file) as f:
                    hostport = f.read().strip()
                host, port = hostport.rsplit(":", 1)
                c = http.client.HTTPConnection(host, int(port), timeout=1)
                c.request("GET", "/ready")
                ok = c.getresponse().status == 200
                c.close()
                if ok:
                    return True
            except (OSError, ValueError, http.client.HTTPException):
                pass
            time.sleep(0.05)
        return False

    def admin_stats(self, admin_file=None):
        """Strait's /stats counters (name -> int), for the connection-reuse line of the report."""
        out = {}
        try:
            with open(admin_file or f"{self.run}/strait-admin.txt") as f:
                host, port = f.read().strip().rsplit(":", 1)
            c = http.client.HTTPConnection(host, int(port), timeout=3)
            c.request("GET", "/stats")
            for line in c.getresponse().read().decode(errors="replace").splitlines():
                k, _, v = line.partition(": ")
                if v.strip().isdigit():
                    out[k] = int(v)
            c.close()
        except (OSError, ValueError, http.client.HTTPException):
            pass
        return out

    def ensure_alive(self, p, what, proto=None):
        """After a run: if a proxy died, say so, restart it and return False. A proxy that dies
        twice in one protocol's figures is marked broken for that protocol (saves the time)."""
        if p == "direct" or self.servers[p].running():
            return True
        if proto:
            self.crashes[(p, proto)] = self.crashes.get((p, proto), 0) + 1
            if self.crashes[(p, proto)] >= 2:
                self.mark((p, proto), f"crashed {self.crashes[(p, proto)]} times under load")
        rc = self.servers[p].proc.returncode
        why = f"signal {signal.Signals(-rc).name}" if rc is not None and rc < 0 else f"exit {rc}"
        self.notes.append(f"{PEER_LABEL[p]} died ({why}) during {what}; restarted "
                          f"(log: {self.run}/{self.servers[p].name}.log)")
        log(f"  !! {PEER_LABEL[p]} died ({why}) during {what}; restarting")
        self.servers[p].stop()
        self.restarts[p] += 1
        if self.restarts[p] > 20:
            raise Abort(f"{p} keeps dying; giving up")
        self.start_proxy(p)
        return False

    # --- sanity -----------------------------------------------------------------------------
    def skip(self, p, proto, size="1k"):
        """True when p's figures for proto (and this body size) are not to be run."""
        return (p, proto) in self.broken or (p, proto, size) in self.broken

    def mark(self, key, why):
        if key not in self.broken:
            self.broken[key] = why
            what = " ".join([key[1].upper()] + ([dict(SIZES)[key[2]]] if len(key) > 2 else []))
            self.notes.append(f"{PEER_LABEL[key[0]]} {what}: {why}; those runs are skipped")
            log(f"  !! {PEER_LABEL[key[0]]} {what}: {why}")

    def responsive(self, p):
        """A fresh connection still gets GET /1k answered within 2 s."""
        port = int(self.urls[p]["h1"].rsplit(":", 1)[1])
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/1k")
            r = c.getresponse()
            ok = r.status == 200 and len(r.read()) == 1024
            c.close()
            return ok
        except (OSError, http.client.HTTPException):
            return False

    def sanity(self):
        """Before any figure, checks every peer returns the right bodies for each size, twice on one
        keep-alive connection (HTTP/1.1) and four streams on one h2c connection. A failing size is
        skipped in the figures; a proxy that dies or stops answering is restarted so the remaining
        figures (TCP above all) run against a healthy process."""
        for p in ["direct"] + PROXIES:
            for proto in ("h1", "h2"):
                if proto not in self.urls[p]:
                    continue
                for size, label in SIZES:
                    err = self.check_h1(p, size) if proto == "h1" else self.check_h2(p, size)
                    if p != "direct":
                        if not self.ensure_alive(p, f"the {proto.upper()} {label} sanity check"):
                            err = (err or "ok") + "; then the process died"
                        elif err and not self.responsive(p):
                            err += "; then it stopped answering new connections (restarted)"
                            self.notes.append(f"{PEER_LABEL[p]} hung after the {proto.upper()} {label} "
                                              f"check (CPU of its threads: {self.thread_cpu(p)}); restarted")
                            self.servers[p].stop()
                            self.restarts[p] += 1
                            self.start_proxy(p)
                    if err:
                        self.mark((p, proto, size), f"sanity check failed: {err}")
                    else:
                        log(f"  {PEER_LABEL[p]} {proto} {label}: OK")
        if any(k[0] == "direct" and k[1] == "h1" for k in self.broken):
            raise Abort("the upstream itself fails; see the notes")

    def thread_cpu(self, p):
        """% CPU of each thread over 0.5 s (a spinning worker shows ~100)."""
        pid = self.servers[p].pid
        def ticks():
            out = {}
            for t in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{t}/stat") as f:
                    v = f.read().rsplit(")", 1)[1].split()
                out[t] = int(v[11]) + int(v[12])
            return out
        try:
            a = ticks()
            time.sleep(0.5)
            b = ticks()
            return ", ".join(f"{t}: {100.0 * (b[t] - a.get(t, 0)) / CLK_TCK / 0.5:.0f}%" for t in sorted(b))
        except OSError:
            return "?"

    def check_h1(self, p, size):
        return self.check_h1_port(int(self.urls[p]["h1"].rsplit(":", 1)[1]), size)

    def check_h1_port(self, port, size):
        n = dict((s, b) for s, b in (("0", 0), ("1k", 1024), ("64k", 65536)))[size]
        got = 0
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
            for i in range(2):                 # the second request reuses the connection
                c.request("GET", f"/{size}")
                r = c.getresponse()
                got = 0
                while True:
                    chunk = r.read(8192)
                    if not chunk:
                        break
                    got += len(chunk)
                if r.status != 200 or got != n:
                    return f"GET /{size} #{i + 1}: status {r.status}, {got} bytes (want 200, {n})"
                if r.getheader("connection", "").lower() == "close":
                    return f"GET /{size}: the proxy closed a keep-alive connection"
            c.close()
        except (OSError, http.client.HTTPException) as e:
            return f"GET /{size}: {type(e).__name__}: {e}" + (f" after {got} body bytes" if got else "")
        return None

    def check_h2(self, p, size):
        n = dict((s, b) for s, b in (("0", 0), ("1k", 1024), ("64k", 65536)))[size]
        rc, out = run_client(["h2load", "-n", "4", "-c", "1", "-m", "4", f"{self.urls[p]['h2']}/{size}"],
                             self.ccpu, 6)
        r = parse_h2load(out)
        if rc != 0 or r.get("ok2xx") != 4:
            return f"h2c GET /{size} x4: " + ("timed out" if rc == -1 else
                                               f"{r.get('ok2xx', 0)} of 4 answered 2xx")
        m = re.search(r"traffic: .*?, ([\d.]+\w*) \((\d+)\) data", out)
        if m and int(m.group(2)) < 4 * n:
            return f"h2c GET /{size}: {m.group(2)} body bytes for 4 requests (want {4 * n})"
        return None

    # --- measurement helpers ----------------------------------------------------------------
    def progress(self, what):
        self.step += 1
        el = time.monotonic() - T0
        eta = el / max(1, self.step - 1) * (self.steps - self.step + 1) if self.step > 1 else 0
        log(f"({self.step}/{self.steps}, ~{int(eta)}s left) {what}")
        if time.monotonic() > self.deadline:
            raise Abort(f"deadline of {self.m['deadline']}s passed")

    def record(self, fig, peer, variant, rnd, metrics):
        for k, v in metrics.items():
            if v is not None:
                self.rows.append({"figure": fig, "peer": peer, "variant": variant, "round": rnd,
                                  "metric": k, "value": v})

    def measure(self, p, fn, servers=None, parts=None):
        """Runs fn() and adds the proxy's CPU time and wall time around it. `servers` (default: the
        proxy p) are summed, e.g. both sidecars of a mesh pair; with `parts` (one label per server)
        each one's CPU seconds are added too, as cpu_<label>_s."""
        if servers is None:
            servers = [self.servers[p]] if p != "direct" else []
        per = [s.pids() for s in servers]
        pids = [x for ps in per for x in ps]
        s0 = {c: cpu_times(c) for c in (self.pcpu, self.ccpu)}
        t0, c0, n0 = time.monotonic(), proc_cpu_ticks(pids), proc_sched_ns(pids)
        u0 = proc_cpu_ticks(pids, (11,))
        part0 = [proc_cpu_ticks(ps) for ps in per]
        res = fn()
        wall = time.monotonic() - t0
        for c, key in ((self.pcpu, "proxycpu"), (self.ccpu, "clientcpu")):
            b1, st1, t1 = cpu_times(c)
            dt = max(1, t1 - s0[c][2])
            res[f"{key}_busy_pct"] = 100.0 * (b1 - s0[c][0]) / dt     # everything on that CPU
            res[f"{key}_steal_pct"] = 100.0 * (st1 - s0[c][1]) / dt
        if pids:
            pids2 = [x for s in servers if s.running() for x in s.pids()]
            if pids2 == pids:
                res["cpu_s"] = (proc_cpu_ticks(pids) - c0) / CLK_TCK
                res["cpu_user_s"] = (proc_cpu_ticks(pids, (11,)) - u0) / CLK_TCK
                res["cpu_sys_s"] = res["cpu_s"] - res["cpu_user_s"]
                res["cpu_sched_s"] = (proc_sched_ns(pids) - n0) / 1e9
                res["wall_s"] = wall
                for label, ps, c in zip(parts or [], per, part0):
                    res[f"cpu_{label}_s"] = (proc_cpu_ticks(ps) - c) / CLK_TCK
        return res

    def add_cpu_metrics(self, res, duration):
        if "cpu_s" in res and res.get("requests"):
            res["cpu_us_per_req"] = res["cpu_s"] / res["requests"] * 1e6
            res["cpu_busy_pct"] = 100.0 * res["cpu_s"] / res.get("wall_s", duration)
        return res

    def peers_for(self, proto):
        return [p for p in ["direct"] + PROXIES if proto in self.urls[p]]

    # --- figures ----------------------------------------------------------------------------
    def warmup(self):
        for p in ["direct"] + PROXIES:
            if self.skip(p, "h1", "1k"):
                continue
            self.progress(f"warm-up {PEER_LABEL[p]}")
            run_client(["wrk", "-t1", "-c64", f"-d{self.m['warm']}s", f"{self.urls[p]['h1']}/1k"],
                       self.ccpu, self.m["warm"] + 15)
            self.ensure_alive(p, "warm-up", "h1")

    def fig_throughput(self):
        d = self.m["wrk_d"]
        for size, label in SIZES:
            for rnd in range(1, self.m["runs"] + 1):
                for p in self.peers_for("h1"):
                    if self.skip(p, "h1", size):
                        continue
                    self.progress(f"HTTP/1.1 throughput {label} round {rnd} {PEER_LABEL[p]}")

                    def go():
                        rc, out = run_client(["wrk", "-t1", "-c64", f"-d{d}s", "--latency",
                                              f"{self.urls[p]['h1']}/{size}"], self.ccpu, d + 30)
                        r = parse_wrk(out)
                        if rc != 0 or "rps" not in r:
                            r["failed"] = 1
                            self.notes.append(f"wrk {PEER_LABEL[p]} {label} round {rnd} failed: "
                                              f"{out.strip()[-300:]}")
                        return r
                    r = self.add_cpu_metrics(self.measure(p, go), d)
                    if not self.ensure_alive(p, f"HTTP/1.1 throughput {label}", "h1"):
                        r = {"failed": 1}
                    self.flag_errors(r, p, f"HTTP/1.1 {label} round {rnd}")
                    self.record("h1_throughput", p, size, rnd, r)
                    if "rps" in r:
                        extra = (f", proxy CPU {r['cpu_busy_pct']:.0f}%, {r['cpu_us_per_req']:.1f} us/req"
                                 if "cpu_busy_pct" in r else "")
                        log(f"    {r['rps']:,.0f} req/s, p99 {r.get('p99_ms', float('nan')):.2f} ms{extra}")
        for p in PROXIES:
            self.mem[p]["hwm_h1_kb"] = proc_mem_kb(self.servers[p].pids(), "VmHWM")

    def flag_errors(self, r, p, what):
        if r.get("errors") and r.get("requests"):
            frac = r["errors"] / max(1, r["requests"])
            if frac > 0.001:
                self.notes.append(f"{PEER_LABEL[p]} {what}: {r['errors']} errors out of "
                                  f"{r['requests']} requests")

    def fig_latency(self, proto):
        d, w = self.m["lat_d"], self.m["lat_warm"]
        if proto == "h1":
            shape = ["--h1", "-c16", f"--rps={RATE / 16:g}"]
        else:
            shape = ["-c4", "-m4", f"--rps={RATE / 4:g}"]
        for rnd in range(1, self.m["runs"] + 1):
            for p in self.peers_for(proto):
                if self.skip(p, proto):
                    continue
                self.progress(f"{'HTTP/1.1' if proto == 'h1' else 'HTTP/2'} latency at {RATE} req/s "
                              f"round {rnd} {PEER_LABEL[p]}")
                logfile = f"{self.run}/lat-{proto}-{p}-{rnd}.tsv"

                def go():
                    rc, out = run_client(["h2load"] + shape + [f"-D{d}", f"--warm-up-time={int(w * 1000)}ms",
                                                               f"--log-file={logfile}",
                                                               f"{self.urls[p][proto]}/1k"],
                                         self.ccpu, d + w + 30)
                    r = parse_h2load(out)
                    if rc != 0 or not r.get("requests"):
                        r["failed"] = 1
                        self.notes.append(f"h2load {proto} latency {PEER_LABEL[p]} round {rnd} failed: "
                                          f"{out.strip()[-300:]}")
                    elif os.path.exists(logfile):
                        r |= latency_from_log(logfile)
                    return r
                # Strait's own long loop iterations during the run (server.worker_<i>.*): a tail that
                # comes with none is not Strait's work but waiting for a CPU or the network.
                st0 = self.admin_stats() if p == "strait" else None
                r = self.measure(p, go)
                if st0 is not None:
                    st1 = self.admin_stats()
                    if st1:
                        def over(st):
                            return sum(v for k, v in st.items() if k.endswith("loop_iterations_over_1ms"))
                        r["loop_over_1ms"] = over(st1) - over(st0)
                        r["loop_max_us"] = max((v for k, v in st1.items()
                                                if k.endswith("loop_max_iteration_usec")), default=0)
                if "cpu_s" in r and r.get("requests"):
                    # vCPU per 1000 req/s: CPU seconds / wall seconds / (achieved rate / 1000). h2load
                    # counts requests of the main phase only, while the CPU window also covers the
                    # warm-up at the same rate, hence rates rather than totals.
                    achieved = r["requests"] / d
                    r["vcpu_per_krps"] = (r["cpu_s"] / r["wall_s"]) / (achieved / 1000.0)
                    r["cpu_us_per_req"] = (r["cpu_s"] / r["wall_s"]) / achieved * 1e6
                if not self.ensure_alive(p, f"{proto} latency", proto):
                    r = {"failed": 1}
                self.flag_errors(r, p, f"{proto} latency round {rnd}")
                self.record(f"{proto}_latency", p, "1k", rnd, r)
                if "p50_ms" in r:
                    log(f"    p50 {r['p50_ms']:.3f} p90 {r['p90_ms']:.3f} p99 {r['p99_ms']:.3f} ms"
                        + (f", {r['vcpu_per_krps']:.3f} vCPU per 1000 req/s" if "vcpu_per_krps" in r
                           else ""))

    def fig_h2_mux(self):
        d, w = self.m["mux_d"], self.m["lat_warm"]
        for rnd in range(1, self.m["runs"] + 1):
            for p in self.peers_for("h2"):
                if self.skip(p, "h2"):
                    continue
                self.progress(f"HTTP/2 multiplexed throughput round {rnd} {PEER_LABEL[p]}")

                def go():
                    rc, out = run_client(["h2load", "-c16", "-m10", f"-D{d}", f"--warm-up-time={int(w * 1000)}ms",
                                          f"{self.urls[p]['h2']}/1k"], self.ccpu, d + w + 30)
                    r = parse_h2load(out)
                    if rc != 0 or "rps" not in r:
                        r["failed"] = 1
                        self.notes.append(f"h2load mux {PEER_LABEL[p]} round {rnd} failed: "
                                          f"{out.strip()[-300:]}")
                    return r
                r = self.measure(p, go)
                if "cpu_s" in r and r.get("requests"):
                    # per-request CPU from rates: the CPU window includes the warm-up, the request
                    # count (and req/s) covers the main phase only
                    r["cpu_busy_pct"] = 100.0 * r["cpu_s"] / r["wall_s"]
                    r["cpu_us_per_req"] = (r["cpu_s"] / r["wall_s"]) / r["rps"] * 1e6
                if not self.ensure_alive(p, "HTTP/2 multiplexed throughput", "h2"):
                    r = {"failed": 1}
                self.flag_errors(r, p, f"HTTP/2 multiplexed round {rnd}")
                self.record("h2_throughput", p, "1k", rnd, r)
                if "rps" in r:
                    log(f"    {r['rps']:,.0f} req/s")

    def fig_tcp(self):
        t = self.m["tcp_t"]
        for rnd in range(1, self.m["runs"] + 1):
            for p in self.peers_for("tcp"):
                if self.skip(p, "tcp"):
                    continue
                self.progress(f"TCP bulk (iperf3 -t {t}) round {rnd} {PEER_LABEL[p]}")

                def go():
                    for _attempt in range(5):
                        rc, out = run_client(["iperf3", "-c", "127.0.0.1", "-p", str(self.urls[p]["tcp"]),
                                              "-t", str(t), "-J"], self.ccpu, t + 20)
                        if "server is busy" not in out:
                            break
                        time.sleep(0.5)            # the previous test is still closing server-side
                    r = {}
                    try:
                        j = json.loads(out[out.index("{"):])
                        r["gbit_s"] = j["end"]["sum_received"]["bits_per_second"] / 1e9
                        r["bytes"] = j["end"]["sum_received"]["bytes"]
                    except (ValueError, KeyError) as e:
                        r["failed"] = 1
                        self.notes.append(f"iperf3 via {PEER_LABEL[p]} round {rnd} failed: "
                                          f"{type(e).__name__} {out.strip()[-300:]}")
                        self.servers["iperf"].stop()       # a half-done test can wedge the server
                        self.start_iperf()
                    return r
                r = self.measure(p, go)
                if "cpu_s" in r and r.get("bytes"):
                    r["cpu_s_per_gbyte"] = r["cpu_s"] / (r["bytes"] / 1e9)
                if not self.ensure_alive(p, "TCP bulk", "tcp"):
                    r = {"failed": 1}
                self.record("tcp_throughput", p, "bulk", rnd, r)
                if "gbit_s" in r:
                    log(f"    {r['gbit_s']:.2f} Gbit/s")

    # --- figure 7: the mesh path --------------------------------------------------------------
    # client -> sidecar A (plaintext HTTP/1.1 in, mTLS out) -> sidecar B (mTLS in, plaintext out)
    # -> upstream nginx, for each proxy kind as both sidecars; A and B both pinned to the proxy CPU.
    def mesh_setup(self):
        run = self.run
        self.pki = make_mesh_pki(run)
        log(f"mesh PKI in {run}/pki: root, {MESH_ID['client']}, {MESH_ID['server']} (ECDSA P-256)")
        self.mesh = {}
        self.mesh_ports = {p: {"a": free_port(), "b": free_port()} for p in PROXIES}
        self.mesh_tls = {}
        self.mesh_stats = {}
        up = self.ports["up_h1"]
        for p in PROXIES:
            pa, pb = self.mesh_ports[p]["a"], self.mesh_ports[p]["b"]
            for side, port, target in (("a", pa, pb), ("b", pb, up)):
                if p == "strait":
                    write(f"{run}/mesh-strait-{side}.json", strait_mesh_conf(side, port, target, self.pki))
                elif p == "haproxy":
                    write(f"{run}/mesh-haproxy-{side}.cfg", haproxy_mesh_conf(side, port, target, self.pki))
                else:
                    write(f"{run}/mesh-nginx-{side}.conf", nginx_mesh_conf(run, side, port, target, self.pki))
        log(f"mesh ports (A plaintext, B mTLS): {self.mesh_ports}")
        for p in PROXIES:
            try:
                self.start_mesh(p)
            except Abort as e:
                self.mark((p, "mtls"), str(e))
        time.sleep(1.0)
        for p in self.mesh:
            self.mem.setdefault(p, {})["mtls_pair_idle_rss_kb"] = proc_mem_kb(self.mesh_pids(p), "VmRSS")

    def mesh_pids(self, p):
        return [x for side in ("a", "b") for x in self.mesh[p][side].pids()]

    def start_mesh(self, p):
        """Starts B, then A; raises Abort if either does not come up."""
        run, pair = self.run, {}
        for side in ("b", "a"):
            port = self.mesh_ports[p][side]
            name = f"mesh-{'nginx' if p == 'nginx' else p}-{side}"
            if p == "strait":
                admin = f"{run}/{name}-admin.txt"
                if os.path.exists(admin):
                    os.unlink(admin)
                s = Server(name, [self.a.strait, "-c", f"{run}/{name}.json", "--concurrency", "1",
                                  "--admin-address-path", admin, "-l", "error", "--drain-time-s", "1"],
                           self.pcpu, f"{run}/{name}.log").start()
            elif p == "haproxy":
                s = Server(name, ["haproxy", "-db", "-f", f"{run}/{name}.cfg"], self.pcpu,
                           f"{run}/{name}.log").start()
            else:
                s = Server(name, ["nginx", "-p", run, "-e", f"{run}/{name}-error.log", "-c",
                                  f"{run}/{name}.conf", "-g", "daemon off;"],
                           self.pcpu, f"{run}/{name}.log", with_children=True).start()
            pair[side] = s
            ok = wait_port(port, server=s)
            if ok and p == "strait":
                ok = self.wait_ready(f"{run}/{name}-admin.txt", s)
            if ok and p == "nginx":
                end = time.monotonic() + 5
                while len(s.pids()) < 2 and time.monotonic() < end:
                    time.sleep(0.05)
            if not ok:
                for x in pair.values():
                    x.stop()
                raise Abort(f"sidecar {side.upper()} did not start; see {run}/{name}.log"
                            + (f" and {name}-error.log" if p == "nginx" else ""))
        self.mesh[p] = pair

    def mesh_admin(self, p, side):
        return f"{self.run}/mesh-strait-{side}-admin.txt"

    def mesh_alive(self, p, what):
        """After a run: if a sidecar died, note it, restart the pair and return False; two deaths
        and the pair's remaining mTLS runs are skipped."""
        pair = self.mesh[p]
        if all(pair[s].running() for s in ("a", "b")):
            return True
        dead = [s for s in ("a", "b") if not pair[s].running()]
        self.crashes[(p, "mtls")] = self.crashes.get((p, "mtls"), 0) + 1
        why = []
        for sd in dead:
            rc = pair[sd].proc.returncode
            why.append(f"{sd.upper()}: " + (f"signal {signal.Signals(-rc).name}" if rc is not None and rc < 0
                                             else f"exit {rc}"))
        self.notes.append(f"{PEER_LABEL[p]} mesh sidecar died ({', '.join(why)}) during {what}; pair "
                          f"restarted (logs: {self.run}/mesh-*.log)")
        log(f"  !! {PEER_LABEL[p]} mesh sidecar died ({', '.join(why)}) during {what}; restarting the pair")
        for sd in ("a", "b"):
            pair[sd].stop()
        if self.crashes[(p, "mtls")] >= 2:
            self.mark((p, "mtls"), f"a sidecar crashed {self.crashes[(p, 'mtls')]} times")
            return False
        try:
            self.start_mesh(p)
        except Abort as e:
            self.mark((p, "mtls"), str(e))
        return False

    def mesh_sanity(self):
        """Before measuring, for each pair: two keep-alive GET /1k through A; directly to B with a
        client certificate (HTTP/1.0 GET /0, and B must close: the handshake runs depend on it);
        B must refuse TLS without a client certificate and plaintext. For Strait, A's
        cluster.to_b.ssl.handshake and B's listener ssl.handshake counters must have moved."""
        ok_ctx, nocert_ctx = tls_client_ctx(self.pki, True), tls_client_ctx(self.pki, False)
        for p in PROXIES:
            if self.skip(p, "mtls"):
                continue
            pb = self.mesh_ports[p]["b"]
            errs = []
            err = self.check_h1_port(self.mesh_ports[p]["a"], "1k")
            if err:
                errs.append(f"through A: {err}")
            try:
                got, ver, cipher = tls_exchange(pb, ok_ctx, b"GET /0 HTTP/1.0\r\n\r\n")
                if not re.match(rb"HTTP/1\.[01] 200 ", got):
                    errs.append(f"B with a client certificate answered {got[:40]!r}")
                self.mesh_tls[p] = f"{ver} {cipher}"
            except socket.timeout:
                errs.append("B did not close the connection after an HTTP/1.0 response")
            except (OSError, ssl.SSLError) as e:
                errs.append(f"B with a client certificate: {type(e).__name__}: {e}")
            try:
                got, _, _ = tls_exchange(pb, nocert_ctx, b"GET /0 HTTP/1.0\r\n\r\n")
                if b" 200 " in got[:20]:
                    errs.append("B answered 200 to a client without a certificate")
            except (OSError, ssl.SSLError):
                pass                                   # refused: as it should be
            try:
                with socket.create_connection(("127.0.0.1", pb), timeout=3) as sk:
                    sk.sendall(b"GET /0 HTTP/1.0\r\n\r\n")
                    got = sk.recv(4096)
                if got.startswith(b"HTTP/1.1 200") or got.startswith(b"HTTP/1.0 200"):
                    errs.append("B answered 200 to plaintext HTTP")
            except OSError:
                pass
            if p == "strait" and not errs:
                sa = self.admin_stats(self.mesh_admin(p, "a"))
                sb = self.admin_stats(self.mesh_admin(p, "b"))
                lp = f"listener.127.0.0.1_{pb}.ssl."
                got = (sa.get("cluster.to_b.ssl.handshake", 0), sb.get(lp + "handshake", 0),
                       sb.get(lp + "fail_verify_no_cert", 0))
                if got[0] < 1 or got[1] < 2:
                    errs.append(f"Strait counters: A cluster.to_b.ssl.handshake {got[0]}, B {lp}handshake "
                                f"{got[1]} (want >= 1 and >= 2)")
                else:
                    log(f"  Strait mesh counters: A cluster.to_b.ssl.handshake {got[0]}, B {lp}handshake "
                        f"{got[1]}, {lp}fail_verify_no_cert {got[2]}")
            if not self.ensure_mesh_ok(p, "the mTLS sanity check"):
                errs.append("a sidecar died")
            if errs:
                self.mark((p, "mtls"), "mTLS sanity check failed: " + "; ".join(errs))
            else:
                log(f"  {PEER_LABEL[p]} mesh pair: OK (A -> B mTLS; B refuses no client cert and plaintext; "
                    f"B negotiates {self.mesh_tls.get(p, '?')} with an OpenSSL client)")

    def ensure_mesh_ok(self, p, what):
        return p == "direct" or self.mesh_alive(p, what)

    def s_time_argv(self, p, seconds):
        c = self.pki["client"]
        return ["openssl", "s_time", "-connect", f"127.0.0.1:{self.mesh_ports[p]['b']}", "-new",
                "-cert", c["cert"], "-key", c["key"], "-CAfile", self.pki["root"], "-verify", "2",
                "-www", "/0", "-time", str(seconds)]

    def fig_mtls(self):
        self.mesh_setup()
        log("mTLS sanity checks")
        self.mesh_sanity()
        m = self.m
        peers = [p for p in PROXIES if p in self.mesh]
        url = {p: f"http://127.0.0.1:{self.mesh_ports[p]['a']}" for p in peers}
        url["direct"] = self.urls["direct"]["h1"]

        def pair(p):
            return [self.mesh[p]["a"], self.mesh[p]["b"]]

        for p in peers:                         # warm-up: pools, sessions, caches
            if self.skip(p, "mtls"):
                continue
            self.progress(f"mTLS warm-up {PEER_LABEL[p]} pair")
            run_client(["wrk", "-t1", "-c64", f"-d{m['warm']}s", f"{url[p]}/1k"], self.ccpu, m["warm"] + 15)
            run_client(self.s_time_argv(p, 1), self.ccpu, 20)
            self.mesh_alive(p, "the mTLS warm-up")

        # (a) keep-alive throughput through the pair, pair CPU per request
        d = m["wrk_d"]
        for rnd in range(1, m["runs"] + 1):
            for p in peers:
                if self.skip(p, "mtls"):
                    continue
                self.progress(f"mTLS pair throughput 1 KiB round {rnd} {PEER_LABEL[p]}")

                def go():
                    rc, out = run_client(["wrk", "-t1", "-c64", f"-d{d}s", "--latency", f"{url[p]}/1k"],
                                         self.ccpu, d + 30)
                    r = parse_wrk(out)
                    if rc != 0 or "rps" not in r:
                        r["failed"] = 1
                        self.notes.append(f"wrk mTLS pair {PEER_LABEL[p]} round {rnd} failed: {out.strip()[-300:]}")
                    return r
                r = self.add_cpu_metrics(self.measure(p, go, pair(p), ["a", "b"]), d)
                if "cpu_s" in r and r.get("requests"):
                    for sd in ("a", "b"):
                        r[f"cpu_{sd}_us_per_req"] = r[f"cpu_{sd}_s"] / r["requests"] * 1e6
                if not self.mesh_alive(p, "mTLS pair throughput"):
                    r = {"failed": 1}
                if "rps" in r:
                    r["b_conns_estab"], r["b_conns_timewait"] = tcp_conns(self.mesh_ports[p]["b"])
                self.flag_errors(r, p, f"mTLS pair throughput round {rnd}")
                self.record("mtls_throughput", p, "1k", rnd, r)
                if "rps" in r:
                    log(f"    {r['rps']:,.0f} req/s" + (f", pair CPU {r['cpu_busy_pct']:.0f}%, "
                                                      f"{r['cpu_us_per_req']:.1f} us/req (A {r['cpu_a_us_per_req']:.1f}"
                                                      f" + B {r['cpu_b_us_per_req']:.1f})"
                                                      if "cpu_a_us_per_req" in r else ""))

        # (b) fixed rate through the pair: added latency and vCPU per 1000 req/s
        d, w = m["lat_d"], m["lat_warm"]
        for rnd in range(1, m["runs"] + 1):
            for p in ["direct"] + peers:
                if p != "direct" and self.skip(p, "mtls"):
                    continue
                self.progress(f"mTLS pair latency at {MTLS_RATE} req/s round {rnd} {PEER_LABEL[p]}")
                logfile = f"{self.run}/lat-mtls-{p}-{rnd}.tsv"

                def go():
                    rc, out = run_client(["h2load", "--h1", "-c16", f"--rps={MTLS_RATE / 16:g}", f"-D{d}",
                                          f"--warm-up-time={int(w * 1000)}ms", f"--log-file={logfile}",
                                          f"{url[p]}/1k"], self.ccpu, d + w + 30)
                    r = parse_h2load(out)
                    if rc != 0 or not r.get("requests"):
                        r["failed"] = 1
                        self.notes.append(f"h2load mTLS latency {PEER_LABEL[p]} round {rnd} failed: "
                                          f"{out.strip()[-300:]}")
                    elif os.path.exists(logfile):
                        r |= latency_from_log(logfile)
                    return r
                r = self.measure(p, go, pair(p) if p != "direct" else [], ["a", "b"])
                if "cpu_s" in r and r.get("requests"):
                    achieved = r["requests"] / d
                    r["achieved_rps"] = achieved
                    r["vcpu_per_krps"] = (r["cpu_s"] / r["wall_s"]) / (achieved / 1000.0)
                    r["cpu_us_per_req"] = (r["cpu_s"] / r["wall_s"]) / achieved * 1e6
                    for sd in ("a", "b"):
                        r[f"vcpu_{sd}_per_krps"] = (r[f"cpu_{sd}_s"] / r["wall_s"]) / (achieved / 1000.0)
                if not self.ensure_mesh_ok(p, "mTLS pair latency"):
                    r = {"failed": 1}
                self.flag_errors(r, p, f"mTLS latency round {rnd}")
                self.record("mtls_latency", p, "1k", rnd, r)
                if "p50_ms" in r:
                    log(f"    p50 {r['p50_ms']:.3f} p90 {r['p90_ms']:.3f} p99 {r['p99_ms']:.3f} ms"
                        + (f", pair {r['vcpu_per_krps']:.4f} vCPU per 1000 req/s" if "vcpu_per_krps" in r else ""))

        # (c) new mTLS connections against B alone: full handshakes (client certificate, no session
        # resumption) with one HTTP/1.0 GET /0 each, from HS_CLIENTS openssl s_time processes
        t = m["hs_t"]
        for rnd in range(1, m["runs"] + 1):
            for p in peers:
                if self.skip(p, "mtls"):
                    continue
                self.progress(f"mTLS handshakes against B ({HS_CLIENTS} x openssl s_time -new -time {t}) "
                              f"round {rnd} {PEER_LABEL[p]}")
                argv = self.s_time_argv(p, t)
                st0 = self.admin_stats(self.mesh_admin(p, "b")) if p == "strait" else {}

                def go():
                    outs = run_clients([argv] * HS_CLIENTS, self.ccpu, t + 20)
                    r = {"handshakes": 0}
                    for rc, out in outs:
                        x = parse_s_time(out)
                        if rc != 0 or "handshakes" not in x or x.get("bytes_per_conn", 1) == 0:
                            r["failed"] = 1
                            self.notes.append(f"openssl s_time against {PEER_LABEL[p]} B round {rnd} failed "
                                              f"(rc {rc}): {out.strip()[-300:]}")
                        r["handshakes"] += x.get("handshakes", 0)
                        r["bytes_per_conn"] = x.get("bytes_per_conn")
                    return r
                r = self.measure(p, go, [self.mesh[p]["b"]])
                if "cpu_s" in r and r.get("handshakes"):
                    r["handshakes_per_s"] = r["handshakes"] / r["wall_s"]
                    r["b_cpu_us_per_handshake"] = r["cpu_s"] / r["handshakes"] * 1e6
                    if r["cpu_s"] > 0:
                        r["handshakes_per_core_s"] = r["handshakes"] / r["cpu_s"]
                    if r.get("cpu_sched_s"):
                        r["handshakes_per_core_s_sched"] = r["handshakes"] / r["cpu_sched_s"]
                if p == "strait":
                    st1 = self.admin_stats(self.mesh_admin(p, "b"))
                    k = f"listener.127.0.0.1_{self.mesh_ports[p]['b']}.ssl.handshake"
                    if k in st0 and k in st1:
                        r["stat_handshakes"] = st1[k] - st0[k]
                if not self.mesh_alive(p, "mTLS handshakes"):
                    r = {"failed": 1}
                self.record("mtls_handshake", p, "0", rnd, r)
                if "handshakes_per_s" in r:
                    log(f"    {r['handshakes_per_s']:,.0f} handshakes/s, B {r['b_cpu_us_per_handshake']:.0f} us CPU "
                        f"per handshake = {r.get('handshakes_per_core_s', float('nan')):,.0f} per core-second")

        for p in peers:
            if p in self.mesh and self.mesh[p]["a"].running():
                self.mem.setdefault(p, {})["mtls_pair_hwm_kb"] = proc_mem_kb(self.mesh_pids(p), "VmHWM")
        if "strait" in self.mesh:
            self.mesh_stats = {"a": self.admin_stats(self.mesh_admin("strait", "a")),
                               "b": self.admin_stats(self.mesh_admin("strait", "b"))}

    # --- driver -----------------------------------------------------------------------------
    def count_steps(self):
        n = self.m["runs"]
        h1s = sum(1 for p in self.peers_for("h1") for z, _ in SIZES if not self.skip(p, "h1", z))
        h1 = len([p for p in self.peers_for("h1") if not self.skip(p, "h1")])
        h2 = len([p for p in self.peers_for("h2") if not self.skip(p, "h2")])
        tcp = len(self.peers_for("tcp"))
        f = self.a.figures
        self.steps = (h1 + h1s * n if "throughput" in f else 0) + \
            (h1 * n if "latency" in f else 0) + (h2 * n if "latency" in f else 0) + \
            (h2 * n if "h2" in f else 0) + (tcp * n if "tcp" in f else 0) + \
            (len(PROXIES) * (1 + 3 * n) + n if "mtls" in f else 0)   # warm-up, 3 runs per round, direct

    def run_all(self):
        self.setup()
        log("sanity checks")
        self.sanity()
        self.count_steps()
        f = self.a.figures
        if "throughput" in f:
            self.warmup()
            self.fig_throughput()
        if "latency" in f:
            self.fig_latency("h1")
            self.fig_latency("h2")
        if "h2" in f:
            self.fig_h2_mux()
        if "tcp" in f:
            self.fig_tcp()
        if "mtls" in f:
            self.fig_mtls()
        self.strait_stats = self.admin_stats()
        for p in PROXIES:
            self.mem[p]["hwm_end_kb"] = proc_mem_kb(self.servers[p].pids(), "VmHWM")
            if self.restarts[p]:
                self.mem[p]["restarted"] = self.restarts[p]


# ----------------------------------------------------------------------------------------------
# report

def med_range(vals):
    if not vals:
        return None
    return statistics.median(vals), min(vals), max(vals)


def fmt_num(v, digits):
    if v is None:
        return "n/a"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def cell(mr, digits=0):
    if mr is None:
        return "n/a"
    m, lo, hi = mr
    return f"{fmt_num(m, digits)} ({fmt_num(lo, digits)}–{fmt_num(hi, digits)})"


def ratio(a, b, digits=2):
    if a is None or b is None or not b[0]:
        return "n/a"
    return f"{a[0] / b[0]:.{digits}f}"


def tool_version(argv):
    try:
        out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=5
                             ).stdout.decode(errors="replace").strip().splitlines()
        return out[0] if out else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


class Report:
    def __init__(self, bench, args, complete=True):
        self.b, self.a, self.complete = bench, args, complete
        self.rows = bench.rows

    def vals(self, fig, peer, variant, metric):
        return [r["value"] for r in self.rows if r["figure"] == fig and r["peer"] == peer and
                r["variant"] == variant and r["metric"] == metric and not self.failed(r)]

    def failed(self, row):
        return any(r["figure"] == row["figure"] and r["peer"] == row["peer"] and
                   r["variant"] == row["variant"] and r["round"] == row["round"] and
                   r["metric"] == "failed" for r in self.rows)

    def mr(self, fig, peer, variant, metric):
        return med_range(self.vals(fig, peer, variant, metric))

    def na(self, peer, proto):
        return self.b.broken.get((peer, proto)) or self.b.broken.get((peer, proto, "1k"))

    def added(self, fig, peer, metric):
        """Per-round differences peer - direct (rounds are interleaved), then median (min-max)."""
        def by_round(p):
            return {r["round"]: r["value"] for r in self.rows if r["figure"] == fig and r["peer"] == p
                    and r["metric"] == metric and not self.failed(r)}
        d, x = by_round("direct"), by_round(peer)
        diffs = [x[k] - d[k] for k in x if k in d]
        return med_range(diffs)

    def write(self):
        a = self.a
        stem = os.path.join(a.out, f"{a.date}-{a.mode}" + ("" if self.complete else "-aborted"))
        self.write_csv(stem + ".csv")
        pngs = self.plots(stem)
        md = self.markdown(os.path.basename(stem), pngs)
        with open(stem + ".md", "w") as f:
            f.write(md)
        return stem + ".md", stem + ".csv", pngs

    def write_csv(self, path):
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["figure", "peer", "variant", "round", "metric", "value"])
            w.writeheader()
            for r in self.rows:
                w.writerow(r)
            for p, m in self.b.mem.items():
                for k, v in m.items():
                    w.writerow({"figure": "memory", "peer": p, "variant": "-", "round": 0,
                                "metric": k, "value": v})

    # --- markdown -----------------------------------------------------------------------
    def markdown(self, stem, pngs):
        b, a, m = self.b, self.a, self.b.m
        L = []
        L.append(f"# Strait side-by-side benchmark — {a.date}, {a.mode} mode\n")
        L.append(self.environment())
        L.append("Each cell: median (min–max) over the rounds; peers interleaved round by round. "
                 "Ratios are ratios of medians. Proxy under test pinned to CPU "
                 f"{b.pcpu}; clients, upstream nginx and iperf3 server pinned to CPU {b.ccpu}.\n")
        if b.notes:
            L.append("**Problems seen during this run** († in a table: that peer crashed or failed in "
                     "some rounds of that figure; the surviving rounds are shown):\n")
            for n in b.notes:
                L.append(f"- {n}")
            L.append("")

        # (1) throughput
        L.append(f"## 1. HTTP/1.1 keep-alive throughput (`wrk -t1 -c64 -d{m['wrk_d']}s --latency`), req/s\n")
        L.append("| body | direct | Strait | HAProxy | nginx | Strait/HAProxy | Strait/nginx | Strait/direct |")
        L.append("|---|---|---|---|---|---|---|---|")
        for size, label in SIZES:
            c = {p: self.mr("h1_throughput", p, size, "rps")
                 for p in ["direct"] + PROXIES}
            L.append(f"| {label} | " + " | ".join(self.cellna(c[p], p, "h1", size=size) for p in ["direct"] + PROXIES)
                     + f" | {ratio(c['strait'], c['haproxy'])} | {ratio(c['strait'], c['nginx'])} | "
                       f"{ratio(c['strait'], c['direct'])} |")
        L.append("")
        L.append("wrk's p99 latency under this saturating load, ms:\n")
        L.append("| body | direct | Strait | HAProxy | nginx |")
        L.append("|---|---|---|---|---|")
        for size, label in SIZES:
            L.append(f"| {label} | " + " | ".join(
                self.cellna(self.mr("h1_throughput", p, size, "p99_ms"), p, "h1", 2, size=size)
                for p in ["direct"] + PROXIES) + " |")
        L.append("")
        L.append("Where the limit was, % busy (median): the proxy process (utime+stime / wall; 100% = its "
                 f"one CPU was the limit); CPU {b.ccpu} as a whole (wrk + upstream nginx + kernel); CPU "
                 f"{b.pcpu} during the *direct* runs, when nothing of ours runs there (load from other "
                 "work on the machine).\n")
        L.append(f"| body | Strait proc | HAProxy proc | nginx proc | CPU {b.ccpu}: direct / Strait / HAProxy / "
                 f"nginx runs | CPU {b.pcpu} in direct runs |")
        L.append("|---|---|---|---|---|---|")

        def pct(mr):
            return "n/a" if mr is None else f"{mr[0]:.0f}%"
        for size, label in SIZES:
            procs = [pct(self.mr("h1_throughput", p, size, "cpu_busy_pct")) for p in PROXIES]
            cli = " / ".join(pct(self.mr("h1_throughput", p, size, "clientcpu_busy_pct"))
                             for p in ["direct"] + PROXIES)
            foreign = pct(self.mr("h1_throughput", "direct", size, "proxycpu_busy_pct"))
            L.append(f"| {label} | " + " | ".join(procs + [cli, foreign]) + " |")
        L.append("")

        # (2) latency
        L.append(f"## 2. Added latency at a fixed {RATE} req/s, 1 KiB, ms (proxy minus direct)\n")
        L.append(f"HTTP/1.1: `h2load --h1 -c16 --rps={RATE / 16:g} -D {m['lat_d']} "
                 f"--warm-up-time={int(m['lat_warm'] * 1000)}ms`; HTTP/2 (h2c): `h2load -c4 -m4 --rps={RATE / 4:g} "
                 f"-D {m['lat_d']}`. Percentiles from h2load's per-request log; the difference is taken "
                 "round by round against the direct run of the same round. The proxies speak HTTP/1.1 "
                 "to the upstream in both cases.\n")
        L.append("| protocol | peer | p50 | p90 | p99 | added p50 | added p90 | added p99 |")
        L.append("|---|---|---|---|---|---|---|---|")
        for proto, fig, pname in (("h1", "h1_latency", "HTTP/1.1"), ("h2", "h2_latency", "HTTP/2")):
            for p in b.peers_for(proto):
                absc = [self.cellna(self.mr(fig, p, "1k", f"p{q}_ms"), p, proto, 3) for q in (50, 90, 99)]
                if p == "direct":
                    addc = ["—"] * 3
                else:
                    addc = [self.cellna(self.added(fig, p, f"p{q}_ms"), p, proto, 3, signed=True)
                            for q in (50, 90, 99)]
                L.append(f"| {pname} | {PEER_LABEL[p]} | " + " | ".join(absc + addc) + " |")
        L.append("")
        loops = {proto: self.mr(fig, "strait", "1k", "loop_over_1ms")
                 for proto, fig in (("h1", "h1_latency"), ("h2", "h2_latency"))}
        if any(v is not None for v in loops.values()):
            L.append("Strait's worker loop iterations that worked for more than 1 ms during each run "
                     "(`server.worker_0.loop_iterations_over_1ms`, per run): HTTP/1.1 "
                     f"{cell(loops['h1'])}, HTTP/2 {cell(loops['h2'])}. Few or none means the tail is time "
                     "spent waiting (for a CPU, the client, the upstream), not Strait's own work.\n")

        # (3) h2 mux
        L.append(f"## 3. HTTP/2 multiplexed throughput (`h2load -c16 -m10 -D {m['mux_d']}`, h2c, 1 KiB), req/s\n")
        L.append("Downstream h2c on both proxies; their upstream to nginx is HTTP/1.1 (keep-alive pool). "
                 "nginx is not in this figure (it cannot speak h2c upstream); direct is nginx's own h2c.\n")
        c = {p: self.mr("h2_throughput", p, "1k", "rps")
             for p in b.peers_for("h2")}
        L.append("| direct | Strait | HAProxy | Strait/HAProxy | Strait/direct |")
        L.append("|---|---|---|---|---|")
        L.append("| " + " | ".join(self.cellna(c[p], p, "h2") for p in b.peers_for("h2")) +
                 f" | {ratio(c['strait'], c['haproxy'])} | {ratio(c['strait'], c['direct'])} |")
        L.append("")

        # (4) CPU
        L.append("## 4. Proxy CPU per request\n")
        L.append("utime+stime of the proxy process(es) from /proc/PID/stat, before and after each run "
                 f"(resolution 1/{CLK_TCK} s). Lower is better; ratios Strait/peer.\n")
        L.append("| load | Strait | HAProxy | nginx | Strait/HAProxy | Strait/nginx |")
        L.append("|---|---|---|---|---|---|")
        for size, label in SIZES:
            c = {p: self.mr("h1_throughput", p, size, "cpu_us_per_req")
                 for p in PROXIES}
            L.append(f"| µs CPU per request, saturating HTTP/1.1, {label} | " +
                     " | ".join(self.cellna(c[p], p, "h1", 2, size=size) for p in PROXIES) +
                     f" | {ratio(c['strait'], c['haproxy'])} | {ratio(c['strait'], c['nginx'])} |")
        c = {p: self.mr("h2_throughput", p, "1k", "cpu_us_per_req")
             for p in ("strait", "haproxy")}
        L.append("| µs CPU per request, saturating HTTP/2 mux, 1 KiB | " +
                 " | ".join(self.cellna(c[p], p, "h2", 2) for p in ("strait", "haproxy")) +
                 f" | n/a | {ratio(c['strait'], c['haproxy'])} | n/a |")
        for proto, fig, pname in (("h1", "h1_latency", "HTTP/1.1"), ("h2", "h2_latency", "HTTP/2")):
            ps = [p for p in PROXIES if proto in b.urls[p]]
            c = {p: self.mr(fig, p, "1k", "vcpu_per_krps") for p in ps}
            L.append(f"| vCPU per 1000 req/s, {pname} at {RATE} req/s, 1 KiB | " +
                     " | ".join(self.cellna(c.get(p), p, proto, 3) if p in c else "n/a" for p in PROXIES) +
                     f" | {ratio(c.get('strait'), c.get('haproxy'))} | {ratio(c.get('strait'), c.get('nginx'))} |")
        c = {}
        for p in PROXIES:
            u, t = self.vals("h1_throughput", p, "1k", "cpu_sys_s"), self.vals("h1_throughput", p, "1k", "cpu_s")
            c[p] = f"{100.0 * sum(u) / sum(t):.0f}%" if t and sum(t) else "n/a"
        L.append("| share of that CPU spent in the kernel (stime), saturating HTTP/1.1, 1 KiB | " +
                 " | ".join(c[p] for p in PROXIES) + " | | |")
        L.append("")
        st = b.strait_stats
        cx, rq = st.get("cluster.upstream_http.upstream_cx_total"), st.get("cluster.upstream_http.upstream_rq_total")
        if cx is not None and rq:
            L.append(f"Strait's upstream connection reuse over the whole run: {cx:,} upstream connections for "
                     f"{rq:,} upstream requests ({rq / max(1, cx):,.1f} requests per connection"
                     + ("; **a new upstream connection per request**" if cx >= 0.5 * rq else "") +
                     "). Counters of its last incarnation only if it was restarted.\n")
        L.append("Anchor: Istio 1.24's Envoy sidecar uses 0.20 vCPU per 1000 req/s (1 KiB, with mTLS and "
                 "telemetry, which these runs do not have).\n")

        # (5) memory
        L.append("## 5. Memory, MB\n")
        L.append("VmRSS one second after start (idle) and VmHWM (peak RSS) after the HTTP/1.1 throughput runs "
                 "and at the end of the run. nginx counts master + worker.\n")
        L.append("| | Strait | HAProxy | nginx | Strait/HAProxy | Strait/nginx |")
        L.append("|---|---|---|---|---|---|")
        for key, label in (("idle_rss_kb", "VmRSS idle"), ("hwm_h1_kb", "VmHWM after HTTP/1.1 load"),
                           ("hwm_end_kb", "VmHWM at the end")):
            v = {p: b.mem.get(p, {}).get(key) for p in PROXIES}
            cells = [f"{v[p] / 1024:.1f}" if v[p] else "n/a" for p in PROXIES]
            rs = [f"{v['strait'] / v[q]:.2f}" if v["strait"] and v[q] else "n/a" for q in ("haproxy", "nginx")]
            L.append(f"| {label} | " + " | ".join(cells + rs) + " |")
        restarted = [p for p in PROXIES if b.restarts[p]]
        if restarted:
            L.append("")
            L.append("Restarted during the run (peak memory covers only the last incarnation): " +
                     ", ".join(f"{PEER_LABEL[p]} ×{b.restarts[p]}" for p in restarted))
        L.append("")

        # (6) TCP
        L.append(f"## 6. TCP bulk throughput (`iperf3 -t {m['tcp_t']}`, one stream), Gbit/s\n")
        L.append("Strait's tcp_proxy vs HAProxy `mode tcp` vs direct; nginx has no stream module installed here.\n")
        c = {p: self.mr("tcp_throughput", p, "bulk", "gbit_s") for p in b.peers_for("tcp")}
        cpu = {p: self.mr("tcp_throughput", p, "bulk", "cpu_s_per_gbyte") for p in ("strait", "haproxy")}
        L.append("| direct | Strait | HAProxy | Strait/HAProxy | Strait/direct | Strait CPU s/GB | HAProxy CPU s/GB |")
        L.append("|---|---|---|---|---|---|---|")
        L.append("| " + " | ".join(cell(c[p], 2) for p in b.peers_for("tcp")) +
                 f" | {ratio(c['strait'], c['haproxy'])} | {ratio(c['strait'], c['direct'])} | "
                 f"{cell(cpu['strait'], 3)} | {cell(cpu['haproxy'], 3)} |")
        L.append("")

        L.append(self.mtls_section())

        if pngs:
            L.append("## Plots\n")
            for p in pngs:
                L.append(f"![{os.path.basename(p)}]({os.path.basename(p)})")
            L.append("")
        L.append(f"Raw numbers (every run, every metric): `{stem}.csv`.\n")
        return "\n".join(L) + "\n"

    def mtls_section(self):
        b, m = self.b, self.b.m
        L = [f"## 7. mTLS: the mesh path (two sidecars), {'measured' if 'mtls' in self.a.figures else 'not run'}\n"]
        if "mtls" not in self.a.figures:
            return "\n".join(L) + "\n"
        L.append("client → sidecar A (plaintext HTTP/1.1 in, mTLS out, keep-alive pool to B) → sidecar B "
                 "(mTLS in, client certificate required and verified against the mesh root; plaintext "
                 "HTTP/1.1 keep-alive out) → upstream nginx. Each proxy is both sidecars, one process each, "
                 f"both pinned to CPU {b.pcpu}; \"pair\" CPU is the sum of both processes' utime+stime. "
                 "Certificates from `certs/strait-ca.sh`: ECDSA P-256, "
                 f"A = `{MESH_ID['client']}`, B = `{MESH_ID['server']}` (B's certificate also has the DNS SAN "
                 f"`{MESH_DNS}`). A checks B's identity: Strait by the URI SAN "
                 "(`match_typed_subject_alt_names`), HAProxy (`verifyhost`) and nginx (`proxy_ssl_name`) by "
                 "the DNS SAN, as neither can match a URI SAN. Same OpenSSL library in all three. "
                 "Session resumption where each supports it (Strait's upstream TLS, HAProxy's server-side "
                 "session cache, nginx `proxy_ssl_session_reuse on`); with keep-alive pools, A→B handshakes "
                 "are rare anyway.\n")
        if b.mesh_tls:
            L.append("B's negotiated protocol and cipher with an OpenSSL client (sanity check): " +
                     "; ".join(f"{PEER_LABEL[p]} {v}" for p, v in b.mesh_tls.items()) + ".\n")
        L.append(f"Runs: (a) `wrk -t1 -c64 -d{m['wrk_d']}s --latency` to A, 1 KiB; (b) `h2load --h1 -c16 "
                 f"--rps={MTLS_RATE / 16:g} -D {m['lat_d']} --warm-up-time={int(m['lat_warm'] * 1000)}ms` "
                 f"({MTLS_RATE} req/s in total) to A and to the upstream directly, added latency = pair minus "
                 f"direct round by round; (c) {HS_CLIENTS} × `openssl s_time -new -cert -key -CAfile -verify 2 "
                 f"-www /0 -time {m['hs_t']}` directly against B: full mTLS handshakes (no resumption), one "
                 "HTTP/1.0 GET of an empty body each; handshakes per second per core = handshakes / B's CPU "
                 "seconds (B's own capacity, whatever the client managed).\n")
        P = PROXIES
        def row(label, fig, variant, metric, digits, peers=P, signed=False, added=False):
            c = {p: (self.added(fig, p, metric) if added else self.mr(fig, p, variant, metric)) for p in peers}
            cells = [self.cellna(c[p], p, "mtls", digits, signed=signed) for p in peers]

            def rt(x, y):         # a ratio of differences means nothing once one of them is <= 0
                return "n/a" if added and (x is None or y is None or x[0] <= 0 or y[0] <= 0) else ratio(x, y)
            return (f"| {label} | " + " | ".join(cells) +
                    f" | {rt(c['strait'], c['haproxy'])} | {rt(c['strait'], c['nginx'])} |"), c
        L.append("| figure | Strait pair | HAProxy pair | nginx pair | Strait/HAProxy | Strait/nginx |")
        L.append("|---|---|---|---|---|---|")
        r, _ = row("req/s through the pair, keep-alive, 1 KiB (wrk -c64)", "mtls_throughput", "1k", "rps", 0)
        L.append(r)
        r, cpu = row("µs CPU per request, pair (A + B), at saturation", "mtls_throughput", "1k",
                     "cpu_us_per_req", 2)
        L.append(r)
        for sd in ("a", "b"):
            r, _ = row(f"… of which sidecar {sd.upper()}", "mtls_throughput", "1k", f"cpu_{sd}_us_per_req", 2)
            L.append(r)
        r, vcpu = row(f"vCPU per 1000 req/s, pair, at {MTLS_RATE} req/s", "mtls_latency", "1k",
                      "vcpu_per_krps", 4)
        L.append(r)
        for q in (50, 90, 99):
            r, c = row(f"added latency p{q} at {MTLS_RATE} req/s, ms (pair − direct)", "mtls_latency", "1k",
                       f"p{q}_ms", 3, signed=True, added=True)
            L.append(r)
        r, p99 = row(f"p99 through the pair at {MTLS_RATE} req/s, ms (absolute)", "mtls_latency", "1k",
                     "p99_ms", 3)
        L.append(r)
        r, _ = row("new mTLS connections per second per core (B alone; handshakes / B CPU s)",
                   "mtls_handshake", "0", "handshakes_per_core_s", 0)
        L.append(r)
        r, _ = row("µs of B's CPU per new mTLS connection (handshake + one request)", "mtls_handshake", "0",
                   "b_cpu_us_per_handshake", 0)
        L.append(r)
        r, _ = row(f"new mTLS connections per second achieved ({HS_CLIENTS} s_time clients)", "mtls_handshake",
                   "0", "handshakes_per_s", 0)
        L.append(r)
        L.append("")
        L.append("Absolute latency at the fixed rate, ms (direct = client to the upstream, no proxy):\n")
        L.append("| peer | p50 | p90 | p99 | samples |")
        L.append("|---|---|---|---|---|")
        for p in ["direct"] + P:
            L.append(f"| {PEER_LABEL[p]} {'pair' if p != 'direct' else ''} | " + " | ".join(
                self.cellna(self.mr("mtls_latency", p, "1k", f"p{q}_ms"), p, "mtls", 3) for q in (50, 90, 99))
                + f" | {cell(self.mr('mtls_latency', p, '1k', 'samples'))} |")
        L.append("")

        def verdict(ok):
            return "n/a" if ok is None else ("**met**" if ok else "**not met**")
        def le(a, c):
            return None if a is None or c is None else a[0] <= c[0]
        v = vcpu.get("strait")
        L.append("Targets (from the issue; medians):\n")
        L.append(f"- Strait pair CPU per request ≤ HAProxy pair: {verdict(le(cpu.get('strait'), cpu.get('haproxy')))}"
                 f" (Strait/HAProxy {ratio(cpu.get('strait'), cpu.get('haproxy'))})")
        L.append(f"- Strait pair p99 ≤ HAProxy pair: {verdict(le(p99.get('strait'), p99.get('haproxy')))}"
                 + (f" ({p99['strait'][0]:.3f} vs {p99['haproxy'][0]:.3f} ms, absolute p99 through the pair: "
                    "the same direct run is subtracted from both, and its own p99 is the noisiest number here)"
                    if p99.get("strait") and p99.get("haproxy") else ""))
        L.append(f"- Strait pair < 0.04 vCPU per 1000 req/s at {MTLS_RATE} req/s: "
                 f"{verdict(None if v is None else v[0] < 0.04)}" + (f" ({v[0]:.4f})" if v else ""))
        L.append("- Anchor: Istio's sidecar pair is published at about 0.4 vCPU per 1000 req/s (two Envoys at "
                 "0.20 each, with telemetry, which these runs do not have); Istio 1.20's two sidecars add "
                 "p90 +0.228 / p99 +0.298 ms at 1000 req/s.")
        if m["runs"] < 5:
            L.append(f"- Quick mode: {m['runs']} rounds of {m['lat_d']} s at {MTLS_RATE} req/s is a few thousand "
                     "requests and 10 ms ticks: the vCPU figure is coarse (one tick more or less is "
                     f"{1 / CLK_TCK / m['lat_d'] / (MTLS_RATE / 1000):.4f} vCPU per 1000 req/s).")
        L.append("")
        foreign = self.mr("mtls_latency", "direct", "1k", "proxycpu_busy_pct")
        if foreign:
            L.append(f"CPU {b.pcpu} was {foreign[0]:.0f}% busy (median; {foreign[1]:.0f}–{foreign[2]:.0f}%) during the "
                     "direct fixed-rate runs, when no sidecar of ours was working: other work on the machine, "
                     "which also inflates CPU per request and the tails.\n")
        conns = {p: (self.mr("mtls_throughput", p, "1k", "b_conns_estab"),
                     self.mr("mtls_throughput", p, "1k", "b_conns_timewait")) for p in P}
        if any(e for e, _ in conns.values()):
            L.append("A→B connection reuse, right after each wrk run (median over rounds): ESTABLISHED "
                     "connections into B / TIME_WAIT sockets on B's port: " + "; ".join(
                         f"{PEER_LABEL[p]} {e[0]:.0f} / {t[0]:.0f}" for p, (e, t) in conns.items() if e and t)
                     + " (64 wrk connections; a new A→B connection per request would leave thousands in "
                     "TIME_WAIT).\n")
        st = b.mesh_stats
        if st and st.get("a"):
            a_, b_ = st["a"], st["b"]
            pb = b.mesh_ports["strait"]["b"]
            lp = f"listener.127.0.0.1_{pb}.ssl."
            L.append("Strait's counters at the end of the figure: A "
                     f"`cluster.to_b.upstream_cx_total` {a_.get('cluster.to_b.upstream_cx_total', 'n/a')}, "
                     f"`upstream_rq_total` {a_.get('cluster.to_b.upstream_rq_total', 'n/a')}, "
                     f"`ssl.handshake` {a_.get('cluster.to_b.ssl.handshake', 'n/a')}, "
                     f"`ssl.session_reused` {a_.get('cluster.to_b.ssl.session_reused', 'n/a')}; B "
                     f"`{lp}handshake` {b_.get(lp + 'handshake', 'n/a')}, "
                     f"`{lp}fail_verify_no_cert` {b_.get(lp + 'fail_verify_no_cert', 'n/a')}. "
                     "(Counters of the last incarnation if the pair was restarted.)\n")
        hs = self.vals("mtls_handshake", "strait", "0", "stat_handshakes")
        n = self.vals("mtls_handshake", "strait", "0", "handshakes")
        if hs and n:
            L.append(f"Strait's B counted {int(sum(hs)):,} handshakes in the handshake runs, s_time {int(sum(n)):,}.\n")
        mem = [(p, b.mem.get(p, {})) for p in P]
        if any(x.get("mtls_pair_idle_rss_kb") for _, x in mem):
            L.append("Pair memory (A + B; nginx = 2 masters + 2 workers), MB: " + "; ".join(
                f"{PEER_LABEL[p]} idle {x.get('mtls_pair_idle_rss_kb', 0) / 1024:.1f}, peak "
                f"{x.get('mtls_pair_hwm_kb', 0) / 1024:.1f}" for p, x in mem if x.get("mtls_pair_idle_rss_kb")) + ".\n")
        return "\n".join(L) + "\n"

    def cellna(self, mr, peer, proto, digits=0, signed=False, size="1k"):
        """A cell; a peer that crashed or failed its checks for this protocol gets a dagger (its
        surviving rounds are still shown) or 'n/a (failed)' when no round survived."""
        bad = (self.b.broken.get((peer, proto)) or self.b.broken.get((peer, proto, size))
               or self.b.crashes.get((peer, proto)))
        if mr is None:
            return "n/a (failed †)" if bad else "n/a"
        m, lo, hi = mr
        if signed:
            txt = f"{m:+.{digits}f} ({lo:+.{digits}f}–{hi:+.{digits}f})"
        else:
            txt = cell(mr, digits)
        return txt + (" †" if bad else "")

    def environment(self):
        a = self.a
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        try:
            head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, timeout=5).stdout.decode().strip()
            dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=5
                                   ).stdout.decode().strip()
            head += " (with uncommitted changes)" if dirty else ""
        except (OSError, subprocess.TimeoutExpired):
            head = "?"
        st = os.stat(a.strait)
        mtime = datetime.datetime.fromtimestamp(st.st_mtime).strftime("%Y-%m-%d %H:%M")
        cpu = "?"
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        cpu = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        m = self.b.m
        with open("/proc/loadavg") as f:
            loadavg_end = " ".join(f.read().split()[:3])
        lines = [
            f"- Strait: `{a.strait}` (built {mtime}), tree at {head}",
            f"- {tool_version(['haproxy', '-v'])}; {tool_version(['nginx', '-v'])}; "
            f"{tool_version(['wrk', '-v'])}; {tool_version(['h2load', '--version'])}; "
            f"{tool_version(['iperf3', '--version'])}; {tool_version(['openssl', 'version'])}",
            f"- Machine: {os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}; load average at "
            f"the start {self.b.loadavg_start}, at the end {loadavg_end}",
            f"- Mode {a.mode}: {m['runs']} rounds; wrk {m['wrk_d']} s, fixed-rate {m['lat_d']} s, "
            f"h2 mux {m['mux_d']} s, iperf3 {m['tcp_t']} s, s_time {m['hs_t']} s; total wall time {time.monotonic() - T0:.0f} s"
            + (f"; everything ran under `nice -n {a.nice}`" if a.nice is not None else ""),
            "",
        ]
        return "\n".join(lines)

    # --- plots --------------------------------------------------------------------------
    def plots(self, stem):
        if not shutil.which("gnuplot"):
            return []
        run = self.b.run
        colors = {"direct": "#7f7f7f", "strait": "#1f77b4", "haproxy": "#2ca02c", "nginx": "#d62728"}
        out = []

        def bars(datfile, title, ylabel, rows):
            # rows: (label, color, median, min, max)
            with open(datfile, "w") as f:
                for i, (lab, col, md, lo, hi) in enumerate(rows):
                    f.write(f'{i} "{lab}" {md} {lo} {hi} 0x{col[1:]}\n')
            return (f'set title "{title}"; set ylabel "{ylabel}"; set xrange [-0.6:{len(rows) - 0.4}]; '
                    f'set yrange [0:{1.12 * max(r[4] for r in rows):.6g}]; '
                    f'plot "{datfile}" using 1:3:(0.7):6:xtic(2) with boxes fill solid 0.85 lc rgb variable '
                    f'notitle, "" using 1:4:(0):($5-$4) with vectors heads size screen 0.008,90 lc rgb "black" notitle, '
                    f'"" using 1:5:(sprintf("%.0f", $3)) with labels offset 0,0.7 font ",9" notitle\n')

        tag = f"Strait perf {self.a.date} {self.a.mode}: "
        common = ('set terminal pngcairo size {w},{h} font "DejaVu Sans,10"\nset output "{o}"\n'
                  'set style fill solid 0.85 border -1\nset grid ytics\nset format y "%.0s%c"\n'
                  'set boxwidth 0.7\nset key off\n')
        # throughput
        png = stem + "-throughput.png"
        script = common.format(w=1200, h=420, o=png)
        script += f'set multiplot layout 1,3 title "{tag}HTTP/1.1 keep-alive throughput, wrk -t1 -c64 ' \
                  '(median, bars = min-max)"\n'
        any_data = False
        for size, label in SIZES:
            rows = []
            for p in ["direct"] + PROXIES:
                mr = self.mr("h1_throughput", p, size, "rps")
                if mr:
                    rows.append((PEER_LABEL[p], colors[p]) + mr)
            if rows:
                any_data = True
                script += bars(f"{run}/plot-tp-{size}.dat", f"{label} body", "req/s", rows)
        script += "unset multiplot\n"
        if any_data and self.gnuplot(script, f"{run}/throughput.gp"):
            out.append(png)

        # latency percentiles per proxy, h1 and h2 panels (grouped bars: x = percentile)
        png = stem + "-latency.png"
        script = common.format(w=1200, h=460, o=png).replace('set format y "%.0s%c"\n', "")
        script += (f'set multiplot layout 1,2 title "{tag}latency at a fixed ' + str(RATE) +
                   ' req/s, 1 KiB (median, bars = min-max)"\n'
                   'set style data histogram\nset style histogram errorbars gap 2 lw 1\n'
                   'set key top left\nset ylabel "ms"\nset format y "%.2f"\n')
        any_data = False
        for proto, fig, pname in (("h1", "h1_latency", "HTTP/1.1 (h2load --h1 -c16)"),
                                  ("h2", "h2_latency", "HTTP/2 h2c (h2load -c4 -m4)")):
            peers = [p for p in self.b.peers_for(proto) if all(
                     self.mr(fig, p, "1k", f"p{q}_ms") for q in (50, 90, 99))]
            if not peers:
                continue
            any_data = True
            top = max(self.mr(fig, p, "1k", f"p{q}_ms")[0] for p in peers for q in (50, 90, 99))
            clipped = any(self.mr(fig, p, "1k", f"p{q}_ms")[2] > 1.6 * top for p in peers for q in (50, 90, 99))
            script += f"set yrange [0:{1.6 * top:.4g}]\n"
            dat = f"{run}/plot-lat-{proto}.dat"
            with open(dat, "w") as f:
                for q in (50, 90, 99):
                    vals = []
                    for p in peers:
                        vals += list(self.mr(fig, p, "1k", f"p{q}_ms"))
                    f.write(f"p{q} " + " ".join(f"{v:.4f}" for v in vals) + "\n")
            plots = ", ".join(
                f'"{dat}" using {2 + 3 * i}:{3 + 3 * i}:{4 + 3 * i}' + (":xtic(1)" if i == 0 else "") +
                f' title "{PEER_LABEL[p]}" lc rgb "{colors[p]}"' for i, p in enumerate(peers))
            script += (f'set title "{pname}' + (" (whiskers clipped)" if clipped else "") +
                       f'"\nplot {plots}\n')
        script += "unset multiplot\n"
        if any_data and self.gnuplot(script, f"{run}/latency.gp"):
            out.append(png)

        # HTTP/2 mux and TCP bulk
        png = stem + "-h2-tcp.png"
        script = common.format(w=1000, h=420, o=png)
        script += f'set multiplot layout 1,2 title "{tag}median, bars = min-max"\n'
        any_data = False
        rows = [(PEER_LABEL[p], colors[p]) + self.mr("h2_throughput", p, "1k", "rps")
                for p in self.b.peers_for("h2") if self.mr("h2_throughput", p, "1k", "rps")]
        if rows:
            any_data = True
            script += bars(f"{run}/plot-h2.dat", "HTTP/2 h2c multiplexed, h2load -c16 -m10", "req/s", rows)
        rows = [(PEER_LABEL[p], colors[p]) + self.mr("tcp_throughput", p, "bulk", "gbit_s")
                for p in self.b.peers_for("tcp") if self.mr("tcp_throughput", p, "bulk", "gbit_s")]
        if rows:
            any_data = True
            script += bars(f"{run}/plot-tcp.dat", "TCP bulk, iperf3 one stream", "Gbit/s", rows
                           ).replace('sprintf("%.0f", $3)', 'sprintf("%.1f", $3)').replace(
                               'set ylabel', 'set format y "%.0f"; set ylabel')
        script += "unset multiplot\n"
        if any_data and self.gnuplot(script, f"{run}/h2-tcp.gp"):
            out.append(png)
        return out

    def gnuplot(self, script, path):
        write(path, script)
        try:
            r = subprocess.run(["gnuplot", path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               timeout=60)
        except subprocess.TimeoutExpired:
            log(f"gnuplot timed out on {path}")
            return False
        if r.returncode != 0:
            log(f"gnuplot failed on {path}: {r.stdout.decode(errors='replace')[-500:]}")
            return False
        return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=sorted(MODES), default="quick")
    ap.add_argument("--out", required=True)
    ap.add_argument("--strait", required=True)
    ap.add_argument("--proxy-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the run directory")
    ap.add_argument("--figures", default=FIGURES, help=f"comma-separated subset of {FIGURES}")
    ap.add_argument("--date", default=datetime.date.today().isoformat())
    ap.add_argument("--nice", type=int, default=None,
                    help="run every peer and client under nice -n N (e.g. -10 on a busy shared machine)")
    a = ap.parse_args()
    a.figures = set(x.strip() for x in a.figures.split(",") if x.strip())
    unknown = a.figures - set(FIGURES.split(","))
    if unknown:
        ap.error(f"unknown figure(s) {', '.join(sorted(unknown))}; known: {FIGURES}")
    if a.nice is not None:
        NICE[:] = ["nice", "-n", str(a.nice)]
    a.strait = os.path.abspath(a.strait)
    os.makedirs(a.out, exist_ok=True)
    a.run_dir = tempfile.mkdtemp(prefix="strait-perf.")
    os.chmod(a.run_dir, 0o755)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    b = Bench(a)
    ok = False
    try:
        log(f"mode {a.mode}: {b.m['runs']} rounds per figure, peers interleaved; Strait = {a.strait}")
        b.run_all()
        ok = True
    except Abort as e:
        log(f"ABORTED: {e}")
        b.notes.append(f"run aborted: {e}")
    finally:
        stop_all()
    if b.rows:
        md, csvp, pngs = Report(b, a, complete=ok).write()
        log(f"wrote {md}")
        log(f"wrote {csvp}")
        for p in pngs:
            log(f"wrote {p}")
    if ok and not a.keep:
        shutil.rmtree(a.run_dir, ignore_errors=True)
    else:
        log(f"run directory kept: {a.run_dir}")
    log(f"done in {time.monotonic() - T0:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
