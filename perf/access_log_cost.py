#!/usr/bin/env python3
"""CPU per request through Strait with and without a file access log, in one run.

An nginx origin (bench.py's), then Strait (one worker, pinned) started twice per round: once with no
access log, once with a file access log in Istio's default text format. wrk (pinned to the other CPU,
keep-alive, loopback only) drives each for --seconds; Strait's CPU is read from the kernel (the sum of
its threads' on-CPU time, /proc/PID/task/*/schedstat, cross-checked with utime+stime from
/proc/PID/stat) and divided by the requests wrk completed. Rounds alternate off/on so drift on a shared
machine hits both. Prints a Markdown table; --out FILE also writes it there.

Usage: perf/access_log_cost.py [--seconds 6] [--rounds 2] [--connections 32] [--out FILE]
Environment: STRAIT_BIN (default build/proxy/strait), PROXY_CPU (0), CLIENT_CPU (1).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (its process, nginx and wrk helpers)

ISTIO_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% '
    '%RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% '
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" '
    '"%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% '
    '%DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n')


def strait_config(port: int, upstream: int, log_path: str | None) -> str:
    import json
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "perf",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    if log_path:
        hcm["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": log_path, "log_format": {"text_format_source": {"inline_string": ISTIO_FORMAT}}}}]
    cfg = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{"name": "http", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                           "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                           "typed_config": hcm}]}]}],
            "clusters": [{"name": "up", "type": "STATIC", "connect_timeout": "1s",
                          "load_assignment": {"cluster_name": "up", "endpoints": [{"lb_endpoints": [
                              {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                                            "port_value": upstream}}}}]}]}}],
        },
    }
    return json.dumps(cfg)


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port}")


def wrk(port: int, seconds: int, connections: int, cpu: str) -> dict:
    out = subprocess.run(["taskset", "-c", cpu, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
                          f"http://127.0.0.1:{port}/index.html"], capture_output=True, text=True,
                         timeout=seconds + 30).stdout
    return bench.parse_wrk(out)


def measure(run: str, binary: str, upstream: int, with_log: bool, args, n: int) -> dict:
    port = bench.free_port()
    log_path = os.path.join(run, f"access-{n}.log") if with_log else None
    cfg = bench.write(os.path.join(run, f"strait-{n}.json"), strait_config(port, upstream, log_path))
    s = bench.Server(f"strait-{n}", [binary, "-c", cfg, "--concurrency", "1", "-l", "warning"],
                     os.environ.get("PROXY_CPU", "0"), os.path.join(run, f"strait-{n}.log")).start()
    try:
        wait_port(port)
        wrk(port, 1, args.connections, os.environ.get("CLIENT_CPU", "1"))  # warm-up (pools, caches)
        ns0, t0 = bench.proc_sched_ns([s.pid]), bench.proc_cpu_ticks([s.pid])
        r = wrk(port, args.seconds, args.connections, os.environ.get("CLIENT_CPU", "1"))
        ns1, t1 = bench.proc_sched_ns([s.pid]), bench.proc_cpu_ticks([s.pid])
    finally:
        s.stop()
    reqs = r.get("requests", 0)
    lines = 0
    if log_path and os.path.exists(log_path):
        with open(log_path, "rb") as f:
            lines = sum(1 for _ in f)
    hz = os.sysconf("SC_CLK_TCK")
    return {"log": with_log, "requests": reqs, "rps": r.get("rps", 0.0), "errors": r.get("errors", 0),
            "cpu_s": (ns1 - ns0) / 1e9, "cpu_ticks_s": (t1 - t0) / hz,
            "us_per_req": (ns1 - ns0) / 1e3 / max(reqs, 1), "p99_ms": r.get("p99_ms", 0.0), "lines": lines}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.seconds > 60 or args.rounds > 5:
        ap.error("keep it short: --seconds <= 60, --rounds <= 5")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    binary = os.environ.get("STRAIT_BIN", os.path.join(root, "build", "proxy", "strait"))
    run = tempfile.mkdtemp(prefix="strait-alog-perf-")
    docroot = os.path.join(run, "www")
    os.makedirs(docroot)
    bench.write(os.path.join(docroot, "index.html"), "x" * 100)
    up, up2 = bench.free_port(), bench.free_port()
    conf = bench.write(os.path.join(run, "upstream.conf"), bench.upstream_conf(run, docroot, up, up2))
    origin = bench.Server("upstream", ["nginx", "-c", conf, "-g", "daemon off;"], os.environ.get("CLIENT_CPU", "1"),
                          os.path.join(run, "upstream.log"), with_children=True).start()
    results = []
    try:
        wait_port(up)
        n = 0
        for _ in range(args.rounds):
            for with_log in (False, True):
                n += 1
                results.append(measure(run, binary, up, with_log, args, n))
    finally:
        origin.stop()
    rows = ["| access log | requests | req/s | Strait CPU s | CPU us/request | p99 ms | log lines | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        rows.append(f"| {'file (Istio format)' if r['log'] else 'off'} | {r['requests']} | {r['rps']:.0f} | "
                    f"{r['cpu_s']:.2f} (ticks {r['cpu_ticks_s']:.2f}) | {r['us_per_req']:.2f} | {r['p99_ms']:.2f} | "
                    f"{r['lines'] if r['log'] else '-'} | {r['errors']} |")
    off = [r["us_per_req"] for r in results if not r["log"]]
    on = [r["us_per_req"] for r in results if r["log"]]
    mean_off, mean_on = sum(off) / len(off), sum(on) / len(on)
    rows.append("")
    rows.append(f"Mean CPU per request: off {mean_off:.2f} us, with the file access log {mean_on:.2f} us: "
                f"ratio {mean_on / mean_off:.3f} (+{mean_on - mean_off:.2f} us per request).")
    text = "\n".join(rows) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
