"""Synthetic stores with known ground truth, for tests, benchmarks and trying lapse out.

Writes events straight into a store in the documented schema (as many
processes would, one run per "process"), with durations drawn from a known
distribution, so an analysis can be checked against the truth and a
benchmark can use 10 million events without waiting for them to be recorded.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lapse.store import _layout
from lapse.store._schema import event_schema, run_schema


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


def write(store: Path, workload: Workload = Workload()) -> dict[str, Any]:
    """Write the workload into ``store``; returns the ground truth (counts per name, runs)."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(workload.seed)
    _layout.ensure_dirs(store)
    names = list(workload.names)
    per_run = workload.events // workload.runs
    start0 = time.time_ns() - int(workload.events / workload.rate_per_s * 1e9)
    truth: dict[str, Any] = {"counts": dict.fromkeys(names, 0), "runs": []}
    for run_index in range(workload.runs):
        run_id = f"synthetic-{workload.seed}-{run_index:04d}"
        version = workload.versions[run_index % len(workload.versions)]
        truth["runs"].append({"run_id": run_id, "version": version, "events": per_run})
        _write_run(store, run_id, version, run_index)
        for first in range(0, per_run, workload.rows_per_segment):
            n = min(workload.rows_per_segment, per_run - first)
            name_index = rng.integers(0, len(names), n)
            rows = rng.integers(1, 10_000, n)
            duration_ms = (workload.median_ms * rng.lognormal(0.0, workload.sigma, n)
                           + workload.rows_effect_ms_per_1000 * rows / 1000)
            starts = start0 + (np.arange(first, first + n) * workload.runs + run_index) * (
                1e9 / workload.rate_per_s)
            for (slow_version, slow_name), factor in workload.slowdowns.items():
                if slow_version == version and slow_name in names:
                    duration_ms[name_index == names.index(slow_name)] *= factor
            errors = rng.random(n) < workload.error_rate
            counts = np.bincount(name_index, minlength=len(names))
            for i, name in enumerate(names):
                truth["counts"][name] += int(counts[i])
            columns = {
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
                "error_type": pa.array(["TimeoutError" if e else None for e in errors],
                                       pa.string()),
                "thread": pa.array(["MainThread"] * n),
                "attrs": _rows_json(rows),
            }
            schema = event_schema()
            table = pa.Table.from_arrays(
                [columns.get(f.name, pa.nulls(n, f.type)) for f in schema], schema=schema)
            sequence = first // workload.rows_per_segment
            path = _layout.events_dir(store) / f"{run_id}-{sequence:06d}.parquet"
            _write_table(path, table)
    return truth


def _write_table(path: Path, table: Any) -> None:
    import pyarrow.parquet as pq

    _layout.write_atomically(path, lambda f: pq.write_table(table, f))


def _rows_json(rows: Any) -> Any:
    """``{"rows": N}`` for each N, built column-wise (json.dumps per row is 10x slower)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = pc.cast(pa.array(rows), pa.string())
    return pc.binary_join_element_wise('{"rows": ', text, "}", "")


def _write_run(store: Path, run_id: str, version: str, index: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    now = time.time_ns()
    row = {"run_id": run_id, "kind": "process", "service": "synthetic", "version": version,
           "environment": "test", "host": f"host-{index % 2}", "pid": 1000 + index,
           "program": "synthetic", "python": "CPython", "level": "standard",
           "started_ns": now, "updated_ns": now, "ended_ns": now, "dropped": 0,
           "dropped_buffer_full": 0, "dropped_write_error": 0, "dropped_internal": 0}
    schema = run_schema()
    table = pa.Table.from_pylist([{f.name: row.get(f.name) for f in schema}], schema=schema)
    path = _layout.runs_dir(store) / f"{run_id}.parquet"
    _layout.write_atomically(path, lambda f: pq.write_table(table, f))
