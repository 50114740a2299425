"""Analyses on Spark: ``--engine spark`` gives DuckDB's numbers on the same segments.

One Spark session (local mode, loopback) serves the module. The Ibis query the
Spark engine runs is also checked on DuckDB, without Spark, so a difference can
be told apart from a Spark one; the Python side (order statistics at ranks to
OrderSummary) is checked against ``fivenum.summarize`` with Hypothesis.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lapse
from lapse import synthetic
from lapse.analysis.compare import compare, parse_selector
from lapse.analysis.engines import store_location, summary_from_ranks
from lapse.analysis.fivenum import summarize
from lapse.analysis.selection import Selection
from lapse.analysis.summary import summary
from lapse.store import _layout
from lapse.store._schema import event_schema

EXACT = ("name", "count", "errors", "error_rate", "throughput", "min", "lower_hinge", "median",
         "upper_hinge", "max", "p90", "p95", "p99", "p99_9", "outliers")
SUMMED = ("total", "mean")
"""Summed as integers on Spark and as doubles by DuckDB: equal to about 1e-12 (documented)."""

SELECTIONS = [
    Selection(),
    Selection(by=("version", "attrs.model")),
    Selection(name="pre*", where=("attrs.rows>=5000", "status=ok")),
    Selection(where=("attrs.model~[ab]", "duration_ns>4000000"), by=("host",)),
    Selection(service="svc", version="1.1", by=("attrs.missing",)),
]


def tricky_segment(store: Path) -> None:
    """Groups of 1, 2, 3 and 5 calls and many ties: where fivenum's positions are halves."""
    durations = {"one": [7], "two": [5, 9], "three": [4, 4, 8], "five": [3, 3, 3, 10, 10],
                 "ties": [1, 2, 2, 2, 2, 3, 3, 100] * 13}
    names, values = [], []
    for name, sample in durations.items():
        names += [name] * len(sample)
        values += sample
    n = len(values)
    schema = event_schema()
    columns = {"name": names, "kind": ["function"] * n, "level": ["minimal"] * n,
               "run_id": ["synthetic-0-0000"] * n, "start_ns": list(range(10**18, 10**18 + n)),
               "duration_ns": values, "status": ["ok"] * n}
    table = pa.Table.from_arrays(
        [pa.array(columns.get(f.name), f.type) if f.name in columns else pa.nulls(n, f.type)
         for f in schema], schema=schema)
    import pyarrow.parquet as pq

    pq.write_table(table, _layout.events_dir(store) / "tricky-000001.parquet")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic store: 3 runs, 2 releases, attributes, errors, outliers, plus ties."""
    folder = tmp_path_factory.mktemp("spark") / "store"
    synthetic.write(folder, synthetic.Workload(
        events=6_000, runs=3, versions=("1.0", "1.1"), outlier_rate=0.02,
        categories={"model": {"a": 0.0, "b": 3.0, "c": 1.0}},
        slowdowns={("1.1", "predict"): 1.3}))
    tricky_segment(folder)
    return folder


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    """One local Spark session for the module (8-10 s to start)."""
    pytest.importorskip("pyspark")
    from lapse.analysis.engines import spark_session

    session = spark_session()
    yield session
    session.stop()


def keyed(rows: list[dict[str, Any]], by: tuple[str, ...]) -> dict[tuple[Any, ...], dict]:
    return {tuple(row[k] for k in ("name", *by)): row for row in rows}


def assert_same_summary(duckdb: Any, other: Any) -> None:
    by = tuple(duckdb.group_by)
    ours, theirs = keyed(duckdb.rows, by), keyed(other.rows, by)
    assert ours.keys() == theirs.keys()
    assert ours, "the selection should not be empty"
    for key, row in ours.items():
        assert {f: row[f] for f in EXACT} == {f: theirs[key][f] for f in EXACT}, key
        for field in SUMMED:
            assert theirs[key][field] == pytest.approx(row[field], rel=1e-12), (key, field)
    assert (duckdb.window_ns, duckdb.dropped, duckdb.events) == (
        other.window_ns, other.dropped, other.events)


@pytest.mark.parametrize("selection", SELECTIONS, ids=range(len(SELECTIONS)))
def test_the_ibis_query_on_duckdb_equals_the_numpy_path(store, selection):
    """The engine query (Ibis) run by DuckDB gives the report's numbers exactly: fivenum,
    percentiles and outliers included; filters and groupings select the same events."""
    if selection.service is not None:
        selection = Selection(version="1.1", by=selection.by)
    assert_same_summary(summary(selection, store), summary(selection, store,
                                                           engine="ibis-duckdb"))


@pytest.mark.slow
def test_spark_report_equals_duckdb(store, spark):
    """On Spark (local mode) the report's numbers equal DuckDB's: five-number summaries,
    percentiles and outlier counts exactly; totals and means to 1e-12."""
    for selection in SELECTIONS[:4]:
        assert_same_summary(summary(selection, store), summary(selection, store,
                                                               engine="spark"))


@pytest.mark.slow
def test_spark_compare_equals_duckdb(store, spark):
    """lapse compare on Spark gives DuckDB's verdicts, call counts, medians, ratios and
    bootstrap intervals exactly, and its p-values to 1e-9 (ranks summed in another order)."""
    base, cand = parse_selector("version=1.0"), parse_selector("version=1.1")
    ours = compare(base, cand, baseline_dir=store)
    theirs = compare(base, cand, baseline_dir=store, engine="spark")
    assert [e.name for e in ours.events] == [e.name for e in theirs.events]
    assert any(e.verdict == "slower" for e in ours.events)
    for a, b in zip(ours.events, theirs.events, strict=True):
        assert (a.verdict, a.baseline_calls, a.candidate_calls, a.baseline_median,
                a.candidate_median, a.ratio, a.ratio_low, a.ratio_high) == (
            b.verdict, b.baseline_calls, b.candidate_calls, b.baseline_median,
            b.candidate_median, b.ratio, b.ratio_low, b.ratio_high), a.name
        if a.p_value is None:
            assert b.p_value is None
        else:
            assert b.p_value == pytest.approx(a.p_value, rel=1e-9, abs=1e-300)
            assert b.p_adjusted == pytest.approx(a.p_adjusted, rel=1e-9, abs=1e-300)
    assert ours.notes == theirs.notes


@pytest.mark.slow
def test_the_command_line_reads_a_store_by_uri_on_spark(store, spark, capsys):
    """``lapse report --engine spark --dir file:///...`` lets Spark list the segments itself
    (as with s3a:// or abfss:// on a cluster) and prints the same JSON rows as DuckDB."""
    from lapse import cli

    assert cli.main(["report", "--dir", str(store), "--format", "json", "--by", "version"]) == 0
    local = json.loads(capsys.readouterr().out)
    assert cli.main(["report", "--dir", f"file://{store}", "--engine", "spark", "--format",
                     "json", "--by", "version"]) == 0
    remote = json.loads(capsys.readouterr().out)
    by = ("version",)
    ours, theirs = keyed(local["rows"], by), keyed(remote["rows"], by)
    assert ours.keys() == theirs.keys()
    for key, row in ours.items():
        assert {f: row[f] for f in EXACT} == {f: theirs[key][f] for f in EXACT}
    assert remote["events"] == local["events"]


def test_store_locations_keep_their_scheme():
    """A URI passed through pathlib (which collapses //) is restored for Spark."""
    assert store_location(Path("s3a://bucket/lapse")) == "s3a://bucket/lapse"
    assert store_location("abfss://c@account.dfs.core.windows.net/lapse") == (
        "abfss://c@account.dfs.core.windows.net/lapse")
    assert store_location(Path("file:///tmp/x")) == "file:///tmp/x"
    assert store_location("/tmp/x") == "/tmp/x"


def test_unknown_engine_is_a_config_error(store):
    """A misspelt engine names the ones there are."""
    with pytest.raises(lapse.ConfigError, match="duckdb, spark"):
        summary(Selection(), store, engine="sparkk")


def ranks_needed(n: int) -> set[int]:
    h = ((n + 3) // 2) / 2
    positions = [0.0, h - 1, (n - 1) / 2, n - h, float(n - 1)]
    positions += [(n - 1) * p / 100 for p in (90.0, 95.0, 99.0, 99.9)]
    return {int(np.floor(p)) for p in positions} | {min(int(np.ceil(p)), n - 1)
                                                     for p in positions}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=300))
def test_order_statistics_at_ranks_give_summarize_exactly(values):
    """From the order statistics at the ranks the engine fetches, the Python side rebuilds
    fivenum.summarize's result bit for bit (ties and tiny samples included)."""
    data = np.array(values, dtype=np.float64)
    expected = summarize(data.copy())
    ordered = np.sort(data)
    at = {rank: float(ordered[rank]) for rank in ranks_needed(len(values))}
    assert summary_from_ranks(len(values), at, expected.outliers) == expected


def test_compare_draws_the_bootstrap_from_the_engine(tmp_path):
    """Samples above the bootstrap cap stay in the engine: only the order statistics the
    bootstrap draws are fetched, and the interval equals the one from the whole sample."""
    from lapse.analysis.compare import BOOTSTRAP_CAP

    folder = tmp_path / "big"
    synthetic.write(folder, synthetic.Workload(events=2 * BOOTSTRAP_CAP + 2_000, runs=2,
                                               names=("predict",),
                                               slowdowns={("1.1", "predict"): 1.05}))
    base, cand = parse_selector("version=1.0"), parse_selector("version=1.1")
    (ours,) = compare(base, cand, baseline_dir=folder).events
    (theirs,) = compare(base, cand, baseline_dir=folder, engine="ibis-duckdb").events
    assert ours.baseline_calls > BOOTSTRAP_CAP
    assert (ours.ratio_low, ours.ratio_high, ours.baseline_median, ours.verdict) == (
        theirs.ratio_low, theirs.ratio_high, theirs.baseline_median, theirs.verdict)
    assert theirs.p_value == pytest.approx(ours.p_value, rel=1e-9, abs=1e-300)
