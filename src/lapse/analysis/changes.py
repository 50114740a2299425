"""Change points: when did an event's latency, throughput or error rate shift, and by how much?

For each event in the selection, calls are cut into equal time buckets
(``buckets``, default about 30 calls each, 20 to 200 of them) and three
series are built: the **median log duration** per bucket (a bucket median
is not moved by a few outlier calls), the **calls per bucket** and the
**error rate** per bucket. Each series is then:

1. **split** by binary segmentation on ranks (E-divisive style, Matteson &
   James 2014, with Pettitt's rank statistic): the split maximizing the
   standardized rank-sum (Mann-Whitney) statistic between the two sides is
   kept if a **permutation test** (999 shuffles of the buckets) of that
   maximal statistic gives p < ``alpha``; then each side is searched again.
   Ranks make an outlier bucket weigh no more than any other, and the
   permutation test accounts for the search over splits, so on a series with
   no change a false alarm comes at most ``alpha`` of the time;
2. **located** call by call: at the split of the calls between the
   neighbouring changes that maximizes the same statistic (on log durations,
   gaps between calls, or error flags);
3. **measured**: median duration after / before (with a bootstrap interval),
   call rate after / before (Poisson interval) or error rate before and after,
   over the calls between the neighbouring changes. Changes smaller than
   ``threshold`` are not reported.

Changes are ranked by confidence (1 - p), then by size. Each series is tested at
``alpha``; a note names changes that would not pass a Bonferroni correction across
all the series examined.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from lapse._errors import ConfigError, NotEnoughDataError
from lapse.analysis.calls import event_counts
from lapse.analysis.compare import BOOTSTRAP_CAP
from lapse.analysis.result import AnalysisResult
from lapse.analysis.selection import Selection
from lapse.store import _read

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import pyarrow as pa

LATENCY, THROUGHPUT, ERRORS = "latency", "throughput", "errors"
METRICS = (LATENCY, THROUGHPUT, ERRORS)
MIN_CALLS = 100
"""Calls an event needs before its series are examined."""
MIN_BUCKETS, MAX_BUCKETS, CALLS_PER_BUCKET = 20, 200, 30
MIN_SEGMENT = 3
"""Buckets on each side of a change, at least."""
PERMUTATIONS = 999


@dataclass(frozen=True)
class Change:
    """One change point of one metric of one event (durations in seconds)."""

    name: str
    metric: str
    time_ns: int
    time_low_ns: int
    time_high_ns: int
    before: float
    after: float
    ratio: float | None
    ratio_low: float | None
    ratio_high: float | None
    p_value: float
    confidence: float
    calls_before: int
    calls_after: int

    @property
    def size(self) -> float:
        """|log ratio|: how big the change is, in either direction."""
        if self.ratio is None or self.ratio <= 0:
            return math.inf
        return abs(math.log(self.ratio))

    def describe(self) -> str:
        """The change in one sentence."""
        from lapse.reporting.analysis import change_sentence

        return change_sentence(self)


@dataclass(frozen=True)
class Series:
    """What was examined for one metric of one event."""

    name: str
    metric: str
    calls: int
    buckets: int
    bucket_s: float
    significant: int
    """Splits significant at alpha."""
    changes: int
    """Of those, the ones at least ``threshold`` in size (reported)."""


@dataclass
class Changes(AnalysisResult):
    """Change points found in the selection, most confident and largest first."""

    changes: list[Change]
    series: list[Series]
    skipped: dict[str, str]
    alpha: float
    threshold: float
    permutations: int
    window_ns: tuple[int | None, int | None]
    notes: list[str] = field(default_factory=list)

    @property
    def table(self) -> pa.Table:
        """One row per change."""
        import pyarrow as pa

        rows = [{**asdict(c), "time": _iso(c.time_ns)} for c in self.changes]
        if rows:
            return pa.Table.from_pylist(rows)
        return pa.table({name: pa.array([], pa.float64()) for name in Change.__annotations__})

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of ``lapse analyze changes --format json``."""
        return {
            "schema": "lapse.analyze.changes/1", "alpha": self.alpha,
            "threshold": self.threshold, "permutations": self.permutations,
            "window": [_iso(t) for t in self.window_ns],
            "changes": [{**asdict(c), "time": _iso(c.time_ns), "description": c.describe()}
                        for c in self.changes],
            "series": [asdict(s) for s in self.series], "skipped": self.skipped,
            "notes": self.notes, "explanation": self.explain(),
        }

    def explain(self) -> str:
        """What was tested, on how much data, with what confidence."""
        names = sorted({s.name for s in self.series})
        calls = sum(s.calls for s in self.series if s.metric == self.series[0].metric) \
            if self.series else 0
        buckets = sorted({s.buckets for s in self.series})
        widths = sorted({s.bucket_s for s in self.series})
        from lapse.reporting import human_seconds

        span = (f"{buckets[0]}–{buckets[-1]}" if buckets[0] != buckets[-1]
                else str(buckets[0])) if buckets else "0"
        width = "—"
        if widths:
            width = human_seconds(widths[0])
            if widths[-1] > 1.01 * widths[0]:
                width += f"–{human_seconds(widths[-1])}"
        return (
            f"Looked for changes in {len(self.series)} series ({', '.join(METRICS)} of "
            f"{len(names)} events, {calls:,} calls) cut into {span} time buckets of {width}. "
            f"Binary segmentation on ranks: a split is kept when a permutation test "
            f"({self.permutations} shuffles) of the maximal standardized rank-sum statistic "
            f"over the segment gives p < {self.alpha:g}, and reported when the change is at "
            f"least {self.threshold:.0%}. A series with no "
            f"change raises a false alarm at most about {self.alpha:.0%} of the time. "
            f"A latency change's interval is a bootstrap of the ratio of medians (on at most "
            f"{BOOTSTRAP_CAP:,} calls per side). Found {len(self.changes)} change(s)."
        )


def _iso(ns: int | None) -> str | None:
    if ns is None:
        return None
    import datetime as dt

    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.timezone.utc).isoformat()


def ranks(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Ranks 1..n, ties given their average rank (as ``scipy.stats.rankdata``)."""
    import numpy as np

    n = values.size
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    first = np.concatenate([[True], ordered[1:] != ordered[:-1]]) if n else np.array([], bool)
    group = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    ends = np.append(starts[1:], n)
    average = (starts + ends - 1) / 2 + 1
    out = np.empty(n)
    out[order] = average[group]
    return out


def rank_statistic(rank_rows: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Standardized rank-sum |S_k - E S_k| / sd(S_k) for each split k = 1..n-1 (last axis).

    S_k is the sum of the first k ranks (Mann-Whitney between the first k and
    the rest); its mean is k(n+1)/2 and variance k(n-k)(n+1)/12 without a change.
    """
    import numpy as np

    n = rank_rows.shape[-1]
    k = np.arange(1, n)
    sums = np.cumsum(rank_rows, axis=-1)[..., :-1]
    expected = k * (n + 1) / 2
    spread = np.sqrt(k * (n - k) * (n + 1) / 12)
    result: npt.NDArray[np.float64] = np.abs(sums - expected) / spread
    return result


def split_test(
    window: npt.NDArray[np.float64], min_segment: int, permutations: int,
    rng: np.random.Generator,
) -> tuple[int, float]:
    """The best split of ``window`` (left part ``window[:k]``) and its permutation p-value:
    how often shuffled data reach the observed maximal statistic with their own best split,
    so searching for the split is accounted for."""
    import numpy as np

    n = window.size
    low, high = min_segment, n - min_segment  # allowed k
    if high < low:
        return 0, 1.0
    r = ranks(window)
    statistic = rank_statistic(r)[low - 1:high]
    best = int(np.argmax(statistic))
    shuffled = rng.permuted(np.tile(r, (permutations, 1)), axis=1)
    maxima = rank_statistic(shuffled)[:, low - 1:high].max(axis=1)
    p_value = (1 + np.count_nonzero(maxima >= statistic[best] - 1e-9)) / (permutations + 1)
    return best + low, float(p_value)


def detect(
    values: npt.NDArray[np.float64],
    *,
    alpha: float = 0.05,
    permutations: int = PERMUTATIONS,
    min_segment: int = MIN_SEGMENT,
    seed: int = 0,
) -> list[tuple[int, float]]:
    """Change points of a series as (k, p): the level changes between ``values[k-1]`` and
    ``values[k]``. Binary segmentation: split where the rank statistic is largest if the
    permutation test says p < alpha, then look again on each side."""
    import numpy as np

    rng = np.random.default_rng(seed)
    found: list[tuple[int, float]] = []
    pending = [(0, values.size)]
    while pending:
        low, high = pending.pop()
        if high - low < 2 * min_segment:
            continue
        k, p_value = split_test(values[low:high], min_segment, permutations, rng)
        if p_value < alpha:
            found.append((low + k, p_value))
            pending += [(low, low + k), (low + k, high)]
    return sorted(found)


def _refine(
    values: npt.NDArray[np.float64], starts: npt.NDArray[np.int64], low: int, high: int,
    coarse: int,
) -> int:
    """The start time of the call where the change happened, among calls [low, high)."""
    import numpy as np

    if high - low < 10:
        return coarse
    statistic = rank_statistic(ranks(values[low:high]))
    trim = 3
    best = int(np.argmax(statistic[trim - 1:high - low - trim])) + trim
    return int(starts[low + best])


def series_changes(
    name: str,
    start_ns: npt.NDArray[np.int64],
    duration_s: npt.NDArray[np.float64],
    error: npt.NDArray[np.bool_],
    *,
    metrics: tuple[str, ...] = METRICS,
    buckets: int | None = None,
    alpha: float = 0.05,
    threshold: float = 0.05,
    permutations: int = PERMUTATIONS,
    seed: int = 0,
) -> tuple[list[Change], list[Series]]:
    """Change points of one event's calls (sorted by start), and what was examined."""
    import numpy as np

    n = start_ns.size
    count = buckets or int(min(MAX_BUCKETS, max(MIN_BUCKETS, n // CALLS_PER_BUCKET)))
    t0, t1 = int(start_ns[0]), int(start_ns[-1]) + 1
    width = (t1 - t0) / count
    bucket = np.minimum(((start_ns - t0) / width).astype(np.int64), count - 1)
    offsets = np.searchsorted(bucket, np.arange(count + 1))
    calls = np.diff(offsets)
    log_duration = np.log(np.maximum(duration_s, 1e-9))
    gaps = np.diff(start_ns.astype(np.float64), prepend=float(start_ns[0]))
    per_call = {LATENCY: log_duration, THROUGHPUT: gaps, ERRORS: error.astype(np.float64)}
    filled = np.flatnonzero(calls >= 3)
    series = {
        LATENCY: (filled, np.array([np.median(log_duration[offsets[b]:offsets[b + 1]])
                                    for b in filled])),
        THROUGHPUT: (np.arange(count), calls.astype(np.float64)),
        ERRORS: (filled, np.array([error[offsets[b]:offsets[b + 1]].mean() for b in filled])),
    }
    found: list[Change] = []
    examined: list[Series] = []
    for metric in metrics:
        index, values = series[metric]
        points = detect(values, alpha=alpha, permutations=permutations, seed=seed)
        times = []
        bounds = [0, *(k for k, _ in points), index.size]
        for i, (k, _) in enumerate(points):
            coarse = int(t0 + index[k] * width)
            low = offsets[index[bounds[i]]]
            high = offsets[index[bounds[i + 2] - 1] + 1]
            times.append(_refine(per_call[metric], start_ns, int(low), int(high), coarse))
        located: list[tuple[int, float]] = []
        for at, p_value in sorted(zip(times, (p for _, p in points), strict=True)):
            if located and at <= located[-1][0]:  # two splits located on the same call
                located[-1] = (located[-1][0], min(located[-1][1], p_value))
            elif t0 < at:
                located.append((at, p_value))
        edges = [t0, *(t for t, _ in located), t1]
        small = 0
        for i, (_, p_value) in enumerate(located):
            change = _measure(name, metric, (start_ns, duration_s, error),
                              (edges[i], edges[i + 1], edges[i + 2]), p_value=p_value,
                              alpha=alpha, width=width, seed=seed)
            if _large_enough(change, threshold):
                found.append(change)
            else:
                small += 1
        examined.append(Series(name, metric, n, int(values.size), width / 1e9,
                               len(located), len(located) - small))
    return found, examined


def _measure(
    name: str,
    metric: str,
    calls: tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.bool_]],
    times: tuple[int, int, int],
    *,
    p_value: float,
    alpha: float,
    width: float,
    seed: int,
) -> Change:
    """The size of a change at ``times[1]``, between the neighbouring changes."""
    import numpy as np

    start_ns, duration_s, error = calls
    previous, at, following = times

    left = slice(*np.searchsorted(start_ns, [previous, at]))
    right = slice(*np.searchsorted(start_ns, [at, following]))
    n_before = left.stop - left.start
    n_after = right.stop - right.start
    ratio: float | None
    low: float | None
    high: float | None
    if metric == LATENCY:
        from lapse.analysis.compare import bootstrap_ratio

        before_sample, after_sample = duration_s[left], duration_s[right]
        before, after = float(np.median(before_sample)), float(np.median(after_sample))
        ratio = after / before if before > 0 else None
        low, high = bootstrap_ratio(before_sample, after_sample, alpha, resamples=500,
                                    seed=seed)
    elif metric == THROUGHPUT:
        before = n_before / max((at - previous) / 1e9, 1e-9)
        after = n_after / max((following - at) / 1e9, 1e-9)
        ratio = after / before if before > 0 else None
        z = 1.959963984540054
        spread = z * math.sqrt(1 / max(n_before, 1) + 1 / max(n_after, 1))
        low, high = (ratio * math.exp(-spread), ratio * math.exp(spread)) if ratio \
            else (None, None)
    else:
        before = float(error[left].mean()) if n_before else 0.0
        after = float(error[right].mean()) if n_after else 0.0
        ratio = after / before if before > 0 else None
        low = high = None
    return Change(name, metric, at, int(at - width), int(at + width), before, after, ratio,
                  low, high, p_value, 1 - p_value, int(n_before), int(n_after))


def _large_enough(change: Change, threshold: float) -> bool:
    if change.metric == ERRORS:
        return abs(change.after - change.before) >= 0.001 and (
            change.ratio is None or abs(change.ratio - 1) >= threshold)
    return change.ratio is not None and abs(change.ratio - 1) >= threshold


def changes(
    selection: Selection,
    dir: str | os.PathLike[str] | None = None,  # noqa: A002 - matches configure(dir=)
    *,
    event: str | None = None,
    metrics: tuple[str, ...] = METRICS,
    buckets: int | None = None,
    alpha: float = 0.05,
    threshold: float = 0.05,
    permutations: int = PERMUTATIONS,
    seed: int = 0,
) -> Changes:
    """Change points in latency, throughput and error rate of each event of the selection."""
    import numpy as np

    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ConfigError(f"metric: {', '.join(unknown) or 'none'} is not valid; expected "
                          f"one or more of {', '.join(METRICS)}.")
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha: {alpha!r} is not valid; expected a probability such as 0.05.")
    if buckets is not None and buckets < 2 * MIN_SEGMENT:
        raise ConfigError(f"buckets: {buckets} is too few; use at least {2 * MIN_SEGMENT}, "
                          f"or leave it out for {MIN_BUCKETS}–{MAX_BUCKETS} by data size.")
    if event is not None:
        from lapse.analysis.calls import require_event

        require_event(selection, dir, event, MIN_CALLS, "changes")
    counts = event_counts(selection, dir)
    names = [event] if event is not None else list(counts)
    where, parameters = selection.where_sql()
    if event is not None:
        where = f"{where} AND name = ?" if where else "WHERE name = ?"
        parameters = [*parameters, event]
    table = _read.query(
        f"SELECT name, start_ns, duration_ns, status = 'error' AS error FROM events {where} "  # noqa: S608
        "ORDER BY name, start_ns", parameters, dir)
    encoded = table.column("name").combine_chunks().dictionary_encode()
    codes = {value: code for code, value in enumerate(encoded.dictionary.to_pylist())}
    name_codes = encoded.indices.to_numpy(zero_copy_only=False)
    starts = table.column("start_ns").to_numpy()
    durations = table.column("duration_ns").to_numpy().astype(np.float64) / 1e9
    errors = np.asarray(table.column("error").to_numpy(zero_copy_only=False), dtype=bool)
    found: list[Change] = []
    examined: list[Series] = []
    skipped: dict[str, str] = {}
    for name in names:
        rows = np.flatnonzero(name_codes == codes.get(name, -1))
        if rows.size < MIN_CALLS:
            skipped[name] = f"{rows.size:,} calls; changes needs at least {MIN_CALLS:,}"
            continue
        part = slice(int(rows[0]), int(rows[-1]) + 1)
        if starts[part][-1] == starts[part][0]:
            skipped[name] = "all calls started at the same time"
            continue
        event_changes, event_series = series_changes(
            name, starts[part], durations[part], errors[part], metrics=metrics, buckets=buckets,
            alpha=alpha, threshold=threshold, permutations=permutations, seed=seed)
        found += event_changes
        examined += event_series
    if not examined:
        needed = "; ".join(f"{k}: {v}" for k, v in skipped.items()) or "no events selected"
        raise NotEnoughDataError(f"changes needs at least {MIN_CALLS:,} calls of an event spread "
                            f"over time; {needed}.")
    found.sort(key=lambda c: (-round(c.confidence, 6), -c.size, c.time_ns))
    window = (int(starts.min()), int(starts.max())) if starts.size else (None, None)
    notes = []
    small = sum(s.significant - s.changes for s in examined)
    if small:
        notes.append(f"{small} significant change(s) smaller than {threshold:.0%} not shown")
    notes += _chance_note(found, len(examined), alpha, permutations)
    return Changes(found, examined, skipped, alpha, threshold, permutations, window, notes)


def _chance_note(found: list[Change], series: int, alpha: float, permutations: int,
                 ) -> list[str]:
    """Warn about changes that would not survive a Bonferroni correction across series."""
    if series <= 1 or not found:
        return []
    strict = max(alpha / series, 1 / (permutations + 1))
    weak = [c for c in found if c.p_value > strict]
    if not weak:
        return []
    listed = ", ".join(f"{c.name} {c.metric}" for c in weak[:5])
    more = f" and {len(weak) - 5} more" if len(weak) > 5 else ""
    return [f"with {series} series tested at alpha {alpha:g} each, about "
            f"{series * alpha:.1f} false alarm(s) are expected by chance; {len(weak)} "
            f"change(s) would not pass a Bonferroni correction across series (p > "
            f"{strict:.2g}) and may be chance: {listed}{more}"]
