#!/usr/bin/env python3
"""xDS scale benchmark (not a test): how long strait takes to accept large CDS/EDS pushes over ADS,
and what they cost in memory.

    ninja -C build strait
    perf/xds_scale.py                       # 1k then 10k clusters, SotW; report in perf/results/
    perf/xds_scale.py --delta               # the same over delta xDS
    perf/xds_scale.py --sizes 1000 --endpoints 10 --out /tmp/r --keep
    perf/xds_scale.py --sizes 10000,1000,10000,1000,10000 --tag churn   # memory across cluster churn
    perf/xds_scale_plot.py perf/results/<date>-xds-scale-delta-<tag>.json ...   # plots of several runs

What it does: starts the Node test management server (tests/xds_server/server.js, through
xds_control.py; `setup.sh` runs `npm ci` if node_modules is missing) and strait on an ADS bootstrap
(`--concurrency 2`, static cluster xds-grpc -> the server). Once strait is ready (empty CDS/LDS), for
each size N it replaces the whole CDS+EDS state at once with N EDS clusters of `--endpoints` endpoints
each (addresses 127.0.0.x:port that need not listen; every round has new names, so the previous
round's clusters are removed in the same push) and measures, from the server's own records (one clock):

  - CDS: time from the server writing the CDS response to strait's ACK/NACK of it;
  - EDS: time from the server writing the EDS response that carries the N assignments (sent when strait
    subscribes the new names after its CDS ACK) to strait's ACK/NACK;
  - total: from the control API call to the EDS ACK (includes the server's own encoding time);
  - strait's VmRSS and VmHWM (/proc/PID/status) before and after each round.

The report is Markdown, with the same figures beside it as JSON (same name, .json).

Every process it starts is stopped by its PID (SIGTERM, then SIGKILL) on exit and on error; every wait
has a deadline and the whole run a global one (`--deadline`, default 300 s). Standard library only.
Traffic: only the loopback control-plane connection (the cluster endpoints are never connected to).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests" / "xds_server"))

from xds_control import CDS, EDS, XdsServerEx, ads_bootstrap_ex, node_available  # noqa: E402

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Deadline(Exception):
    pass


class Run:
    def __init__(self, args):
        self.args = args
        self.deadline = time.monotonic() + args.deadline
        self.workdir = Path(tempfile.mkdtemp(prefix="strait-xds-scale."))
        self.xds: XdsServerEx | None = None
        self.strait: subprocess.Popen | None = None
        self.admin: str | None = None
        self.rows: list[dict] = []
        self.notes: list[str] = []
        self.increments: list[dict] = []

    # --- processes ---------------------------------------------------------------------------------

    def left(self, cap: float) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise Deadline(f"global deadline ({self.args.deadline} s) passed")
        return min(cap, left)

    def start(self) -> None:
        self.xds = XdsServerEx(self.workdir / "xds")
        self.xds.start()
        boot = self.bootstrap()
        boot_path = self.workdir / "bootstrap.json"
        boot_path.write_text(json.dumps(boot, indent=1))
        admin_path = self.workdir / "admin-address"
        prefix = shlex.split(self.args.wrapper) if self.args.wrapper else []
        cmd = prefix + [self.args.strait, "-c", str(boot_path), "--concurrency", "2", "--admin-address-path",
               str(admin_path), "-l", self.args.log_level, "--drain-time-s", "1"]
        self.log_path = self.workdir / "strait.log"
        with open(self.log_path, "wb") as log:
            self.strait = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        end = time.monotonic() + self.left(20)
        while time.monotonic() < end:
            if self.strait.poll() is not None:
                raise RuntimeError(f"strait exited with {self.strait.returncode}: {self.log_tail()}")
            try:
                text = admin_path.read_text().strip()
                if text and ":" in text:
                    self.admin = "http://" + text
                    break
            except OSError:
                pass
            time.sleep(0.05)
        else:
            raise RuntimeError(f"strait wrote no admin address in 20 s: {self.log_tail()}")
        end = time.monotonic() + self.left(30)
        while time.monotonic() < end:
            if self.get("/ready")[0] == 200:
                return
            time.sleep(0.1)
        raise RuntimeError(f"strait not ready in 30 s: {self.log_tail()}")

    def bootstrap(self) -> dict:
        return ads_bootstrap_ex(self.xds.ads_port, delta=self.args.delta, initial_fetch_timeout="15s")

    def stop(self) -> None:
        if self.strait is not None and self.strait.poll() is None:
            self.strait.send_signal(signal.SIGTERM)
            try:
                self.strait.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.strait.kill()
                self.strait.wait(timeout=10)
        if self.xds is not None:
            self.xds.stop()

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, str]:
        try:
            with OPENER.open(self.admin + path, timeout=timeout) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")
        except OSError as e:
            return 0, repr(e)

    def mem(self) -> dict:
        out = {}
        with open(f"/proc/{self.strait.pid}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(line.split()[1])
        # Heap the allocator reports in use (admin /memory), in KiB like the rest.
        code, text = self.get("/memory")
        if code == 200:
            try:
                mem = json.loads(text)
                out["HeapAllocated"] = int(mem["allocated"]) // 1024
                # Free heap glibc still holds (not yet trimmed back to the system).
                out["HeapFree"] = int(mem.get("pageheap_free", 0)) // 1024
            except (ValueError, KeyError):
                pass
        return out

    def stats(self) -> dict:
        # Only the families read here: an unfiltered /stats at 10,000 clusters copies half a million
        # values, which would count in the memory this run measures.
        code, text = self.get("/stats?filter=" + urllib.parse.quote(r"^(server|cluster_manager|control_plane|xds)\."))
        out = {}
        if code == 200:
            for line in text.splitlines():
                name, sep, value = line.partition(": ")
                if sep and value.strip().lstrip("-").isdigit():
                    out[name.strip()] = int(value)
        return out

    # --- one round ---------------------------------------------------------------------------------

    def resources(self, tag: str, n: int) -> list[dict]:
        eps = self.args.endpoints
        out = []
        for i in range(n):
            name = f"{tag}-c{i}"
            out.append({"@type": CDS, "name": name, "type": "EDS", "connect_timeout": "1s",
                        "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}}})
        for i in range(n):
            name = f"{tag}-c{i}"
            host = f"127.0.0.{1 + i % 250}"
            lb = [{"endpoint": {"address": {"socket_address": {"address": host, "port_value": 20000 + (i * eps + j) % 40000}}}}
                  for j in range(eps)]
            out.append({"@type": EDS, "cluster_name": name, "endpoints": [{"lb_endpoints": lb}]})
        return out

    def reply_to(self, resp: dict) -> dict | None:
        for r in self.xds.requests(type_url=resp["type_url"], stream=resp["stream"]):
            if r["response_nonce"] == resp["nonce"] and r["kind"] in ("ack", "nack"):
                return r
        return None

    def round(self, n: int) -> dict:
        tag = f"r{len(self.rows)}-{n}"  # new names every round: the previous round's clusters all go
        row = {"clusters": n, "endpoints_per_cluster": self.args.endpoints}
        row["mem_before"] = self.mem()
        body = {"types": ["cds", "eds"], "resources": self.resources(tag, n), "push": True}
        resp_seq = self.xds.call("GET", "/responses?since=999999999")["last_seq"]
        t0_ms = time.time() * 1000
        self.xds.call("POST", "/replace", body, timeout=self.left(180))
        row["api_call_s"] = (time.time() * 1000 - t0_ms) / 1000
        cds_resp = cds_reply = eds_resp = eds_reply = None
        end = time.monotonic() + self.left(self.args.round_timeout)
        while time.monotonic() < end:
            if cds_reply is None:
                for r in self.xds.responses(since=resp_seq, type_url=CDS):
                    if len(r["resource_names"]) == n or (r["api"] == "delta" and len(r["resource_names"]) >= n):
                        cds_resp = r
                if cds_resp is not None:
                    cds_reply = self.reply_to(cds_resp)
            if eds_reply is None:
                for r in self.xds.responses(since=resp_seq, type_url=EDS):
                    if len(r["resource_names"]) >= n:
                        eds_resp = r
                if eds_resp is not None:
                    eds_reply = self.reply_to(eds_resp)
            if cds_reply is not None and eds_reply is not None:
                break
            if self.strait.poll() is not None:
                raise RuntimeError(f"strait exited with {self.strait.returncode}: {self.log_tail()}")
            time.sleep(0.1)
        for label, resp, reply in (("cds", cds_resp, cds_reply), ("eds", eds_resp, eds_reply)):
            if resp is None:
                row[label] = "no response sent"
            elif reply is None:
                row[label] = f"no ACK/NACK within {self.args.round_timeout} s"
            else:
                row[label] = {"kind": reply["kind"], "ms": reply["time_ms"] - resp["time_ms"],
                              "error": (reply.get("error_detail") or {}).get("message")}
        if eds_reply is not None:
            row["total_s"] = (eds_reply["time_ms"] - t0_ms) / 1000
        # Let the workers settle, then memory and what strait says it holds.
        time.sleep(1.0)
        row["mem_after"] = self.mem()
        stats = self.stats()
        row["stats"] = {k: v for k, v in stats.items()
                        if k.startswith(("cluster_manager.", "control_plane.", "xds.")) and not k.endswith("_time")}
        return row

    def remove_all(self) -> dict:
        """Replaces CDS+EDS with nothing; waits for the ACK of the empty CDS response."""
        row = {"clusters": 0, "removed": True, "mem_before": self.mem()}
        resp_seq = self.xds.call("GET", "/responses?since=999999999")["last_seq"]
        t0_ms = time.time() * 1000
        self.xds.call("POST", "/replace", {"types": ["cds", "eds"], "resources": [], "push": True},
                      timeout=self.left(60))
        end = time.monotonic() + self.left(self.args.round_timeout)
        reply = resp = None
        while time.monotonic() < end and reply is None:
            resps = self.xds.responses(since=resp_seq, type_url=CDS)
            if resps:
                resp = resps[-1]
                reply = self.reply_to(resp)
            time.sleep(0.1)
        if reply is not None:
            row["cds"] = {"kind": reply["kind"], "ms": reply["time_ms"] - resp["time_ms"],
                          "error": (reply.get("error_detail") or {}).get("message")}
            row["total_s"] = (reply["time_ms"] - t0_ms) / 1000
        else:
            row["cds"] = "no ACK/NACK" if resp is not None else "no response sent"
        # Strait gives freed heap back about a second after the update (once the workers have let go
        # of the old config); on a loaded machine later. Read memory once it has settled (3 s at most).
        time.sleep(1.0)
        row["mem_after"] = self.mem()
        settle = time.monotonic() + 2.0
        while time.monotonic() < settle:
            time.sleep(0.25)
            now = self.mem()
            if now.get("VmRSS", 0) >= row["mem_after"].get("VmRSS", 0):
                break
            row["mem_after"] = now
        row["stats"] = {k: v for k, v in self.stats().items()
                        if k.startswith(("cluster_manager.", "control_plane.", "xds.")) and not k.endswith("_time")}
        return row

    def wait_reply(self, since: int, type_url: str, pred) -> tuple[dict | None, dict | None]:
        """The first response (after seq `since`) of this type for which pred holds, and strait's reply."""
        end = time.monotonic() + self.left(self.args.round_timeout)
        resp = None
        while time.monotonic() < end:
            if resp is None:
                for r in self.xds.responses(since=since, type_url=type_url):
                    if pred(r):
                        resp = r
                        break
            if resp is not None:
                reply = self.reply_to(resp)
                if reply is not None:
                    return resp, reply
            time.sleep(0.02)
        return resp, None

    def incremental(self, tag: str, n: int) -> dict:
        """With the last round's n clusters in place: one endpoint changed, then one cluster added, each
        `--changes` times; the ACK times of each (server-side, as above)."""
        eps = self.args.endpoints
        out = {"clusters": n, "endpoint_changed_ms": [], "cluster_added_cds_ms": [], "cluster_added_eds_ms": [],
               "errors": []}
        over_before = sum(v for k, v in self.stats().items() if k.endswith("loop_iterations_over_1ms"))
        for k in range(self.args.changes):
            i = (k * 7919) % n
            name = f"{tag}-c{i}"
            lb = [{"endpoint": {"address": {"socket_address": {"address": f"127.0.0.{1 + i % 250}",
                                                               "port_value": 20000 + (i * eps + j) % 40000 + (k + 1 if j == 0 else 0)}}}}
                  for j in range(eps)]
            since = self.xds.call("GET", "/responses?since=999999999")["last_seq"]
            self.xds.set_resources([{"@type": EDS, "cluster_name": name, "endpoints": [{"lb_endpoints": lb}]}])
            resp, reply = self.wait_reply(since, EDS, lambda r: name in r["resource_names"])
            if reply is None:
                out["errors"].append(f"endpoint change {k}: no ACK")
            else:
                out["endpoint_changed_ms"].append(reply["time_ms"] - resp["time_ms"])
                if reply["kind"] != "ack":
                    out["errors"].append(f"endpoint change {k}: {reply['kind']}")
        for k in range(self.args.changes):
            name = f"{tag}-added{k}"
            since = self.xds.call("GET", "/responses?since=999999999")["last_seq"]
            lb = [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.251", "port_value": 30000 + j}}}}
                  for j in range(eps)]
            self.xds.set_resources([
                {"@type": CDS, "name": name, "type": "EDS", "connect_timeout": "1s",
                 "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}}},
                {"@type": EDS, "cluster_name": name, "endpoints": [{"lb_endpoints": lb}]}])
            for label, type_url in (("cluster_added_cds_ms", CDS), ("cluster_added_eds_ms", EDS)):
                resp, reply = self.wait_reply(since, type_url, lambda r: name in r["resource_names"])
                if reply is None:
                    out["errors"].append(f"cluster add {k} ({type_url.rsplit('.', 1)[-1]}): no ACK")
                else:
                    out[label].append(reply["time_ms"] - resp["time_ms"])
                    if reply["kind"] != "ack":
                        out["errors"].append(f"cluster add {k}: {reply['kind']}")
        stats = self.stats()
        out["loop"] = {k: v for k, v in stats.items() if "loop_max_iteration" in k}
        # The longest time taking a config held a worker, wall and the worker thread's own CPU time (the
        # loop figure above is wall time: on 2 cores it includes the worker waiting for the CPU while the
        # main and xDS threads translate).
        out["apply_wall"] = max((v for k, v in stats.items() if k.endswith("config_apply_max_usec")), default=None)
        out["apply_cpu"] = max((v for k, v in stats.items() if k.endswith("config_apply_max_cpu_usec")), default=None)
        # Worker loop iterations that worked for more than 1 ms while these changes were applied.
        out["loop_over_1ms"] = sum(v for k, v in stats.items() if k.endswith("loop_iterations_over_1ms")) - over_before
        return out

    def run(self) -> None:
        self.start()
        self.rows.append({"clusters": 0, "mem_after": self.mem(), "note": "ready, no resources"})
        for n in self.args.sizes:
            print(f"xds_scale: pushing {n} clusters x {self.args.endpoints} endpoints ...", flush=True)
            row = self.round(n)
            print("xds_scale: " + json.dumps({k: v for k, v in row.items() if k != "stats"}), flush=True)
            self.rows.append(row)
            if self.args.changes > 0:
                print(f"xds_scale: {self.args.changes} single changes at {n} clusters ...", flush=True)
                inc = self.incremental(f"r{len(self.rows) - 1}-{n}", n)
                print("xds_scale: " + json.dumps(inc), flush=True)
                self.increments.append(inc)
        print("xds_scale: removing every cluster ...", flush=True)
        row = self.remove_all()
        print("xds_scale: " + json.dumps({k: v for k, v in row.items() if k != "stats"}), flush=True)
        self.rows.append(row)

    # --- report ------------------------------------------------------------------------------------

    def report(self, out_dir: Path, aborted: str | None) -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        date = datetime.date.today().isoformat()
        tag = f"-{self.args.tag}" if self.args.tag else ""
        path = out_dir / f"{date}-xds-scale{'-delta' if self.args.delta else ''}{tag}{'-aborted' if aborted else ''}.md"
        try:
            version = subprocess.run([self.args.strait, "--version"], capture_output=True, text=True,
                                     timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            version = "?"
        try:
            commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                                    capture_output=True, text=True, timeout=10).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            commit, dirty = "?", ""
        lines = [
            f"# xDS scale: {', '.join(str(n) for n in self.args.sizes)} clusters at once "
            f"({'delta' if self.args.delta else 'state of the world'})",
            "",
            f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; host: {platform.node()}, "
            f"{os.cpu_count()} CPUs, {platform.platform()}",
            f"- strait: `{self.args.strait}` ({version}); commit {commit}{' + uncommitted changes' if dirty else ''}",
            f"- strait flags: `--concurrency 2 -l {self.args.log_level}`"
            f"{f' under `{self.args.wrapper}`' if self.args.wrapper else ''}; ADS over a static cluster to the Node "
            f"test server (tests/xds_server/server.js), `{'DELTA_GRPC' if self.args.delta else 'GRPC'}`",
            f"- each round replaces CDS+EDS at once (`POST /replace`) with N EDS clusters of "
            f"{self.args.endpoints} endpoints (127.0.0.x:port, never connected to); the previous round's "
            f"clusters go in the same push",
            "- ACK times are server-side: `time_ms` of strait's ACK/NACK request minus `time_ms` of the "
            "response it answers (the server's /requests and /responses records, one clock)",
            "- total: from the control API call (which includes the server parsing and encoding the "
            "resources) to the EDS ACK",
            "",
        ]
        if aborted:
            lines += [f"**Run aborted:** {aborted}", ""]
        lines += ["| clusters | API call (s) | CDS response -> ACK (ms) | EDS response -> ACK (ms) | total (s) | "
                  "VmRSS before -> after (MiB) | VmHWM after (MiB) | RSS over empty, per cluster (KiB) | heap in use after (MiB) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        base = self.rows[0].get("mem_after", {}).get("VmRSS") if self.rows else None

        def mib(kib):
            return f"{kib / 1024:.1f}" if isinstance(kib, int) else "?"

        def ack(v):
            if isinstance(v, dict):
                s = f"{v['ms']}"
                if v["kind"] != "ack":
                    s += f" ({v['kind'].upper()}: {v.get('error') or ''})"
                return s
            return str(v) if v is not None else "-"

        for row in self.rows:
            before = row.get("mem_before", {})
            after = row.get("mem_after", {})
            total = f"{row['total_s']:.2f}" if "total_s" in row else "-"
            if row.get("removed"):
                lines.append(f"| 0 (all removed) | - | {ack(row.get('cds'))} | - | {total} | "
                             f"{mib(before.get('VmRSS'))} -> {mib(after.get('VmRSS'))} | {mib(after.get('VmHWM'))} | - | "
                             f"{mib(after.get('HeapAllocated'))} |")
                continue
            if row["clusters"] == 0:
                lines.append(f"| 0 (ready, empty) | - | - | - | - | {mib(after.get('VmRSS'))} | "
                             f"{mib(after.get('VmHWM'))} | - | {mib(after.get('HeapAllocated'))} |")
                continue
            per = "-"
            if isinstance(base, int) and isinstance(after.get("VmRSS"), int):
                per = f"{(after['VmRSS'] - base) / row['clusters']:.1f}"
            lines.append(f"| {row['clusters']} | {row.get('api_call_s', 0):.2f} | {ack(row.get('cds'))} | "
                         f"{ack(row.get('eds'))} | {total} | {mib(before.get('VmRSS'))} -> "
                         f"{mib(after.get('VmRSS'))} | {mib(after.get('VmHWM'))} | {per} | "
                         f"{mib(after.get('HeapAllocated'))} |")
        lines.append("")
        if self.increments:
            def dist(v):
                if not v:
                    return "-"
                v = sorted(v)
                return f"{v[len(v) // 2]} / {v[-1]}"
            lines += ["Single changes with every cluster in place (`--changes` each; ACK time in ms, median / max):", "",
                      "| clusters | one endpoint changed -> EDS ACK | one cluster added -> CDS ACK | its endpoints -> EDS ACK | "
                      "longest worker loop iteration since start (us, wall) | longest config apply on a worker since start (us, wall / CPU) | "
                      "worker iterations over 1 ms during the changes | errors |",
                      "|---|---|---|---|---|---|---|---|"]
            for inc in self.increments:
                loop = max(inc["loop"].values()) if inc.get("loop") else "-"
                lines.append(f"| {inc['clusters']} | {dist(inc['endpoint_changed_ms'])} | {dist(inc['cluster_added_cds_ms'])} | "
                             f"{dist(inc['cluster_added_eds_ms'])} | {loop} | {inc.get('apply_wall', '-')} / {inc.get('apply_cpu', '-')} | "
                             f"{inc.get('loop_over_1ms', '-')} | "
                             f"{'; '.join(inc['errors']) or '-'} |")
            lines.append("")
        for row in self.rows:
            if row.get("stats"):
                what = "removing every cluster" if row.get("removed") else f"{row['clusters']} clusters"
                lines.append(f"Stats after {what} (cluster_manager.*, control_plane.*, xds.*):")
                lines.append("```")
                lines += [f"{k}: {v}" for k, v in sorted(row["stats"].items())]
                lines.append("```")
                lines.append("")
        lines += self.notes
        path.write_text("\n".join(lines) + "\n")
        # The same figures as data, for perf/xds_scale_plot.py (RSS and ACK time against cluster count,
        # one line per binary or mode).
        data = {"tag": self.args.tag, "delta": self.args.delta, "strait": self.args.strait, "version": version,
                "commit": commit, "endpoints": self.args.endpoints, "aborted": aborted,
                "rows": [{k: v for k, v in row.items() if k != "stats"} for row in self.rows],
                "increments": self.increments}
        path.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
        return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,10000", help="comma-separated cluster counts (default 1000,10000)")
    p.add_argument("--endpoints", type=int, default=10, help="endpoints per cluster (default 10)")
    p.add_argument("--delta", action="store_true", help="DELTA_GRPC instead of GRPC (state of the world)")
    p.add_argument("--strait", default=os.environ.get("STRAIT_BIN", str(REPO_ROOT / "build" / "proxy" / "strait")))
    p.add_argument("--out", default=str(REPO_ROOT / "perf" / "results"))
    p.add_argument("--log-level", default="info")
    p.add_argument("--round-timeout", type=float, default=120.0, help="per round, seconds (default 120)")
    p.add_argument("--deadline", type=float, default=300.0, help="whole run, seconds (default 300)")
    p.add_argument("--keep", action="store_true", help="keep the run directory (configs, logs)")
    p.add_argument("--changes", type=int, default=5,
                   help="after each size, this many single endpoint changes and single cluster additions (default 5; 0: none)")
    p.add_argument("--tag", default="", help="added to the report's file name (e.g. churn)")
    p.add_argument("--wrapper", default="",
                   help="command put before strait, for heap profiles: e.g. \"valgrind --tool=massif "
                        "--massif-out-file=/tmp/massif.%%p --depth=30\" (then raise --round-timeout); "
                        "see perf/results/2026-12-06-cluster-memory.md")
    args = p.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not node_available():
        print("xds_scale: node/npm not found (deploy/install-deps.sh test)", file=sys.stderr)
        return 2
    if not (os.path.isfile(args.strait) and os.access(args.strait, os.X_OK)):
        print(f"xds_scale: no strait binary at {args.strait} (ninja -C build strait, or STRAIT_BIN)", file=sys.stderr)
        return 2
    return execute(Run(args), args, "xds_scale")


def execute(run: Run, args, label: str) -> int:
    """Runs `run`, stops what it started, writes the report (also after an error or a signal) and says
    where; the exit code: 0, or 1 if the run was cut short."""
    aborted = None

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    try:
        run.run()
    except (Deadline, RuntimeError, KeyboardInterrupt, OSError, Exception) as err:  # report what we have
        aborted = f"{type(err).__name__}: {err}"
        print(f"{label}: aborted: {aborted}", file=sys.stderr)
    finally:
        run.stop()
    path = run.report(Path(args.out), aborted)
    print(f"{label}: report: {path}")
    if args.keep or aborted:
        print(f"{label}: run directory kept: {run.workdir}")
    else:
        shutil.rmtree(run.workdir, ignore_errors=True)
    return 1 if aborted else 0

if __name__ == "__main__":
    sys.exit(main())
