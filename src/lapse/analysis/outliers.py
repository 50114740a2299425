"""Outliers: the calls outside Tukey's fences, per event, with their attributes.

For each event, the hinges are Tukey's (as R's ``fivenum``, the same as
``lapse report``), the fences lie ``k`` (default 1.5) hinge spreads beyond
them, and every call outside is an outlier: with ``k = 1.5`` the counts are
exactly the ``outliers`` column of ``lapse report``. With ``log=True`` the
fences are taken on log durations, which suits latency's long right tail
(fewer calls flagged, and only really unusual ones).

The outlier calls themselves (the most extreme ``limit`` per event) come with
their time, run, caller, host, release and attributes; and for each event,
the attribute values or context over-represented among its outliers are
named ("attrs.cache=miss: 85% of outliers, 10% of all calls").
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from lapse._errors import ConfigError, NotEnoughDataError
from lapse.analysis.calls import (
    CONTEXT,
    event_counts,
    features,
    load_calls,
    require_event,
)
from lapse.analysis.fivenum import summarize
from lapse.analysis.result import AnalysisResult
from lapse.analysis.selection import Selection
from lapse.store import _read

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import pyarrow as pa

MIN_CALLS = 5
"""Calls an event needs for hinges to mean anything."""
PATTERN_EVENTS = 10
"""Events (most outliers first) whose outliers are compared with their other calls."""


@dataclass(frozen=True)
class EventOutliers:
    """The fences of one event and how many calls fall outside (durations in seconds)."""

    name: str
    calls: int
    lower_hinge: float
    median: float
    upper_hinge: float
    low_fence: float
    high_fence: float
    high: int
    low: int
    patterns: list[str]

    @property
    def outliers(self) -> int:
        """Calls outside either fence."""
        return self.high + self.low

    @property
    def fraction(self) -> float:
        """Share of the event's calls that are outliers."""
        return self.outliers / self.calls if self.calls else 0.0


@dataclass
class Outliers(AnalysisResult):
    """Outliers per event, and the most extreme outlier calls with their attributes."""

    events: list[EventOutliers]
    calls: pa.Table
    k: float
    log: bool
    limit: int
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def table(self) -> pa.Table:
        """The outlier calls (at most ``limit`` per event), most extreme first."""
        return self.calls

    def summary(self) -> pa.Table:
        """One row per event: fences and counts."""
        import pyarrow as pa

        return pa.Table.from_pylist([
            {**{k: v for k, v in asdict(e).items() if k != "patterns"},
             "outliers": e.outliers, "fraction": e.fraction} for e in self.events])

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of ``lapse analyze outliers --format json``."""
        calls = self.calls.to_pylist()
        for call in calls:
            call["attrs"] = json.loads(call["attrs"]) if call.get("attrs") else {}
        return {
            "schema": "lapse.analyze.outliers/1", "k": self.k, "log": self.log,
            "limit": self.limit,
            "events": [{**asdict(e), "outliers": e.outliers, "fraction": e.fraction}
                       for e in self.events],
            "calls": calls, "skipped": self.skipped, "explanation": self.explain(),
        }

    def explain(self) -> str:
        """What was counted, how, and on how much data."""
        calls = sum(e.calls for e in self.events)
        outliers = sum(e.outliers for e in self.events)
        scale = "log durations" if self.log else "durations"
        return (
            f"Tukey's fences on {scale}: a call is an outlier when it lies more than "
            f"{self.k:g} hinge spreads beyond the lower or upper hinge (hinges as R's "
            f"fivenum{', as lapse report counts them' if self.k == 1.5 and not self.log else ''}"
            f"). {outliers:,} of {calls:,} calls ({outliers / calls if calls else 0:.1%}) "
            f"across {len(self.events)} events are outliers; up to {self.limit} per event are "
            "listed, most extreme first. Over-represented attribute values compare a sample "
            "of each event's outliers with its other calls."
        )


def _fences(
    data: npt.NDArray[np.float64], k: float, log: bool
) -> tuple[float, float, float, float, float, int, int]:
    """(lower hinge, median, upper hinge, low fence, high fence) in ns, and (high, low)."""
    import numpy as np

    values = np.log(np.maximum(data, 1.0)) if log else data.copy()
    stats = summarize(values.copy(), percentiles=())
    spread = stats.upper_hinge - stats.lower_hinge
    low, high = stats.lower_hinge - k * spread, stats.upper_hinge + k * spread
    above = int(np.count_nonzero(values > high))
    below = int(np.count_nonzero(values < low))
    back = math.exp if log else float
    return (back(stats.lower_hinge), back(stats.median), back(stats.upper_hinge), back(low),
            back(high), above, below)


def outliers(
    selection: Selection,
    dir: str | os.PathLike[str] | None = None,  # noqa: A002 - matches configure(dir=)
    *,
    event: str | None = None,
    k: float = 1.5,
    log: bool = False,
    limit: int = 20,
    patterns: bool = True,
) -> Outliers:
    """Tukey outliers per event of the selection (or of one ``event``)."""
    import numpy as np

    from lapse.analysis.summary import _durations as flatten

    if not k > 0:
        raise ConfigError(f"k: {k!r} is not valid; expected a positive number of hinge "
                          "spreads, such as 1.5 (Tukey's outliers) or 3 (far out).")
    if event is not None:
        require_event(selection, dir, event, MIN_CALLS, "outliers")
    where, parameters = selection.where_sql()
    if event is not None:
        where = f"{where} AND name = ?" if where else "WHERE name = ?"
        parameters = [*parameters, event]
    table = _read.query(
        f"SELECT name, list(duration_ns) AS durations FROM events {where} "  # noqa: S608
        "GROUP BY name ORDER BY name", parameters, dir)
    flat, offsets = flatten(table.column("durations"))
    found: list[EventOutliers] = []
    skipped: dict[str, str] = {}
    for index, name in enumerate(table.column("name").to_pylist()):
        data = flat[offsets[index]:offsets[index + 1]].astype(np.float64)
        if data.size < MIN_CALLS:
            skipped[name] = f"{data.size} calls; outliers needs at least {MIN_CALLS}"
            continue
        lower, median, upper, low, high, above, below = _fences(data, k, log)
        found.append(EventOutliers(name, int(data.size), lower / 1e9, median / 1e9,
                                   upper / 1e9, low / 1e9, high / 1e9, above, below, []))
    if not found:
        counts = event_counts(selection, dir)
        raise NotEnoughDataError(
            f"outliers needs at least {MIN_CALLS} calls of an event; the selection has "
            + (", ".join(f"{n} ({c})" for n, c in counts.items()) or "no events") + ".")
    found.sort(key=lambda e: (-e.outliers, e.name))
    calls = _outlier_calls(dir, found, where=where, parameters=parameters, limit=limit)
    if patterns:
        found = [_with_patterns(selection, dir, e) if position < PATTERN_EVENTS
                 and e.outliers >= 5 else e for position, e in enumerate(found)]
    return Outliers(found, calls, k, log, limit, skipped)


def _outlier_calls(
    folder: str | os.PathLike[str] | None, found: list[EventOutliers], *,
    where: str, parameters: list[Any], limit: int,
) -> pa.Table:
    """The most extreme ``limit`` outlier calls of each event (distance beyond the fence)."""
    flagged = [e for e in found if e.outliers]
    if not flagged:
        import pyarrow as pa

        return pa.table({"name": pa.array([], pa.string()),
                         "duration": pa.array([], pa.float64())})
    cases = " OR ".join(
        "(name = ? AND (duration_ns > ? OR duration_ns < ?))" for _ in flagged)
    values: list[Any] = []
    for e in flagged:
        values += [e.name, e.high_fence * 1e9, e.low_fence * 1e9]
    text = f"""
        SELECT name, start_ns, duration_ns / 1e9 AS duration,
               CASE WHEN duration_ns > fence_high THEN 'high' ELSE 'low' END AS side,
               run_id, span_id, caller, thread, host, version, attrs
        FROM (
            SELECT *, {_fence_sql(flagged, 'high')} AS fence_high,
                   {_fence_sql(flagged, 'low')} AS fence_low
            FROM events {where + (' AND ' if where else 'WHERE ')} ({cases})
        )
        QUALIFY row_number() OVER (
            PARTITION BY name ORDER BY CASE WHEN duration_ns > fence_high
                THEN duration_ns / fence_high ELSE fence_low / greatest(duration_ns, 1) END DESC
        ) <= {int(limit)}
        ORDER BY name, duration DESC
    """  # noqa: S608 - identifiers fixed, values are parameters
    fence_values: list[Any] = []
    for side in ("high", "low"):
        for e in flagged:
            fence_values += [e.name, (e.high_fence if side == "high" else e.low_fence) * 1e9]
    return _read.query(text, [*fence_values, *parameters, *values], folder)


def _fence_sql(flagged: list[EventOutliers], side: str) -> str:
    del side  # the values differ, the shape does not
    whens = " ".join("WHEN name = ? THEN ?::DOUBLE" for _ in flagged)
    return f"CASE {whens} END"


def _with_patterns(
    selection: Selection, folder: str | os.PathLike[str] | None, found: EventOutliers
) -> EventOutliers:
    """The event with the attribute values over-represented among its outliers named."""
    import numpy as np

    calls = load_calls(selection, folder, found.name, max_calls=20_000)
    duration = calls.duration_s
    outside = (duration > found.high_fence) | (duration < found.low_fence)
    if outside.sum() < 5:
        return found
    table = features(calls, context=CONTEXT, derived=False)
    notes: list[tuple[float, str]] = []
    for column, name in enumerate(table.names):
        values = table.matrix[:, column]
        if table.is_categorical(name):
            for code, level in enumerate(table.levels[name]):
                share_out = float(np.mean(values[outside] == code))
                share_all = float(np.mean(values == code))
                if share_out >= 0.3 and (share_out >= 2 * share_all
                                         or share_out - share_all >= 0.25):
                    notes.append((share_out - share_all,
                                  f"{name}={level}: {share_out:.0%} of outliers, "
                                  f"{share_all:.0%} of all calls"))
            continue
        present = ~np.isnan(values)
        if present[outside].sum() < 5:
            continue
        quartiles = np.quantile(values[present], [0.25, 0.5, 0.75])
        median_out = float(np.median(values[outside & present]))
        if median_out > quartiles[2] or median_out < quartiles[0]:
            spread = max(float(quartiles[2] - quartiles[0]), 1e-12)
            notes.append((0.25 * abs(median_out - quartiles[1]) / spread,
                          f"{name}: median {median_out:,.4g} among outliers, "
                          f"{quartiles[1]:,.4g} over all calls"))
    notes.sort(key=lambda item: -item[0])
    return EventOutliers(**{**asdict(found), "patterns": [text for _, text in notes[:5]]})
