"""Keeping a store healthy: compaction without losing or doubling an event (even when
interrupted), retention by age, erasure of one user's events, and owner-only files."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import stat
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import lapse
from lapse._capture import os_account, pseudonymise
from lapse._config import resolve
from lapse._instrument import Instrument
from lapse._recorder import Run
from lapse.store import _segments
from lapse.store._maintenance import compact, purge
from lapse.store._read import StoreWarning
from tests import workers
from tests.test_crash_safety import corrupt_inside

DAY_NS = 86_400 * 10**9
KEY = "a-secret-only-the-operator-knows"

fork_warning = pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")


def segment_files(store: Path) -> list[Path]:
    return sorted((store / "events").glob("*.parquet"))


def stored_rows(store: Path) -> Counter[str]:
    """Every stored event, all columns, as a multiset."""
    return Counter(json.dumps(row, sort_keys=True, default=str)
                   for row in lapse.load(store).to_pylist())


def stored_keys(store: Path) -> Counter[tuple[str, int]]:
    """The multiset of (run_id, span_id) of the stored events."""
    events = lapse.load(store)
    return Counter(zip(events.column("run_id").to_pylist(), events.column("span_id").to_pylist(),
                       strict=True))


@pytest.fixture
def many_segments(store: Path) -> Path:
    """20 small segments: 4 forked processes x 5 flushes x 300 events."""
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=workers.record_in_segments, args=(5, 300))
                for _ in range(4)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=120)
    assert [child.exitcode for child in children] == [0] * 4
    assert len(segment_files(store)) == 20
    return store


# -- compaction -------------------------------------------------------------------------


@fork_warning
def test_compaction_keeps_exactly_the_same_events(many_segments):
    """Segments from several processes compact into few, then one, holding exactly the
    same rows (every column), each (run_id, span_id) once."""
    store = many_segments
    before = stored_rows(store)
    assert sum(before.values()) == 6000

    result = compact(store, target_rows=2000)
    assert (result.segments_before, result.segments_after, result.merged) == (20, 4, 20)
    assert result.events == 6000
    assert stored_rows(store) == before

    result = compact(store)
    assert (result.segments_before, result.segments_after) == (4, 1)
    assert stored_rows(store) == before
    keys = stored_keys(store)
    assert len(keys) == 6000
    assert set(keys.values()) == {1}
    assert [p.name.startswith("compacted-") for p in segment_files(store)] == [True]
    assert not list((store / "events").glob(".*"))  # no journal or temporary file left


def test_compaction_skips_a_segment_corrupted_inside(store):
    """A segment whose data is garbage (footer intact) is left in place with a warning
    naming it; the readable ones are merged, without losing an event."""
    lapse.configure(flush_interval="1h")
    for _ in range(5):
        workers.record(100)
        lapse.flush()
    lapse.shutdown()
    damaged = segment_files(store)[2]
    corrupt_inside(damaged)

    with pytest.warns(StoreWarning, match=re.escape(str(damaged))):
        result = compact(store)
    assert result.skipped == [str(damaged)]
    assert (result.merged, result.segments_after) == (4, 2)
    assert damaged.exists()
    with pytest.warns(StoreWarning, match=re.escape(str(damaged))):
        assert len(stored_keys(store)) == 400


def interrupt_compaction(store: Path, *, target_written: bool) -> list[Path]:
    """Leave the store as a compaction killed between its steps would: the journal
    written, the merged target written or not, and every source still in place."""
    folder = store / "events"
    sources = segment_files(store)
    target = folder / "compacted-20260101T000000-0badc0de.parquet"
    journal = folder / f".compacting-{target.stem}.json"
    journal.write_text(json.dumps({"target": target.name,
                                   "sources": [p.name for p in sources]}))
    if target_written:
        pq.write_table(pa.concat_tables(pq.read_table(p) for p in sources), target)
    return sources


@fork_warning
@pytest.mark.parametrize("target_written", [True, False])
def test_an_interrupted_compaction_never_double_counts_and_is_finished(many_segments,
                                                                      target_written):
    """After a compaction killed halfway, the store loads each event once (sources are
    hidden once their merged target exists), and the next compact finishes the job."""
    store = many_segments
    before = stored_rows(store)
    sources = interrupt_compaction(store, target_written=target_written)

    assert stored_rows(store) == before
    assert lapse.sql("select count(*) as n from events", store).to_pylist() == [{"n": 6000}]

    result = compact(store)
    assert result.segments_after == 1
    assert not any(p.exists() for p in sources)
    assert not list((store / "events").glob(".compacting-*"))
    assert stored_rows(store) == before


def count_until(store: Path, started: Any, stop: Any, results: Any) -> None:
    """Count the stored events again and again until ``stop``; report counts and warnings."""
    counts: list[int | str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        while not stop.is_set():
            try:
                table = lapse.sql("select count(*) from events", store)
                counts.append(table.column(0)[0].as_py())
            except Exception as error:
                counts.append(repr(error))
            started.set()
    results.put((counts, [str(w.message) for w in caught]))


@fork_warning
def test_queries_during_a_compaction_count_every_event_once(store):
    """While compactions merge and delete 100 segments, queries from another process
    always count every event exactly once, with no warning about the merged segments."""
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=workers.record_in_segments, args=(25, 40))
               for _ in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
    assert len(segment_files(store)) == 100

    started, stop, results = context.Event(), context.Event(), context.Queue()
    reader = context.Process(target=count_until, args=(store, started, stop, results))
    reader.start()
    try:
        assert started.wait(timeout=60)
        compact(store, target_rows=400)  # ten merges of ten segments...
        compact(store)  # ...then one of the ten merged ones
    finally:
        stop.set()
    counts, warned = results.get(timeout=60)
    reader.join(timeout=60)
    assert len(segment_files(store)) == 1
    assert set(counts) == {4000}, Counter(counts)
    assert warned == []


@fork_warning
def test_two_compactions_at_once_both_succeed_without_doubling(many_segments):
    """Two compactions started together (cron and a person, say) both finish without an
    error, and the store holds exactly the same events, each once."""
    store = many_segments
    before = stored_rows(store)
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    compactions = [context.Process(target=compact_after, args=(store, barrier))
                   for _ in range(2)]
    for process in compactions:
        process.start()
    for process in compactions:
        process.join(timeout=120)
    assert [process.exitcode for process in compactions] == [0, 0]
    assert stored_rows(store) == before
    assert len(segment_files(store)) == 1


def compact_after(store: Path, barrier: Any) -> None:
    """Wait for the other process, then compact (a multiprocessing target)."""
    barrier.wait()
    compact(store, target_rows=1000)
    compact(store)


# -- retention ----------------------------------------------------------------------------


def write_events_at(store: Path, name: str, ages_ns: list[int], sequence: int) -> Path:
    """A real segment (lapse's encoder and writer) of events that started ``ages_ns`` ago."""
    run = Run(f"old-run-{sequence}", os.getpid(), time.time_ns(), resolve({"dir": store}))
    job = Instrument(name)
    now = time.perf_counter_ns()
    batch = [(job, now - age, 1_000, None) for age in ages_ns]
    _segments.write_segment(run, _segments.encode_events(batch, run), sequence)
    (path,) = (store / "events").glob(f"{run.run_id}-*.parquet")
    return path


def test_retention_deletes_segments_whose_events_are_all_too_old(store):
    """compact(max_age) deletes a segment only when every event in it is older than
    max_age; a segment with one recent event is kept whole, and fresh events stay."""
    workers.record(50)
    lapse.flush()
    old = write_events_at(store, "old.job", [10 * DAY_NS, 9 * DAY_NS, 8 * DAY_NS], 1)
    mixed = write_events_at(store, "mixed.job", [30 * DAY_NS, 3_600 * 10**9], 2)

    result = compact(store, max_age_ns=7 * DAY_NS)
    assert (result.expired, result.expired_events) == (1, 3)
    assert not old.exists()
    names = Counter(lapse.load(store).column("name").to_pylist())
    assert names == {f"{workers.__name__}.work": 50, "mixed.job": 2}
    assert not mixed.exists()  # kept, then merged with the fresh segment
    assert (result.segments_before, result.merged, result.segments_after) == (3, 2, 1)


# -- erasure ------------------------------------------------------------------------------


@pytest.fixture
def users_store(store: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A debug-level store with 30 events of alice, 20 of bob and 5 of nobody in particular."""
    monkeypatch.setenv("LAPSE_USER_KEY", KEY)
    lapse.configure(level="debug", flush_interval="1h")
    with lapse.user("alice"):
        workers.record(30)
    lapse.flush()
    with lapse.user("bob"):
        workers.record(20)
    workers.record(5)
    lapse.flush()
    return store


def test_purge_erases_every_event_of_one_user_and_only_those(users_store):
    """purge(user="alice") with LAPSE_USER_KEY set removes alice's 30 events from every
    segment (no file holds her pseudonym any more) and leaves bob's and the others."""
    store = users_store
    alice, bob = pseudonymise("alice", KEY), pseudonymise("bob", KEY)
    users = Counter(lapse.load(store).column("user").to_pylist())
    assert (users[alice], users[bob], users.total()) == (30, 20, 55)

    result = purge(store, user="alice")
    assert (result.pseudonym, result.events_removed, result.segments_rewritten) == (alice, 30, 1)
    users = Counter(lapse.load(store).column("user").to_pylist())
    assert (users[alice], users[bob], users.total()) == (0, 20, 25)
    for path in store.rglob("*.parquet"):
        assert alice.encode() not in path.read_bytes(), path
        assert alice not in pq.read_table(path).column("user").to_pylist()


def test_purge_skips_an_unreadable_segment_with_a_warning(users_store):
    """A segment corrupted inside cannot be erased from: purge warns, naming it and what
    to do, lists it, and still erases the user's events everywhere else."""
    store = users_store
    alice_segment, damaged = segment_files(store)
    corrupt_inside(damaged)
    with pytest.warns(StoreWarning, match=re.escape(str(damaged)) + ".*delete the file"):
        result = purge(store, user="alice")
    assert (result.events_removed, result.skipped) == (30, [str(damaged)])
    assert pseudonymise("alice", KEY) not in pq.read_table(alice_segment).column("user")


def test_purge_by_pseudonym_needs_no_key(users_store, monkeypatch):
    """An erasure request given as the stored pseudonym works without the key."""
    monkeypatch.delenv("LAPSE_USER_KEY")
    bob = pseudonymise("bob", KEY)
    assert purge(users_store, pseudonym=bob).events_removed == 20
    assert bob not in lapse.load(users_store).column("user").to_pylist()


def test_purge_without_the_key_is_a_clear_error(users_store, monkeypatch):
    """Without LAPSE_USER_KEY a user id cannot be matched: ConfigError saying so, and
    nothing is changed."""
    monkeypatch.delenv("LAPSE_USER_KEY")
    before = stored_rows(users_store)
    with pytest.raises(lapse.ConfigError, match=r"LAPSE_USER_KEY is not set.*--pseudonym"):
        purge(users_store, user="alice")
    assert stored_rows(users_store) == before


def test_purge_with_the_wrong_key_is_a_clear_error(users_store):
    """A key other than the one the events were recorded with would match nobody and
    silently erase nothing: ConfigError naming the key setting, and nothing is changed."""
    account = os_account()  # events outside `with lapse.user` belong to the OS account
    result = purge(users_store, user=account)
    assert (result.events_removed, result.runs_cleared) == (5, 1)  # run record rewritten
    before = stored_rows(users_store)
    with pytest.raises(lapse.ConfigError, match=r"LAPSE_USER_KEY is not the key.*--pseudonym"):
        purge(users_store, user="alice", key="a-guess")
    assert stored_rows(users_store) == before


# -- file modes ---------------------------------------------------------------------------


def test_store_folders_and_files_are_owner_only(store, monkeypatch):
    """Even with a permissive umask, store folders are 0700 and every file (segments,
    run records, compacted and purged segments) 0600."""
    monkeypatch.setenv("LAPSE_USER_KEY", KEY)
    previous = os.umask(0)
    try:
        lapse.configure(level="debug", flush_interval="1h")
        for user in ("alice", "bob", "carol"):
            with lapse.user(user):
                workers.record(10)
            lapse.flush()
        lapse.shutdown()
        compact(store)
        purge(store, user="bob")
    finally:
        os.umask(previous)
    paths = [store, *store.rglob("*")]
    assert {p.name for p in paths if p.is_dir()} == {"store", "events", "runs"}
    assert len([p for p in paths if p.is_file()]) == 2
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path}: {oct(mode)}"


def test_compaction_removes_temporary_files_left_by_killed_writers(store):
    """A `.tmp` file over an hour old was left by a process killed mid-write: compaction
    removes it. A fresh one may belong to a writer at work and is kept."""
    lapse.configure(flush_interval="1h")
    workers.record(10)
    lapse.flush()
    events = store / "events"
    stale = events / ".20260101T000000-1-abcdef-000001.parquet.0123abcd.tmp"
    fresh = events / ".20260101T000000-2-abcdef-000001.parquet.4567cdef.tmp"
    for path in (stale, fresh):
        path.write_bytes(b"half a segment")
    hours_ago = time.time() - 2 * 3600
    os.utime(stale, (hours_ago, hours_ago))
    result = compact(store)
    assert result.temporaries_removed == 1
    assert not stale.exists()
    assert fresh.exists()
    assert sum(stored_rows(store).values()) == 10
