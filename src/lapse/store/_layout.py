"""Where things live in a store directory, and how files get there safely.

::

    <dir>/                 mode 0700
      events/*.parquet     event segments, immutable once named (mode 0600)
      runs/*.parquet       one small file per run (process), rewritten in place atomically
      .compacting-*.json   a compaction journal, present only while one is in progress

Every file is written under a temporary name ending in ``.tmp`` and renamed
into place with ``os.replace``, so a reader (lapse or any Parquet engine
globbing ``*.parquet``) sees a whole file or none.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

EVENTS = "events"
RUNS = "runs"
SEGMENT_SUFFIX = ".parquet"
JOURNAL_PREFIX = ".compacting-"
DIR_MODE = 0o700
FILE_MODE = 0o600


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
    hidden = superseded(folder)
    return sorted(p for p in folder.iterdir() if p.name.endswith(SEGMENT_SUFFIX)
                  and not p.name.startswith(".") and p.name not in hidden)


def superseded(folder: Path) -> set[str]:
    """Names of segments already merged into a compacted segment that exists."""
    import json

    hidden: set[str] = set()
    for journal in folder.glob(f"{JOURNAL_PREFIX}*.json"):
        try:
            plan = json.loads(journal.read_text())
        except (OSError, ValueError):
            continue
        if (folder / plan["target"]).exists():
            hidden.update(plan["sources"])
    return hidden


def run_files(root: Path) -> list[Path]:
    """Every run record."""
    folder = runs_dir(root)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.endswith(SEGMENT_SUFFIX)
                  and not p.name.startswith("."))


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
