"""Reading the store: DuckDB over the segments, skipping any that are torn or corrupt.

``connect()`` gives a DuckDB connection with three views:

- ``events_raw``: the stored event columns, exactly as in docs/schema.md;
- ``runs``: one row per run (process);
- ``events``: ``events_raw`` joined with the run's ``service``, ``version``,
  ``environment``, ``host`` and ``pid``, the view users query.

A segment that cannot be read (truncated by a crash, or corrupted) is left out
with a warning naming it; the rest of the store still loads. A segment that
disappears while it is read (merged by a running compaction) is not damage:
``query()`` then reads the store again, so every event is counted once.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lapse._config import parse_duration_ns
from lapse._errors import ConfigError, StoreError
from lapse.store import _layout
from lapse.store._schema import event_schema, run_schema

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

RUN_COLUMNS_IN_EVENTS = ("service", "version", "environment", "host", "pid")
READ_ATTEMPTS = 5
"""Times ``query()`` reads a store whose segments keep being replaced (compaction)."""
_MAGIC = b"PAR1"


class StoreWarning(UserWarning):
    """A part of the store was skipped (torn or corrupt segment); the rest was read."""


def resolve_dir(folder: str | os.PathLike[str] | None) -> Path:
    """The store to read: the argument, else the configured store, else LAPSE_DIR, else ./.lapse."""
    if folder is not None:
        return Path(folder).expanduser()
    from lapse._recorder import RECORDER

    if RECORDER.settings is not None:
        return RECORDER.settings.dir
    return Path(os.environ.get("LAPSE_DIR") or ".lapse").expanduser()


def _looks_whole(path: Path) -> bool:
    """A cheap check for a complete Parquet file: magic at both ends, a sane footer."""
    try:
        size = path.stat().st_size
        if size < 12:
            return False
        with path.open("rb") as handle:
            head = handle.read(4)
            handle.seek(size - 8)
            tail = handle.read(8)
        footer = int.from_bytes(tail[:4], "little")
        return head == _MAGIC and tail[4:] == _MAGIC and 0 < footer <= size - 12
    except OSError:
        return False


def readable_files(paths: Sequence[Path]) -> list[Path]:
    """The paths that look like whole Parquet files; warns about each one skipped."""
    good = []
    for path in paths:
        if _looks_whole(path):
            good.append(path)
        elif path.exists():  # one removed meanwhile (merged by a compaction) is not damaged
            _warn_skipped(path, "truncated or not a Parquet file")
    return good


def _warn_skipped(path: Path, reason: str) -> None:
    warnings.warn(
        f"lapse skipped segment {path} ({reason}); the rest of the store was read. "
        "Delete or move the file to silence this warning.",
        StoreWarning,
        stacklevel=4,
    )


def _arrow_of(files: Sequence[Path], schema: pa.Schema) -> pa.Table:
    """All files as one Arrow table in ``schema``; files that fail to decode are skipped."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for path in files:
        try:
            tables.append(_conform(pq.read_table(path), schema))
        except FileNotFoundError:
            continue  # merged by a compaction meanwhile; query() reads the store again
        except (pa.ArrowException, OSError) as error:
            _warn_skipped(path, f"unreadable: {_layout.describe(error)}")
    return pa.concat_tables(tables) if tables else schema.empty_table()


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A table in ``schema``: missing columns (older schema versions) become nulls."""
    import pyarrow as pa

    columns = [
        table.column(f.name).cast(f.type) if f.name in table.column_names
        else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def connect(
    folder: str | os.PathLike[str] | None = None, *, salvage: bool = False
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the ``events``, ``events_raw`` and ``runs`` views of a store.

    Views read the Parquet files in place. With ``salvage=True`` every file is
    decoded up front and the ones that fail are skipped with a warning: the
    path taken when a query trips over a segment corrupted inside.
    """
    return _connect(folder, salvage, [])


def _connect(
    folder: str | os.PathLike[str] | None, salvage: bool, listed: list[Path]
) -> duckdb.DuckDBPyConnection:
    """``connect()``, adding the files its views read to ``listed`` (even if it fails)."""
    import duckdb

    root = resolve_dir(folder)
    _flush_own_events(root)
    if not root.is_dir():
        raise StoreError(
            f"no lapse store at {root}: run an instrumented program first, or pass "
            "--dir / dir= (or set LAPSE_DIR) to the store directory."
        )
    con = duckdb.connect()
    con.execute("SET autoinstall_known_extensions=false")
    con.execute("SET autoload_known_extensions=false")
    for view, files, schema in (
        ("events_raw", _layout.segment_files(root), event_schema()),
        ("runs", _layout.run_files(root), run_schema()),
    ):
        listed += files
        readable = readable_files(files)
        if salvage or not readable:
            con.register(view, _arrow_of(readable, schema))
        else:
            paths = ", ".join("'" + str(p).replace("'", "''") + "'" for p in readable)
            columns = ", ".join(f'"{f.name}"' for f in schema)
            con.execute(
                f"CREATE VIEW {view} AS SELECT {columns} FROM read_parquet([{paths}], "  # noqa: S608
                "union_by_name = true)"
            )
    extra = ", ".join(f"r.{column}" for column in RUN_COLUMNS_IN_EVENTS)
    con.execute(
        f"CREATE VIEW events AS SELECT e.*, {extra} "  # noqa: S608 - fixed column names
        "FROM events_raw e LEFT JOIN runs r ON e.run_id = r.run_id"
    )
    return con


def query(
    sql_text: str,
    parameters: Sequence[Any] = (),
    folder: str | os.PathLike[str] | None = None,
    progress: Callable[[float], None] | None = None,
) -> pa.Table:
    """Run one query over a store; if a segment turns out corrupt inside, skip it and retry.

    ``progress``, if given, is called with the fraction done (0 to 1) while the
    query runs, so a command can draw a progress bar over a large store.
    """
    import duckdb

    salvage = False
    for attempt in range(1, READ_ATTEMPTS + 1):
        listed: list[Path] = []
        try:
            with _layout.reading(resolve_dir(folder)):
                con = _connect(folder, salvage, listed)
                try:
                    table = _run(con, sql_text, parameters, progress)
                finally:
                    con.close()
        except duckdb.Error as error:
            # DuckDB reports a segment corrupted inside as IOException, InvalidInputException
            # or a bare Error ("Parquet file is likely corrupted"); only a mistake in the
            # query itself (parser, binder, catalog) is not worth a salvage pass.
            if isinstance(error, duckdb.ProgrammingError) and not isinstance(
                error, duckdb.InvalidInputException
            ):
                raise StoreError(f"query failed: {error}") from None
            if attempt == READ_ATTEMPTS or (salvage and not _vanished(listed)):
                raise StoreError(f"query failed: {error}") from None
            # A segment merged away meanwhile: read again. Else one is corrupt inside.
            salvage = salvage or not _vanished(listed)
            continue
        if not _vanished(listed) or attempt == READ_ATTEMPTS:
            return table
    raise AssertionError("unreachable")  # pragma: no cover


def _vanished(files: Sequence[Path]) -> bool:
    """Whether a file read by a query has been removed since (a compaction merged it).

    Merges write the new segment before removing the old ones, and readers skip
    segments whose merged copy they listed, so a read that saw every file it
    listed counted each event once; one that lost a file may have missed some.
    """
    return any(not path.exists() for path in files)


def _run(
    con: duckdb.DuckDBPyConnection,
    sql_text: str,
    parameters: Sequence[Any],
    progress: Callable[[float], None] | None,
) -> pa.Table:
    if progress is None:
        return con.sql(sql_text, params=list(parameters)).to_arrow_table()
    import threading

    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["table"] = con.sql(sql_text, params=list(parameters)).to_arrow_table()
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = error

    worker = threading.Thread(target=work, name="lapse-query", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.1)
        done = con.query_progress()
        if done >= 0:
            progress(min(done, 100.0) / 100)
    if "error" in outcome:
        raise outcome["error"]
    progress(1.0)
    table: pa.Table = outcome["table"]
    return table


def _flush_own_events(root: Path) -> None:
    """Write this process's buffered events first, so a notebook sees what it just ran."""
    from lapse._recorder import RECORDER

    settings = RECORDER.settings
    if settings is None or RECORDER.run is None:
        return
    if settings.dir.absolute() == root.absolute():
        RECORDER.flush()


def sql(sql_text: str, dir: str | os.PathLike[str] | None = None) -> pa.Table:  # noqa: A002
    """Run DuckDB SQL over the store's views ``events``, ``events_raw`` and ``runs``."""
    return query(sql_text, (), dir)


def load(
    dir: str | os.PathLike[str] | None = None,  # noqa: A002 - matches configure(dir=)
    *,
    since: object = None,
    until: object = None,
    name: str | Sequence[str] | None = None,
    run: str | Sequence[str] | None = None,
) -> pa.Table:
    """Events as an Arrow table (the ``events`` view), oldest first, optionally filtered.

    ``since``/``until`` take a duration ago (``"1h"``), an ISO time, a
    ``datetime`` or epoch nanoseconds; ``name`` and ``run`` take one value or
    several, and ``*`` in a name matches anything (``"churn.*"``).
    """
    clauses, parameters = where_clauses(since=since, until=until, name=name, run=run)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    text = f"SELECT * FROM events {where} ORDER BY start_ns"  # noqa: S608 - parameterised
    return query(text, parameters, dir)


def where_clauses(
    *,
    since: object = None,
    until: object = None,
    name: str | Sequence[str] | None = None,
    run: str | Sequence[str] | None = None,
) -> tuple[list[str], list[Any]]:
    """SQL conditions (with ``?`` parameters) for the common event filters."""
    clauses: list[str] = []
    parameters: list[Any] = []
    now = time.time_ns()
    if since is not None:
        clauses.append("start_ns >= ?")
        parameters.append(parse_time_ns(since, "since", now))
    if until is not None:
        clauses.append("start_ns < ?")
        parameters.append(parse_time_ns(until, "until", now))
    for column, values in (("name", name), ("run_id", run)):
        if values is None:
            continue
        items = [values] if isinstance(values, str) else list(values)
        parts = []
        for item in items:
            if "*" in item:
                parts.append(f"{column} LIKE ? ESCAPE '\\'")
                escaped = re.sub(r"([%_\\])", r"\\\1", item)
                parameters.append(escaped.replace("*", "%"))
            else:
                parts.append(f"{column} = ?")
                parameters.append(item)
        clauses.append("(" + " OR ".join(parts) + ")")
    return clauses, parameters


def parse_time_ns(value: object, setting: str, now_ns: int | None = None) -> int:
    """A point in time: a duration ago (``"90m"``), ISO text, a datetime, or epoch ns."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.astimezone()
        return int(moment.timestamp() * 1e9)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return now_ns - parse_duration_ns(value, setting)
        except ConfigError:
            pass
        try:
            return parse_time_ns(dt.datetime.fromisoformat(value.strip()), setting)
        except ValueError:
            pass
    raise ConfigError(
        f"{setting}: {value!r} is not a time; expected a duration ago such as 1h or 30m, "
        "an ISO time such as 2026-12-03T10:00, a datetime, or epoch nanoseconds."
    )


RUNS_SQL = """
    SELECT r.run_id, r.kind, r.service, r.version, r.environment, r.host, r.pid, r.program,
           r.python, r.lapse_version, r.git_commit, r.level, r.started_ns, r.updated_ns,
           r.ended_ns, r.dropped, coalesce(e.events, 0) AS events,
           coalesce(e.errors, 0) AS errors
    FROM runs r LEFT JOIN (
        SELECT run_id, count(*) AS events, count(*) FILTER (status = 'error') AS errors
        FROM events_raw GROUP BY run_id) e USING (run_id)
    ORDER BY r.started_ns DESC
"""


def runs(dir: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:  # noqa: A002
    """Every run in the store, newest first, with its event and error counts
    (what ``lapse runs`` and the dashboard's runs page list)."""
    return query(RUNS_SQL, (), dir).to_pylist()  # type: ignore[no-any-return]
