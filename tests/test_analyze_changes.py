"""`lapse analyze changes`: planted shifts are found near their time; steady series stay quiet."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import mannwhitneyu, rankdata

import lapse
from lapse import NotEnoughDataError, synthetic
from lapse.analysis.changes import changes, rank_statistic, ranks, series_changes
from lapse.analysis.selection import Selection
from tests.recording import lapse_cli

SPAN_NS = 600e9
T0 = 1_700_000_000_000_000_000


def _series(seed, *, shift=1.0, at=0.5, sigma=0.3, n=6000, outliers=0.01, until=None):
    """Calls over 10 minutes: lognormal durations, 1% outliers 20x slower, a planted shift."""
    rng = np.random.default_rng(seed)
    starts = np.sort(rng.uniform(0, SPAN_NS, n)).astype(np.int64) + T0
    durations = 0.005 * rng.lognormal(0, sigma, n)
    durations[rng.random(n) < outliers] *= 20
    at_ns = int(starts[0] + at * (starts[-1] - starts[0]))
    inside = starts >= at_ns
    if until is not None:
        inside &= starts < int(starts[0] + until * (starts[-1] - starts[0]))
    durations[inside] *= shift
    return starts, durations, rng.random(n) < 0.01, at_ns


def test_ranks_and_statistic_match_scipy():
    """Ranks equal scipy's rankdata (ties averaged); the statistic is Mann-Whitney's U,
    standardized."""
    rng = np.random.default_rng(0)
    values = rng.integers(0, 20, 60).astype(float)  # many ties
    np.testing.assert_allclose(ranks(values), rankdata(values))
    statistic = rank_statistic(ranks(values))
    n = values.size
    for k in (5, 17, 30, 55):
        u = mannwhitneyu(values[:k], values[k:]).statistic
        expected = abs(u - k * (n - k) / 2) / np.sqrt(k * (n - k) * (n + 1) / 12)
        assert statistic[k - 1] == pytest.approx(expected)


def test_steady_series_rarely_raise_a_false_alarm():
    """On 60 series with no change (and 1% outliers), at most 10% report a latency change."""
    alarms = 0
    for seed in range(60):
        starts, durations, errors, _ = _series(seed, n=3000)
        found, examined = series_changes("e", starts, durations, errors, metrics=("latency",),
                                         seed=seed)
        assert examined[0].buckets == 100
        alarms += bool(found)
    assert alarms / 60 <= 0.10


def test_ten_percent_shifts_are_found_near_their_time():
    """A 10% slowdown at a random time is found within 2% of the window in 9 of 10 series,
    and its size is measured within a few percent."""
    rng = np.random.default_rng(42)
    close, sizes = 0, []
    for seed in range(30):
        at = float(rng.uniform(0.2, 0.8))
        starts, durations, errors, at_ns = _series(seed, shift=1.10, at=at)
        found, _ = series_changes("e", starts, durations, errors, metrics=("latency",),
                                  seed=seed)
        if found:
            best = min(found, key=lambda c: abs(c.time_ns - at_ns))
            close += abs(best.time_ns - at_ns) <= 0.02 * SPAN_NS
            sizes.append(best.ratio)
    assert close >= 27
    assert np.median(sizes) == pytest.approx(1.10, abs=0.03)


def test_a_temporary_slowdown_is_two_changes():
    """A slowdown from 40% to 60% of the window shows up as a rise and a fall."""
    starts, durations, errors, _ = _series(3, shift=1.3, at=0.4, until=0.6)
    found, _ = series_changes("e", starts, durations, errors, metrics=("latency",))
    assert len(found) == 2
    rise, fall = sorted(found, key=lambda c: c.time_ns)
    assert rise.ratio == pytest.approx(1.3, abs=0.06)
    assert fall.ratio == pytest.approx(1 / 1.3, abs=0.06)


@pytest.fixture(scope="module")
def shifted_store(tmp_path_factory):
    """Four events over ~7 minutes: predict 15% slower from 60% on, every event called 1.5x
    as often from 30% on, preprocess erring 5% of the time from 80% on; 1% outliers."""
    store = tmp_path_factory.mktemp("changes") / "store"
    truth = synthetic.write(store, synthetic.Workload(
        events=40_000, runs=4, sigma=0.3, seed=1, rate_per_s=100, outlier_rate=0.01,
        shifts=(synthetic.Shift(at=0.6, latency=1.15, name="predict"),
                synthetic.Shift(at=0.3, rate=1.5),
                synthetic.Shift(at=0.8, error_rate=0.05, name="preprocess"))))
    return store, truth


def test_store_changes_are_the_planted_ones(shifted_store):
    """Latency, throughput and error-rate shifts are each found, near their time, ranked."""
    store, truth = shifted_store
    result = changes(Selection(), store)
    latency_at, rate_at, errors_at = (s["time_ns"] for s in truth["shifts"])
    span = result.window_ns[1] - result.window_ns[0]
    by_kind = {}
    for change in result.changes:
        by_kind.setdefault((change.name, change.metric), []).append(change)
    latency = by_kind.pop(("predict", "latency"))
    assert len(latency) == 1
    assert abs(latency[0].time_ns - latency_at) < 0.02 * span
    assert latency[0].ratio == pytest.approx(1.15, abs=0.03)
    assert latency[0].ratio_low < latency[0].ratio < latency[0].ratio_high
    errors = by_kind.pop(("preprocess", "errors"))
    assert abs(errors[0].time_ns - errors_at) < 0.02 * span
    assert errors[0].after == pytest.approx(0.05, abs=0.015)
    for name in ("predict", "preprocess", "load_features", "postprocess"):
        (rate,) = by_kind.pop((name, "throughput"))
        assert abs(rate.time_ns - rate_at) < 0.01 * span
        assert rate.ratio == pytest.approx(1.5, abs=0.1)
    assert by_kind == {}, "no change beyond the planted ones"
    assert all(c.confidence >= 0.95 for c in result.changes)
    assert "permutation test" in result.explain()
    assert result.table.num_rows == len(result.changes)


def test_cli_changes_json_and_markdown(shifted_store):
    """`lapse analyze changes --format json` is a documented document; markdown is a table."""
    store, _ = shifted_store
    run = lapse_cli("analyze", "changes", "--name", "predict", "--metric", "latency",
                    "--format", "json", store=store)
    assert run.returncode == 0, run.stderr
    document = json.loads(run.stdout)
    assert document["schema"] == "lapse.analyze.changes/1"
    (change,) = document["changes"]
    assert change["name"] == "predict"
    assert change["metric"] == "latency"
    assert "rose" in change["description"]
    run = lapse_cli("analyze", "changes", "--event", "predict", "--format", "markdown",
                    store=store)
    assert run.returncode == 0, run.stderr
    assert "| # | event | metric |" in run.stdout


def test_unknown_event_and_too_little_data(shifted_store, tmp_path):
    """An unknown event names the events there; a short history says how much is needed."""
    store, _ = shifted_store
    with pytest.raises(lapse.ConfigError, match=r"Did you mean 'predict'.*preprocess"):
        changes(Selection(), store, event="predcit")
    small = tmp_path / "small"
    synthetic.write(small, synthetic.Workload(events=200, runs=2))
    with pytest.raises(NotEnoughDataError, match="at least 100 calls"):
        changes(Selection(), small)
    run = lapse_cli("analyze", "changes", "--event", "nope", store=store)
    assert run.returncode == 2
    assert "not in the selection" in run.stderr
    assert "Traceback" not in run.stderr
