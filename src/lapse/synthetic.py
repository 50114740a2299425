"""Synthetic stores with known ground truth, for tests, benchmarks and trying lapse out.

Writes events straight into a store in the documented schema (as many
processes would, one run per "process"), with durations drawn from a known
distribution, so an analysis can be checked against the truth and a
benchmark can use 10 million events without waiting for them to be recorded.

The latency of a call, in milliseconds, is a known function of its attributes
plus noise::

    median_ms * lognormal(0, sigma)                  noise (its median is median_ms)
    + rows_effect_ms_per_1000 * rows / 1000          attrs.rows, uniform 1..9,999
    + batch_ms_per_item * batch_size                 attrs.batch_size (if batch_sizes)
    + categories[attr][level]                        attrs.ATTR, levels equally likely
    + host_ms[host]                                  the run's host

then multiplied by planted slowdowns: per release (``slowdowns``), from a
known time on (``shifts``), for calls meeting a condition (``slow_causes``)
and for rare outliers (``outlier_rate``). ``median_ms()`` gives the true
median for given attributes; ``write()`` returns the truth it planted.
With every option at its default the store is the same as it always was.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lapse.store import _layout
from lapse.store._schema import event_schema, run_schema

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

ROWS_RANGE = (1, 10_000)
"""attrs.rows is drawn uniformly from this half-open range."""
_CONDITION = re.compile(r"^\s*(=|!=|>=|<=|>|<)\s*(.+?)\s*$")


@dataclass(frozen=True)
class Shift:
    """A change at a known time: from call ``at`` (a fraction of all calls) to ``until``.

    ``latency`` multiplies durations, ``rate`` multiplies the call rate (every
    event), ``error_rate`` replaces the error probability; ``name`` limits the
    latency and error changes to one event.
    """

    at: float
    latency: float = 1.0
    rate: float = 1.0
    error_rate: float | None = None
    name: str | None = None
    until: float | None = None


@dataclass(frozen=True)
class SlowCause:
    """Calls whose attributes meet every condition are ``factor`` times slower.

    Conditions map an attribute to ``"=miss"``, ``"!=hit"``, ``">5000"``, ``"<=10"``…
    Slow-cause calls get ``frame`` as the innermost entry of their stack.
    """

    when: Mapping[str, str]
    factor: float = 10.0
    name: str | None = None
    frame: str = "lapse_synthetic/cache.py:88 in load_from_disk"


@dataclass(frozen=True)
class StressRun:
    """A stress run (runs.kind = 'stress'): Poisson arrivals at ``rate_per_s`` served FIFO
    by ``workers`` workers; each event's duration is the response time (wait + service),
    service times drawn like the workload's base latency. Events carry attrs.workers."""

    rate_per_s: float
    workers: int
    calls: int = 5_000
    name: str | None = None


@dataclass(frozen=True)
class Workload:
    """What to generate: events per run, names, versions, error rate, latency model."""

    events: int = 100_000
    runs: int = 4
    names: Sequence[str] = ("predict", "preprocess", "load_features", "postprocess")
    versions: Sequence[str] = ("1.0", "1.1")
    error_rate: float = 0.01
    median_ms: float = 5.0
    sigma: float = 0.6
    rate_per_s: float = 1000.0
    seed: int = 0
    rows_effect_ms_per_1000: float = 0.8
    rows_per_segment: int = 1_000_000
    slowdowns: Mapping[tuple[str, str], float] = field(default_factory=dict)
    """Planted regressions: (version, event name) -> factor applied to its durations."""
    batch_sizes: Sequence[int] = ()
    """If given, attrs.batch_size is drawn from these, adding batch_ms_per_item per item."""
    batch_ms_per_item: float = 0.0
    categories: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    """Categorical attributes: name -> level -> milliseconds added (levels equally likely)."""
    host_ms: Mapping[str, float] = field(default_factory=dict)
    """Milliseconds added on a host (runs alternate between host-0 and host-1, see _host)."""
    noise_attributes: Sequence[str] = ()
    """Numeric attributes (uniform 0..1000) that have no effect on latency."""
    shifts: Sequence[Shift] = ()
    slow_causes: Sequence[SlowCause] = ()
    outlier_rate: float = 0.0
    """Fraction of calls made ``outlier_factor`` times slower at random."""
    outlier_factor: float = 20.0
    callers: Sequence[str] = ()
    """If given, each call's caller is drawn from these (module:qualname)."""
    stack_slower_than_ms: float | None = None
    """Calls slower than this get a stack (as debug level with ``slow=`` records)."""
    arrivals: str = "even"
    """``even`` (calls evenly spaced) or ``poisson`` (exponential gaps)."""
    stress: Sequence[StressRun] = ()


def median_ms(workload: Workload, host: str | None = None, **attrs: Any) -> float:
    """The true median duration in ms of a call with these attributes (before planted
    slowdowns, shifts, slow causes and outliers)."""
    value = workload.median_ms + workload.rows_effect_ms_per_1000 * float(
        attrs.get("rows", 0)) / 1000
    value += workload.batch_ms_per_item * float(attrs.get("batch_size", 0))
    for attr, levels in workload.categories.items():
        if attr in attrs:
            value += levels[str(attrs[attr])]
    if host is not None:
        value += workload.host_ms.get(host, 0.0)
    return value


def write(store: Path, workload: Workload = Workload()) -> dict[str, Any]:
    """Write the workload into ``store``; returns the ground truth it planted.

    The truth holds ``counts`` per name, ``runs``, and with the options that
    plant them: ``shifts`` (each with its time in ns), ``drivers`` (attributes
    that change latency, strongest first) and ``noise`` (ones that do not).
    """
    import numpy as np

    rng = np.random.default_rng(workload.seed)
    extra = np.random.default_rng([workload.seed, 7919])  # new options: a separate stream
    _layout.ensure_dirs(store)
    names = list(workload.names)
    per_run = workload.events // workload.runs
    total = per_run * workload.runs
    clock = _Clock(workload, total, extra)
    truth: dict[str, Any] = {"counts": dict.fromkeys(names, 0), "runs": [],
                             "drivers": _drivers(workload),
                             "noise": list(workload.noise_attributes),
                             "shifts": [{**vars(s), "time_ns": clock.at(s.at),
                                         "until_ns": None if s.until is None
                                         else clock.at(s.until)} for s in workload.shifts],
                             "slow_causes": [dict(c.when) for c in workload.slow_causes]}
    for run_index in range(workload.runs):
        run_id = f"synthetic-{workload.seed}-{run_index:04d}"
        version = workload.versions[run_index % len(workload.versions)]
        host = _host(workload, run_index)
        truth["runs"].append({"run_id": run_id, "version": version, "events": per_run})
        _write_run(store, run_id, version, run_index, host=host)
        for first in range(0, per_run, workload.rows_per_segment):
            n = min(workload.rows_per_segment, per_run - first)
            name_index = rng.integers(0, len(names), n)
            rows = rng.integers(*ROWS_RANGE, n)
            duration_ms = (workload.median_ms * rng.lognormal(0.0, workload.sigma, n)
                           + workload.rows_effect_ms_per_1000 * rows / 1000)
            index = np.arange(first, first + n) * workload.runs + run_index
            starts = clock.starts(index)
            for (slow_version, slow_name), factor in workload.slowdowns.items():
                if slow_version == version and slow_name in names:
                    duration_ms[name_index == names.index(slow_name)] *= factor
            uniform = rng.random(n)
            attrs: dict[str, Any] = {"rows": rows}
            error_p = np.full(n, workload.error_rate)
            cause_hit = np.zeros(n, dtype=np.int64)
            if _extended(workload):
                cause_hit = _plant(workload, extra, attrs, duration_ms, error_p=error_p,
                                   host=host, names=names, name_index=name_index,
                                   fraction=index / max(total, 1))
            errors = uniform < error_p
            counts = np.bincount(name_index, minlength=len(names))
            for i, name in enumerate(names):
                truth["counts"][name] += int(counts[i])
            columns = _columns(workload, extra, names=names, name_index=name_index,
                               run_id=run_id, first=first, starts=starts,
                               duration_ms=duration_ms, errors=errors, attrs=attrs,
                               cause_hit=cause_hit)
            schema = event_schema()
            table = pa_table(columns, n, schema)
            sequence = first // workload.rows_per_segment
            path = _layout.events_dir(store) / f"{run_id}-{sequence:06d}.parquet"
            _write_table(path, table)
    cursor = clock.start0
    for stress_index, stress in enumerate(workload.stress):
        written = _write_stress(store, workload, stress, index=stress_index, before_ns=cursor,
                                rng=extra)
        truth.setdefault("stress", []).append(written)
        cursor = written["start_ns"]
    return truth


class _Clock:
    """Start times of calls by their global index (runs interleaved), with rate shifts."""

    def __init__(self, workload: Workload, total: int, rng: np.random.Generator) -> None:
        import numpy as np

        self.total = total
        self.spacing_ns = 1e9 / workload.rate_per_s
        self.times: npt.NDArray[np.float64] | None = None
        if workload.arrivals not in ("even", "poisson"):
            from lapse._errors import ConfigError

            raise ConfigError(f"arrivals: {workload.arrivals!r} is not valid; "
                              "expected 'even' or 'poisson'.")
        rated = [s for s in workload.shifts if s.rate != 1.0]
        if rated or workload.arrivals == "poisson":
            gaps = np.full(total, self.spacing_ns)
            if workload.arrivals == "poisson":
                gaps = rng.exponential(self.spacing_ns, total)
            fraction = np.arange(total) / max(total, 1)
            for shift in rated:
                gaps[_window(shift, fraction)] /= shift.rate
            self.times = np.concatenate([[0.0], np.cumsum(gaps)[:-1]])
            span = float(self.times[-1]) + self.spacing_ns if total else 0.0
        else:
            span = total * self.spacing_ns
        now = time.time_ns()
        self.start0 = now - int(span)
        self.end_ns = now

    def starts(self, index: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        import numpy as np

        if self.times is None:
            return np.asarray(self.start0 + index * self.spacing_ns, dtype=np.float64)
        return np.asarray(self.start0 + self.times[index], dtype=np.float64)

    def at(self, fraction: float) -> int:
        """The start time of the call at this fraction of all calls."""
        import numpy as np

        index = np.array([min(int(fraction * self.total), max(self.total - 1, 0))])
        return int(self.starts(index)[0])


def _window(shift: Shift, fraction: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    inside: npt.NDArray[np.bool_] = fraction >= shift.at
    if shift.until is not None:
        inside &= fraction < shift.until
    return inside


def _extended(workload: Workload) -> bool:
    return bool(workload.batch_sizes or workload.categories or workload.host_ms
                or workload.noise_attributes or workload.shifts or workload.slow_causes
                or workload.outlier_rate)


def _drivers(workload: Workload) -> list[str]:
    """Attributes with an effect, strongest (largest spread of added ms) first."""
    spreads: list[tuple[float, str]] = []
    if workload.rows_effect_ms_per_1000:
        spreads.append((workload.rows_effect_ms_per_1000 * ROWS_RANGE[1] / 1000, "attrs.rows"))
    if workload.batch_sizes and workload.batch_ms_per_item:
        sizes = list(workload.batch_sizes)
        spreads.append((workload.batch_ms_per_item * (max(sizes) - min(sizes)),
                        "attrs.batch_size"))
    for attr, levels in workload.categories.items():
        spread = max(levels.values()) - min(levels.values())
        if spread:
            spreads.append((spread, f"attrs.{attr}"))
    if workload.host_ms:
        spreads.append((max(workload.host_ms.values()) - min(0.0, *workload.host_ms.values()),
                        "host"))
    return [name for _, name in sorted(spreads, reverse=True)]


def _plant(
    workload: Workload,
    rng: np.random.Generator,
    attrs: dict[str, Any],
    duration_ms: npt.NDArray[np.float64],
    *,
    error_p: npt.NDArray[np.float64],
    host: str,
    names: list[str],
    name_index: npt.NDArray[np.int64],
    fraction: npt.NDArray[np.float64],
) -> npt.NDArray[np.int64]:
    """Draw the extra attributes and apply their effects; returns, per call, 1 + the index
    of the slow cause that hit it (0 for none)."""
    import numpy as np

    n = duration_ms.size
    if workload.batch_sizes:
        sizes = np.asarray(workload.batch_sizes)[rng.integers(0, len(workload.batch_sizes), n)]
        attrs["batch_size"] = sizes
        duration_ms += workload.batch_ms_per_item * sizes
    for attr, levels in workload.categories.items():
        labels = list(levels)
        picks = rng.integers(0, len(labels), n)
        attrs[attr] = np.asarray(labels, dtype=object)[picks]
        duration_ms += np.asarray([levels[label] for label in labels])[picks]
    duration_ms += workload.host_ms.get(host, 0.0)
    for attr in workload.noise_attributes:
        attrs[attr] = rng.integers(0, 1000, n)
    for shift in workload.shifts:
        inside = _window(shift, fraction)
        if shift.name is not None:
            inside &= name_index == (names.index(shift.name) if shift.name in names else -1)
        duration_ms[inside] *= shift.latency
        if shift.error_rate is not None:
            error_p[inside] = shift.error_rate
    hit = np.zeros(n, dtype=np.int64)
    for number, cause in enumerate(workload.slow_causes, start=1):
        match = np.ones(n, dtype=bool)
        if cause.name is not None:
            match &= name_index == (names.index(cause.name) if cause.name in names else -1)
        for attr, condition in cause.when.items():
            match &= _meets(attrs.get(attr), condition)
        duration_ms[match] *= cause.factor
        hit[match & (hit == 0)] = number
    if workload.outlier_rate:
        outliers = rng.random(n) < workload.outlier_rate
        duration_ms[outliers] *= workload.outlier_factor
    return hit


def _meets(values: Any, condition: str) -> npt.NDArray[np.bool_]:
    import numpy as np

    match = _CONDITION.match(condition)
    if match is None or values is None:
        from lapse._errors import ConfigError

        raise ConfigError(f"slow cause: {condition!r} is not a condition on a generated "
                          "attribute; write '=miss', '>5000' and so on.")
    operator, text = match.groups()
    if operator in ("=", "!="):
        equal: npt.NDArray[np.bool_] = np.asarray(values).astype(str) == text
        return equal if operator == "=" else ~equal
    number = np.asarray(values, dtype=np.float64)
    limit = float(text)
    result: npt.NDArray[np.bool_] = {">": number > limit, ">=": number >= limit,
                                     "<": number < limit, "<=": number <= limit}[operator]
    return result


def _columns(
    workload: Workload,
    rng: np.random.Generator,
    *,
    names: list[str],
    name_index: npt.NDArray[np.int64],
    run_id: str,
    first: int,
    starts: npt.NDArray[np.float64],
    duration_ms: npt.NDArray[np.float64],
    errors: npt.NDArray[np.bool_],
    attrs: dict[str, Any],
    cause_hit: npt.NDArray[np.int64],
) -> dict[str, Any]:
    import numpy as np
    import pyarrow as pa

    n = name_index.size
    columns: dict[str, Any] = {
        "name": pa.DictionaryArray.from_arrays(
            pa.array(name_index.astype(np.int32)), pa.array(names)).cast(pa.string()),
        "kind": pa.array(["function"] * n),
        "level": pa.array(["standard"] * n),
        "run_id": pa.array([run_id] * n),
        "span_id": pa.array(np.arange(first + 1, first + n + 1, dtype=np.int64)),
        "parent_id": pa.nulls(n, pa.int64()),
        "trace_id": pa.array(np.arange(first + 1, first + n + 1, dtype=np.int64)),
        "start_ns": pa.array(starts.astype(np.int64)),
        "duration_ns": pa.array((duration_ms * 1e6).astype(np.int64)),
        "status": pa.array(np.where(errors, "error", "ok")),
        "error_type": pa.array(["TimeoutError" if e else None for e in errors], pa.string()),
        "thread": pa.array(["MainThread"] * n),
        "attrs": _attrs_json(attrs),
    }
    callers = None
    if workload.callers:
        callers = np.asarray(workload.callers, dtype=object)[
            rng.integers(0, len(workload.callers), n)]
        columns["caller"] = pa.array(callers, pa.string())
    if workload.stack_slower_than_ms is not None:
        stacks: list[list[str] | None] = [None] * n
        for i in np.flatnonzero(duration_ms > workload.stack_slower_than_ms):
            caller = str(callers[i]) if callers is not None else "app:handle"
            module, _, function = caller.partition(":")
            stack = ["app/main.py:12 in main", "app/server.py:40 in handle",
                     f"{module.replace('.', '/')}.py:27 in {function or 'call'}"]
            if cause_hit[i]:
                stack.append(workload.slow_causes[cause_hit[i] - 1].frame)
            stacks[i] = stack
        columns["stack"] = pa.array(stacks, pa.list_(pa.string()))
        columns["level"] = pa.array(np.where(duration_ms > workload.stack_slower_than_ms,
                                             "debug", "standard"))
    return columns


def pa_table(columns: dict[str, Any], n: int, schema: Any) -> Any:
    """An Arrow table in ``schema``; columns not given are nulls."""
    import pyarrow as pa

    return pa.Table.from_arrays(
        [columns.get(f.name, pa.nulls(n, f.type)) for f in schema], schema=schema)


def _write_table(path: Path, table: Any) -> None:
    import pyarrow.parquet as pq

    _layout.write_atomically(path, lambda f: pq.write_table(table, f))


def _attrs_json(attrs: dict[str, Any]) -> Any:
    """A JSON object per call, built column-wise (json.dumps per row is 10x slower).

    With only rows it is ``{"rows": N}``, as stores always had.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    parts: list[Any] = []
    for index, (key, values) in enumerate(attrs.items()):
        opening = "{" if index == 0 else ", "
        array = np.asarray(values)
        if array.dtype == object or array.dtype.kind in "US":
            parts += [f'{opening}"{key}": "', pa.array(array.astype(str)), '"']
        else:
            parts += [f'{opening}"{key}": ', pc.cast(pa.array(array), pa.string())]
    parts.append("}")
    # Merge adjacent literal strings so each piece alternates literal / column.
    merged: list[Any] = []
    for part in parts:
        if merged and isinstance(part, str) and isinstance(merged[-1], str):
            merged[-1] += part
        else:
            merged.append(part)
    return pc.binary_join_element_wise(*merged, "")


def _host(workload: Workload, run_index: int) -> str:
    """Runs alternate between two hosts; with host effects planted, hosts alternate across
    releases (runs 0, 1 on host-0, runs 2, 3 on host-1 for two releases), so that host and
    release are not confounded."""
    if workload.host_ms:
        return f"host-{(run_index // len(workload.versions)) % 2}"
    return f"host-{run_index % 2}"


def _write_run(store: Path, run_id: str, version: str, index: int, *, kind: str = "process",
               host: str | None = None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    now = time.time_ns()
    row = {"run_id": run_id, "kind": kind, "service": "synthetic", "version": version,
           "environment": "test", "host": host or f"host-{index % 2}", "pid": 1000 + index,
           "program": "synthetic", "python": "CPython", "level": "standard",
           "started_ns": now, "updated_ns": now, "ended_ns": now, "dropped": 0,
           "dropped_buffer_full": 0, "dropped_write_error": 0, "dropped_internal": 0}
    schema = run_schema()
    table = pa.Table.from_pylist([{f.name: row.get(f.name) for f in schema}], schema=schema)
    path = _layout.runs_dir(store) / f"{run_id}.parquet"
    _layout.write_atomically(path, lambda f: pq.write_table(table, f))


def simulate_queue(
    arrivals_s: npt.NDArray[np.float64], service_s: npt.NDArray[np.float64], workers: int
) -> npt.NDArray[np.float64]:
    """Waiting times of a FIFO queue with ``workers`` servers (a discrete-event simulation)."""
    import heapq

    import numpy as np

    free = [0.0] * workers  # the time each worker is next free, as a heap
    waits = np.empty(arrivals_s.size)
    for i, (arrival, service) in enumerate(zip(arrivals_s.tolist(), service_s.tolist(),
                                               strict=True)):
        earliest = free[0]
        begin = arrival if arrival >= earliest else earliest
        waits[i] = begin - arrival
        heapq.heapreplace(free, begin + service)
    return waits


def _write_stress(
    store: Path, workload: Workload, stress: StressRun, *, index: int, before_ns: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """One stress run, ending a minute before ``before_ns``: an M/G/c queue fed at
    ``rate_per_s``; durations are response times."""
    import numpy as np

    n = stress.calls
    arrivals = np.cumsum(rng.exponential(1 / stress.rate_per_s, n))
    rows = rng.integers(*ROWS_RANGE, n)
    service = (workload.median_ms * rng.lognormal(0.0, workload.sigma, n)
               + workload.rows_effect_ms_per_1000 * rows / 1000) / 1e3
    response = simulate_queue(arrivals, service, stress.workers) + service
    run_id = f"synthetic-{workload.seed}-stress-{index:02d}"
    name = stress.name or workload.names[0]
    _write_run(store, run_id, workload.versions[0], index, kind="stress")
    import pyarrow as pa

    first_ns = before_ns - int(60e9) - int((arrivals[-1] + response[-1]) * 1e9)
    starts = first_ns + arrivals * 1e9
    columns = {
        "name": pa.array([name] * n), "kind": pa.array(["request"] * n),
        "level": pa.array(["standard"] * n), "run_id": pa.array([run_id] * n),
        "span_id": pa.array(np.arange(1, n + 1, dtype=np.int64)),
        "trace_id": pa.array(np.arange(1, n + 1, dtype=np.int64)),
        "start_ns": pa.array(starts.astype(np.int64)),
        "duration_ns": pa.array((response * 1e9).astype(np.int64)),
        "status": pa.array(["ok"] * n), "thread": pa.array(["MainThread"] * n),
        "attrs": _attrs_json({"rows": rows, "workers": np.full(n, stress.workers)}),
    }
    table = pa_table(columns, n, event_schema())
    _write_table(_layout.events_dir(store) / f"{run_id}-000000.parquet", table)
    return {"run_id": run_id, "rate_per_s": stress.rate_per_s, "workers": stress.workers,
            "calls": n, "start_ns": first_ns, "p99_s": float(np.percentile(response, 99)),
            "p50_s": float(np.median(response))}
