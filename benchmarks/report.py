"""Benchmark: `lapse report` on millions of events beside the pandas a data scientist would write.

Each contender runs in a fresh Python process (imports included, as a user
would pay them), repeated, interleaved; the table shows median wall time and
the process's peak resident memory. The store is synthetic (lapse.synthetic):
4 event names, 4 runs, realistic log-normal durations.

    .venv/bin/python benchmarks/report.py              # 1M and 10M events
    .venv/bin/python benchmarks/report.py --sizes 1000000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The process's own peak resident memory. Not ru_maxrss: on Linux a child's ru_maxrss starts
# from its parent's resident size at fork (it survives exec), and the parent holds the store
# it generated.
PEAK = """
def peak_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""

LAPSE = PEAK + """
import json, sys, time
t = time.perf_counter()
import lapse
result = lapse.report(sys.argv[1])
rows = len(result.rows)
elapsed = time.perf_counter() - t
print(json.dumps({"seconds": elapsed, "rows": rows,
                  "peak_mib": peak_mib()}))
"""

# What a data scientist writes: read the events, group, describe; Tukey outliers by hand.
PANDAS = PEAK + """
import json, sys, time
t = time.perf_counter()
import pandas as pd
events = pd.read_parquet(sys.argv[1] + "/events",
                         columns=["name", "duration_ns", "status", "start_ns"])
events["seconds"] = events["duration_ns"] / 1e9
groups = events.groupby("name")["seconds"]
table = groups.agg(["count", "mean", "min", "max"])
table["errors"] = events["status"].eq("error").groupby(events["name"]).sum()
quantiles = groups.quantile([0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999]).unstack()
table = table.join(quantiles)
spread = table[0.75] - table[0.25]
low = events["name"].map(table[0.25] - 1.5 * spread)
high = events["name"].map(table[0.75] + 1.5 * spread)
table["outliers"] = ((events["seconds"] < low) | (events["seconds"] > high)).groupby(
    events["name"]).sum()
window = (events["start_ns"].max() - events["start_ns"].min()) / 1e9
table["throughput"] = table["count"] / window
elapsed = time.perf_counter() - t
print(json.dumps({"seconds": elapsed, "rows": len(table),
                  "peak_mib": peak_mib()}))
"""

CONTENDERS = {"lapse report": LAPSE, "pandas groupby + quantile": PANDAS}


def run(code: str, store: Path) -> dict[str, float]:
    """One fresh process; its own timing and peak memory."""
    out = subprocess.run([sys.executable, "-c", code, str(store)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Generate the stores, run every contender interleaved, print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()

    from lapse import synthetic

    results = []
    for size in args.sizes:
        folder = Path(tempfile.mkdtemp(prefix="lapse-report-bench-"))
        try:
            started = time.perf_counter()
            synthetic.write(folder / "store", synthetic.Workload(events=size, runs=4))
            print(f"generated {size:,} events in {time.perf_counter() - started:.1f} s",
                  file=sys.stderr)
            samples: dict[str, list[dict[str, float]]] = {name: [] for name in CONTENDERS}
            for _ in range(args.repeat):
                for name, code in CONTENDERS.items():
                    samples[name].append(run(code, folder / "store"))
            for name, runs in samples.items():
                results.append({
                    "events": size, "tool": name,
                    "seconds": statistics.median(r["seconds"] for r in runs),
                    "peak_mib": statistics.median(r["peak_mib"] for r in runs),
                })
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    print("| events | tool | median wall time (s) | peak memory (MiB) | speed-up vs pandas |")
    print("|---:|---|---:|---:|---:|")
    for row in results:
        pandas = next(r for r in results if r["events"] == row["events"]
                      and r["tool"].startswith("pandas"))
        print(f"| {row['events']:,} | {row['tool']} | {row['seconds']:.2f} | "
              f"{row['peak_mib']:.0f} | {pandas['seconds'] / row['seconds']:.1f}x |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
