"""`lapse analyze drivers`: the true drivers rank first, effects read right, intervals hold."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

import lapse
from lapse import NotEnoughDataError, synthetic
from lapse.analysis.calls import load_calls, parse_attrs
from lapse.analysis.drivers import drivers, fit, parse_inputs
from lapse.analysis.selection import Selection
from tests.recording import lapse_cli

WORKLOAD = synthetic.Workload(
    events=24_000, runs=4, names=("predict", "other"), sigma=0.3, seed=2, rate_per_s=200,
    batch_sizes=(1, 8, 32, 64), batch_ms_per_item=0.05,
    categories={"model": {"small": 0.0, "large": 4.0}}, host_ms={"host-1": 1.0},
    noise_attributes=("user_id_mod", "flag"))
"""Median latency = 5 ms + 0.8 ms per 1,000 rows + 0.05 ms per batch item + 4 ms for the
large model + 1 ms on host-1, times lognormal noise (sigma 0.3); two attributes do nothing."""


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    store = tmp_path_factory.mktemp("drivers") / "store"
    truth = synthetic.write(store, WORKLOAD)
    return store, truth, drivers(Selection(), store, event="predict")


def test_true_drivers_rank_first(fitted):
    """The four planted drivers are the top four features; the noise attributes are not drivers."""
    _, truth, result = fitted
    ranked = [d.feature for d in result.drivers]
    assert set(ranked[:4]) == set(truth["drivers"])
    assert ranked[0] == "attrs.rows"
    noticeable = {d.feature for d in result.drivers if d.noticeable}
    assert noticeable == set(truth["drivers"])
    assert {"attrs.user_id_mod", "attrs.flag"}.isdisjoint(noticeable)


def test_findings_state_the_planted_effects(fitted):
    """Rows read as about linear, +0.8 ms per 1,000 rows; the large model about +4 ms."""
    _, _, result = fitted
    rows = next(d for d in result.drivers if d.feature == "attrs.rows")
    assert rows.linear_r2 > 0.95
    assert rows.slope_s_per_unit * 1000 == pytest.approx(0.0008, rel=0.1)
    assert rows.slope_unit == 1000
    assert "about linearly with rows" in rows.finding
    assert "per 1,000 rows" in rows.finding
    model = dict(next(d for d in result.drivers if d.feature == "attrs.model").partial_dependence)
    assert model["large"] - model["small"] == pytest.approx(0.004, rel=0.15)
    assert result.findings[0] == rows.finding


def test_held_out_accuracy_and_interval_coverage(fitted, tmp_path):
    """R² and coverage are measured on held-out calls; on new calls from the same workload
    the 90% intervals hold 85–95% of durations and contain the true medians."""
    _, _, result = fitted
    assert result.r2_log > 0.6
    assert 0.86 <= result.coverage <= 0.94
    assert result.test == pytest.approx(0.2 * result.used, abs=2)
    fresh = tmp_path / "fresh"
    synthetic.write(fresh, synthetic.Workload(**{**WORKLOAD.__dict__, "seed": 99,
                                                 "events": 6_000}))
    calls = load_calls(Selection(), fresh, "predict")
    attrs = parse_attrs(calls.column("attrs"))
    hosts = calls.column("host")
    inputs = [{**{key: values[i] for key, values in attrs.items()}, "host": hosts[i],
               "version": calls.column("version")[i]} for i in range(calls.n)]
    estimate, low, high = result.predict_many(inputs)
    inside = (low <= calls.duration_s) & (calls.duration_s <= high)
    assert 0.85 <= inside.mean() <= 0.95
    truth = np.array([synthetic.median_ms(WORKLOAD, host=str(hosts[i]),
                                          **{k: v[i] for k, v in attrs.items()}) / 1e3
                      for i in range(calls.n)])
    assert np.median(np.abs(estimate / truth - 1)) < 0.05
    assert ((low <= truth) & (truth <= high)).mean() > 0.95


def test_predict_one_input_and_beyond_the_range(fitted):
    """predict() fills missing features with typical values and extrapolates linear effects."""
    store, _, result = fitted
    inside = result.predict(rows=5000, model="large", batch_size=8, host="host-0")
    truth = synthetic.median_ms(WORKLOAD, host="host-0", rows=5000, model="large",
                                batch_size=8) / 1e3
    assert inside.low <= truth <= inside.high
    assert inside.estimate == pytest.approx(truth, rel=0.1)
    assert "attrs.user_id_mod" in inside.assumed
    far = result.predict({"rows": 50_000, "model": "small", "batch_size": 1})
    far_truth = synthetic.median_ms(WORKLOAD, host="host-0", rows=50_000, model="small",
                                    batch_size=1) / 1e3
    assert far.estimate == pytest.approx(far_truth, rel=0.1)
    assert any("outside the range seen" in note for note in far.notes)
    assert "extrapolated" in far.explain()
    with pytest.raises(lapse.ConfigError, match=r"not a feature.*attrs\.rows"):
        result.predict(colour="red")
    unseen = result.predict(model="huge")
    assert any("never seen" in note for note in unseen.notes)
    via_api = lapse.predict_latency("predict", dir=store, rows=5000, model="large",
                                    batch_size=8, host="host-0")
    assert via_api.estimate == pytest.approx(inside.estimate)
    assert lapse.analyze.drivers  # the namespace resolves lazily


def test_result_converts_and_explains_itself(fitted):
    """Arrow table, JSON-ready dict, HTML for notebooks, and an explanation of the method."""
    _, _, result = fitted
    assert result.table.column("feature").to_pylist()[0] == "attrs.rows"
    document = json.loads(result.to_json())
    assert document["schema"] == "lapse.analyze.drivers/1"
    assert document["findings"]
    assert "_model" not in document
    assert "<table>" in result._repr_html_()
    assert "held out" in result.explain()
    assert "HistGradientBoosting" in result.explain()


def test_cli_drivers_with_prediction(fitted):
    """`--predict rows=50000` prints the estimate with its interval (JSON carries it too)."""
    store, _, _ = fitted
    run = lapse_cli("analyze", "drivers", "--event", "predict", "--predict", "rows=50000",
                    "--max-calls", "4000", "--format", "json", store=store)
    assert run.returncode == 0, run.stderr
    document = json.loads(run.stdout)
    assert document["prediction"]["inputs"] == {"attrs.rows": 50000}
    assert document["prediction"]["low"] <= document["prediction"]["estimate"]
    assert document["used"] == 4000


def test_bad_input_is_explained(fitted, tmp_path):
    """Unknown event, too few calls, nothing to model, and a malformed --predict."""
    store, _, _ = fitted
    with pytest.raises(lapse.ConfigError, match=r"'predcit' is not in the selection.*predict"):
        drivers(Selection(), store, event="predcit")
    with pytest.raises(NotEnoughDataError, match=r"at least 200 calls.*has none"):
        drivers(Selection(since=0, until=1), store, event="predict")
    with pytest.raises(NotEnoughDataError, match=r"at least 200 calls.*the selection has \d+\."):
        drivers(Selection(where=("attrs.rows<50",)), store, event="predict")
    bare = tmp_path / "bare"  # one run, calls never overlap, and no attributes
    synthetic.write(bare, synthetic.Workload(events=500, runs=1, names=("f",), rate_per_s=10))
    calls = load_calls(Selection(), bare, "f")
    calls.table = calls.table.set_column(calls.table.column_names.index("attrs"), "attrs",
                                         pa.nulls(calls.n, pa.string()))
    with pytest.raises(lapse.ConfigError, match=r"nothing that varies.*lapse\.set"):
        fit(calls)
    with pytest.raises(lapse.ConfigError, match="NAME=VALUE"):
        parse_inputs(["rows"])
    assert parse_inputs(["rows=5,model=large", "ratio=0.5"]) == {
        "rows": 5, "model": "large", "ratio": 0.5}
