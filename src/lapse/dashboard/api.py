"""The dashboard's JSON API under ``/api/``: the numbers of ``lapse report`` and its charts.

Every endpoint is a thin call into ``lapse.analysis`` over the store the
dashboard serves; filters arrive as query parameters and become a
``Selection``, so a bad column or time is a ``ConfigError`` (HTTP 400).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam

from lapse.analysis import series
from lapse.analysis.selection import Selection
from lapse.analysis.summary import summary as summarise
from lapse.dashboard import models
from lapse.reporting import Report
from lapse.store import _layout, _read

router = APIRouter(prefix="/api", tags=["api"])

def store_dir(request: Request) -> Path:
    """The store this app serves."""
    store: Path = request.app.state.store
    return store


Store = Annotated[Path, Depends(store_dir)]


def _words(values: list[str] | None) -> list[str] | None:
    kept = [v for v in values or () if v.strip()]
    return kept or None


def selection(
    *,
    since: Annotated[str | None, Query(
        description="from this time: a duration ago (15m, 1h, 7d), an ISO time, or 'all'",
        examples=["1h"])] = None,
    until: Annotated[str | None, Query(
        description="up to this time: a duration ago or an ISO time")] = None,
    name: Annotated[list[str] | None, Query(
        description="only these events (repeat for several; * matches anything)")] = None,
    run: Annotated[list[str] | None, Query(description="only these runs (run_id)")] = None,
    service: Annotated[str | None, Query(description="only this service")] = None,
    version: Annotated[str | None, Query(description="only this release")] = None,
    where: Annotated[list[str] | None, Query(
        description="conditions COLUMN OP VALUE, OP in = != > >= < <= ~ (glob), such as "
        "attrs.rows>=1000 or status=error; repeat for several")] = None,
    by: Annotated[list[str] | None, Query(
        description="group by a column or attribute: version, host, service, attrs.KEY...; "
        "repeat for several")] = None,
) -> Selection:
    """The events a request asks about (every filter is optional)."""
    return Selection(
        since=None if not since or since == "all" else since,
        until=until or None, name=_words(name), run=_words(run),
        service=service or None, version=version or None,
        where=tuple(_words(where) or ()), by=tuple(_words(by) or ()),
    )


Selected = Annotated[Selection, Depends(selection)]


@router.get("/summary", response_model=models.SummaryOut, summary="Summary per event",
            description="Per event name (and grouping): calls, errors, throughput, Tukey's "
            "five-number summary, mean, p90-p99.9 and outliers, plus events dropped by the "
            "recorder. The same document as `lapse report --format json`.")
def get_summary(selected: Selected, store: Store) -> dict[str, Any]:
    """Summary rows of the selection, exactly as ``lapse.report``."""
    return Report(summarise(selected, store)).to_dict()


@router.get("/timeseries", response_model=models.TimeseriesOut, summary="Latency over time",
            description="Per event and time bucket: calls, errors, calls/s and p50/p95/p99. "
            "Buckets are round widths (1 s, 1 min, 1 h...) giving about `buckets` over the "
            "selection's window; buckets without calls are left out.")
def get_timeseries(
    selected: Selected, store: Store,
    buckets: Annotated[int, Query(ge=1, le=1000, description="about this many buckets")] = 60,
) -> dict[str, Any]:
    """Latency percentiles and volume per bucket."""
    start, end = series.extent(selected, store)
    width = series.bucket_ns((start, end), buckets)
    return {"bucket_ns": width, "start_ns": start, "end_ns": end,
            "points": series.timeseries(selected, store, width)}


@router.get("/histogram", response_model=list[models.Bin], summary="Duration histogram",
            description="Per event, counts of calls in log-spaced duration bins (10 per decade "
            "of seconds); empty bins are left out.")
def get_histogram(selected: Selected, store: Store) -> list[dict[str, Any]]:
    """Counts per duration bin."""
    return series.histogram(selected, store)


@router.get("/slowest", response_model=list[models.Call], summary="Slowest calls",
            description="The slowest calls of the selection, slowest first, with caller, "
            "thread, attributes, run and (at debug level) call stack; trace_id links to "
            "/api/trace/{run_id}/{trace_id}.")
def get_slowest(
    selected: Selected, store: Store,
    limit: Annotated[int, Query(ge=1, le=1000, description="how many calls")] = 20,
) -> list[dict[str, Any]]:
    """The slowest calls."""
    rows = series.slowest(selected, store, limit)
    for row in rows:
        row["attrs"] = _attrs(row["attrs"])
    return rows


@router.get("/trace/{run_id}/{trace_id}", response_model=models.TraceOut,
            summary="One trace", responses={404: {"description": "no such trace"}},
            description="Every call of one trace (an outermost call and all calls nested in "
            "it), in start order, with nesting depth and offset from the trace's start.")
def get_trace(
    run_id: Annotated[str, PathParam(description="the run (process) that recorded it")],
    trace_id: Annotated[int, PathParam(description="span_id of the outermost call")],
    store: Store,
) -> dict[str, Any]:
    """A trace, placed for a waterfall."""
    spans = series.trace(run_id, trace_id, store)
    if not spans:
        raise HTTPException(404, f"no trace {trace_id} in run {run_id} in {store}")
    start = min(s["start_ns"] for s in spans)
    end = max(s["start_ns"] + round(s["duration"] * 1e9) for s in spans)
    parents = {s["span_id"]: s["parent_id"] for s in spans}
    for span in spans:
        span.update(depth=_depth(span["span_id"], parents),
                    offset=(span["start_ns"] - start) / 1e9, attrs=_attrs(span["attrs"]))
    return {"run_id": run_id, "trace_id": trace_id, "start_ns": start,
            "duration": (end - start) / 1e9, "spans": spans}


@router.get("/runs", response_model=list[models.Run], summary="Runs",
            description="Every process (run) that wrote to the store, newest first, with its "
            "resource (service, version, environment, host, pid, Python, git commit, level), "
            "start and end, events, errors and events dropped.")
def get_runs(store: Store) -> list[dict[str, Any]]:
    """The runs of the store."""
    return _read.runs(store)


VERSIONS_SQL = """
    SELECT version FROM runs WHERE version IS NOT NULL
    GROUP BY version ORDER BY max(started_ns) DESC, version
"""


def versions(store: Path) -> list[str]:
    """The releases of the store, newest first, from its runs alone: the events are not
    scanned, so filling a version list stays cheap on a large store."""
    return [row["version"] for row in _read.query(VERSIONS_SQL, (), store).to_pylist()]


@router.get("/versions", response_model=models.Versions, summary="Releases",
            description="The versions (releases) that processes were configured with, newest "
            "first: each can be given as `version` to the summary or an analysis.")
def get_versions(store: Store) -> dict[str, Any]:
    """Releases of the store, for version choices."""
    return {"versions": versions(store)}


@router.get("/attributes", response_model=models.Attributes, summary="Attribute keys",
            description="Keys of the user attributes on the selected events, most frequent "
            "first: each can be used as a grouping term `attrs.KEY`.")
def get_attributes(selected: Selected, store: Store) -> dict[str, Any]:
    """Attribute keys of the selection."""
    return {"keys": series.attribute_keys(selected, store)}


@router.get("/status", response_model=models.Status, summary="Store status",
            description="Whether the store exists and a fingerprint of its files: it changes "
            "whenever a process writes, so pages poll it and refresh only then.")
def get_status(store: Store) -> dict[str, Any]:
    """Cheap to call: lists the store's files, reads none."""
    segments = _layout.segment_files(store)
    runs = _layout.run_files(store)
    digest = hashlib.sha256()
    for path in (*segments, *runs):
        try:
            info = path.stat()
        except OSError:
            continue
        digest.update(f"{path.name}:{info.st_size}:{info.st_mtime_ns};".encode())
    return {"store": str(store), "exists": store.is_dir(), "segments": len(segments),
            "runs": len(runs), "fingerprint": digest.hexdigest()[:16]}


def _attrs(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return {"_raw": text}
    return value if isinstance(value, dict) else {"_value": value}


def _depth(span_id: int | None, parents: dict[int | None, int | None]) -> int:
    """How many of the trace's calls enclose this one."""
    depth = 0
    parent = parents.get(span_id)
    while parent in parents and depth < len(parents):
        depth += 1
        parent = parents[parent]
    return depth
