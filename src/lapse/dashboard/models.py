"""Shapes of the dashboard's JSON API, as published in its OpenAPI schema (/openapi.json).

Durations are float seconds and times epoch nanoseconds, as in ``lapse report
--format json`` (docs/report.md); summary rows carry one extra key per grouping
term (``version``, ``attrs.model``...).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Window(BaseModel):
    """The time window a summary covers (ISO 8601, UTC), null when nothing was selected."""

    start: str | None
    end: str | None


class SummaryRow(BaseModel):
    """One event name (and group): the numbers of ``lapse report``."""

    model_config = ConfigDict(extra="allow")

    name: str
    count: int = Field(description="calls in the selection")
    errors: int = Field(description="calls that raised")
    error_rate: float = Field(description="errors / count")
    throughput: float | None = Field(description="calls per second over the window")
    total: float = Field(description="summed duration, seconds")
    mean: float
    min: float
    lower_hinge: float = Field(description="Tukey's lower hinge (R fivenum), seconds")
    median: float
    upper_hinge: float = Field(description="Tukey's upper hinge (R fivenum), seconds")
    max: float
    p90: float
    p95: float
    p99: float
    p99_9: float
    outliers: int = Field(description="calls beyond 1.5 x the hinge spread from either hinge")


class SummaryOut(BaseModel):
    """The document of ``lapse report --format json`` (schema ``lapse.report/1``)."""

    model_config = ConfigDict(populate_by_name=True)

    schema_: str = Field(alias="schema")
    store: str
    window: Window
    group_by: list[str]
    events: int = Field(description="events in the selection")
    dropped: int = Field(description="events the recorder dropped in the selected runs")
    rows: list[SummaryRow]


class Point(BaseModel):
    """One event name in one time bucket."""

    name: str
    bucket_ns: int = Field(description="bucket start, epoch ns")
    count: int
    errors: int
    throughput: float = Field(description="calls per second in the bucket")
    p50: float
    p95: float
    p99: float


class TimeseriesOut(BaseModel):
    """Per event and bucket: calls, errors and latency percentiles (buckets with calls only)."""

    bucket_ns: int = Field(description="bucket width in ns")
    start_ns: int | None = Field(description="start of the selection's window")
    end_ns: int | None = Field(description="end of the selection's window")
    points: list[Point]


class Bin(BaseModel):
    """Calls whose duration lies in [low, high) seconds (10 log-spaced bins per decade)."""

    name: str
    low: float
    high: float
    count: int


class Call(BaseModel):
    """One recorded call, with what is known of its context."""

    name: str
    run_id: str
    span_id: int | None
    trace_id: int | None
    start_ns: int
    duration: float = Field(description="seconds")
    status: str | None
    error_type: str | None
    caller: str | None
    thread: str | None
    stack: list[str] | None = Field(description="call stack, outermost first (debug level)")
    attrs: dict[str, Any] | None
    version: str | None
    host: str | None


class Span(BaseModel):
    """One call of a trace, placed for a waterfall."""

    name: str
    span_id: int | None
    parent_id: int | None
    depth: int = Field(description="nesting depth, 0 for the outermost call")
    start_ns: int
    offset: float = Field(description="seconds from the start of the trace")
    duration: float = Field(description="seconds")
    status: str | None
    error_type: str | None
    caller: str | None
    thread: str | None
    attrs: dict[str, Any] | None


class TraceOut(BaseModel):
    """One outermost call and every call nested in it."""

    run_id: str
    trace_id: int
    start_ns: int
    duration: float = Field(description="seconds from the first start to the last end")
    spans: list[Span]


class Run(BaseModel):
    """One process that wrote to the store, with its resource and event counts."""

    run_id: str
    kind: str | None
    service: str | None
    version: str | None
    environment: str | None
    host: str | None
    pid: int | None
    program: str | None
    python: str | None
    lapse_version: str | None
    git_commit: str | None
    level: str | None
    started_ns: int | None
    updated_ns: int | None
    ended_ns: int | None
    dropped: int | None
    events: int
    errors: int


class Attributes(BaseModel):
    """Attribute keys seen on the selected events, most frequent first."""

    keys: list[str]


class Versions(BaseModel):
    """Releases recorded in the store, newest first."""

    versions: list[str]


class Status(BaseModel):
    """Whether the store exists, and a fingerprint that changes whenever it is written."""

    store: str
    exists: bool
    segments: int
    runs: int
    fingerprint: str


class AnalysisOut(BaseModel):
    """One analysis of ``lapse analyze`` (or ``lapse compare``), in three forms."""

    analysis: str = Field(description="which analysis: compare, changes, drivers, slow, "
                          "outliers or capacity")
    explain: str = Field(description="what was tested, on how much data, with what "
                         "confidence, in plain words")
    html: str = Field(description="the result as an HTML fragment (tables and paragraphs, "
                      "every value escaped), as lapse renders it in Jupyter")
    result: dict[str, Any] = Field(description="the JSON document of `--format json` "
                                   "(NaN and infinity as null); with `predict`, drivers adds "
                                   "`prediction`: estimate, low and high in seconds, level")


class Problem(BaseModel):
    """Why a request was refused, in lapse's own words."""

    detail: str
