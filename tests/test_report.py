"""`lapse report` and `lapse.report()`: numbers checked against an independent pandas run."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import lapse
from lapse import synthetic
from tests.recording import lapse_cli
from tests.test_fivenum import r_fivenum

WORKLOAD = synthetic.Workload(events=24_000, runs=4, error_rate=0.05, seed=7)


@pytest.fixture(scope="module")
def synthetic_store(tmp_path_factory):
    """A store of 24,000 events from 4 runs, 2 versions and 2 hosts, with known counts."""
    store = tmp_path_factory.mktemp("report") / "store"
    truth = synthetic.write(store, WORKLOAD)
    return store, truth


def _events(store) -> pd.DataFrame:
    """All events joined to their runs, read by pandas alone (the independent computation)."""
    events = pd.concat(pq.read_table(p).to_pandas() for p in (store / "events").glob("*.parquet"))
    runs = pd.concat(pq.read_table(p).to_pandas() for p in (store / "runs").glob("*.parquet"))
    events = events.merge(runs[["run_id", "version", "host"]], on="run_id")
    events["rows"] = events["attrs"].map(lambda a: json.loads(a)["rows"])
    return events


def _check_rows(rows, frame: pd.DataFrame, keys: list[str]) -> None:
    grouped = dict(iter(frame.groupby(keys)))  # grouping by a list gives tuple keys
    assert len(rows) == len(grouped)
    for row in rows:
        group = grouped[tuple(row[k] for k in keys)]
        seconds = group["duration_ns"].to_numpy(dtype=np.float64) / 1e9
        assert row["count"] == len(group)
        assert row["errors"] == int((group["status"] == "error").sum())
        assert row["mean"] == pytest.approx(seconds.mean(), rel=1e-12)
        five = r_fivenum(group["duration_ns"].astype(float).tolist())
        assert (row["min"], row["lower_hinge"], row["median"], row["upper_hinge"],
                row["max"]) == pytest.approx(tuple(v / 1e9 for v in five), rel=1e-15)
        np.testing.assert_allclose(
            [row["p90"], row["p95"], row["p99"], row["p99_9"]],
            np.percentile(seconds, [90, 95, 99, 99.9]), rtol=1e-12)
        fence = 1.5 * (five[3] - five[1])
        ns = group["duration_ns"].astype(float)
        assert row["outliers"] == int(((ns < five[1] - fence) | (ns > five[3] + fence)).sum())


def test_report_per_event_matches_pandas(synthetic_store):
    """Counts, errors, mean, exact fivenum, percentiles and outliers per event equal pandas'."""
    store, truth = synthetic_store
    result = lapse.report(store)
    assert {r["name"]: r["count"] for r in result.rows} == truth["counts"]
    _check_rows(result.rows, _events(store), ["name"])
    totals = [r["total"] for r in result.rows]
    assert totals == sorted(totals, reverse=True), "sorted by total time"


def test_report_grouped_by_version_and_host_matches_pandas(synthetic_store):
    """Grouping by run columns gives one row per (event, version, host), as pandas' groupby."""
    store, _ = synthetic_store
    result = lapse.report(store, by=["version", "host"])
    _check_rows(result.rows, _events(store), ["name", "version", "host"])


def test_report_filters_match_pandas(synthetic_store):
    """--where on an attribute, --name and --version select exactly what pandas selects."""
    store, _ = synthetic_store
    frame = _events(store)
    result = lapse.report(store, where="attrs.rows>=5000", name="pre*", version="1.1")
    expected = frame[(frame["rows"] >= 5000) & frame["name"].str.startswith("pre")
                     & (frame["version"] == "1.1")]
    _check_rows(result.rows, expected, ["name"])
    errors = lapse.report(store, where=["status=error", "attrs.rows<100"])
    expected = frame[(frame["status"] == "error") & (frame["rows"] < 100)]
    assert sum(r["count"] for r in errors.rows) == len(expected)


def test_report_throughput_is_calls_over_the_window(synthetic_store):
    """Throughput is each event's calls divided by the selection's time span."""
    store, _ = synthetic_store
    result = lapse.report(store)
    start, end = result.summary.window_ns
    for row in result.rows:
        assert row["throughput"] == pytest.approx(row["count"] / ((end - start) / 1e9))


def test_report_converts_to_pandas_arrow_and_html(synthetic_store):
    """The Python result is a DataFrame, an Arrow table, and a table in Jupyter."""
    store, truth = synthetic_store
    result = lapse.report(store)
    frame = result.to_pandas()
    assert dict(zip(frame["name"], frame["count"], strict=True)) == truth["counts"]
    assert result.to_arrow().num_rows == len(truth["counts"])
    html = result._repr_html_()
    assert "<table>" in html
    assert "lower hinge" in html


def test_cli_json_is_documented_and_exact(synthetic_store):
    """--format json: the documented schema, durations in float seconds, same numbers."""
    store, truth = synthetic_store
    result = lapse_cli("report", "--format", "json", store=store)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["schema"] == "lapse.report/1"
    assert document["events"] == WORKLOAD.events
    assert document["dropped"] == 0
    assert {r["name"]: r["count"] for r in document["rows"]} == truth["counts"]
    python = {r["name"]: r for r in lapse.report(store).rows}
    for row in document["rows"]:
        assert row["median"] == python[row["name"]]["median"]
        assert isinstance(row["p99"], float)


def test_cli_csv_markdown_and_table(synthetic_store):
    """CSV parses with one line per event; Markdown is a pipe table; the table names every event."""
    store, truth = synthetic_store
    csv_out = lapse_cli("report", "--format", "csv", store=store)
    rows = list(csv.DictReader(io.StringIO(csv_out.stdout)))
    assert {r["name"]: int(r["count"]) for r in rows} == truth["counts"]
    markdown = lapse_cli("report", "--format", "markdown", store=store).stdout
    assert markdown.startswith("| event |")
    assert "| lower hinge |" in markdown
    table = lapse_cli("report", "--by", "version", store=store).stdout
    for name in truth["counts"]:
        assert name in table
    assert "no events dropped" in table


def test_cli_html_report_is_one_offline_file(synthetic_store, tmp_path):
    """--format html -o writes one file with plotly inlined and four charts per event."""
    store, truth = synthetic_store
    out = tmp_path / "report.html"
    result = lapse_cli("report", "--format", "html", "-o", str(out), store=store)
    assert result.returncode == 0, result.stderr
    html = out.read_text()
    assert "<script src=\"http" not in html
    assert html.count("Plotly.newPlot") == 4 * len(truth["counts"])
    for index in range(len(truth["counts"])):
        for kind in ("box", "histogram", "latency", "volume"):
            assert f'id="{kind}-{index}"' in html


def test_dropped_events_are_shown(tmp_path):
    """Events the recorder dropped appear in the report's numbers, never hidden."""
    store = tmp_path / "store"
    lapse.configure(dir=store, buffer_size=5, flush_interval="1h")

    @lapse.timed("busy")
    def busy():
        return 1

    for _ in range(12):
        busy()
    lapse.shutdown()
    result = lapse.report(store)
    assert result.rows[0]["count"] == 5
    assert result.summary.dropped == 7
    assert "7 events were dropped" in result.footer()


def test_bad_grouping_and_conditions_explain_themselves(synthetic_store):
    """A typo in --by or --where names the problem and the accepted forms; exit status 2."""
    store, _ = synthetic_store
    with pytest.raises(lapse.ConfigError, match=r"attrs\.KEY"):
        lapse.report(store, by="versoin")
    result = lapse_cli("report", "--where", "rows is big", store=store)
    assert result.returncode == 2
    assert "COLUMN OP VALUE" in result.stderr
    result = lapse_cli("report", "--where", "version>abc", store=store)
    assert result.returncode == 2
    assert "not a number" in result.stderr
