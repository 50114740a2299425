"""One event's calls with their context: the table the models of ``lapse analyze`` learn from.

``load_calls`` reads the calls of one event in a selection, with, for each
call, its run's context (version, host, service), the number of calls of the
same event in flight on its host when it started (``concurrency``, from the
overlapping ``[start, start + duration)`` intervals, the call included) and
the number of threads seen in its run. ``features`` turns them into a
numeric matrix: numeric attributes as numbers, text attributes and context as
categories, plus concurrency, threads and the hour of day (UTC, when the data
spans a day or more).
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lapse._errors import ConfigError, LapseError, NotEnoughDataError
from lapse.analysis.selection import Selection
from lapse.store import _read

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import pyarrow as pa

NUMERIC, CATEGORICAL = "numeric", "categorical"
MAX_LEVELS = 30
"""Categories beyond the most common 30 of a feature are pooled as ``(other)``."""
OTHER = "(other)"
CONTEXT = ("version", "host", "service", "caller")
DAY_NS = 86_400_000_000_000


@dataclass
class Calls:
    """The calls of one event, oldest first, with their context (see ``load_calls``)."""

    event: str
    table: pa.Table
    total: int
    """Calls of the event in the selection (``table`` may hold a sample of them)."""

    @property
    def n(self) -> int:
        """Calls in ``table``."""
        return int(self.table.num_rows)

    def column(self, name: str) -> npt.NDArray[Any]:
        """A column as a NumPy array (nulls as NaN for numbers, None for text)."""
        import numpy as np
        import pyarrow as pa

        values = self.table.column(name)
        if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
            return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)
        return np.asarray(values.to_pylist(), dtype=object)

    @property
    def duration_s(self) -> npt.NDArray[np.float64]:
        """Durations in seconds."""
        return self.column("duration_ns") / 1e9


def event_counts(selection: Selection, folder: str | os.PathLike[str] | None) -> dict[str, int]:
    """Calls per event name in the selection, most first."""
    where, parameters = selection.where_sql()
    table = _read.query(
        f"SELECT name, count(*) AS n FROM events {where} GROUP BY name "  # noqa: S608
        "ORDER BY n DESC, name", parameters, folder)
    return dict(zip(table.column("name").to_pylist(), table.column("n").to_pylist(),
                    strict=True))


def require_event(
    selection: Selection, folder: str | os.PathLike[str] | None, event: str, minimum: int,
    analysis: str,
) -> int:
    """The event's number of calls in the selection; a clear error if absent or too few."""
    counts = event_counts(selection, folder)
    if event not in counts:
        stored = event_counts(Selection(), folder) if selection != Selection() else counts
        if event in stored:
            raise NotEnoughDataError(
                f"{analysis} needs at least {minimum:,} calls of {event!r}; the selection has "
                f"none (the store has {stored[event]:,}): widen --since/--until/--where.")
        if not stored:
            raise ConfigError(f"event {event!r}: the store holds no events at all; check "
                              "--dir (or LAPSE_DIR).")
        close = difflib.get_close_matches(event, list(stored), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        listed = ", ".join(f"{name} ({n:,} calls)" for name, n in list(stored.items())[:20])
        more = f" and {len(stored) - 20} more" if len(stored) > 20 else ""
        raise ConfigError(f"event {event!r} is not in the selection.{hint} Events there: "
                          f"{listed}{more}.")
    if counts[event] < minimum:
        raise NotEnoughDataError(
            f"{analysis} needs at least {minimum:,} calls of {event!r}; the selection has "
            f"{counts[event]:,}. Widen it (--since, --where) or record more calls.")
    return counts[event]


def event_where(
    selection: Selection, event: str, *, exclude_stress: bool = False
) -> tuple[str, list[Any]]:
    """``WHERE ...`` selecting one event's calls (optionally outside stress runs)."""
    where, parameters = selection.where_sql()
    clause = f"{where} AND name = ?" if where else "WHERE name = ?"
    if exclude_stress:
        clause += " AND run_id NOT IN (SELECT run_id FROM runs WHERE kind = 'stress')"
    return clause, [*parameters, event]


def query_calls(
    selection: Selection,
    folder: str | os.PathLike[str] | None,
    event: str,
    columns: str,
    *,
    sample: int | None = None,
    exclude_stress: bool = False,
) -> pa.Table:
    """One event's calls, oldest first, with ``columns``, ``concurrency`` and ``threads``.

    Concurrency at a call's start counts the event's calls in flight on its host and
    service then, itself included, over *all* the selected calls. It is computed in a
    query of narrow rows (start and end times) and looked up for each call, so that with
    ``sample`` (a fixed pseudo-random choice of that many calls) the wide columns
    (attributes, stacks) of only those calls are ever read into memory together.
    """
    import numpy as np
    import pyarrow as pa

    clause, parameters = event_where(selection, event, exclude_stress=exclude_stress)
    pick = f"ORDER BY hash(run_id, span_id, start_ns) LIMIT {int(sample)}" if sample else ""
    calls = _read.query(
        f"""
        WITH sel AS (
            SELECT {columns}, host, service, run_id, start_ns, duration_ns
            FROM events {clause} {pick}
        ),
        threads AS (
            SELECT run_id, count(DISTINCT thread) AS threads FROM events_raw
            WHERE run_id IN (SELECT DISTINCT run_id FROM sel) GROUP BY run_id
        )
        SELECT sel.*, threads.threads::BIGINT AS threads
        FROM sel LEFT JOIN threads USING (run_id) ORDER BY start_ns
        """,  # noqa: S608 - identifiers fixed or checked by Selection, values are parameters
        parameters, folder)
    busy = _read.query(
        f"""
        WITH edges AS (
            SELECT coalesce(host, '') || chr(0) || coalesce(service, '') AS place,
                   start_ns AS t, 1 AS d FROM events {clause}
            UNION ALL
            SELECT coalesce(host, '') || chr(0) || coalesce(service, ''),
                   start_ns + duration_ns, -1 FROM events {clause}
        )
        SELECT place, t, sum(sum(d)) OVER (PARTITION BY place ORDER BY t)::BIGINT AS n
        FROM edges GROUP BY place, t ORDER BY place, t
        """,  # noqa: S608 - as above
        [*parameters, *parameters], folder)
    places = np.array([f"{h or ''}\0{s or ''}" for h, s in zip(
        calls.column("host").to_pylist(), calls.column("service").to_pylist(), strict=True)],
        dtype=object)
    starts = calls.column("start_ns").to_numpy()
    concurrency = np.zeros(calls.num_rows, dtype=np.int64)
    if calls.num_rows:
        keys = busy.column("place").to_numpy(zero_copy_only=False)
        times = busy.column("t").to_numpy()
        counts = busy.column("n").to_numpy()
        bounds = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1], True])
        for begin, stop in itertools.pairwise(bounds):
            mine = places == keys[begin]
            # The running count after every edge at or before the call's start.
            found = np.searchsorted(times[begin:stop], starts[mine], side="right") - 1
            concurrency[mine] = counts[begin:stop][found]
    return calls.append_column("concurrency", pa.array(concurrency, pa.int64()))


def load_calls(
    selection: Selection,
    folder: str | os.PathLike[str] | None,
    event: str,
    *,
    max_calls: int | None = None,
    with_stack: bool = False,
    exclude_stress: bool = False,
) -> Calls:
    """The calls of ``event`` in the selection, oldest first; at most ``max_calls`` of them
    (a fixed pseudo-random sample), with concurrency counted over all of them."""
    columns = ("status, error_type, caller, thread, span_id, version, environment, attrs"
               + (", stack" if with_stack else ""))
    table = query_calls(selection, folder, event, columns, sample=max_calls,
                        exclude_stress=exclude_stress)
    total = table.num_rows
    if max_calls is not None:
        clause, parameters = event_where(selection, event, exclude_stress=exclude_stress)
        counted = _read.query(f"SELECT count(*) AS n FROM events {clause}",  # noqa: S608
                              parameters, folder)
        total = int(counted.column("n")[0].as_py())
    return Calls(event, table, total)


@dataclass
class Features:
    """Calls as a matrix for a model: one column per feature, NaN where missing.

    Categorical features hold level codes (0, 1, …) into ``levels[name]``.
    """

    names: list[str]
    kinds: dict[str, str]
    matrix: npt.NDArray[np.float64]
    levels: dict[str, list[str]] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)

    def index(self, name: str) -> int:
        """Column of a feature, by name (``rows`` finds ``attrs.rows``)."""
        if name in self.names:
            return self.names.index(name)
        if f"attrs.{name}" in self.names:
            return self.names.index(f"attrs.{name}")
        raise ConfigError(f"{name!r} is not a feature of the model; its features are "
                          f"{', '.join(self.names)}.")

    def is_categorical(self, name: str) -> bool:
        """Whether a feature is categorical."""
        return self.kinds[name] == CATEGORICAL


def parse_attrs(texts: npt.NDArray[Any]) -> dict[str, list[Any]]:
    """Attribute columns from the JSON texts (missing keys as None)."""
    parsed = [json.loads(t) if t else {} for t in texts]
    keys: dict[str, None] = {}
    for item in parsed:
        if isinstance(item, dict):
            keys.update(dict.fromkeys(item))
    return {key: [item.get(key) if isinstance(item, dict) else None for item in parsed]
            for key in keys}


def features(
    calls: Calls, *, context: tuple[str, ...] = CONTEXT, derived: bool = True,
) -> Features:
    """The model matrix of the calls' attributes, context and (if ``derived``) concurrency,
    threads and hour of day; constant, empty and identifier-like columns are left out."""
    import numpy as np

    columns: dict[str, list[Any] | npt.NDArray[Any]] = {}
    attribute: list[Any] | npt.NDArray[Any]
    for key, attribute in parse_attrs(calls.column("attrs")).items():
        columns[f"attrs.{key}"] = attribute
    for name in context:
        columns[name] = calls.column(name)
    if derived:
        columns["concurrency"] = calls.column("concurrency")
        columns["threads"] = calls.column("threads")
        starts = calls.column("start_ns")
        if starts.size and np.nanmax(starts) - np.nanmin(starts) >= DAY_NS:
            columns["hour"] = (starts // 3.6e12) % 24
    result = Features([], {}, np.empty((calls.n, 0)))
    built: list[npt.NDArray[np.float64]] = []
    for name, values in columns.items():
        kind, column, levels, reason = _encode(values, calls.n)
        if reason:
            result.dropped[name] = reason
            continue
        result.names.append(name)
        result.kinds[name] = kind
        if levels is not None:
            result.levels[name] = levels
        built.append(column)
    if built:
        result.matrix = np.column_stack(built)
    return result


def _encode(
    values: list[Any] | npt.NDArray[Any], n: int
) -> tuple[str, npt.NDArray[np.float64], list[str] | None, str]:
    """(kind, column, levels, reason to drop or '')."""
    import numpy as np

    present = [v for v in values
               if v is not None and not (isinstance(v, float) and math.isnan(v))]
    empty = np.full(n, np.nan)
    if not present:
        return NUMERIC, empty, None, "always missing"
    if all(isinstance(v, int | float | np.integer | np.floating)
           and not isinstance(v, bool | np.bool_) for v in present):
        column = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
        finite = column[np.isfinite(column)]
        constant = finite.size == 0 or finite.min() == finite.max()
        return NUMERIC, empty if constant else column, None, "constant" if constant else ""
    if any(isinstance(v, dict | list) for v in present):
        return NUMERIC, empty, None, "nested values"
    texts = ["true" if v is True else "false" if v is False else str(v) for v in present]
    counts: dict[str, int] = {}
    for text in texts:
        counts[text] = counts.get(text, 0) + 1
    if len(counts) < 2:
        return CATEGORICAL, empty, None, "constant"
    if len(counts) > MAX_LEVELS and len(counts) > 0.5 * len(texts):
        return CATEGORICAL, empty, None, f"{len(counts):,} distinct values (an identifier?)"
    levels = sorted(counts, key=lambda k: (-counts[k], k))[:MAX_LEVELS]
    if len(counts) > MAX_LEVELS:
        levels.append(OTHER)
    code = {level: float(i) for i, level in enumerate(levels)}
    other = code.get(OTHER, np.nan)
    column = np.array(
        [np.nan if v is None else code.get(
            "true" if v is True else "false" if v is False else str(v), other)
         for v in values], dtype=np.float64)
    return CATEGORICAL, column, levels, ""


def split(n: int, fractions: tuple[float, ...], seed: int) -> list[npt.NDArray[np.int64]]:
    """Random disjoint index sets of the given fractions of ``n`` (the last takes the rest)."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(n)
    parts, start = [], 0
    for fraction in fractions[:-1]:
        size = round(fraction * n)
        parts.append(order[start:start + size])
        start += size
    parts.append(order[start:])
    return parts


def stats_import_error(error: ImportError) -> LapseError:
    """The error to raise when scikit-learn, SciPy or ruptures is missing."""
    return LapseError(f"this analysis needs the statistics extra ({error.name} is missing): "
                      "pip install 'lapse[stats]'")
