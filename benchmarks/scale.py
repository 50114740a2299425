"""Benchmark: every analysis of lapse on 10 million events, within memory.

Writes a synthetic store (``lapse.synthetic``) with planted truth: a 20% slowdown of
``predict`` in release 1.1, a 1.3x latency shift of ``load_features`` at 60% of the
window, a slow cause (``cache = miss``, one call in three, makes ``predict`` 3x slower),
a rows effect (10 ms per 1,000 rows, 0 to 100 ms beside a 5 ms median) and 0.1% random
outliers 20x slower. Then runs each analysis as a user calls it from Python (``CALLS``),
each in a fresh process (imports included, as a user pays them), repeated and
interleaved. For each it reports the median wall time, the largest peak resident memory
(``ru_maxrss`` of the process), whether it found the planted truth and whether it worked
on a sample of the calls.

    .venv/bin/python benchmarks/scale.py                 # 10 million events, ~5 minutes
    .venv/bin/python benchmarks/scale.py --quick         # 1 million events
    .venv/bin/python benchmarks/scale.py --repeat 1 --json out.json

On Linux a child's ``ru_maxrss`` also counts its parent's resident memory at spawn
(the peak is kept across exec), so the store is generated in a child process too and the
parent stays small; each child also records its own peak (``VmHWM``) to show they agree.

Needs the ``stats`` extra. The store lives in a temporary directory, removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

EVENT = "predict"
SLOW_SLO = "150ms"
CAPACITY_SLO, CAPACITY_RATE = "p99<1s", 100.0
ANALYSES = ("report", "compare", "changes", "drivers", "slow", "outliers", "capacity")
CALLS = {
    "report": "lapse.report(store)",
    "compare": 'lapse.analyze.compare("version=1.0", "version=1.1", store)',
    "changes": "lapse.analyze.changes(store)",
    "drivers": f'lapse.analyze.drivers("{EVENT}", store)',
    "slow": f'lapse.analyze.slow("{EVENT}", "{SLOW_SLO}", store)',
    "outliers": f'lapse.analyze.outliers(store, event="{EVENT}")',
    "capacity": (f'lapse.analyze.capacity("{EVENT}", "{CAPACITY_SLO}", store, '
                 f"rate={CAPACITY_RATE:g})"),
}
"""What each child process times: the Python call a user makes."""
LIBRARIES = ("lapse", "duckdb", "pyarrow", "numpy", "scipy", "scikit-learn")
RUNS, ROWS_PER_SEGMENT = 4, 1_000_000
CHILD_TIMEOUT_S = 3600
SIMULATION_TOLERANCE = 0.05
"""How far the simulated p99 (200,000 calls) may exceed the SLO and still count as met."""


# --- the store -----------------------------------------------------------------------


def workload(events: int):
    """The synthetic workload with every planted effect."""
    from lapse import synthetic

    return synthetic.Workload(
        events=events, runs=RUNS, rows_per_segment=ROWS_PER_SEGMENT, versions=("1.0", "1.1"),
        slowdowns={("1.1", EVENT): 1.2},
        rows_effect_ms_per_1000=10.0,
        categories={"cache": {"hit": 0.0, "warm": 0.0, "miss": 0.0}},
        shifts=(synthetic.Shift(at=0.6, latency=1.3, name="load_features"),),
        slow_causes=(synthetic.SlowCause({"cache": "=miss"}, factor=3.0, name=EVENT),),
        outlier_rate=0.001,
    )


def write_store(store: str, events: str, truth_file: str) -> None:
    """In a child process: write the store and its truth (so the parent stays small)."""
    from lapse import synthetic

    truth = synthetic.write(Path(store), workload(int(events)))
    Path(truth_file).write_text(json.dumps(truth))


def generate(store: Path, events: int, truth_file: Path) -> tuple[dict, float]:
    """Write the store in a child process, showing progress by segments written;
    (truth, seconds)."""
    segments = RUNS * -(-(events // RUNS) // ROWS_PER_SEGMENT)
    started = time.perf_counter()
    writer = subprocess.Popen([sys.executable, __file__, "--generate", str(store), str(events),
                               str(truth_file)])
    while writer.poll() is None:
        time.sleep(1.0)
        done = len(list((store / "events").glob("*.parquet"))) if store.exists() else 0
        print(f"\rgenerating {events:,} events: {done}/{segments} segments, "
              f"{time.perf_counter() - started:.0f} s", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    if writer.returncode != 0:
        raise SystemExit(f"generating the store failed (exit code {writer.returncode})")
    return json.loads(truth_file.read_text()), time.perf_counter() - started


def disk_bytes(folder: Path) -> int:
    """Bytes of every file under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# --- the child process: one analysis, timed, then checked ----------------------------


def child(name: str, store: str, truth_file: str) -> None:
    """Run one analysis; print its time, peak memory and checks as one JSON line."""
    import resource

    started = time.perf_counter()
    import lapse  # what a user pays is timed too

    result = eval(CALLS[name], {"lapse": lapse, "store": store})  # CALLS: fixed text
    seconds = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    own_peak_mib = vm_hwm_mib()
    truth = json.loads(Path(truth_file).read_text())
    found, detail, sampled = CHECKS[name](result, truth, store)
    explain = result.explain() if hasattr(result, "explain") else ""
    print(json.dumps({"seconds": seconds, "peak_mib": peak_mib, "vm_hwm_mib": own_peak_mib,
                      "found": found, "detail": detail, "sampled": sampled,
                      "explain": explain}))


def vm_hwm_mib() -> float | None:
    """This process's own peak RSS (Linux VmHWM). ru_maxrss also counts the parent's RSS
    at spawn (Linux keeps the peak across exec), hence a lean parent; both are recorded."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def check_report(result, truth, store):
    counts = {row["name"]: row["count"] for row in result.rows}
    found = counts == truth["counts"]
    detail = f"calls per event {'=' if found else '!='} planted counts"
    return found, detail, f"no: exact order statistics of all {sum(counts.values()):,} calls"


def check_compare(result, truth, store):
    from lapse.analysis.compare import BOOTSTRAP_CAP

    verdicts = {e.name: e.verdict for e in result.events}
    others = [v for n, v in verdicts.items() if n != EVENT]
    found = verdicts.get(EVENT) == "slower" and all(v == "unchanged" for v in others)
    slowed = next(e for e in result.events if e.name == EVENT)
    detail = (f"{EVENT} {verdicts.get(EVENT)} (x{slowed.ratio:.3f}, planted x1.2); "
              f"others: {', '.join(sorted(set(others)))}")
    largest = max(max(e.baseline_calls, e.candidate_calls) for e in result.events)
    sampled = (f"test on all calls; bootstrap interval on {BOOTSTRAP_CAP:,} per side"
               if largest > BOOTSTRAP_CAP else "no")
    return found, detail, sampled


def check_changes(result, truth, store):
    from lapse.analysis.compare import BOOTSTRAP_CAP

    shift = truth["shifts"][0]
    start, end = result.window_ns
    tolerance = 0.01 * (end - start)
    hits = [c for c in result.changes if c.name == shift["name"] and c.metric == "latency"
            and abs(c.time_ns - shift["time_ns"]) <= tolerance]
    others = [c for c in result.changes if c not in hits]
    found = bool(hits)
    if hits:
        best = hits[0]
        rank = result.changes.index(best) + 1
        detail = (f"{best.name} latency x{best.ratio:.2f} (planted x{shift['latency']:g}) "
                  f"{(best.time_ns - shift['time_ns']) / 1e9:+.0f} s from the planted time, "
                  f"rank {rank}; {len(others)} other change(s)")
    else:
        detail = f"no {shift['name']} latency change within 1% of the window; " \
                 f"{len(others)} other change(s)"
    calls = sum(s.calls for s in result.series if s.metric == "latency")
    return found, detail, (f"no: series of all {calls:,} calls (a latency change's interval: "
                           f"bootstrap on {BOOTSTRAP_CAP:,} per side)")


def check_drivers(result, truth, store):
    ranked = [d.feature for d in result.drivers]
    found = bool(ranked) and ranked[0] == truth["drivers"][0]
    detail = f"ranked {', '.join(ranked[:3])}; planted first: {truth['drivers'][0]}"
    return found, detail, _sample(result.used, result.calls)


def check_slow(result, truth, store):
    rule = result.rules[0] if result.rules else None
    cause = truth["slow_causes"][0]  # {"cache": "=miss"}
    (attr, condition), = cause.items()
    wanted = (f"attrs.{attr}", "=", condition.lstrip("="))
    found = rule is not None and any((c.feature, c.op, c.value) == wanted
                                     for c in rule.conditions)
    detail = (f"first rule: {rule} (precision {rule.precision:.0%}, recall "
              f"{rule.recall:.0%})" if rule else "no rule")
    return found, detail, _sample(result.used, result.calls)


def check_outliers(result, truth, store):
    cause = truth["slow_causes"][0]
    (attr, condition), = cause.items()
    wanted = f"attrs.{attr}={condition.lstrip('=')}"
    event = next(e for e in result.events if e.name == EVENT)
    found = any(p.startswith(wanted + ":") for p in event.patterns)
    detail = (f"{event.outliers:,} outliers ({event.fraction:.1%}); patterns: "
              f"{'; '.join(event.patterns[:2]) or 'none'}")
    return found, detail, f"fences on all {event.calls:,} calls; patterns on a sample " \
                          "(20,000 calls in outliers.py)"


def check_capacity(result, truth, store):
    """Simulate the M/G/c queue with service times drawn from the store: the recommended
    worker count must meet the SLO (within SIMULATION_TOLERANCE, the simulated p99's own
    noise), and one worker fewer must not."""
    from lapse.analysis.capacity import SERVICE_SAMPLE

    needed = result.workers_needed
    if needed is None:
        return False, "no worker count meets the SLO", "—"
    simulated = {c: simulated_p99(store, result.target_rate, c) for c in (needed - 1, needed)}
    bound = result.slo.threshold
    found = simulated[needed] <= bound * (1 + SIMULATION_TOLERANCE) < simulated[needed - 1]
    detail = (f"{needed} workers at {result.target_rate:g}/s; simulated p99 "
              f"{simulated[needed]:.3g} s with {needed}, {simulated[needed - 1]:.3g} s with "
              f"{needed - 1} (SLO {bound:g} s)")
    return found, detail, (f"service mean and CV on all {result.calls:,} calls; response "
                           f"times from {SERVICE_SAMPLE:,} of them")


def simulated_p99(store: str, rate: float, workers: int, calls: int = 200_000) -> float:
    """p99 response time of a FIFO queue fed Poisson arrivals, service times sampled from
    the event's stored durations (the first 10% of calls discarded as warm-up)."""
    import duckdb
    import numpy as np

    from lapse.synthetic import simulate_queue

    if workers < 1:
        return float("inf")
    durations = duckdb.sql(
        f"SELECT duration_ns FROM read_parquet('{store}/events/*.parquet') "
        f"WHERE name = '{EVENT}'").fetchnumpy()["duration_ns"] / 1e9
    rng = np.random.default_rng(1)
    service = rng.choice(durations, calls)
    arrivals = np.cumsum(rng.exponential(1 / rate, calls))
    response = simulate_queue(arrivals, service, workers) + service
    return float(np.percentile(response[calls // 10:], 99))


def _sample(used: int, calls: int) -> str:
    return f"yes: {used:,} of {calls:,} calls" if used < calls else f"no: all {calls:,}"


CHECKS = {"report": check_report, "compare": check_compare, "changes": check_changes,
          "drivers": check_drivers, "slow": check_slow, "outliers": check_outliers,
          "capacity": check_capacity}


# --- the parent: run the children, summarize -----------------------------------------


def run_child(name: str, store: Path, truth_file: Path) -> dict:
    """One fresh process; its figures, or how it failed."""
    command = [sys.executable, __file__, "--child", name, str(store), str(truth_file)]
    started = time.perf_counter()
    try:
        out = subprocess.run(command, capture_output=True, text=True,
                             timeout=CHILD_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return {"failed": f"timed out after {CHILD_TIMEOUT_S} s"}
    if out.returncode != 0:
        return {"failed": f"exit code {out.returncode}", "stderr": out.stderr[-4000:],
                "wall_s": time.perf_counter() - started}
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_all(store: Path, truth_file: Path, repeat: int) -> dict[str, list[dict]]:
    """Every analysis ``repeat`` times, interleaved."""
    samples: dict[str, list[dict]] = {name: [] for name in ANALYSES}
    for round_number in range(1, repeat + 1):
        for name in ANALYSES:
            print(f"round {round_number}/{repeat}: {name} ...", end=" ", file=sys.stderr,
                  flush=True)
            sample = run_child(name, store, truth_file)
            samples[name].append(sample)
            status = sample.get("failed") or f"{sample['seconds']:.1f} s, " \
                                              f"{sample['peak_mib']:,.0f} MiB"
            print(status, file=sys.stderr, flush=True)
    return samples


def summarize(samples: dict[str, list[dict]]) -> list[dict]:
    """Per analysis: median seconds, largest peak memory, checks of the last run."""
    rows = []
    for name, runs in samples.items():
        good = [r for r in runs if "failed" not in r]
        row = {"analysis": name, "call": CALLS[name], "runs": len(runs), "succeeded": len(good),
               "failures": [r for r in runs if "failed" in r]}
        if good:
            last = good[-1]
            row |= {"median_s": statistics.median(r["seconds"] for r in good),
                    "seconds": [r["seconds"] for r in good],
                    "peak_mib": max(r["peak_mib"] for r in good),
                    "vm_hwm_mib": max((r["vm_hwm_mib"] or 0) for r in good) or None,
                    "found": all(r["found"] for r in good), "detail": last["detail"],
                    "sampled": last["sampled"], "explain": last["explain"]}
        rows.append(row)
    return rows


def max_gap(rows: list[dict]) -> float:
    """The largest difference between ru_maxrss and VmHWM over the analyses."""
    gaps = [abs(r["peak_mib"] - r["vm_hwm_mib"]) for r in rows if r.get("vm_hwm_mib")]
    return max(gaps, default=0.0)


def print_table(rows: list[dict]) -> None:
    print("| analysis | median s | peak RSS MiB | found the planted truth | sampled |")
    print("|---|---:|---:|---|---|")
    for row in rows:
        if not row["succeeded"]:
            failure = row["failures"][0]
            print(f"| {row['analysis']} | — | — | FAILED: {failure['failed']} | — |")
            continue
        found = "yes" if row["found"] else "NO"
        failed = (f" ({row['runs'] - row['succeeded']} of {row['runs']} runs failed)"
                  if row["succeeded"] < row["runs"] else "")
        print(f"| {row['analysis']} | {row['median_s']:.1f} | {row['peak_mib']:,.0f} | "
              f"{found}: {row['detail']}{failed} | {row['sampled']} |")
    for row in rows:
        for failure in row["failures"]:
            print(f"\n{row['analysis']} failed: {failure['failed']}\n"
                  f"{failure.get('stderr', '')}", file=sys.stderr)


def parent_peak_mib() -> float:
    """This (parent) process's peak RSS: the floor of every child's ru_maxrss."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict:
    """Cores, Python and the versions of the libraries the analyses use."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(), "versions": versions}


def main() -> None:
    """Generate the store, run every analysis in fresh processes, print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--quick", action="store_true", help="1,000,000 events")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write every figure as JSON here")
    args = parser.parse_args()
    events = 1_000_000 if args.quick else args.events

    info = machine()
    with tempfile.TemporaryDirectory(prefix="lapse-scale-bench-") as folder:
        store, truth_file = Path(folder) / "store", Path(folder) / "truth.json"
        truth, generation_s = generate(store, events, truth_file)
        size = disk_bytes(store)
        print(f"generated {events:,} events in {generation_s:.1f} s; store "
              f"{size / 2**20:,.0f} MiB on disk", file=sys.stderr)
        rows = summarize(run_all(store, truth_file, args.repeat))

    print(f"Machine: {info['cpus']} cores, {info['platform']}, {info['implementation']} "
          f"{info['python']}; " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    print(f"Store: {events:,} events, {size / 2**20:,.0f} MiB on disk, generated in "
          f"{generation_s:.1f} s. Median of {args.repeat} fresh processes per analysis "
          "(interleaved); peak RSS is the largest.\n")
    print_table(rows)
    print(f"\nPeak RSS is ru_maxrss of the child; its own VmHWM (Linux) agrees within "
          f"{max_gap(rows):.0f} MiB; the parent that spawned it peaked at "
          f"{parent_peak_mib():.0f} MiB.")
    if args.json:
        args.json.write_text(json.dumps({
            "events": events, "repeat": args.repeat, "generation_s": generation_s,
            "store_bytes": size, "parent_peak_mib": parent_peak_mib(), "machine": info,
            "truth": truth, "analyses": rows}, indent=2, default=str))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:5])
    elif len(sys.argv) > 1 and sys.argv[1] == "--generate":
        write_store(*sys.argv[2:5])
    else:
        main()
