"""How accurate are lapse's analyses? Measured on synthetic data with known truth.

    .venv/bin/python benchmarks/analysis.py            # full run (a few minutes)
    .venv/bin/python benchmarks/analysis.py --quick    # fewer trials, rougher figures
    .venv/bin/python benchmarks/analysis.py --json out.json

Sections (each prints a Markdown table):

1. compare: false alarms on A/A comparisons and detection of a 10% median slowdown,
   500 calls per side, lognormal durations with sigma 0.3 and 0.6
   (``lapse.analysis.compare.compare_samples``, defaults: Holm, alpha 0.05, 5% threshold).
2. changes: detection of a 10% (and 20%) latency shift at a random time, the error of
   the time found, and false alarms on series with no shift (6,000 calls over 10 minutes,
   1% outliers 20x slower; ``series_changes`` on latency).
3. drivers: on stores with four planted drivers and two noise attributes, how often the
   drivers are exactly the top four and the only ones called noticeable; slope of rows
   against the truth; held-out interval coverage and coverage on a fresh store.
4. slow: how often the planted rule (cache = miss AND rows > 5000) is the top rule, and
   its held-out precision and recall.
5. capacity: the M/G/c model's p99 against a simulated queue.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from lapse import synthetic  # noqa: E402
from lapse.analysis.selection import Selection  # noqa: E402


def table(header, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    line = "| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(str(c).rjust(w) if i else str(c).ljust(w)
                              for i, (c, w) in enumerate(zip(r, widths, strict=True))) + " |"
            for r in rows]
    print("\n".join([line, rule, *body]))
    print()


def wilson(successes, trials, z=1.96):
    """95% Wilson interval of a proportion, as text."""
    if not trials:
        return "—"
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (
        1 + z * z / trials)
    return f"{max(0.0, centre - half):.1%}–{min(1.0, centre + half):.1%}"


def bench_compare(trials, results):
    from lapse.analysis.compare import SLOWER, UNCHANGED, compare_samples

    print("## 1. compare: A/A false alarms and 10% slowdown detection (500 calls per side)\n")
    rows = []
    for sigma in (0.3, 0.6):
        rng = np.random.default_rng(11)
        alarms = caught = 0
        for _ in range(trials):
            base = 0.005 * rng.lognormal(0, sigma, 500)
            same = 0.005 * rng.lognormal(0, sigma, 500)
            slow = 0.005 * 1.10 * rng.lognormal(0, sigma, 500)
            verdicts = {e.name: e.verdict for e in compare_samples(
                {"aa": (base, same), "slow": (base, slow)}, correction="none",
                resamples=200)}
            alarms += verdicts["aa"] != UNCHANGED
            caught += verdicts["slow"] == SLOWER
        rows.append([f"sigma {sigma}", trials, f"{alarms / trials:.1%}",
                     wilson(alarms, trials), f"{caught / trials:.1%}", wilson(caught, trials)])
        results[f"compare_sigma_{sigma}"] = {"trials": trials, "false_alarm": alarms / trials,
                                             "detected": caught / trials}
    table(["durations", "comparisons", "A/A false alarms", "95% CI",
           "10% slowdown detected", "95% CI"], rows)


def _series(rng, *, shift, at, sigma, n=6000, span=600e9):
    starts = np.sort(rng.uniform(0, span, n)).astype(np.int64) + 1_700_000_000_000_000_000
    durations = 0.005 * rng.lognormal(0, sigma, n)
    durations[rng.random(n) < 0.01] *= 20
    at_ns = int(starts[0] + at * (starts[-1] - starts[0]))
    durations[starts >= at_ns] *= shift
    return starts, durations, np.zeros(n, dtype=bool), at_ns


def bench_changes(trials, results):
    from lapse.analysis.changes import series_changes

    print("## 2. changes: latency shifts (6,000 calls over 10 min, 1% outliers at 20x)\n")
    span = 600e9
    rows = []
    for sigma in (0.3, 0.6):
        for shift in (1.10, 1.20):
            rng = np.random.default_rng(int(sigma * 100 + shift * 10))
            found = within = 0
            errors = []
            for trial in range(trials):
                starts, durations, flags, at_ns = _series(
                    rng, shift=shift, at=float(rng.uniform(0.2, 0.8)), sigma=sigma)
                changes, _ = series_changes("e", starts, durations, flags,
                                            metrics=("latency",), seed=trial)
                if changes:
                    found += 1
                    best = min(changes, key=lambda c, at=at_ns: abs(c.time_ns - at))
                    errors.append(abs(best.time_ns - at_ns) / 1e9)
                    within += abs(best.time_ns - at_ns) <= 0.02 * span
            err = np.array(errors) if errors else np.array([np.nan])
            rows.append([f"+{shift - 1:.0%}, sigma {sigma}", trials, f"{found / trials:.1%}",
                         f"{within / trials:.1%}", wilson(within, trials),
                         f"{np.median(err):.1f} s", f"{np.percentile(err, 90):.1f} s"])
            results[f"changes_shift_{shift}_sigma_{sigma}"] = {
                "trials": trials, "found": found / trials,
                "within_2pct": within / trials, "median_error_s": float(np.median(err)),
                "p90_error_s": float(np.percentile(err, 90))}
    table(["shift", "series", "found", "found within 12 s (2%)", "95% CI",
           "median time error", "p90 time error"], rows)
    rows = []
    for sigma in (0.3, 0.6):
        rng = np.random.default_rng(int(sigma * 1000))
        alarms = 0
        for trial in range(trials):
            starts, durations, flags, _ = _series(rng, shift=1.0, at=0.5, sigma=sigma)
            changes, _ = series_changes("e", starts, durations, flags, metrics=("latency",),
                                        seed=trial)
            alarms += bool(changes)
        rows.append([f"sigma {sigma}", trials, f"{alarms / trials:.1%}",
                     wilson(alarms, trials)])
        results[f"changes_false_alarm_sigma_{sigma}"] = {"trials": trials,
                                                         "false_alarm": alarms / trials}
    table(["no shift", "series", "series with a false change", "95% CI"], rows)


DRIVERS = {
    "events": 24_000, "runs": 4, "names": ("predict", "other"), "sigma": 0.3,
    "rate_per_s": 200, "batch_sizes": (1, 8, 32, 64), "batch_ms_per_item": 0.05,
    "categories": {"model": {"small": 0.0, "large": 4.0}}, "host_ms": {"host-1": 1.0},
    "noise_attributes": ("user_id_mod", "flag"),
}


def bench_drivers(stores, folder, results):
    from lapse.analysis.calls import load_calls, parse_attrs
    from lapse.analysis.drivers import drivers

    print("## 3. drivers: 4 planted drivers (rows, model, batch_size, host) + 2 noise "
          "attributes, ~12,000 calls\n")
    rows = []
    exact = noticed = 0
    for seed in range(stores):
        workload = synthetic.Workload(**DRIVERS, seed=seed)
        store = folder / f"drivers-{seed}"
        truth = synthetic.write(store, workload)
        started = time.perf_counter()
        result = drivers(Selection(), store, event="predict")
        seconds = time.perf_counter() - started
        ranked = [d.feature for d in result.drivers]
        top = set(ranked[:4]) == set(truth["drivers"])
        flagged = {d.feature for d in result.drivers if d.noticeable} == set(truth["drivers"])
        exact += top
        noticed += flagged
        rows_driver = next(d for d in result.drivers if d.feature == "attrs.rows")
        fresh = folder / f"fresh-{seed}"
        synthetic.write(fresh, synthetic.Workload(**{**DRIVERS, "events": 6_000},
                                                  seed=seed + 1000))
        calls = load_calls(Selection(), fresh, "predict")
        attrs = parse_attrs(calls.column("attrs"))
        hosts, versions = calls.column("host"), calls.column("version")
        inputs = [{**{k: v[i] for k, v in attrs.items()}, "host": hosts[i],
                   "version": versions[i]} for i in range(calls.n)]
        estimate, low, high = result.predict_many(inputs)
        duration = calls.duration_s
        fresh_coverage = float(np.mean((low <= duration) & (duration <= high)))
        medians = np.array([synthetic.median_ms(workload, host=str(hosts[i]),
                                                **{k: v[i] for k, v in attrs.items()})
                            for i in range(calls.n)]) / 1e3
        error = float(np.median(np.abs(estimate / medians - 1)))
        rows.append([seed, "yes" if top else "NO", "yes" if flagged else "NO",
                     f"{rows_driver.slope_s_per_unit * 1e6:.3f} ms", f"{result.r2_log:.2f}",
                     f"{result.coverage:.1%}", f"{fresh_coverage:.1%}", f"{error:.1%}",
                     f"{seconds:.1f} s"])
        results.setdefault("drivers", []).append({
            "seed": seed, "top4_exact": top, "noticeable_exact": flagged,
            "rows_ms_per_1000": rows_driver.slope_s_per_unit * 1e6, "r2_log": result.r2_log,
            "coverage_held_out": result.coverage, "coverage_fresh": fresh_coverage,
            "median_rel_error_vs_true_median": error, "seconds": seconds})
    table(["seed", "true drivers = top 4", "only they noticeable",
           "rows slope per 1,000 (truth 0.800 ms)", "held-out R² (log)",
           "90% interval coverage, held out", "coverage, fresh store",
           "median abs. error vs true median", "fit time"], rows)
    print(f"Top 4 exactly the true drivers in {exact}/{stores} stores; only the true drivers "
          f"called noticeable in {noticed}/{stores}.\n")


SLOW = {
    "events": 16_000, "runs": 4, "names": ("predict", "other"), "sigma": 0.3,
    "rate_per_s": 200,
    "categories": {"cache": {"hit": 0.0, "miss": 0.0}, "model": {"a": 0.0, "b": 1.0}},
    "batch_sizes": (1, 8, 32), "noise_attributes": ("tenant",),
    "slow_causes": (synthetic.SlowCause({"cache": "=miss", "rows": ">5000"}, factor=8.0,
                                        name="predict"),),
}


def bench_slow(stores, folder, results):
    from lapse.analysis.slowcalls import slow_calls

    print("## 4. slow: planted cause cache = miss AND rows > 5000 (8x slower), SLO 40 ms\n")
    rows = []
    recovered = 0
    for seed in range(stores):
        store = folder / f"slow-{seed}"
        synthetic.write(store, synthetic.Workload(**SLOW, seed=seed))
        result = slow_calls(Selection(), store, event="predict", slo="40ms")
        top = result.rules[0] if result.rules else None
        conditions = {c.feature: c for c in top.conditions} if top else {}
        ok = (set(conditions) == {"attrs.cache", "attrs.rows"}
              and (conditions["attrs.cache"].op, conditions["attrs.cache"].value)
              == ("=", "miss") and conditions["attrs.rows"].op == ">"
              and abs(conditions["attrs.rows"].value - 5000) <= 150)
        recovered += ok
        rows.append([seed, str(top) if top else "—", "yes" if ok else "NO",
                     f"{top.precision:.1%}" if top else "—", f"{top.recall:.1%}" if top else "—",
                     len(result.rules)])
        results.setdefault("slow", []).append({
            "seed": seed, "rule": str(top) if top else None, "recovered": ok,
            "precision": top.precision if top else None, "recall": top.recall if top else None})
    table(["seed", "top rule", "planted rule recovered", "held-out precision",
           "held-out recall", "rules"], rows)
    print(f"Planted rule recovered as the top rule in {recovered}/{stores} stores "
          "(rows threshold within ±150).\n")


def bench_capacity(results):
    from lapse.analysis.capacity import Service, response_percentile
    from lapse.synthetic import simulate_queue

    print("## 5. capacity: model p99 against a simulated M/G/c queue (lognormal service, "
          "100,000 calls)\n")
    rows = []
    rng = np.random.default_rng(3)
    for sigma, workers, load in ((0.3, 1, 0.7), (0.5, 4, 0.85), (1.0, 8, 0.9), (0.5, 16, 0.9)):
        durations = 0.01 * rng.lognormal(0, sigma, 100_000)
        service = Service.of(durations, size=8_000)
        rate = load * workers / service.mean
        arrivals = np.cumsum(rng.exponential(1 / rate, durations.size))
        simulated = float(np.percentile(
            (simulate_queue(arrivals, durations, workers) + durations)[10_000:], 99))
        model = response_percentile(rate, workers, service, 99)
        rows.append([f"sigma {sigma}", workers, f"{load:.0%}", f"{simulated * 1e3:.1f} ms",
                     f"{model * 1e3:.1f} ms", f"{model / simulated - 1:+.1%}"])
        results.setdefault("capacity", []).append({
            "sigma": sigma, "workers": workers, "load": load, "simulated_p99_s": simulated,
            "model_p99_s": model})
    table(["service", "workers", "utilisation", "simulated p99", "model p99", "model error"],
          rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer trials")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--only", help="comma-separated sections: compare,changes,drivers,"
                        "slow,capacity")
    args = parser.parse_args()
    for name in [n for n in os.environ if n.startswith("LAPSE_")]:
        del os.environ[name]
    only = set(args.only.split(",")) if args.only else {"compare", "changes", "drivers",
                                                         "slow", "capacity"}
    results = {"quick": args.quick}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        if "compare" in only:
            bench_compare(60 if args.quick else 200, results)
        if "changes" in only:
            bench_changes(40 if args.quick else 200, results)
        if "drivers" in only:
            bench_drivers(2 if args.quick else 5, folder, results)
        if "slow" in only:
            bench_slow(2 if args.quick else 5, folder, results)
        if "capacity" in only:
            bench_capacity(results)
    results["seconds"] = time.perf_counter() - started
    print(f"Total {results['seconds']:.0f} s.")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
