#!/usr/bin/env python3
"""Plots of perf/xds_scale.py runs (not a test): RSS and ACK time against the number of clusters.

    perf/xds_scale.py --delta --sizes 100,1000,3000,10000 --changes 0 --tag dynamic
    perf/xds_scale.py --delta --sizes 100,1000,3000,10000 --changes 0 --tag static --strait build-static/proxy/strait
    perf/xds_scale_plot.py --out perf/results/<date>-xds-scale-plot.png \\
        perf/results/<date>-xds-scale-delta-dynamic.json perf/results/<date>-xds-scale-delta-static.json

Each JSON file (written beside each xds_scale.py report) is one line per panel, labelled by its run's tag
(or the file name). Panels: VmRSS after each round (MiB), RSS over the empty figure per cluster (KiB),
and the CDS and EDS ACK times (ms), each against the cluster count on a log scale. Needs gnuplot
(`apt-get install gnuplot-nox`); standard library otherwise.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def series(path: Path) -> tuple[str, list[dict]]:
    data = json.loads(path.read_text())
    label = data.get("tag") or path.stem
    mode = "delta" if data.get("delta") else "SotW"
    rows = data.get("rows", [])
    empty = next((r["mem_after"].get("VmRSS") for r in rows if r.get("clusters") == 0 and not r.get("removed")
                  and r.get("mem_after")), None)
    points = []
    for r in rows:
        n = r.get("clusters", 0)
        if n == 0 or r.get("removed"):
            continue
        rss = (r.get("mem_after") or {}).get("VmRSS")
        cds = r.get("cds") if isinstance(r.get("cds"), dict) else None
        eds = r.get("eds") if isinstance(r.get("eds"), dict) else None
        points.append({
            "n": n,
            "rss_mib": rss / 1024 if isinstance(rss, int) else None,
            "per_kib": (rss - empty) / n if isinstance(rss, int) and isinstance(empty, int) else None,
            "cds_ms": cds["ms"] if cds and cds.get("kind") == "ack" else None,
            "eds_ms": eds["ms"] if eds and eds.get("kind") == "ack" else None,
        })
    points.sort(key=lambda p: p["n"])
    return f"{label} ({mode})", points


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="xds_scale.py JSON files")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = p.parse_args()
    if not shutil.which("gnuplot"):
        print("xds_scale_plot: gnuplot is not installed (apt-get install gnuplot-nox)", file=sys.stderr)
        return 2
    runs = [series(path) for path in args.runs]
    with tempfile.TemporaryDirectory(prefix="xds-plot-") as tmp:
        dats = []
        for i, (label, points) in enumerate(runs):
            dat = Path(tmp) / f"run{i}.dat"
            with dat.open("w") as f:
                for pt in points:
                    f.write(" ".join(str(pt[k]) if pt[k] is not None else "NaN"
                                     for k in ("n", "rss_mib", "per_kib", "cds_ms", "eds_ms")) + "\n")
            dats.append((label, dat))

        def panel(title: str, ylabel: str, col: int, extra: str = "") -> str:
            plots = ", ".join(f'"{dat}" using 1:{col} with linespoints lw 2 pt 7 title "{label}"'
                              for label, dat in dats)
            return f'set title "{title}"\nset ylabel "{ylabel}"\n{extra}plot {plots}\n'

        script = (f'set terminal pngcairo size 1400,900 font "DejaVu Sans,10"\nset output "{args.out}"\n'
                  'set grid\nset logscale x\nset xlabel "EDS clusters (10 endpoints each)"\nset key top left\n'
                  'set datafile missing "NaN"\nset yrange [0:*]\n'
                  'set multiplot layout 2,2 title "Strait under xDS: memory and ACK time against cluster count"\n')
        script += panel("VmRSS with the clusters in place", "MiB", 2)
        script += panel("RSS over the empty figure, per cluster", "KiB", 3)
        script += panel("CDS response -> ACK", "ms", 4)
        script += panel("EDS response (all assignments) -> ACK", "ms", 5)
        script += "unset multiplot\n"
        gp = Path(tmp) / "plot.gp"
        gp.write_text(script)
        res = subprocess.run(["gnuplot", str(gp)], capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            print(f"xds_scale_plot: gnuplot failed: {res.stderr}", file=sys.stderr)
            return 1
    for label, points in runs:
        print(f"{label}: " + ", ".join(f"{pt['n']}: {pt['rss_mib']:.1f} MiB, {pt['per_kib']:.1f} KiB/cluster, "
                                       f"ACK {pt['cds_ms']}/{pt['eds_ms']} ms"
                                       for pt in points if pt["rss_mib"] is not None and pt["per_kib"] is not None))
    print(f"xds_scale_plot: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
