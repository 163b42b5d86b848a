#!/usr/bin/env python3
"""Idle memory of Strait (dynamic and static builds), HAProxy and nginx, side by side (perf/README.md,
"Idle memory"). Called by perf/run.sh; runs on its own too:

    python3 perf/idle_memory.py --strait build-rel/proxy/strait --static-bin build-static/proxy/strait \
        --out /tmp/idle.md [--csv /tmp/idle.csv] [--rounds 3] [--settle 2] [--concurrency 1] [--no-xds]

Cases: (a) "default": Strait on its embedded default (capture listeners 15001/15006 to original
destinations, admin moved to a free loopback port with --config-yaml), HAProxy and nginx on the nearest
equivalent (two listeners forwarding to the original destination or the local address, one status
listener, one thread / one worker); (b) "xds": Strait on an ADS bootstrap (tests/xds_server/xds_control.py's
ads_bootstrap) connected to the Node test control plane serving one listener, one route table, one EDS
cluster with one endpoint, measured after CDS, EDS, LDS and RDS are ACKed. Each peer is started alone,
measured after it is ready plus --settle seconds, and stopped (by PID); rounds are interleaved.

Figures per process (summed over nginx's master and worker): VmRSS and Threads from /proc/PID/status;
Rss, Pss, Private_Clean + Private_Dirty and Anonymous from /proc/PID/smaps_rollup.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "xds_server"))

STARTED: list[subprocess.Popen] = []   # every process this script started, stopped by PID on exit


def log(msg):
    print(f"[idle-memory] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port):
    """A socket listens on port (from /proc/net/tcp{,6}). Never connects: the forwarding listeners send
    to the original destination, which for a probe from loopback is the listener itself (a loop)."""
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        return True
        except OSError:
            pass
    return False


def children_of(pid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out.append(int(d))
        except (OSError, IndexError, ValueError):
            pass
    return out


def read_kv(path):
    out = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.partition(":")
            parts = v.split()
            if parts and parts[0].isdigit():
                out[k.strip()] = int(parts[0])
    return out


def measure(pids):
    """Summed figures in kB (threads as a count) over pids."""
    tot = {"vmrss": 0, "rss": 0, "pss": 0, "private": 0, "pdirty": 0, "anon": 0, "threads": 0, "procs": 0}
    for pid in pids:
        st = read_kv(f"/proc/{pid}/status")
        sm = read_kv(f"/proc/{pid}/smaps_rollup")
        tot["vmrss"] += st.get("VmRSS", 0)
        tot["threads"] += st.get("Threads", 0)
        tot["rss"] += sm.get("Rss", 0)
        tot["pss"] += sm.get("Pss", 0)
        tot["private"] += sm.get("Private_Clean", 0) + sm.get("Private_Dirty", 0)
        tot["pdirty"] += sm.get("Private_Dirty", 0)
        tot["anon"] += sm.get("Anonymous", 0)
        tot["procs"] += 1
    return tot


def stop(p: subprocess.Popen, timeout=5.0):
    if p.poll() is None:
        try:
            p.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout)
    if p in STARTED:
        STARTED.remove(p)


def stop_all(*_):
    for p in list(STARTED):
        stop(p)


def start(argv, logpath):
    lf = open(logpath, "ab")
    p = subprocess.Popen(argv, stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    lf.close()
    STARTED.append(p)
    return p


def wait_until(pred, timeout, p=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if p is not None and p.poll() is not None:
            return False
        if pred():
            return True
        time.sleep(0.05)
    return False


def strait_ready(admin_file):
    try:
        with open(admin_file) as f:
            host, port = f.read().strip().rsplit(":", 1)
        c = http.client.HTTPConnection(host, int(port), timeout=1)
        c.request("GET", "/ready")
        ok = c.getresponse().status == 200
        c.close()
        return ok
    except (OSError, ValueError, http.client.HTTPException):
        return False


# --- where a running strait's memory is (--breakdown) --------------------------------------------

def smaps_mappings(pid):
    """[(start, end, perms, path, {field: kB})] from /proc/PID/smaps."""
    out = []
    cur = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(None, 5)
            if "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                cur = (lo, hi, head[1], head[5].strip() if len(head) > 5 else "", {})
                out.append(cur)
            elif cur is not None and line.endswith("kB\n"):
                k, v = line.split(":", 1)
                cur[4][k] = int(v.split()[0])
    return out


def thread_stacks(pid):
    """{thread name: count} from /proc/PID/task/*/comm. (Stacks are found in classify(): the anonymous
    mappings right after a no-access guard page, as glibc lays out pthread stacks.)"""
    names = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                n = f.read().strip()
            names[n] = names.get(n, 0) + 1
        except OSError:
            pass
    return names


def classify(maps, exe):
    """kB of Rss / Pss / private / anonymous per class of mapping."""
    classes = {}

    def add(cls, m):
        c = classes.setdefault(cls, {"rss": 0, "pss": 0, "private": 0, "anon": 0, "n": 0})
        c["rss"] += m.get("Rss", 0)
        c["pss"] += m.get("Pss", 0)
        c["private"] += m.get("Private_Clean", 0) + m.get("Private_Dirty", 0)
        c["anon"] += m.get("Anonymous", 0)
        c["n"] += 1

    exe_real = os.path.realpath(exe) if exe else None
    prev = None
    for lo, hi, perms, path, m in maps:
        size_kb = (hi - lo) // 1024
        if path.startswith("/") and exe_real and os.path.realpath(path) == exe_real:
            kind = {"r-xp": "code (r-x)", "r--p": "read-only data (r--)", "rw-p": ".data (rw-)"}.get(perms, perms)
            add(f"{os.path.basename(path)} {kind}", m)
        elif path.startswith("/"):
            add(os.path.basename(path).split(".so")[0] + (".so" if ".so" in path else ""), m)
        elif path == "[heap]":
            add("[heap] (brk: malloc's main arena)", m)
        elif path == "[stack]":
            add("[stack] main thread", m)
        elif path.startswith("["):
            add(path, m)
        elif perms == "---p":
            add("guard / reserved (no access)", m)
        elif perms == "rw-p" and lo % (64 * 1024 * 1024) == 0:
            add("malloc thread arenas (64 MiB-aligned heaps)", m)
        elif prev is not None and prev[2] == "---p" and prev[1] == lo and size_kb in (8188, 8192, 8184, 8180) :
            add("thread stacks (8 MiB each)", m)
        elif prev is not None and prev[2] == "---p" and prev[1] == lo:
            add("after a guard page, not 8 MiB (stacks of other sizes)", m)
        elif size_kb <= 132 * 1024 and (hi - lo) % (64 * 1024 * 1024) != 0 and prev is not None and \
                prev[1] == lo and prev[3] and prev[3].startswith("/") and perms == "rw-p":
            add(".bss (anonymous, right after a file's .data)", m)
        else:
            add("other anonymous (malloc arenas, mmaps)", m)
        prev = (lo, hi, perms, path)
    return classes


def parse_link_map(path):
    """[(addr, size, library)] of every input section placed in an allocated output section."""
    import re
    secs = []
    in_map = False
    pending = None
    full = re.compile(r"^ (\S+)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+(.+)$")
    cont = re.compile(r"^\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+(.+)$")
    with open(path, errors="replace") as f:
        for line in f:
            if not in_map:
                in_map = line.startswith("Linker script and memory map")
                continue
            line = line.rstrip("\n")
            m = full.match(line)
            if m:
                name, addr, size, obj = m.group(1), int(m.group(2), 16), int(m.group(3), 16), m.group(4)
                pending = None
            elif pending is not None and cont.match(line):
                m2 = cont.match(line)
                name, addr, size, obj = pending, int(m2.group(1), 16), int(m2.group(2), 16), m2.group(3)
                pending = None
            else:
                pending = line[1:] if line.startswith(" ") and not line.startswith("  ") and " " not in line[1:] else None
                continue
            if addr == 0 or size == 0 or name.startswith("*") or name.startswith(".debug") or name.startswith(".comment"):
                continue
            secs.append((addr, size, library_of(obj)))
    secs.sort()
    return secs


def library_of(obj):
    obj = obj.strip()
    if "(" in obj and obj.endswith(")"):
        archive = obj[:obj.index("(")]
    else:
        archive = obj
    base = os.path.basename(archive)
    if base.startswith("libabsl_"):
        return "abseil"
    if base in ("libgrpc.a", "libgrpc++.a", "libgpr.a", "libupb.a", "libaddress_sorting.a"):
        return "gRPC (" + base + ")" if base != "libgrpc.a" else "gRPC (libgrpc.a)"
    if base in ("libc.a", "libpthread.a", "libm.a", "libdl.a", "librt.a", "libresolv.a") or base.startswith("crt") \
            or base in ("libc_nonshared.a",):
        return "glibc"
    if base in ("libstdc++.a", "libgcc.a", "libgcc_eh.a", "libsupc++.a", "libatomic.a") or base.startswith("crtbegin") \
            or base.startswith("crtend"):
        return "libstdc++/libgcc"
    if "strait_api" in archive or "/gen/" in archive:
        return "Strait: generated xDS API (protobuf)"
    if "libstrait_core.a" in base or "strait_xds" in base or "CMakeFiles/strait.dir" in archive:
        return "Strait: own code"
    if base == "libllhttp.a":
        return "llhttp"
    return base


def pagemap_resident(pid, lo, hi):
    """Set of resident page addresses in [lo, hi)."""
    out = set()
    npages = (hi - lo) // 4096
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek((lo // 4096) * 8)
        data = f.read(npages * 8)
    for i in range(len(data) // 8):
        v = int.from_bytes(data[i * 8:i * 8 + 8], "little")
        if v & (1 << 63):
            out.add(lo + i * 4096)
    return out


def by_library(pid, maps, link_map, exe):
    """kB resident per library among the pages of the executable's own mappings and its .bss."""
    secs = parse_link_map(link_map)
    if not secs:
        return {}
    first, last = secs[0][0], secs[-1][0] + secs[-1][1]
    resident = set()
    for lo, hi, perms, path, m in maps:
        if hi <= first or lo >= last:
            continue
        resident |= pagemap_resident(pid, max(lo, first & ~4095), min(hi, (last + 4095) & ~4095))
    per = {}
    for addr, size, lib in secs:
        end = addr + size
        page = addr & ~4095
        got = 0
        while page < end:
            if page in resident:
                got += min(end, page + 4096) - max(addr, page)
            page += 4096
        per[lib] = per.get(lib, 0) + got
    return {k: v / 1024 for k, v in per.items()}


def breakdown_md(pid, label, exe, link_map=None):
    maps = smaps_mappings(pid)
    classes = classify(maps, exe)
    lines = [f"### Where {label}'s memory is (PID {pid}, /proc/PID/smaps)", "",
             "| mapping class | mappings | Rss kB | Pss kB | private kB | anon kB |", "|---|---|---|---|---|---|"]
    for cls, c in sorted(classes.items(), key=lambda kv: -kv[1]["rss"]):
        if c["rss"] == 0 and c["n"] > 4:
            lines.append(f"| {cls} | {c['n']} | 0 | 0 | 0 | 0 |")
            continue
        lines.append(f"| {cls} | {c['n']} | {c['rss']} | {c['pss']} | {c['private']} | {c['anon']} |")
    names = thread_stacks(pid)
    lines += ["", "Threads: " + ", ".join(f"{n} x{c}" if c > 1 else n for n, c in sorted(names.items()))
              + f" ({sum(names.values())} in all)."]
    if link_map and os.path.exists(link_map):
        try:
            per = by_library(pid, maps, link_map, exe)
        except OSError as e:
            per = {}
            lines.append(f"(no per-library split: {e})")
        if per:
            lines += ["", f"Resident pages of the binary's own sections (code, read-only data, .data, .bss) by the "
                          f"archive they were linked from (linker map {os.path.basename(link_map)}, /proc/PID/pagemap):",
                      "", "| library | resident kB |", "|---|---|"]
            total = 0
            for lib, kb in sorted(per.items(), key=lambda kv: -kv[1]):
                total += kb
                if kb >= 8:
                    lines.append(f"| {lib} | {kb:.0f} |")
            lines.append(f"| (all) | {total:.0f} |")
    return "\n".join(lines) + "\n"


# --- configurations ------------------------------------------------------------------------------

def haproxy_default_conf(p_out, p_in, p_admin):
    # The embedded default's shape: two capture listeners to the original destination, a status port.
    # maxconn as perf/bench.py gives it (HAProxy sizes its tables from maxconn).
    return f"""global
  nbthread 1
  maxconn 4096

defaults
  mode tcp
  timeout connect 10s
  timeout client 3600s
  timeout server 3600s

frontend outbound
  bind 127.0.0.1:{p_out}
  default_backend passthrough

frontend inbound
  bind 127.0.0.1:{p_in}
  default_backend passthrough

backend passthrough
  server original 0.0.0.0:0

frontend admin
  mode http
  bind 127.0.0.1:{p_admin}
  http-request return status 200 content-type text/plain string "LIVE" if {{ path /ready }}
  stats enable
  stats uri /stats
"""


def nginx_default_conf(run, p_out, p_in, p_admin):
    # nginx has no original-destination hand-off without its stream module (not in Debian's default
    # set here); HTTP forwarding to the address the connection arrived on is the nearest shape.
    # worker_connections as perf/bench.py gives it (nginx allocates its connection array from it).
    tmp = os.path.join(run, "nginx-tmp")
    os.makedirs(tmp, exist_ok=True)
    user = "user root;\n" if os.geteuid() == 0 else ""
    temps = "".join(f"  {k}_temp_path {tmp}/{k};\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    servers = "".join(f"""  server {{
    listen 127.0.0.1:{p};
    location / {{ proxy_pass http://$server_addr:$server_port; proxy_http_version 1.1; }}
  }}
""" for p in (p_out, p_in))
    return f"""{user}worker_processes 1;
pid {run}/nginx.pid;
error_log {run}/nginx-error.log error;
events {{ worker_connections 8192; }}
http {{
{temps}  access_log off;
{servers}  server {{
    listen 127.0.0.1:{p_admin};
    location = /ready {{ return 200 "LIVE"; }}
    location = /status {{ stub_status; }}
  }}
}}
"""


def xds_resources(listener_port, endpoint_port):
    from xds_control import CDS, EDS, LDS, RDS
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                    "HttpConnectionManager",
           "stat_prefix": "idle_http",
           "rds": {"route_config_name": "idle_route", "config_source": {"ads": {}, "resource_api_version": "V3"}},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
    return [
        {"@type": CDS, "name": "backend", "type": "EDS", "connect_timeout": "1s",
         "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}}},
        {"@type": EDS, "cluster_name": "backend", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "127.0.0.1", "port_value": endpoint_port}}}}]}]},
        {"@type": LDS, "name": "idle_listener",
         "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener_port}},
         "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                         "typed_config": hcm}]}]},
        {"@type": RDS, "name": "idle_route", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]}]},
    ]


# --- the peers -----------------------------------------------------------------------------------

class Run:
    def __init__(self, a, run):
        self.a, self.run = a, run
        self.rows = []       # dicts: case, peer, round, figures...
        self.notes = []
        self.xds = None
        self.breakdowns = []

    def start_strait(self, binary, name, case):
        admin_file = os.path.join(self.run, f"{name}-admin.txt")
        if os.path.exists(admin_file):
            os.unlink(admin_file)
        argv = [binary, "--concurrency", str(self.a.concurrency), "--admin-address-path", admin_file,
                "-l", "error", "--drain-time-s", "1"]
        if case == "default":
            # The embedded default, only its admin moved to a free port (maps merge key by key).
            argv += ["--config-yaml",
                     "admin: {address: {socket_address: {address: 127.0.0.1, port_value: 0}}}"]
        else:
            argv += ["-c", self.xds_bootstrap]
        p = start(argv, os.path.join(self.run, f"{name}-{case}.log"))
        if not wait_until(lambda: strait_ready(admin_file), 15, p):
            stop(p)
            return None, f"{name} ({case}) never answered /ready; see {self.run}/{name}-{case}.log"
        if case == "xds":
            if not self.wait_acks(p):
                stop(p)
                return None, f"{name} (xds) did not ACK CDS, EDS, LDS and RDS within 20 s"
        return p, None

    def wait_acks(self, p):
        from xds_control import CDS, EDS, LDS, RDS
        want = {CDS, EDS, LDS, RDS}
        end = time.monotonic() + 20
        while time.monotonic() < end and p.poll() is None:
            reqs = self.xds.requests(since=self.xds_seq)
            acked = {r["type_url"] for r in reqs if r.get("kind") == "ack"}
            if want <= acked:
                return True
            time.sleep(0.1)
        return False

    def start_haproxy(self):
        ports = [free_port() for _ in range(3)]
        cfg = os.path.join(self.run, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(haproxy_default_conf(*ports))
        p = start(["haproxy", "-db", "-f", cfg], os.path.join(self.run, "haproxy.log"))
        if not wait_until(lambda: all(port_open(x) for x in ports), 10, p):
            stop(p)
            return None, f"haproxy did not start; see {self.run}/haproxy.log"
        return p, None

    def start_nginx(self):
        ports = [free_port() for _ in range(3)]
        cfg = os.path.join(self.run, "nginx.conf")
        with open(cfg, "w") as f:
            f.write(nginx_default_conf(self.run, *ports))
        p = start(["nginx", "-p", self.run, "-e", os.path.join(self.run, "nginx-error.log"), "-c", cfg,
                   "-g", "daemon off;"], os.path.join(self.run, "nginx.log"))
        if not wait_until(lambda: all(port_open(x) for x in ports) and children_of(p.pid), 10, p):
            stop(p)
            return None, f"nginx did not start; see {self.run}/nginx.log, nginx-error.log"
        return p, None

    def peers(self):
        out = []
        if self.a.strait:
            out.append(("strait", "Strait (dynamic)", self.a.strait))
        if self.a.static_bin:
            out.append(("strait-static", "Strait (static)", self.a.static_bin))
        if shutil.which("haproxy"):
            out.append(("haproxy", "HAProxy", None))
        if shutil.which("nginx"):
            out.append(("nginx", "nginx", None))
        if self.a.peers:
            want = self.a.peers.split(",")
            out = [p for p in out if p[0] in want]
        return out

    def one(self, case, key, label, binary, rnd):
        if key.startswith("strait"):
            p, err = self.start_strait(binary, key, case)
        elif key == "haproxy":
            p, err = self.start_haproxy()
        else:
            p, err = self.start_nginx()
        if p is None:
            self.notes.append(f"round {rnd}: {err}")
            log(err)
            return
        try:
            time.sleep(self.a.settle)
            pids = [p.pid] + children_of(p.pid)
            samples = []
            for _ in range(3):          # three samples 0.3 s apart; the last one is kept, all logged
                samples.append(measure(pids))
                time.sleep(0.3)
            m = samples[-1]
            if self.a.breakdown and key.startswith("strait") and rnd == self.a.rounds:
                lmap = os.path.join(os.path.dirname(os.path.abspath(binary)), "strait.map")
                self.breakdowns.append(breakdown_md(p.pid, f"{label}, {case}", binary,
                                                    lmap if os.path.exists(lmap) else None))
            row = {"case": case, "peer": key, "label": label, "round": rnd, **m}
            self.rows.append(row)
            log(f"{case:8s} {label:18s} round {rnd}: VmRSS {m['vmrss'] / 1024:.1f} MB, PSS {m['pss'] / 1024:.1f}, "
                f"private {m['private'] / 1024:.1f} (dirty {m['pdirty'] / 1024:.1f}), anon {m['anon'] / 1024:.1f}, threads {m['threads']}")
        finally:
            stop(p)

    def go(self):
        cases = ["default"]
        if not self.a.no_xds:
            try:
                import xds_control
                if not xds_control.node_available():
                    raise RuntimeError("node/npm not installed")
                self.xds = xds_control.XdsServer(os.path.join(self.run, "xds")).start()
                lport, eport = free_port(), free_port()
                self.xds.set_resources(xds_resources(lport, eport))
                boot = xds_control.ads_bootstrap(self.xds.ads_port, delta=False)
                self.xds_bootstrap = os.path.join(self.run, "strait-xds.json")
                with open(self.xds_bootstrap, "w") as f:
                    json.dump(boot, f, indent=1)
                cases.append("xds")
            except Exception as e:  # the default case still runs
                self.notes.append(f"xDS case skipped: {e}")
                log(f"xDS case skipped: {e}")
        for rnd in range(1, self.a.rounds + 1):
            for case in cases:
                for key, label, binary in self.peers():
                    if case == "xds" and not key.startswith("strait"):
                        continue
                    if case == "xds":
                        self.xds_seq = self.xds.requests()[-1]["seq"] if self.xds.requests() else 0
                    self.one(case, key, label, binary, rnd)
        if self.xds is not None:
            self.xds.stop()

    # --- report ------------------------------------------------------------------------------
    def markdown(self):
        def mr(vals, scale=1024.0, digits=1):
            if not vals:
                return "n/a"
            v = [x / scale for x in vals]
            med = statistics.median(v)
            if len(v) == 1 or max(v) - min(v) < 0.05:
                return f"{med:.{digits}f}"
            return f"{med:.{digits}f} ({min(v):.{digits}f}–{max(v):.{digits}f})"

        lines = ["## Idle memory", "",
                 f"Each peer started alone, measured {self.a.settle:g} s after it was ready (case xds: after CDS, "
                 f"EDS, LDS and RDS were ACKed), then stopped; {self.a.rounds} interleaved round(s), median "
                 f"(min–max) in MB (MiB of 1024 kB). Strait runs `--concurrency {self.a.concurrency}`, "
                 "HAProxy `nbthread 1`, nginx `worker_processes 1` (master + worker summed, so its VmRSS counts "
                 "shared pages twice; its PSS does not). From /proc/PID/smaps_rollup: private = Private_Clean + "
                 "Private_Dirty (pages no other process maps: for a lone static binary that includes its own "
                 "code), dirty = Private_Dirty, anon = Anonymous (heap, stacks, .bss: what no other sidecar can "
                 "share).", "",
                 "| case | peer | VmRSS | PSS | private | dirty | anon | threads |",
                 "|---|---|---|---|---|---|---|---|"]
        order = [k for k, _, _ in self.peers()]
        for case in ("default", "xds"):
            for key in order:
                rows = [r for r in self.rows if r["case"] == case and r["peer"] == key]
                if not rows:
                    if case == "xds" and not key.startswith("strait"):
                        continue
                    if any(r["case"] == case for r in self.rows) or case == "default":
                        lines.append(f"| {case} | {key} | n/a | n/a | n/a | n/a | n/a | n/a |")
                    continue
                label = rows[0]["label"]
                lines.append(f"| {case} | {label} | {mr([r['vmrss'] for r in rows])} | {mr([r['pss'] for r in rows])} | "
                             f"{mr([r['private'] for r in rows])} | {mr([r['pdirty'] for r in rows])} | "
                             f"{mr([r['anon'] for r in rows])} | "
                             f"{mr([r['threads'] for r in rows], scale=1, digits=0)} |")
        static_xds = [r["vmrss"] for r in self.rows if r["case"] == "xds" and r["peer"] == "strait-static"]
        static_anon = [r["anon"] for r in self.rows if r["case"] == "xds" and r["peer"] == "strait-static"]
        lines.append("")
        if static_xds:
            rss, anon = statistics.median(static_xds) / 1024, statistics.median(static_anon) / 1024
            lines.append(f"Targets (issue 13), static build with xDS connected: idle VmRSS {rss:.1f} MB "
                         f"({'met' if rss < 10 else 'not met'}: under 10 MB), private anonymous {anon:.1f} MB "
                         f"({'met' if anon < 3 else 'not met'}: under 3 MB).")
        else:
            lines.append("Targets (issue 13): no static build measured with xDS connected (give --static-bin / "
                         "STRAIT_STATIC_BIN).")
        for n in self.notes:
            lines.append(f"- {n}")
        for b in self.breakdowns:
            lines += ["", b]
        return "\n".join(lines) + "\n"

    def csv(self):
        keys = ["case", "peer", "round", "vmrss", "rss", "pss", "private", "pdirty", "anon", "threads", "procs"]
        out = [",".join(keys)]
        for r in self.rows:
            out.append(",".join(str(r[k]) for k in keys))
        return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--strait", help="the dynamic strait binary")
    ap.add_argument("--static-bin", default=os.environ.get("STRAIT_STATIC_BIN"), help="the static strait binary")
    ap.add_argument("--out", required=True, help="Markdown section to write")
    ap.add_argument("--csv", help="CSV of every measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--no-xds", action="store_true", help="skip the case with the Node control plane")
    ap.add_argument("--keep", action="store_true", help="keep the run directory")
    ap.add_argument("--peers", help="only these: strait,strait-static,haproxy,nginx")
    ap.add_argument("--breakdown", action="store_true",
                    help="in the last round, break each Strait's memory down by mapping (and by library, for a "
                         "static build with strait.map beside it)")
    a = ap.parse_args()
    for b in filter(None, (a.strait, a.static_bin)):
        if not os.access(b, os.X_OK):
            sys.exit(f"idle_memory.py: no executable at {b}")
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, lambda *_: (stop_all(), sys.exit(130)))
    run = tempfile.mkdtemp(prefix="strait-idle-")
    r = Run(a, run)
    try:
        r.go()
    finally:
        if r.xds is not None and r.xds.proc is not None and r.xds.proc.poll() is None:
            r.xds.stop()
        stop_all()
    with open(a.out, "w") as f:
        f.write(r.markdown())
    if a.csv:
        with open(a.csv, "w") as f:
            f.write(r.csv())
    if a.keep:
        log(f"run directory kept: {run}")
    else:
        shutil.rmtree(run, ignore_errors=True)
    sys.stdout.write(r.markdown())


if __name__ == "__main__":
    main()
