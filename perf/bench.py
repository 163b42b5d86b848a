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
import statistics
import subprocess
import sys
import tempfile
import time

# Durations in seconds. "rate" is the fixed request rate of the latency figure (total, all clients).
MODES = {
    "quick": dict(runs=3, wrk_d=1, lat_d=3, lat_warm=0.5, mux_d=2, tcp_t=2, warm=1, deadline=600),
    "full": dict(runs=5, wrk_d=10, lat_d=30, lat_warm=2, mux_d=10, tcp_t=5, warm=2, deadline=5400),
}
RATE = 1024                      # req/s in total: h1 16 clients x 64/s, h2 4 clients x 256/s
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

    def admin_stats(self):
        """Strait's /stats counters (name -> int), for the connection-reuse line of the report."""
        out = {}
        try:
            with open(f"{self.run}/strait-admin.txt") as f:
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
        port = int(self.urls[p]["h1"].rsplit(":", 1)[1])
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

    def measure(self, p, fn):
        """Runs fn() and adds the proxy's CPU time and wall time around it."""
        pids = self.servers[p].pids() if p != "direct" else []
        s0 = {c: cpu_times(c) for c in (self.pcpu, self.ccpu)}
        t0, c0, n0 = time.monotonic(), proc_cpu_ticks(pids), proc_sched_ns(pids)
        u0 = proc_cpu_ticks(pids, (11,))
        res = fn()
        wall = time.monotonic() - t0
        for c, key in ((self.pcpu, "proxycpu"), (self.ccpu, "clientcpu")):
            b1, st1, t1 = cpu_times(c)
            dt = max(1, t1 - s0[c][2])
            res[f"{key}_busy_pct"] = 100.0 * (b1 - s0[c][0]) / dt     # everything on that CPU
            res[f"{key}_steal_pct"] = 100.0 * (st1 - s0[c][1]) / dt
        if pids:
            pids2 = self.servers[p].pids() if self.servers[p].running() else []
            if pids2 == pids:
                res["cpu_s"] = (proc_cpu_ticks(pids) - c0) / CLK_TCK
                res["cpu_user_s"] = (proc_cpu_ticks(pids, (11,)) - u0) / CLK_TCK
                res["cpu_sys_s"] = res["cpu_s"] - res["cpu_user_s"]
                res["cpu_sched_s"] = (proc_sched_ns(pids) - n0) / 1e9
                res["wall_s"] = wall
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
                r = self.measure(p, go)
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
            (h2 * n if "h2" in f else 0) + (tcp * n if "tcp" in f else 0)

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

        L.append("## 7. mTLS\n")
        L.append("n/a until mTLS (Strait has no TLS transport socket yet).\n")

        if pngs:
            L.append("## Plots\n")
            for p in pngs:
                L.append(f"![{os.path.basename(p)}]({os.path.basename(p)})")
            L.append("")
        L.append(f"Raw numbers (every run, every metric): `{stem}.csv`.\n")
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
            f"{tool_version(['iperf3', '--version'])}",
            f"- Machine: {os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}; load average at "
            f"the start {self.b.loadavg_start}, at the end {loadavg_end}",
            f"- Mode {a.mode}: {m['runs']} rounds; wrk {m['wrk_d']} s, fixed-rate {m['lat_d']} s, "
            f"h2 mux {m['mux_d']} s, iperf3 {m['tcp_t']} s; total wall time {time.monotonic() - T0:.0f} s"
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
    ap.add_argument("--figures", default="throughput,latency,h2,tcp",
                    help="comma-separated subset of throughput,latency,h2,tcp")
    ap.add_argument("--date", default=datetime.date.today().isoformat())
    ap.add_argument("--nice", type=int, default=None,
                    help="run every peer and client under nice -n N (e.g. -10 on a busy shared machine)")
    a = ap.parse_args()
    a.figures = set(a.figures.split(","))
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
