"""Turning buffered raw tuples into stored rows, in the background writer.

The hot path appends one of three tuple shapes (see ``lapse._hotpath``)::

    minimal:           (key, t0, duration), or (key, t0, duration, error_class)
    standard:          (head, t0, duration, span_id, link)
    with attributes or debug detail:
                       (head, t0, duration, span_id, link, attrs, debug_extra)

told apart by their length. ``key`` is an index into
``lapse._instrument.INSTRUMENTS`` (or, for a ``with`` block, the Instrument
itself); ``head`` is the key, or ``(key, error_class)`` for a call that raised,
so a call that returns stores no error slot. ``link`` is
``(parent_span_id, trace_id, thread_name, caller_code)``, one tuple shared by
the calls with the same parent, thread and caller; a root call's parent is 0
and its trace is its own span id (None in both ``span_id`` and ``link``: an
event with no span, from an integration).
``t0`` is ``perf_counter_ns()`` and ``debug_extra`` is None at standard level,
else ``(stack, user, cpu_ns)``.
Everything costly (names, JSON, wall-clock conversion, redaction,
pseudonymisation) happens here, column by column.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from itertools import repeat
from operator import add, itemgetter
from typing import TYPE_CHECKING, Any

from lapse import _capture
from lapse.store import _arrow, _layout
from lapse.store._schema import event_schema, run_schema

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import pyarrow as pa

    from lapse._recorder import Run

COMPRESSION = "zstd"
STATISTICS = ["name", "run_id", "start_ns", "duration_ns"]
"""Columns with min/max statistics: what readers prune on (and retention reads start_ns).
Statistics on every column cost a third of the write time for nothing."""

DELTA_COLUMNS = ("start_ns", "span_id", "trace_id", "parent_id")
"""Increasing integers, stored as deltas rather than in dictionary pages that overflow on
unique values: a third less write time, segments 2.5 times smaller."""

USER_KEY_CHECK = b"lapse.user_key_check"
"""Run-record metadata: a keyed hash of a constant, so ``purge`` can tell a wrong key."""


def user_key_check(key: str) -> str:
    """What ``USER_KEY_CHECK`` holds for runs recorded with ``key`` (it reveals no key)."""
    return _capture.pseudonymise("lapse user key check", key) or ""


def encode_events(batch: Sequence[tuple[Any, ...]], run: Run) -> pa.Table:
    """One Arrow table (the event schema) from a batch of raw tuples."""
    import pyarrow as pa

    # perf_counter_ns() has an arbitrary origin; anchor it to the wall clock now,
    # so each flush corrects for any drift between the two clocks.
    offset = time.time_ns() - time.perf_counter_ns()
    widths = list(map(len, batch))
    narrow = widths.count(3) + widths.count(4)
    if narrow in (0, len(batch)):  # one level throughout, the usual case: no split
        minimal, detailed = (list(batch), []) if narrow else ([], list(batch))
    else:
        minimal = [event for event in batch if len(event) <= 4]
        detailed = [event for event in batch if len(event) > 4]
    tables = []
    if minimal:
        tables.append(_encode_minimal(minimal, run, offset))
    if detailed:
        tables.append(_encode_detailed(detailed, run, offset))
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables)


def _common_columns(
    keys: Sequence[Any],
    starts: Sequence[int] | npt.NDArray[np.int64],
    durations: Sequence[int] | npt.NDArray[np.int64],
    errors: Sequence[type[BaseException] | None] | None,
    offset: int,
) -> dict[str, pa.Array]:
    """Name, kind, start, duration, status and error type; ``errors`` None: no error."""
    import pyarrow as pa

    n = len(starts)
    if errors is None or errors.count(None) == n:
        status = _arrow.constant("ok", n)
        error_type = pa.nulls(n, pa.string())
    else:
        status = _arrow.strings(["ok" if e is None else "error" for e in errors])
        error_type = _arrow.strings([None if e is None else _error_name(e) for e in errors])
    return {
        **_instrument_columns(keys),
        "start_ns": _arrow.int64_plus(starts, offset),
        "duration_ns": _arrow.int64(durations),
        "status": status,
        "error_type": error_type,
    }


def _encode_minimal(batch: list[tuple[Any, ...]], run: Run, offset: int) -> pa.Table:
    (keys,) = _columns(batch, (0,))
    failed = _trailing_columns(batch, (3,))  # the error slot of calls that raised
    errors = None if failed is None else failed[0]
    columns = _common_columns(keys, _ints(batch, 1), _ints(batch, 2), errors, offset)
    n = len(batch)
    columns["level"] = _arrow.constant("minimal", n)
    columns["run_id"] = _arrow.constant(run.run_id, n)
    return _table(columns, n)


def _encode_detailed(batch: list[tuple[Any, ...]], run: Run, offset: int) -> pa.Table:
    heads, links = _columns(batch, (0, 4))
    n = len(batch)
    keys, errors = _unfold_errors(heads)
    spans = _ints(batch, 3)
    link_columns = _link_columns(spans, links)
    attrs, extras = _trailing_columns(batch, (5, 6)) or ([None] * n, [None] * n)
    columns = _common_columns(keys, _ints(batch, 1), _ints(batch, 2), errors, offset)
    columns["run_id"] = _arrow.constant(run.run_id, n)
    columns["span_id"] = _arrow.int64(spans)
    columns.update(link_columns)
    if attrs.count(None) < n or any(i.attrs for i in _instruments(list(set(keys)))):
        columns["attrs"] = _arrow.strings(_attrs_column(_instruments(keys), attrs))
    if extras.count(None) == n:
        columns["level"] = _arrow.constant("standard", n)
    else:
        columns["level"] = _arrow.strings(["standard" if x is None else "debug" for x in extras])
        settings = run.settings
        default_user = run.resource.get("user")
        columns["stack"] = _arrow.string_lists(
            [None if x is None or x[0] is None else _format_stack(x[0]) for x in extras]
        )
        columns["user"] = _arrow.strings(
            [None if x is None else _user(x[1], settings.user_key, default_user) for x in extras]
        )
        columns["cpu_ns"] = _arrow.int64([None if x is None else x[2] for x in extras])
    return _table(columns, n)


def _unfold_errors(heads: list[Any]) -> tuple[list[Any], list[Any] | None]:
    """Keys and error classes from the head column; errors None when no call raised."""
    if tuple not in set(map(type, heads)):
        return heads, None
    errors = [h[1] if type(h) is tuple else None for h in heads]
    return [h[0] if type(h) is tuple else h for h in heads], errors


def _link_columns(spans: Any, links: list[Any]) -> dict[str, pa.Array]:
    """The trace, parent, thread and caller columns from the span ids and the links.

    Links repeat as the same objects (calls with one parent, thread and caller
    share one), so each distinct link is read once, found by ``id()`` with
    NumPy. A root's parent 0 makes its trace its own span id and its parent
    null; a ``None`` link (no span) leaves every column null.
    """
    import numpy as np

    n = len(links)
    ids = np.fromiter(map(id, links), dtype=np.uint64, count=n)
    if n and ids.min() == ids.max():  # one link throughout (a loop of root calls)
        distinct, inverse = links[:1], np.zeros(n, dtype=np.intp)
    else:
        _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
        distinct = [links[i] for i in first.tolist()]
    known = [(0, 0, None, None) if link is None else link for link in distinct]
    parents = np.array([link[0] for link in known], dtype=np.int64)[inverse]
    root = parents == 0
    trace_of = np.array([link[1] for link in known], dtype=np.int64)[inverse]
    if isinstance(spans, np.ndarray):
        traces = _arrow.int64(np.where(root, spans, trace_of))
    else:  # some events have no span: their trace is null
        traces = _arrow.int64([s if r else t for s, r, t in zip(
            spans, root.tolist(), trace_of.tolist(), strict=True)])
    return {
        "trace_id": traces,
        "parent_id": _arrow.int64_valid(parents, ~root),
        "thread": _arrow.by_identity([link[2] for link in known], lambda name: name,
                                     index=inverse),
        "caller": _arrow.by_identity(
            [link[3] for link in known],
            lambda code: None if code is None else _capture.code_name(code), index=inverse),
    }


def _columns(batch: Sequence[tuple[Any, ...]], fields: Sequence[int]) -> list[list[Any]]:
    """The batch's ``fields`` split into one list each.

    One pass per field rather than ``zip(*batch)``: unpacking a million tuples as
    arguments makes a million tracked objects and several full garbage collections,
    which cost eight times as much.
    """
    return [list(map(itemgetter(i), batch)) for i in fields]


def _trailing_columns(
    batch: Sequence[tuple[Any, ...]], fields: Sequence[int]
) -> list[list[Any]] | None:
    """Trailing ``fields`` that only some events have, one list each (None where an event
    lacks them), or None when no event has them."""
    width = fields[-1] + 1
    having = list(map(len, batch)).count(width)
    if not having:
        return None
    if having == len(batch):
        return _columns(batch, fields)
    # Padded with Nones, a short event's missing fields read as None.
    padded = list(map(add, batch, repeat((None,) * len(fields))))
    return _columns(padded, fields)


def _ints(batch: Sequence[tuple[Any, ...]], field: int) -> Any:
    """Field ``field`` as an int64 NumPy array read straight from the tuples (no list in
    between), or as a list when some are None (events buffered by integrations)."""
    import numpy as np

    try:
        return np.fromiter(map(itemgetter(field), batch), dtype=np.int64, count=len(batch))
    except TypeError:
        return [event[field] for event in batch]


def _instrument_columns(keys: Sequence[Any]) -> dict[str, pa.Array]:
    """The name and kind columns from the buffered instrument keys.

    Keys are indices into ``INSTRUMENTS``, so the registry itself is the
    dictionary; ``with`` blocks buffer their Instrument object instead.
    """
    import numpy as np

    from lapse._instrument import INSTRUMENTS

    try:
        codes = np.fromiter(keys, dtype=np.int64, count=len(keys))
    except TypeError:  # some keys are Instrument objects
        instruments = _instruments(keys)
        return {"name": _arrow.by_identity(instruments, lambda i: i.name),
                "kind": _arrow.by_identity(instruments, lambda i: i.kind)}
    registry = INSTRUMENTS[: int(codes.max()) + 1] if len(codes) else []
    return {"name": _arrow.by_code(codes, [i.name for i in registry]),
            "kind": _arrow.by_code(codes, [i.kind for i in registry])}


def _instruments(keys: Sequence[Any]) -> list[Any]:
    from lapse._instrument import INSTRUMENTS

    registry = INSTRUMENTS
    return [registry[k] if type(k) is int else k for k in keys]


def _table(columns: dict[str, pa.Array], n: int) -> pa.Table:
    import pyarrow as pa

    schema = event_schema()
    arrays = [columns.get(f.name) for f in schema]
    return pa.Table.from_arrays(
        [a if a is not None else pa.nulls(n, f.type) for a, f in zip(arrays, schema, strict=True)],
        schema=schema,
    )


def _error_name(error: type[BaseException]) -> str:
    module = error.__module__
    return error.__qualname__ if module == "builtins" else f"{module}.{error.__qualname__}"


def _attrs_column(
    instruments: Sequence[Any], attrs: Sequence[dict[str, Any] | None]
) -> list[str | None]:
    """The attrs column: a function's static attributes are encoded once per flush."""
    static_json: dict[int, str | None] = {}
    column: list[str | None] = []
    for instrument, dynamic in zip(instruments, attrs, strict=True):
        if dynamic:
            column.append(_attrs_json(instrument.attrs, dynamic))
            continue
        key = id(instrument)
        if key not in static_json:
            static_json[key] = _attrs_json(instrument.attrs, None)
        column.append(static_json[key])
    return column


_ENCODE_JSON = json.JSONEncoder(default=str, allow_nan=True).encode


def _attrs_json(static: dict[str, Any] | None, dynamic: dict[str, Any] | None) -> str | None:
    if not static and not dynamic:
        return None
    merged = {**static, **dynamic} if static and dynamic else (static or dynamic)
    assert merged is not None
    return _ENCODE_JSON(_capture.clean_attrs(merged))


def _format_stack(frames: Sequence[Any]) -> list[str]:
    """Stored stack lines, outermost first, from the hot path's flat innermost-first tuple."""
    pairs = zip(frames[0::2], frames[1::2], strict=True)
    return [_capture.format_frame(code, line) for code, line in reversed(list(pairs))]


def _user(raw: object, key: str | None, default: str | None) -> str | None:
    if raw is None:
        return default
    return _capture.pseudonymise(raw, key)


def write_segment(run: Run, table: pa.Table, sequence: int) -> None:
    """Write one immutable segment ``events/<run_id>-<sequence>.parquet`` atomically."""
    root = run.settings.dir
    _layout.ensure_dirs(root)
    target = _layout.events_dir(root) / f"{run.run_id}-{sequence:06d}{_layout.SEGMENT_SUFFIX}"
    _layout.write_atomically(target, lambda f: write_events(f, table))


def write_events(file: Any, table: pa.Table) -> None:
    """Write an event table as Parquet the way every segment is written (also compaction).

    Dictionary encoding only for text, deltas for the increasing integers, statistics only
    where readers prune, zstd.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = table.schema.names
    pq.write_table(
        table, file, compression=COMPRESSION,
        write_statistics=[c for c in STATISTICS if c in names],
        use_dictionary=[f.name for f in table.schema if pa.types.is_string(f.type)],
        column_encoding={c: "DELTA_BINARY_PACKED" for c in DELTA_COLUMNS if c in names},
    )


def write_run(run: Run, dropped: dict[str, int]) -> None:
    """(Re)write the run record ``runs/<run_id>.parquet`` atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    row: dict[str, Any] = {
        "run_id": run.run_id,
        "kind": run.kind,
        "pid": run.pid,
        "level": _level_name(run.settings.level),
        "started_ns": run.started_ns,
        "updated_ns": time.time_ns(),
        "ended_ns": run.ended_ns,
        "dropped": sum(dropped.values()),
        **{f"dropped_{reason}": count for reason, count in dropped.items()},
        **run.resource,
    }
    schema = run_schema()
    arrays = [
        _arrow.int64([row.get(f.name)]) if f.type == pa.int64()
        else _arrow.strings([row.get(f.name)])
        for f in schema
    ]
    table = pa.Table.from_arrays(arrays, schema=schema)
    if run.settings.user_key:
        table = table.replace_schema_metadata(
            {**schema.metadata, USER_KEY_CHECK: user_key_check(run.settings.user_key).encode()}
        )
    root = run.settings.dir
    _layout.ensure_dirs(root)
    target = _layout.runs_dir(root) / f"{run.run_id}{_layout.SEGMENT_SUFFIX}"
    _layout.write_atomically(target, lambda f: pq.write_table(table, f, compression=COMPRESSION))


def _level_name(level: int) -> str:
    from lapse._config import LEVEL_NAMES

    return LEVEL_NAMES.get(level, "standard")
