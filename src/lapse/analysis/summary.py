"""The per-event summary behind ``lapse report``: counts, errors, throughput and order statistics.

DuckDB filters and groups the events in one scan and hands each group's
durations over as one list (no sort); NumPy then takes the exact order
statistics of each group by partial selection. On 10 million events that is
a fraction of the time a full sort per group takes (see benchmarks/).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lapse.analysis.fivenum import PERCENTILES, OrderSummary, summarize
from lapse.analysis.selection import Selection
from lapse.store import _read

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

RUN_COLUMNS = set(_read.RUN_COLUMNS_IN_EVENTS)

SUMMARY_FIELDS: tuple[tuple[str, str], ...] = (
    ("count", "calls in the selection"),
    ("errors", "calls that raised"),
    ("error_rate", "errors / count"),
    ("throughput", "calls per second over the selection's time window"),
    ("total", "summed duration, seconds"),
    ("mean", "mean duration, seconds"),
    ("min", "minimum duration, seconds"),
    ("lower_hinge", "Tukey's lower hinge (R fivenum), seconds"),
    ("median", "median duration, seconds"),
    ("upper_hinge", "Tukey's upper hinge (R fivenum), seconds"),
    ("max", "maximum duration, seconds"),
    ("p90", "90th percentile (linear interpolation), seconds"),
    ("p95", "95th percentile, seconds"),
    ("p99", "99th percentile, seconds"),
    ("p99_9", "99.9th percentile, seconds"),
    ("outliers", "calls outside 1.5 x the hinge spread beyond either hinge"),
)
"""Columns of a summary row after ``name`` and the grouping columns (docs/report.md)."""

Progress = Callable[[float], None]


@dataclass
class Summary:
    """One row per event name (and group): the numbers of ``lapse report``."""

    rows: list[dict[str, Any]]
    group_by: tuple[str, ...]
    window_ns: tuple[int | None, int | None]
    dropped: int
    events: int
    store: Path
    selection: Selection = field(default_factory=Selection)

    @property
    def columns(self) -> list[str]:
        """Column names in display order."""
        return ["name", *self.group_by, *(name for name, _ in SUMMARY_FIELDS)]

    def to_arrow(self) -> pa.Table:
        """The rows as an Arrow table (durations in float seconds)."""
        import pyarrow as pa

        return pa.Table.from_pylist(self.rows) if self.rows else pa.table(
            {c: pa.array([], pa.float64()) for c in self.columns})


def _durations(chunked: pa.ChunkedArray) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Flattened int64 durations and list offsets, from Arrow buffers (no pandas import)."""
    import numpy as np

    lists = chunked.combine_chunks()
    values = lists.values
    flat = np.frombuffer(values.buffers()[1], dtype=np.int64, count=len(values) + values.offset)
    flat = flat[values.offset:]
    offsets = np.frombuffer(lists.buffers()[1], dtype=np.int32,
                            count=len(lists) + 1 + lists.offset)[lists.offset:]
    return flat, offsets


def summary(
    selection: Selection,
    dir: str | os.PathLike[str] | None = None,  # noqa: A002 - matches configure(dir=)
    progress: Progress | None = None,
    engine: str = "duckdb",
) -> Summary:
    """Summarise the selected events per name and grouping term.

    ``engine="spark"`` runs the same analysis on Spark over the same segments
    (``lapse.analysis.engines``), with identical order statistics.
    """
    if engine != "duckdb":
        return _engine_summary(selection, dir, engine)
    root = _read.resolve_dir(dir)
    where, parameters = selection.where_sql()
    groups = selection.group_sql()
    uses_runs = any(term in RUN_COLUMNS for term in selection.by) or any(
        column in where for column in RUN_COLUMNS)
    source = "events" if uses_runs else "events_raw"
    group_select = "".join(f", {sql} AS \"{label}\"" for label, sql in groups)
    group_by = ", ".join(["name", *(f'"{label}"' for label, _ in groups)])
    text = f"""
        SELECT name{group_select},
               count(*) AS n,
               count(*) FILTER (status = 'error') AS errors,
               sum(duration_ns::DOUBLE) AS total_ns,
               min(start_ns) AS first_ns,
               max(start_ns + duration_ns) AS last_ns,
               list(duration_ns) AS durations
        FROM {source} {where}
        GROUP BY {group_by}
    """  # noqa: S608 - identifiers checked by Selection, values are parameters
    table = _read.query(text, parameters, root, progress=progress)
    runs = _read.query(
        f"SELECT coalesce(sum(dropped), 0)::BIGINT AS dropped FROM runs "  # noqa: S608
        f"WHERE run_id IN (SELECT DISTINCT run_id FROM {source} {where})",
        parameters, root,
    )
    dropped = int(runs.column("dropped")[0].as_py()) if runs.num_rows else 0
    start, end, seconds = _window(selection, table.column("first_ns").to_pylist(),
                                  table.column("last_ns").to_pylist())
    rows = _rows(table, [label for label, _ in groups], seconds)
    rows.sort(key=lambda row: row["total"], reverse=True)
    return Summary(rows, tuple(selection.by), (start, end), dropped,
                   sum(r["count"] for r in rows), root, selection)


def _engine_summary(
    selection: Selection, folder: str | os.PathLike[str] | None, engine: str
) -> Summary:
    """The summary computed on another engine (Spark): the same rows, order statistics in it."""
    from lapse.analysis import engines

    engines.check_engine(engine)
    groups, dropped = engines.summary_groups(selection, folder, engine)
    root = (Path(engines.store_location(folder)) if folder is not None
            else _read.resolve_dir(None))
    start, end, seconds = _window(selection, [g["first_ns"] for g in groups],
                                  [g["last_ns"] for g in groups])
    labels = list(selection.by)
    rows = [_row(group, labels, group["stats"], seconds) for group in groups]
    rows.sort(key=lambda row: row["total"], reverse=True)
    return Summary(rows, tuple(selection.by), (start, end), dropped,
                   sum(r["count"] for r in rows), root, selection)


def _window(
    selection: Selection, firsts: list[int | None], lasts: list[int | None]
) -> tuple[int | None, int | None, float]:
    """The selection's time window (asked for, else the events') and its length in seconds."""
    since, until = selection.window_ns()
    known_firsts = [v for v in firsts if v is not None]
    known_lasts = [v for v in lasts if v is not None]
    start = since if since is not None else (min(known_firsts) if known_firsts else None)
    end = until if until is not None else (max(known_lasts) if known_lasts else None)
    seconds = (end - start) / 1e9 if start is not None and end is not None else 0.0
    return start, end, seconds


def _rows(table: pa.Table, labels: list[str], seconds: float) -> list[dict[str, Any]]:
    import numpy as np

    flat, offsets = _durations(table.column("durations"))
    meta = table.drop_columns(["durations"]).to_pylist()
    rows = []
    for index, group in enumerate(meta):
        sample = flat[offsets[index]:offsets[index + 1]].astype(np.float64)
        rows.append(_row(group, labels, summarize(sample), seconds))
    assert len(PERCENTILES) == 4
    return rows


def _row(
    group: dict[str, Any], labels: list[str], stats: OrderSummary, seconds: float
) -> dict[str, Any]:
    """One summary row from a group's counts and its order statistics (durations in s)."""
    n = int(group["n"])
    row: dict[str, Any] = {"name": group["name"]}
    row.update({label: group[label] for label in labels})
    p90, p95, p99, p999 = (p / 1e9 for p in stats.percentiles)
    row.update(
        count=n,
        errors=int(group["errors"]),
        error_rate=group["errors"] / n,
        throughput=n / seconds if seconds > 0 else None,
        total=group["total_ns"] / 1e9,
        mean=group["total_ns"] / n / 1e9,
        min=stats.minimum / 1e9,
        lower_hinge=stats.lower_hinge / 1e9,
        median=stats.median / 1e9,
        upper_hinge=stats.upper_hinge / 1e9,
        max=stats.maximum / 1e9,
        p90=p90, p95=p95, p99=p99, p99_9=p999,
        outliers=stats.outliers,
    )
    return row
