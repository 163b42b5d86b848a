#!/usr/bin/env python3
"""On-demand cluster discovery at scale (not a test): what a sidecar holds when the control plane has N
clusters and the pod calls K of them (issue 13: memory that follows the pod's own traffic).

    ninja -C build strait
    perf/odcds_scale.py --delta --clusters 10000 --calls 5       # report in perf/results/
    perf/odcds_scale.py --clusters 10000 --calls 5,50 --tag s11  # state of the world; two call counts

What it does: the Node test management server (tests/xds_server) and strait on an ADS bootstrap without
cds_config (so CDS is not a wildcard subscription; see filters/http/on_demand.h), `--concurrency 2`.
The control plane gets N EDS clusters of `--endpoints` endpoints (addresses 127.0.0.x:port that do not
listen, as in perf/xds_scale.py), one HTTP listener with envoy.filters.http.on_demand before the router,
and a route configuration with one route per cluster (`/c<i>/` -> cluster i). Then, with strait holding
none of those clusters, one request to each of K clusters (spread over the N), one after the other with
curl-like plain sockets: each waits for its cluster and endpoints to come over ADS, then gets 503 from the
data path (the endpoints refuse connections: UF, not NC). Measured: VmRSS when ready (empty), once the
listener and its N routes are in force, and after the K calls; the time each call took (cluster discovery
+ a refused connection); what strait reports holding (cluster_manager.active_clusters) and the filter's
counters. Every process is stopped by its PID; every wait is bounded. Traffic: loopback only.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from xds_scale import REPO_ROOT, Run, execute  # noqa: E402
from xds_control import LDS, RDS, node_available  # noqa: E402

ON_DEMAND = "type.googleapis.com/envoy.extensions.filters.http.on_demand.v3.OnDemand"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def ads() -> dict:
    return {"ads": {}, "resource_api_version": "V3"}


class OdcdsRun(Run):
    def bootstrap(self) -> dict:
        b = super().bootstrap()
        del b["dynamic_resources"]["cds_config"]
        return b

    def listener(self, port: int, n: int) -> list[dict]:
        routes = [{"match": {"prefix": f"/c{i}/"}, "route": {"cluster": f"svc-c{i}"}} for i in range(n)]
        rds = {"@type": RDS, "name": "routes", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]}
        hcm = {"@type": HCM, "stat_prefix": "odcds", "codec_type": "AUTO",
               "rds": {"config_source": ads(), "route_config_name": "routes"},
               "http_filters": [{"name": "envoy.filters.http.on_demand",
                                 "typed_config": {"@type": ON_DEMAND, "odcds": {"source": ads(), "timeout": "10s"}}},
                                {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]}
        lds = {"@type": LDS, "name": "main",
               "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
               "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                               "typed_config": hcm}]}]}
        return [lds, rds]

    def request(self, port: int, path: str) -> tuple[int, float]:
        """One GET on a fresh connection: (status, seconds)."""
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=self.left(15)) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nhost: svc\r\nconnection: close\r\n\r\n".encode())
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        took = time.monotonic() - t0
        try:
            return int(data.split(b" ", 2)[1]), took
        except (IndexError, ValueError):
            return 0, took

    def wait_routes(self, port: int) -> None:
        """Until the listener answers and its route table is in force (a path no route has: 404)."""
        end = time.monotonic() + self.left(self.args.round_timeout)
        while time.monotonic() < end:
            try:
                if self.request(port, "/none")[0] == 404:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the listener on {port} did not route in time: {self.log_tail()}")

    def run(self) -> None:
        n = self.args.clusters
        self.start()
        self.rows.append({"what": "ready (no CDS subscription)", "mem": self.mem()})
        port = _free_port()
        print(f"odcds_scale: control plane gets {n} clusters, the listener and {n} routes ...", flush=True)
        t0 = time.monotonic()
        self.xds.call("POST", "/replace", {"types": ["cds", "eds", "lds", "rds"],
                                           "resources": self.resources("svc", n) + self.listener(port, n), "push": True},
                      timeout=self.left(180))
        self.wait_routes(port)
        time.sleep(1.0)
        self.rows.append({"what": f"listener with {n} routes in force; control plane holds {n} clusters",
                          "mem": self.mem(), "setup_s": time.monotonic() - t0,
                          "stats": {"cluster_manager.active_clusters": self.stats().get("cluster_manager.active_clusters", "-")}})
        done = 0
        for k in sorted(self.args.calls):
            calls = []
            for j in range(done, k):
                i = (j * 7919) % n
                status, took = self.request(port, f"/c{i}/x")
                calls.append({"cluster": f"svc-c{i}", "status": status, "ms": round(took * 1000, 1)})
            done = k
            time.sleep(1.0)
            stats = self.stats()
            row = {"what": f"after calling {k} services", "calls": k, "mem": self.mem(), "requests": calls,
                   "stats": {key: v for key, v in stats.items()
                             if key.startswith(("cluster_manager.active_clusters", "cluster_manager.warming",
                                                "http.odcds.on_demand.", "cluster_manager.cds."))}}
            print("odcds_scale: " + json.dumps({key: v for key, v in row.items() if key != "requests"}), flush=True)
            self.rows.append(row)

    def report(self, out_dir: Path, aborted: str | None) -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        tag = f"-{self.args.tag}" if self.args.tag else ""
        path = out_dir / (f"{datetime.date.today().isoformat()}-odcds-scale{'-delta' if self.args.delta else ''}"
                          f"{tag}{'-aborted' if aborted else ''}.md")
        lines = [f"# On-demand cluster discovery: {self.args.clusters} clusters on the control plane "
                 f"({'delta' if self.args.delta else 'state of the world'})", "",
                 f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; host: {platform.node()}, "
                 f"{os.cpu_count()} CPUs",
                 f"- strait: `{self.args.strait}`, `--concurrency 2`; bootstrap without `cds_config`; "
                 f"`perf/odcds_scale.py {' '.join(sys.argv[1:])}`",
                 f"- each cluster: EDS, {self.args.endpoints} endpoints that refuse connections; one route per "
                 "cluster; each call is a GET on a new connection (discovery, then 503 UF from the data path)", ""]
        if aborted:
            lines += [f"**Run aborted:** {aborted}", ""]
        lines += ["| state | VmRSS (MiB) | heap in use (MiB) | over the previous row (MiB) | clusters held |",
                  "|---|---|---|---|---|"]
        prev = None
        for row in self.rows:
            mem = row.get("mem", {})
            rss = mem.get("VmRSS")
            delta = f"{(rss - prev) / 1024:+.2f}" if isinstance(rss, int) and isinstance(prev, int) else "-"
            held = row.get("stats", {}).get("cluster_manager.active_clusters", "-")
            lines.append(f"| {row['what']} | {rss / 1024:.1f} | {mem.get('HeapAllocated', 0) / 1024:.1f} | {delta} | {held} |"
                         if isinstance(rss, int) else f"| {row['what']} | ? | ? | - | {held} |")
            prev = rss if isinstance(rss, int) else prev
        lines.append("")
        lines += ["The row \"listener ... in force\" is what the route table of N routes costs (the same with a wildcard",
                  "CDS subscription); the rows after it are what the clusters called cost, each used once (its pools,",
                  "balancers and host state made by that request too). For comparison, `perf/xds_scale.py` holds every",
                  "cluster of the control plane without routes (wildcard CDS).", ""]
        for row in self.rows:
            if row.get("requests"):
                ms = sorted(r["ms"] for r in row["requests"])
                codes = sorted({r["status"] for r in row["requests"]})
                lines.append(f"Calls up to {row['calls']}: {len(ms)} requests, each the first to its cluster: "
                             f"median {ms[len(ms) // 2]} ms, max {ms[-1]} ms; statuses {codes}")
                lines.append("```")
                lines += [f"{k}: {v}" for k, v in sorted(row["stats"].items())]
                lines.append("```")
                lines.append("")
        path.write_text("\n".join(lines) + "\n")
        path.with_suffix(".json").write_text(json.dumps({"args": sys.argv[1:], "aborted": aborted, "rows": self.rows},
                                                        indent=1) + "\n")
        return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clusters", type=int, default=10000, help="clusters on the control plane (default 10000)")
    p.add_argument("--calls", default="5", help="comma-separated numbers of services called (default 5)")
    p.add_argument("--endpoints", type=int, default=10, help="endpoints per cluster (default 10)")
    p.add_argument("--delta", action="store_true", help="DELTA_GRPC instead of GRPC (state of the world)")
    p.add_argument("--strait", default=os.environ.get("STRAIT_BIN", str(REPO_ROOT / "build" / "proxy" / "strait")))
    p.add_argument("--out", default=str(REPO_ROOT / "perf" / "results"))
    p.add_argument("--log-level", default="info")
    p.add_argument("--round-timeout", type=float, default=120.0)
    p.add_argument("--deadline", type=float, default=300.0, help="whole run, seconds (default 300)")
    p.add_argument("--tag", default="")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()
    args.calls = [int(c) for c in args.calls.split(",") if c.strip()]
    args.wrapper = ""
    if not node_available():
        print("odcds_scale: node/npm not found (deploy/install-deps.sh test)", file=sys.stderr)
        return 2
    return execute(OdcdsRun(args), args, "odcds_scale")

if __name__ == "__main__":
    sys.exit(main())
