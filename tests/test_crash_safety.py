"""Crash safety: a process killed with SIGKILL loses at most its last flush interval, and
a torn or corrupt file is skipped with a warning naming it while the rest of the store
still loads, exactly."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import lapse
from lapse.store._read import StoreWarning
from tests import workers

WORKER_SCRIPT = Path(workers.__file__)
FLUSH_INTERVAL_NS = 200_000_000
WRITE_SLACK_NS = 250_000_000
"""Time a flush may take to reach the disk (encode, write, fsync) on a busy machine."""


def count(query: str = "select count(*) from events_raw") -> int:
    """The first value a query returns, a count."""
    return int(lapse.sql(query).column(0)[0].as_py())


def test_sigkill_loses_at_most_the_last_flush_interval(store, tmp_path):
    """A process recording continuously (flush every 200 ms) killed with SIGKILL after
    ~1.5 s: every event it flushed is readable, none twice, and only the calls of its
    last flush interval (plus the time one write takes) are missing."""
    progress = tmp_path / "progress"
    child = subprocess.Popen([sys.executable, str(WORKER_SCRIPT), "crash", str(progress)],
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (progress.exists() and progress.stat().st_size):
            assert child.poll() is None, child.communicate()[1]
            assert time.monotonic() < deadline, "the child never started recording"
            time.sleep(0.01)
        time.sleep(1.5)
        killed_ns = time.time_ns()
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stderr is not None:
            child.stderr.close()
    assert child.returncode == -signal.SIGKILL

    marks = [tuple(map(int, line.split())) for line in progress.read_text().splitlines()]
    calls_done = marks[-1][1] + 10  # at most one more batch of 10 calls after the last mark

    def done_by(moment_ns: int) -> int:
        return max((calls for stamp, calls in marks if stamp <= moment_ns), default=0)

    stored = count()
    assert count("select count(distinct span_id) from events_raw") == stored
    assert done_by(killed_ns - FLUSH_INTERVAL_NS - WRITE_SLACK_NS) <= stored <= calls_done
    assert done_by(killed_ns - 1_000_000_000) > 0  # it really recorded for a while
    assert len(list((store / "events").glob("*.parquet"))) >= 4  # ...in several flushes
    run = lapse.sql("select ended_ns, dropped from runs").to_pylist()
    assert run == [{"ended_ns": None, "dropped": 0}]  # listed, and shown as not ended


# -- damaged files -------------------------------------------------------------------


@pytest.fixture
def segments(store: Path) -> list[Path]:
    """Three real segments of 200 events each, written by this process."""
    lapse.configure(flush_interval="1h")
    for _ in range(3):
        workers.record(200)
        lapse.flush()
    lapse.shutdown()
    files = sorted((store / "events").glob("*.parquet"))
    assert len(files) == 3
    return files


def truncate(path: Path) -> None:
    """Cut the file in half, as a crash in the middle of a non-atomic copy would."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def corrupt_inside(path: Path) -> None:
    """Overwrite the middle half of the data pages with garbage; header and footer stay."""
    rows = pq.read_metadata(path).num_rows
    data = bytearray(path.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little")
    pages_end = len(data) - 8 - footer
    start, stop = pages_end // 4, pages_end * 3 // 4
    data[start:stop] = random.Random(7).randbytes(stop - start)
    path.write_bytes(bytes(data))
    assert pq.read_metadata(path).num_rows == rows  # still looks like a whole Parquet file


def check_skipped(damaged: Path, remaining: int) -> None:
    """Loading warns about ``damaged`` (and nothing else) and returns ``remaining`` events."""
    with pytest.warns(StoreWarning, match=re.escape(str(damaged))) as caught:
        events = lapse.load()
    assert all(str(damaged) in str(w.message) for w in caught)
    assert events.num_rows == remaining
    keys = set(zip(events.column("run_id").to_pylist(), events.column("span_id").to_pylist(),
                   strict=True))
    assert len(keys) == remaining


def test_a_truncated_segment_is_skipped_with_a_warning(segments):
    """A segment cut in half is left out with a StoreWarning naming it; the other two
    segments load completely."""
    truncate(segments[1])
    check_skipped(segments[1], 400)


def test_a_segment_corrupted_inside_is_skipped_with_a_warning(segments):
    """A segment whose header and footer are intact but whose data pages are garbage is
    left out with a StoreWarning naming it; the other two segments load completely."""
    corrupt_inside(segments[0])
    check_skipped(segments[0], 400)


def test_random_bytes_named_parquet_are_skipped_with_a_warning(segments, store):
    """A file of random bytes named like a segment is left out with a StoreWarning
    naming it; all 600 real events load."""
    junk = store / "events" / "junk.parquet"
    junk.write_bytes(random.Random(3).randbytes(4096))
    check_skipped(junk, 600)


def test_every_kind_of_damage_at_once_still_loads_the_rest(segments, store):
    """Truncated, corrupted and junk files together: three warnings, one per file, and
    the one intact segment loads; SQL over the events sees the same rows."""
    truncate(segments[0])
    corrupt_inside(segments[1])
    junk = store / "events" / "junk.parquet"
    junk.write_bytes(os.urandom(10_000))
    damaged = {str(segments[0]), str(segments[1]), str(junk)}
    with pytest.warns(StoreWarning) as caught:
        events = lapse.load()
    named = {path for w in caught for path in damaged if path in str(w.message)}
    assert named == damaged
    assert events.num_rows == 200
    with pytest.warns(StoreWarning):
        assert count("select count(*), sum(duration_ns) from events") == 200


def test_a_torn_run_record_leaves_the_events_readable(segments, store):
    """A damaged run record is skipped with a warning: all events still load, without
    their run's columns."""
    (record,) = (store / "runs").glob("*.parquet")
    truncate(record)
    with pytest.warns(StoreWarning, match=re.escape(str(record))):
        events = lapse.load()
    assert events.num_rows == 600
    assert set(events.column("pid").to_pylist()) == {None}


@pytest.mark.xfail(
    strict=False,
    reason="a segment corrupted inside is only found when a query decodes the damaged "
    "pages: count(*) reads row counts from the intact footer and still counts it "
    "(unless the damage happens to reach what count(*) reads, so it may pass)",
)
def test_counts_agree_with_load_when_a_segment_is_corrupted_inside(segments):
    """SQL counts and load() agree on which events exist when a segment is corrupt."""
    corrupt_inside(segments[1])
    with pytest.warns(StoreWarning):
        loaded = lapse.load().num_rows
    with pytest.warns(StoreWarning):
        assert count("select count(*) from events") == loaded
