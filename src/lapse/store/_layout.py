"""Where things live in a store directory, and how files get there safely.

::

    <dir>/                 mode 0700
      events/*.parquet     event segments, immutable once named (mode 0600)
      runs/*.parquet       one small file per run (process), rewritten in place atomically
      .compacting-*.json   a compaction journal, present only while one is in progress

Every file is written under a temporary name ending in ``.tmp`` and renamed
into place with ``os.replace``, so a reader (lapse or any Parquet engine
globbing ``*.parquet``) sees a whole file or none.

Segments are only removed by maintenance (compaction, retention), under an
exclusive ``flock`` of ``events/``; lapse's readers hold it shared while they
list and read, so a segment never disappears in the middle of a query. A lock
of ``runs/`` is the gate that lets maintenance in between queries.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO

EVENTS = "events"
RUNS = "runs"
SEGMENT_SUFFIX = ".parquet"
JOURNAL_PREFIX = ".compacting-"
DIR_MODE = 0o700
FILE_MODE = 0o600
REMOVE_WAIT_S = 10.0
"""Longest maintenance waits for running queries before removing segments anyway."""


def events_dir(root: Path) -> Path:
    """The folder holding event segments."""
    return root / EVENTS


def runs_dir(root: Path) -> Path:
    """The folder holding run records."""
    return root / RUNS


def ensure_dirs(root: Path) -> None:
    """Create the store's folders owner-only (0700) if they are missing."""
    for folder in (root, events_dir(root), runs_dir(root)):
        if not folder.is_dir():
            folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            folder.chmod(DIR_MODE)


def segment_files(root: Path) -> list[Path]:
    """Every complete event segment, oldest name first.

    Segments that an interrupted compaction already merged (its journal names
    them and its target exists) are left out, so no event is counted twice.
    """
    folder = events_dir(root)
    if not folder.is_dir():
        return []
    # List first, then read the journals: a merged segment written in between
    # would otherwise be listed beside the sources it replaces.
    listed = [p for p in folder.iterdir() if p.name.endswith(SEGMENT_SUFFIX)
              and not p.name.startswith(".")]
    hidden = superseded(folder, {p.name for p in listed})
    return sorted(p for p in listed if p.name not in hidden)


def superseded(folder: Path, present: set[str] | None = None) -> set[str]:
    """Names of segments already merged into a compacted segment that exists.

    With ``present`` (a listing of the folder), the target must be in it.
    """
    import json

    hidden: set[str] = set()
    for journal in folder.glob(f"{JOURNAL_PREFIX}*.json"):
        try:
            plan = json.loads(journal.read_text())
        except (OSError, ValueError):
            continue
        target = plan["target"]
        if target in present if present is not None else (folder / target).exists():
            hidden.update(plan["sources"])
    return hidden


@contextmanager
def reading(root: Path) -> Iterator[None]:
    """Hold the segments' lock shared while listing and reading them (see ``removing``)."""
    fcntl = _fcntl()
    gate, segments = _open_folder(runs_dir(root)), _open_folder(events_dir(root))
    try:
        if fcntl is not None and gate is not None and segments is not None:
            # Pass through the gate (held by maintenance while it waits), so a
            # stream of queries cannot keep maintenance waiting for ever.
            with suppress(OSError):  # a file system without locks: read again instead
                fcntl.flock(gate, fcntl.LOCK_SH)
                fcntl.flock(segments, fcntl.LOCK_SH)
                fcntl.flock(gate, fcntl.LOCK_UN)
        yield
    finally:
        _close(gate, segments)


@contextmanager
def removing(root: Path) -> Iterator[None]:
    """Hold the segments' lock exclusively while removing some.

    Closes the gate to new queries, then waits for running ones to end (at most
    ``REMOVE_WAIT_S``; past that a query that loses a segment reads the store again).
    """
    fcntl = _fcntl()
    gate, segments = _open_folder(runs_dir(root)), _open_folder(events_dir(root))
    try:
        if fcntl is not None and gate is not None and segments is not None:
            deadline = time.monotonic() + REMOVE_WAIT_S
            for descriptor in (gate, segments):
                while True:
                    try:
                        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            break
                        time.sleep(0.005)
                    except OSError:  # a file system without locks
                        break
        yield
    finally:
        _close(gate, segments)


def _fcntl() -> Any:
    try:
        import fcntl
    except ImportError:  # not POSIX: readers rely on reading again instead
        return None
    return fcntl


def _open_folder(folder: Path) -> int | None:
    try:
        return os.open(folder, os.O_RDONLY)
    except OSError:  # no such folder (yet): nothing to protect
        return None


def _close(*descriptors: int | None) -> None:
    for descriptor in descriptors:
        if descriptor is not None:
            os.close(descriptor)  # releases its lock


def run_files(root: Path) -> list[Path]:
    """Every run record."""
    folder = runs_dir(root)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.endswith(SEGMENT_SUFFIX)
                  and not p.name.startswith("."))


STALE_TEMPORARY_S = 3600
"""A temporary file this old was left by a process killed mid-write: no writer needs it."""


def stale_temporaries(root: Path, older_than_s: float = STALE_TEMPORARY_S) -> list[Path]:
    """Temporary files of ``write_atomically`` left behind by killed processes."""
    cutoff = time.time() - older_than_s
    found = []
    for folder in (events_dir(root), runs_dir(root)):
        if folder.is_dir():
            found += [p for p in folder.glob(".*.tmp") if p.stat().st_mtime < cutoff]
    return sorted(found)


def write_atomically(target: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``target`` through ``write(file)`` so readers never see a partial file.

    The data goes to an owner-only temporary file beside the target, is
    flushed to disk, then renamed over the target in one step.
    """
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def describe(error: BaseException) -> str:
    """An error on one line, for a warning that names a file (Arrow's messages span lines)."""
    return " ".join(str(error).split()) or type(error).__name__
