"""Shapes for charts: latency percentiles and throughput over time, and duration histograms.

Shared by the HTML report and the dashboard, so both draw the same numbers.
"""

from __future__ import annotations

import math
import os
from typing import Any

from lapse.analysis.selection import Selection
from lapse.store import _read

DEFAULT_BUCKETS = 60
BINS_PER_DECADE = 10


def bucket_ns(window: tuple[int | None, int | None], buckets: int = DEFAULT_BUCKETS) -> int:
    """A round bucket width giving about ``buckets`` buckets over the window (at least 1 s)."""
    start, end = window
    if start is None or end is None or end <= start:
        return 1_000_000_000
    raw = (end - start) / max(buckets, 1)
    for width_s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600,
                    43200, 86400):
        if width_s * 1e9 >= raw:
            return width_s * 1_000_000_000
    return math.ceil(raw / 86_400e9) * 86_400_000_000_000


def timeseries(
    selection: Selection,
    dir: str | os.PathLike[str] | None = None,  # noqa: A002 - matches configure(dir=)
    width_ns: int = 1_000_000_000,
) -> list[dict[str, Any]]:
    """Per event name and time bucket: calls, errors, calls/s and p50/p95/p99 in seconds."""
    where, parameters = selection.where_sql()
    rows = _read.query(
        f"""
        SELECT name, (start_ns // {int(width_ns)}) * {int(width_ns)} AS bucket_ns,
               count(*) AS count,
               count(*) FILTER (status = 'error') AS errors,
               quantile_cont(duration_ns::DOUBLE, [0.5, 0.95, 0.99]) AS p
        FROM events {where}
        GROUP BY ALL ORDER BY name, bucket_ns
        """,  # noqa: S608 - identifiers fixed, values are parameters
        parameters, dir,
    ).to_pylist()
    seconds = width_ns / 1e9
    return [
        {"name": r["name"], "bucket_ns": r["bucket_ns"], "count": r["count"],
         "errors": r["errors"], "throughput": r["count"] / seconds,
         "p50": r["p"][0] / 1e9, "p95": r["p"][1] / 1e9, "p99": r["p"][2] / 1e9}
        for r in rows
    ]


def histogram(
    selection: Selection,
    dir: str | os.PathLike[str] | None = None,  # noqa: A002 - matches configure(dir=)
) -> list[dict[str, Any]]:
    """Per event name, counts of durations in log-spaced bins (10 per decade of seconds)."""
    where, parameters = selection.where_sql()
    rows = _read.query(
        f"""
        SELECT name, floor(log10(greatest(duration_ns, 1)) * {BINS_PER_DECADE}) AS bin,
               count(*) AS count
        FROM events {where}
        GROUP BY ALL ORDER BY name, bin
        """,  # noqa: S608 - identifiers fixed, values are parameters
        parameters, dir,
    ).to_pylist()
    return [
        {"name": r["name"], "low": 10 ** (r["bin"] / BINS_PER_DECADE) / 1e9,
         "high": 10 ** ((r["bin"] + 1) / BINS_PER_DECADE) / 1e9, "count": r["count"]}
        for r in rows
    ]


def slowest(
    selection: Selection,
    dir: str | os.PathLike[str] | None = None,  # noqa: A002 - matches configure(dir=)
    limit: int = 20,
) -> list[dict[str, Any]]:
    """The slowest calls, with what is known of their context (caller, stack, attrs, run)."""
    where, parameters = selection.where_sql()
    return _read.query(  # type: ignore[no-any-return]
        f"""
        SELECT name, run_id, span_id, trace_id, start_ns, duration_ns / 1e9 AS duration,
               status, error_type, caller, thread, stack, attrs, version, host
        FROM events {where}
        ORDER BY duration_ns DESC LIMIT {int(limit)}
        """,  # noqa: S608 - identifiers fixed, values are parameters
        parameters, dir,
    ).to_pylist()


def trace(
    run_id: str,
    trace_id: int,
    dir: str | os.PathLike[str] | None = None,  # noqa: A002 - matches configure(dir=)
) -> list[dict[str, Any]]:
    """Every call of one trace (one outermost call and all nested in it), in start order."""
    return _read.query(  # type: ignore[no-any-return]
        """
        SELECT name, span_id, parent_id, start_ns, duration_ns / 1e9 AS duration, status,
               error_type, caller, thread, attrs
        FROM events WHERE run_id = ? AND trace_id = ?
        ORDER BY start_ns, span_id
        """,
        [run_id, trace_id], dir,
    ).to_pylist()


def extent(
    selection: Selection,
    dir: str | os.PathLike[str] | None = None,  # noqa: A002 - matches configure(dir=)
) -> tuple[int | None, int | None]:
    """The selection's time window in epoch ns, as ``summary`` takes it.

    ``since``/``until`` where given, else the first start and the last end of
    the selected events; ``(None, None)`` when nothing is selected.
    """
    since, until = selection.window_ns()
    if since is not None and until is not None:
        return since, until
    where, parameters = selection.where_sql()
    row = _read.query(
        f"SELECT min(start_ns) AS first_ns, max(start_ns + duration_ns) AS last_ns "  # noqa: S608
        f"FROM events {where}",
        parameters, dir,
    ).to_pylist()[0]
    return (since if since is not None else row["first_ns"],
            until if until is not None else row["last_ns"])


def attribute_keys(
    selection: Selection,
    dir: str | os.PathLike[str] | None = None,  # noqa: A002 - matches configure(dir=)
    limit: int = 100,
) -> list[str]:
    """The attribute keys (``attrs.KEY``) seen on the selected events, most frequent first."""
    where, parameters = selection.where_sql()
    rows = _read.query(
        f"""
        SELECT key, count(*) AS n
        FROM (SELECT unnest(json_keys(attrs)) AS key FROM events {where})
        GROUP BY key ORDER BY n DESC, key LIMIT {int(limit)}
        """,  # noqa: S608 - identifiers fixed, values are parameters
        parameters, dir,
    ).to_pylist()
    return [r["key"] for r in rows]
