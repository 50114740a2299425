"""The store is readable without lapse: DuckDB, pandas, Polars and Spark read the files directly."""

from __future__ import annotations

import json
import shutil

import duckdb
import pandas as pd
import polars as pl
import pytest

from tests.recording import record


@pytest.fixture
def written(store):
    """A store written by two real processes: 2 x 25 predict calls with 25 inner spans each."""
    record(store, calls=25, version="1.0")
    record(store, calls=25, version="2.0")
    return store


def test_duckdb_reads_events_and_runs_directly(written):
    """Plain DuckDB SQL over the Parquet globs gives the per-version counts."""
    rows = duckdb.sql(f"""
        select r.version, count(*) as n, count(distinct e.run_id) as runs
        from read_parquet('{written}/events/*.parquet', union_by_name = true) e
        join read_parquet('{written}/runs/*.parquet', union_by_name = true) r using (run_id)
        group by r.version order by r.version
    """).fetchall()
    assert rows == [("1.0", 50, 1), ("2.0", 50, 1)]


def test_pandas_reads_the_events_folder(written):
    """pandas reads the events folder; attrs is JSON text with the numbers set by lapse.set."""
    events = pd.read_parquet(written / "events")
    assert len(events) == 100
    predict = events[events["name"] == "predict"]
    rows = sorted(json.loads(a)["rows"] for a in predict["attrs"])
    assert rows == sorted(list(range(25)) * 2)
    inner = events[events["name"] == "preprocess"]
    assert set(inner["parent_id"]).issubset(set(predict["span_id"]))


def test_polars_reads_the_segments(written):
    """Polars reads the segment glob with the same row count and durations as DuckDB."""
    frame = pl.read_parquet(f"{written}/events/*.parquet")
    assert frame.height == 100
    [(total,)] = duckdb.sql(
        f"select sum(duration_ns) from read_parquet('{written}/events/*.parquet')"
    ).fetchall()
    assert frame["duration_ns"].sum() == total


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs Java (installed by .ci/run)")
def test_spark_reads_the_store(written):
    """PySpark in local mode reads the events with the documented mergeSchema option."""
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master("local[1]").appName("lapse-readability")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "1")
        .getOrCreate()
    )
    try:
        events = spark.read.option("mergeSchema", "true").parquet(str(written / "events"))
        counts = {r["name"]: r["count"] for r in events.groupBy("name").count().collect()}
        assert counts == {"predict": 50, "preprocess": 50}
        rows = events.selectExpr("get_json_object(attrs, '$.rows') as rows").where(
            "rows is not null").count()
        assert rows == 50
    finally:
        spark.stop()
