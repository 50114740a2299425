"""Keeping a store healthy: compaction, retention and erasure of one user's events.

Compaction merges many small segments (one per process per flush interval)
into few large ones without losing or duplicating an event, even if it is
killed halfway: a journal names the sources and the target before anything
changes, readers ignore sources whose target exists, and the next run finishes
or undoes what a killed one left. Compaction and purge hold the store's
maintenance lock, so two of them never work on the same segments at once.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from lapse._capture import pseudonymise
from lapse._errors import ConfigError, StoreError
from lapse.store import _layout
from lapse.store._read import StoreWarning, readable_files
from lapse.store._schema import event_schema

if TYPE_CHECKING:
    import pyarrow as pa

DEFAULT_TARGET_ROWS = 1_000_000
"""Rows per compacted segment: large enough for fast scans, small enough to rewrite."""

Progress = Callable[[int, int], None]
"""Called with (done, total) as work advances; the CLI draws a progress bar from it."""


@dataclass
class CompactResult:
    """What a compaction did."""

    segments_before: int = 0
    segments_after: int = 0
    events: int = 0
    merged: int = 0
    expired: int = 0
    expired_events: int = 0
    skipped: list[str] = field(default_factory=list)
    temporaries_removed: int = 0
    """Temporary files left by processes killed mid-write (over an hour old)."""


def _require_store(root: Path) -> None:
    if not _layout.events_dir(root).is_dir():
        raise StoreError(f"no lapse store at {root}: pass --dir (or set LAPSE_DIR) to a store.")


@contextmanager
def _exclusive(root: Path) -> Iterator[None]:
    """Hold the store's maintenance lock (one compact or purge at a time, across processes).

    Two at once would merge the same segments twice (one then fails on the files
    the other removed) or write back events that a purge has just erased; the
    second waits for the first.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory lock, run one maintenance job at a time
        yield
        return
    descriptor = os.open(root, os.O_RDONLY)  # not events/, which readers lock
    try:
        with suppress(OSError):  # a file system without locks: no exclusion
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def recover(root: Path) -> None:
    """Finish or undo a compaction that was interrupted (journals left behind)."""
    folder = _layout.events_dir(root)
    for journal in folder.glob(f"{_layout.JOURNAL_PREFIX}*.json"):
        try:
            plan = json.loads(journal.read_text())
        except (OSError, ValueError):
            journal.unlink(missing_ok=True)
            continue
        with _layout.removing(root):
            if (folder / plan["target"]).exists():
                for name in plan["sources"]:
                    (folder / name).unlink(missing_ok=True)
            journal.unlink(missing_ok=True)


def compact(
    root: Path,
    *,
    max_age_ns: int | None = None,
    target_rows: int = DEFAULT_TARGET_ROWS,
    progress: Progress | None = None,
) -> CompactResult:
    """Apply retention, then merge segments smaller than ``target_rows / 2``."""
    if target_rows <= 0:
        raise ConfigError(f"target_rows: {target_rows!r} is not valid; expected a number > 0.")
    _require_store(root)
    with _exclusive(root):
        return _compact(root, max_age_ns, target_rows, progress)


def _compact(
    root: Path, max_age_ns: int | None, target_rows: int, progress: Progress | None
) -> CompactResult:
    import pyarrow.parquet as pq

    recover(root)
    result = CompactResult()
    for stale in _layout.stale_temporaries(root):
        stale.unlink(missing_ok=True)
        result.temporaries_removed += 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StoreWarning)
        all_files = _layout.segment_files(root)
        files = readable_files(all_files)
    result.skipped = [str(p) for p in all_files if p not in files]
    for warning in caught:
        warnings.warn(warning.message, StoreWarning, stacklevel=2)
    result.segments_before = len(all_files)
    sizes: dict[Path, int] = {}
    survivors = []
    cutoff = None if max_age_ns is None else time.time_ns() - max_age_ns
    for path in files:
        try:
            meta = pq.read_metadata(path)
        except Exception:  # noqa: BLE001 - left alone, like any unreadable segment
            result.skipped.append(str(path))
            continue
        if cutoff is not None and _newest_start(meta) < cutoff:
            result.expired += 1
            result.expired_events += meta.num_rows
            with _layout.removing(root):
                path.unlink(missing_ok=True)
            continue
        sizes[path] = meta.num_rows
        survivors.append(path)
    small = [p for p in survivors if sizes[p] < target_rows // 2]
    batches = list(_batches(small, sizes, target_rows))
    total = sum(len(b) for b in batches)
    done = 0
    for batch in batches:
        merged, unreadable = _merge(root, batch)
        for path, error in unreadable:
            result.skipped.append(str(path))
            warnings.warn(
                f"lapse skipped segment {path} (unreadable: {_layout.describe(error)}); "
                "it was left as it is and the rest of the store was compacted.",
                StoreWarning, stacklevel=3,
            )
        done += len(batch)
        result.merged += merged
        if progress:
            progress(done, total)
    remaining = _layout.segment_files(root)
    result.segments_after = len(remaining)
    result.events = sum(sizes.values())
    return result


def _newest_start(meta: pa.parquet.FileMetaData) -> int:
    """Largest start_ns in a segment from its statistics (no data read)."""
    column = meta.schema.names.index("start_ns")
    newest = -1
    for group in range(meta.num_row_groups):
        stats = meta.row_group(group).column(column).statistics
        if stats is None or not stats.has_min_max:
            return 2**63 - 1  # unknown: keep the segment
        newest = max(newest, stats.max)
    return newest


def _batches(files: list[Path], sizes: dict[Path, int], target: int) -> Iterable[list[Path]]:
    batch: list[Path] = []
    rows = 0
    for path in files:
        if batch and rows + sizes[path] > target:
            if len(batch) > 1:
                yield batch
            batch, rows = [], 0
        batch.append(path)
        rows += sizes[path]
    if len(batch) > 1:
        yield batch


def _merge(root: Path, sources: list[Path]) -> tuple[int, list[tuple[Path, Exception]]]:
    """Merge the readable ``sources`` into one new segment.

    Returns how many were merged and the ones that could not be read (corrupt
    inside, though their footer looked whole), which are left in place.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lapse.store._read import _conform
    from lapse.store._segments import write_events

    folder = _layout.events_dir(root)
    schema = event_schema()
    tables, readable, unreadable = [], [], []
    for path in sources:
        try:
            tables.append(_conform(pq.read_table(path), schema))
            readable.append(path)
        except (pa.ArrowException, OSError) as error:
            unreadable.append((path, error))
    if len(readable) < 2:
        return 0, unreadable
    sources = readable
    table = pa.concat_tables(tables)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = folder / f"compacted-{stamp}-{secrets.token_hex(4)}{_layout.SEGMENT_SUFFIX}"
    journal = folder / f"{_layout.JOURNAL_PREFIX}{target.stem}.json"
    plan = {"target": target.name, "sources": [p.name for p in sources]}
    _layout.write_atomically(journal, lambda f: _write_bytes(f, json.dumps(plan).encode()))
    _layout.write_atomically(target, lambda f: write_events(f, table))
    with _layout.removing(root):
        for path in sources:
            path.unlink(missing_ok=True)
        journal.unlink(missing_ok=True)
    return len(sources), unreadable


def _write_bytes(handle: BinaryIO, data: bytes) -> None:
    handle.write(data)


def _write_table(path: Path, table: pa.Table) -> None:
    from lapse.store._segments import write_events

    _layout.write_atomically(path, lambda f: write_events(f, table))


def _check_key(root: Path, key: str) -> None:
    """Refuse a key that none of the store's runs was recorded with: it would match no
    one, and the erasure would silently remove nothing."""
    import pyarrow.parquet as pq

    from lapse.store._segments import USER_KEY_CHECK, user_key_check

    checks = set()
    for path in _layout.run_files(root):
        try:
            metadata = pq.read_schema(path).metadata or {}
        except (OSError, ValueError):  # a torn run record: warned about when it is read
            continue
        if USER_KEY_CHECK in metadata:
            checks.add(metadata[USER_KEY_CHECK].decode())
    if checks and user_key_check(key) not in checks:
        raise ConfigError(
            "purge: LAPSE_USER_KEY is not the key this store's users were pseudonymised "
            "with, so no event of this user could be found and nothing was erased; set the "
            "key the events were recorded with, or pass --pseudonym."
        )


@dataclass
class PurgeResult:
    """What an erasure did."""

    pseudonym: str
    events_removed: int = 0
    segments_rewritten: int = 0
    runs_cleared: int = 0
    skipped: list[str] = field(default_factory=list)


def purge(
    root: Path,
    *,
    user: str | None = None,
    pseudonym: str | None = None,
    key: str | None = None,
    progress: Progress | None = None,
) -> PurgeResult:
    """Erase every event of one user (given raw with the key, or as a pseudonym)."""
    _require_store(root)
    if pseudonym is None:
        if user is None:
            raise ConfigError("purge: give the user id (with LAPSE_USER_KEY set) or --pseudonym.")
        key = key if key is not None else os.environ.get("LAPSE_USER_KEY")
        if not key:
            raise ConfigError(
                "purge: LAPSE_USER_KEY is not set, so the user id cannot be turned into the "
                "pseudonym stored in events; set the key the events were recorded with, "
                "or pass --pseudonym."
            )
        _check_key(root, key)
        pseudonym = pseudonymise(user, key)
    assert pseudonym is not None
    with _exclusive(root):
        return _purge(root, pseudonym, progress)


def _purge(root: Path, pseudonym: str, progress: Progress | None) -> PurgeResult:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from lapse.store._read import _conform

    recover(root)
    result = PurgeResult(pseudonym)
    files = readable_files(_layout.segment_files(root))
    for done, path in enumerate(files, 1):
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as error:
            result.skipped.append(str(path))
            warnings.warn(
                f"lapse skipped segment {path} (unreadable: {_layout.describe(error)}): "
                "events of this user in it could not be erased; "
                "delete the file to complete the erasure.",
                StoreWarning, stacklevel=3,
            )
            continue
        if "user" in table.column_names:
            matches = pc.equal(table.column("user"), pseudonym)
            hits = pc.sum(matches.cast("int64")).as_py() or 0
            if hits:
                kept = _conform(table.filter(pc.invert(pc.fill_null(matches, False))),
                                event_schema())
                _write_table(path, kept)
                result.events_removed += hits
                result.segments_rewritten += 1
        if progress:
            progress(done, len(files))
    for path in readable_files(_layout.run_files(root)):
        runs = pq.read_table(path)
        if "user" in runs.column_names and pseudonym in runs.column("user").to_pylist():
            cleared = runs.set_column(
                runs.schema.get_field_index("user"), "user",
                pc.if_else(pc.equal(runs.column("user"), pseudonym), None, runs.column("user")),
            )
            _write_table(path, cleared)
            result.runs_cleared += 1
    return result
