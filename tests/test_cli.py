"""The ``lapse`` command, run for real as a subprocess over stores written by real processes."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.recording import lapse_cli, record


def _commands() -> list[str]:
    """Every command and analysis the parser knows, so a new one cannot skip this test."""
    from lapse.cli import build_parser

    def choices(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}

    names = []
    for name, sub in choices(build_parser()).items():
        names += [f"{name} {analysis}" for analysis in choices(sub)] or [name]
    return names


COMMANDS = _commands()


def test_the_command_list_covers_every_documented_command():
    assert {"tail", "runs", "compact", "purge", "sql", "report", "compare", "dashboard",
            "demo", "stress", "analyze drivers", "analyze capacity"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_explains_itself_and_takes_dir(command):
    """`lapse COMMAND --help` works and documents --dir, so users can point at any store."""
    result = lapse_cli(*command.split(), "--help")
    assert result.returncode == 0, result.stderr
    assert "--dir" in result.stdout
    assert "LAPSE_DIR" in result.stdout


def test_python_dash_m_and_console_script_are_the_same_command():
    """`python -m lapse` and the `lapse` script both print the command list."""
    module = lapse_cli("--help")
    script = subprocess.run([Path(sys.executable).with_name("lapse"), "--help"],
                            capture_output=True, text=True, check=True)
    assert module.returncode == 0
    for command in {command.split()[0] for command in COMMANDS}:
        assert command in module.stdout
        assert command in script.stdout


def test_runs_lists_each_process_with_its_event_count(store):
    """`lapse runs` shows one row per process with its version and exact event count."""
    record(store, calls=7, version="1.0")
    record(store, calls=5, version="2.0")
    result = lapse_cli("runs", "--format", "json", store=store)
    assert result.returncode == 0, result.stderr
    runs = json.loads(result.stdout)
    assert sorted((r["version"], r["events"]) for r in runs) == [("1.0", 14), ("2.0", 10)]
    assert all(r["ended_ns"] for r in runs), "a clean exit marks the run as ended"
    assert all(r["dropped"] == 0 for r in runs)
    table = lapse_cli("runs", store=store)
    assert table.returncode == 0
    assert "2.0" in table.stdout
    assert "ended" in table.stdout


def test_tail_shows_the_latest_events_in_order(store):
    """`lapse tail -n N --no-follow` prints exactly the N latest events, oldest first."""
    record(store, calls=6)
    result = lapse_cli("tail", "-n", "4", "--no-follow", store=store)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 4
    stamps = [line[:23] for line in lines]
    assert stamps == sorted(stamps)
    # the last call's inner span starts after its predict call: it comes last
    assert "preprocess ←" in lines[-1]
    assert "predict ←" in lines[-2]


def test_tail_follows_events_as_another_process_writes_them(store):
    """`lapse tail --follow` prints events written after it started."""
    record(store, calls=1)
    writer_code = (
        "import lapse, time\n"
        "lapse.configure(flush_interval='100ms')\n"
        "@lapse.timed('arriving')\n"
        "def f(): pass\n"
        "time.sleep(1.0)\n"
        "for _ in range(3):\n"
        "    f(); time.sleep(0.3)\n"
    )
    tail = subprocess.Popen(
        [sys.executable, "-m", "lapse", "tail", "--dir", str(store), "-n", "0",
         "--interval", "100ms", "--for", "6s"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    time.sleep(0.5)
    subprocess.run([sys.executable, "-c", writer_code], check=True,
                   env={**os.environ, "LAPSE_DIR": str(store)}, timeout=60)
    out, err = tail.communicate(timeout=60)
    assert tail.returncode == 0, err
    assert out.count("arriving") == 3


def test_sql_prints_csv_that_matches_the_store(store):
    """`lapse sql --format csv` gives the same numbers as lapse.sql in Python."""
    record(store, calls=9)
    result = lapse_cli("sql", "select name, count(*) as n from events group by name order by name",
                       "--format", "csv", store=store)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ['"name","n"', '"predict",9', '"preprocess",9']


def test_sql_error_is_clear_and_exits_2(store):
    """A bad query prints the database's reason and exits with status 2, not a traceback."""
    record(store, calls=1)
    result = lapse_cli("sql", "select nope from events", store=store)
    assert result.returncode == 2
    assert "query failed" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_store_says_what_to_do(tmp_path):
    """Pointing a command at a directory with no store says so and how to fix it."""
    result = lapse_cli("runs", store=tmp_path / "nothing-here")
    assert result.returncode == 2
    assert "no lapse store" in result.stderr
    assert "--dir" in result.stderr


def test_compact_merges_segments_without_losing_events(store):
    """`lapse compact` leaves fewer segments and exactly the same events."""
    for _ in range(4):
        record(store, calls=3)
    before = len(list((store / "events").glob("*.parquet")))
    result = lapse_cli("compact", store=store)
    assert result.returncode == 0, result.stderr
    after = len(list((store / "events").glob("*.parquet")))
    assert before == 4
    assert after == 1
    count = lapse_cli("sql", "select count(*) as n from events", "--format", "csv", store=store)
    assert count.stdout.splitlines()[1] == "24"


def test_compact_rejects_a_bad_max_age(store):
    """A malformed --max-age names the setting and the expected form."""
    record(store, calls=1)
    result = lapse_cli("compact", "--max-age", "forever", store=store)
    assert result.returncode == 2
    assert "max_age" in result.stderr
    assert "7d" in result.stderr


def test_purge_without_key_explains_the_key(store):
    """Erasing by user id needs the key the events were recorded with; the error says so."""
    record(store, calls=1)
    result = lapse_cli("purge", "--user", "alice", store=store)
    assert result.returncode == 2
    assert "LAPSE_USER_KEY" in result.stderr


def test_purge_by_user_erases_only_that_user(store):
    """`lapse purge --user` with the recording key removes that user's events, no others."""
    code = (
        "import lapse\n"
        "@lapse.timed('call', level='debug')\n"
        "def call(): pass\n"
        "for who in ('alice', 'bob', 'alice'):\n"
        "    with lapse.user(who):\n"
        "        call()\n"
    )
    env = {**os.environ, "LAPSE_DIR": str(store), "LAPSE_USER_KEY": "k3y"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
    result = lapse_cli("purge", "--user", "alice", store=store, env={"LAPSE_USER_KEY": "k3y"})
    assert result.returncode == 0, result.stderr
    assert "erased 2 events" in result.stdout
    left = lapse_cli("sql", "select count(*) as n from events", "--format", "csv", store=store)
    assert left.stdout.splitlines()[1] == "1"


@pytest.mark.parametrize(("ns", "shown"), [
    (812, "812 ns"), (999.6, "1 µs"), (12_345, "12.3 µs"), (3_200_000, "3.2 ms"),
    (999_960_000, "1 s"), (1_250_000_000, "1.25 s"), (900e9, "15.0 min"), (None, "—"),
])
def test_durations_read_in_the_unit_a_person_expects(ns, shown):
    """Rounding happens before the unit is picked: 999.96 ms is "1 s", never "1e+03 ms"."""
    from lapse.cli import format_duration

    assert format_duration(ns) == shown
