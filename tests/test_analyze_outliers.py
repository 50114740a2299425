"""`lapse analyze outliers`: Tukey's fences as R computes them, the same count as the report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import lapse
from lapse import NotEnoughDataError, synthetic
from lapse.analysis.outliers import outliers
from lapse.analysis.selection import Selection
from tests.recording import lapse_cli
from tests.test_fivenum import r_fivenum

WORKLOAD = synthetic.Workload(
    events=12_000, runs=2, sigma=0.3, seed=4, rate_per_s=200,
    categories={"cache": {"hit": 0.0, "miss": 0.0}}, outlier_rate=0.002,
    slow_causes=(synthetic.SlowCause({"cache": "=miss", "rows": ">8000"}, factor=5.0,
                                     name="predict"),))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("outliers") / "store"
    synthetic.write(folder, WORKLOAD)
    return folder


def _durations(store, name):
    table = lapse.sql(f"select duration_ns from events where name = '{name}'", store)
    return table.column("duration_ns").to_numpy().astype(float)


def test_fences_and_counts_match_r_and_the_report(store):
    """Hinges are R's fivenum; counts equal the report's outliers column, call for call."""
    result = outliers(Selection(), store)
    report = {row["name"]: row["outliers"] for row in lapse.report(store).rows}
    assert {e.name: e.outliers for e in result.events} == report
    for event in result.events:
        data = _durations(store, event.name)
        five = r_fivenum(data.tolist())
        spread = five[3] - five[1]
        assert event.lower_hinge == pytest.approx(five[1] / 1e9, rel=1e-12)
        assert event.upper_hinge == pytest.approx(five[3] / 1e9, rel=1e-12)
        assert event.high_fence == pytest.approx((five[3] + 1.5 * spread) / 1e9, rel=1e-12)
        assert event.high == int((data > five[3] + 1.5 * spread).sum())
        assert event.low == int((data < five[1] - 1.5 * spread).sum())


def test_listed_calls_are_outside_the_fences(store):
    """Each listed call lies beyond its event's fence, at most ``limit`` per event, worst first."""
    result = outliers(Selection(), store, limit=5)
    fences = {e.name: (e.low_fence, e.high_fence) for e in result.events}
    rows = result.table.to_pylist()
    assert rows
    per_event: dict[str, list[float]] = {}
    for row in rows:
        low, high = fences[row["name"]]
        assert row["duration"] > high or row["duration"] < low
        per_event.setdefault(row["name"], []).append(row["duration"])
        assert json.loads(row["attrs"])["rows"] >= 1
    for name, durations in per_event.items():
        assert len(durations) <= 5
        assert durations == sorted(durations, reverse=True), name


def test_over_represented_attributes_are_named(store):
    """The planted cause shows up: predict's outliers are mostly cache misses with many rows."""
    result = outliers(Selection(), store, event="predict")
    (predict,) = result.events
    assert any(p.startswith("attrs.cache=miss") for p in predict.patterns)
    assert any(p.startswith("attrs.rows: median") for p in predict.patterns)


def test_log_scale_and_far_out(store):
    """Fences on log durations, and k = 3, flag fewer calls, as hand computed."""
    plain = {e.name: e.outliers for e in outliers(Selection(), store, patterns=False).events}
    logged = outliers(Selection(), store, log=True, k=3, patterns=False)
    for event in logged.events:
        data = np.log(_durations(store, event.name))
        five = r_fivenum(data.tolist())
        high = five[3] + 3 * (five[3] - five[1])
        assert event.high == int((data > high).sum())
        assert event.high_fence == pytest.approx(math.exp(high) / 1e9, rel=1e-9)
        assert event.outliers <= plain[event.name]
    assert "log durations" in logged.explain()


def test_cli_and_bad_input(store, tmp_path):
    """JSON from the command line; a bad k and a too-small event are explained."""
    run = lapse_cli("analyze", "outliers", "--name", "predict", "--limit", "3", "--format",
                    "json", store=store)
    assert run.returncode == 0, run.stderr
    document = json.loads(run.stdout)
    assert document["schema"] == "lapse.analyze.outliers/1"
    assert [e["name"] for e in document["events"]] == ["predict"]
    assert len(document["calls"]) == 3
    assert isinstance(document["calls"][0]["attrs"], dict)
    with pytest.raises(lapse.ConfigError, match="hinge spreads"):
        outliers(Selection(), store, k=0)
    with pytest.raises(NotEnoughDataError, match="at least 5 calls"):
        outliers(Selection(where=("attrs.rows<3",)), store)
    run = lapse_cli("analyze", "outliers", "--event", "nope", store=store)
    assert run.returncode == 2
    assert "Events there" in run.stderr


def test_an_analysis_writes_a_whole_html_page(store, tmp_path):
    """`-o FILE.html` writes a page with the analysis's tables and its explanation."""
    page = tmp_path / "outliers.html"
    run = lapse_cli("analyze", "outliers", "--name", "predict", "-o", str(page), store=store)
    assert run.returncode == 0, run.stderr
    text = page.read_text()
    assert text.startswith("<!doctype html>")
    assert "<table>" in text
    assert "Tukey" in text


def test_the_html_report_shows_change_points_and_outliers(store, tmp_path):
    """`lapse report --format html` ends with the analyses that need no parameters."""
    page = tmp_path / "report.html"
    run = lapse_cli("report", "--format", "html", "-o", str(page), store=store)
    assert run.returncode == 0, run.stderr
    text = page.read_text()
    assert "<section class='analysis'><h2>Change points</h2>" in text
    assert "<section class='analysis'><h2>Outliers</h2><div class='lapse-analysis'>" in text
