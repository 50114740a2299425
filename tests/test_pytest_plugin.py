"""The pytest plugin, run in real pytest subprocesses on sample suites (pytester).

The sample suite's measured function sleeps, so its duration is set by the
test (``SAMPLE_DELAY``) rather than by how busy the machine is: a planted
slowdown is a real 20%, and an unchanged rerun is really unchanged.
"""

from __future__ import annotations

import json
import re
import sys

import duckdb  # noqa: F401 - before pytester's sys.modules snapshot: a second import aborts
import pytest

import lapse

pytest_plugins = ["pytester"]

SUITE = """
import os
import time

import lapse
import pytest

DELAY = float(os.environ.get("SAMPLE_DELAY", "0.002"))


@lapse.timed("sample.predict")
def predict(x):
    time.sleep(DELAY)
    return x


def test_predict_loop():
    for i in range(30):
        predict(i)


def test_bench(lapse_bench):
    assert lapse_bench.measure(predict, (7,), max_time=0.25) == 7
    assert lapse_bench.result.rounds >= 25


@pytest.mark.parametrize("n", range(4))
def test_quick(n):
    assert n < 4
"""

THRESHOLD = "10%"
"""The gate's threshold in these tests: a shared CI machine moves sleeps by a few percent."""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    """A sample suite in a fresh directory (an ini file fixes the rootdir, so node ids)."""
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(test_sample=SUITE)
    return pytester


def run(pytester: pytest.Pytester, store, *args: str, delay: float = 0.002,
        commit: str = "aaaa1111") -> pytest.RunResult:
    """pytest in a subprocess, recording into ``store``."""
    pytester._monkeypatch.setenv("SAMPLE_DELAY", str(delay))
    pytester._monkeypatch.setenv("LAPSE_GIT_COMMIT", commit)
    # --option=PATH: pytest takes the rootdir (so node ids) from path-like arguments it does
    # not know yet, and a plugin's options are not known yet when it looks.
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--lapse-dir={store}",
                                         *args, timeout=120)


def printed_test_run(result: pytest.RunResult) -> str:
    """The test-run id the plugin printed."""
    match = re.search(r"test run (t\S+) recorded in", result.stdout.str())
    assert match, result.stdout.str()
    return match.group(1)


def test_records_each_phase_with_its_outcome_and_run(suite, tmp_path):
    """--lapse stores setup/call/teardown of every test (kind test), tagged with the test run,
    phase and outcome; the run is marked "test" with its git commit; lapse events made in a
    test are children of that test's phase."""
    store = tmp_path / "store"
    result = run(suite, store, "--lapse")
    result.assert_outcomes(passed=6)
    test_run = printed_test_run(result)
    tests = lapse.sql("SELECT name, span_id, run_id, attrs FROM events WHERE kind = 'test'",
                      store).to_pylist()
    assert len(tests) == 6 * 3
    phases = {}
    for row in tests:
        attrs = json.loads(row["attrs"])
        assert attrs["test_run"] == test_run
        assert attrs["outcome"] == "passed"
        phases.setdefault(row["name"], set()).add(attrs["phase"])
    assert phases["test_sample.py::test_predict_loop"] == {"setup", "call", "teardown"}
    assert "test_sample.py::test_quick[3]" in phases
    runs = lapse.sql("SELECT kind, git_commit FROM runs", store).to_pylist()
    assert runs == [{"kind": "test", "git_commit": "aaaa1111"}]
    call = lapse.sql(
        "SELECT span_id FROM events WHERE name = 'test_sample.py::test_predict_loop' AND "
        "json_extract_string(attrs, '$.phase') = 'call'", store).column(0)[0].as_py()
    children = lapse.sql(f"SELECT parent_id, trace_id FROM events WHERE name = "
                         f"'sample.predict' AND trace_id = {call}", store)
    assert children.num_rows == 30
    assert set(children.column("parent_id").to_pylist()) == {call}
    bench = lapse.sql("SELECT name, kind, duration_ns, attrs FROM events WHERE kind = 'bench'",
                      store)
    assert bench.num_rows >= 25
    assert set(bench.column("name").to_pylist()) == {
        "test_sample.py::test_bench::predict"}
    median = sorted(bench.column("duration_ns").to_pylist())[bench.num_rows // 2]
    # Per call, not per round: the same as the calls' own events (a busy machine stretches
    # both alike), and at least the 2 ms sleep.
    inner = lapse.sql("SELECT median(duration_ns) FROM events WHERE name = 'sample.predict'",
                      store).column(0)[0].as_py()
    assert median >= 2_000_000
    assert abs(median - inner) < 500_000, (median, inner)


def test_a_planted_slowdown_fails_the_gate_and_shows_what_changed(suite, tmp_path):
    """A 20% slower measured function fails the session against the last run: the summary table
    names it with its ratio and confidence interval, and --lapse-report writes the table."""
    store = tmp_path / "store"
    run(suite, store, "--lapse").assert_outcomes(passed=6)
    report = tmp_path / "gate.md"
    result = run(suite, store, "--lapse-baseline", "last", "--lapse-threshold", THRESHOLD,
                 f"--lapse-report={report}", delay=0.0024)
    assert result.ret == 1
    result.assert_outcomes(passed=6)
    text = result.stdout.str()
    assert "lapse performance gate FAILED" in text
    slower = [line for line in text.splitlines() if line.startswith("slower")]
    names = {line.split()[-1] for line in slower}
    assert names == {"sample.predict", "test_sample.py::test_bench::predict"}
    for line in slower:
        ratio, interval = line.split()[5], line.split()[6]
        low, high = (float(x) for x in interval.split("–"))
        assert 1.12 < low <= float(ratio) <= high < 1.3
    markdown = report.read_text()
    assert "🔴 slower" in markdown
    assert "Brunner-Munzel" in markdown


def test_unchanged_reruns_pass_and_the_false_alarm_rate_is_reported(suite, tmp_path, capsys):
    """Five unchanged reruns, each judged against the one before: the gate passes (at most one
    false alarm in five is tolerated), and the measured false-alarm rate is printed."""
    store = tmp_path / "store"
    run(suite, store, "--lapse").assert_outcomes(passed=6)
    alarms = 0
    reruns = 5
    for _ in range(reruns):
        result = run(suite, store, "--lapse-baseline", "last", "--lapse-threshold", THRESHOLD)
        result.assert_outcomes(passed=6)
        assert "compared with last test run" in result.stdout.str()
        alarms += result.ret != 0
    with capsys.disabled():
        sys.stdout.write(f"\n[lapse gate] false alarms: {alarms}/{reruns} unchanged reruns "
                         f"(threshold {THRESHOLD}, alpha 0.05)\n")
    assert alarms <= 1


def test_xdist_records_every_test_once(suite, tmp_path):
    """Under pytest-xdist every test's phases are stored exactly once, by the worker that ran
    it, all under the one test-run id; the controller gates on the workers' events."""
    store = tmp_path / "store"
    result = run(suite, store, "-n", "2", "--lapse")
    result.assert_outcomes(passed=6)
    test_run = printed_test_run(result)
    table = lapse.sql(
        "SELECT name, json_extract_string(attrs, '$.phase') AS phase, "
        "json_extract_string(attrs, '$.test_run') AS test_run, "
        "json_extract_string(attrs, '$.worker') AS worker, run_id FROM events "
        "WHERE kind = 'test'", store)
    keys = list(zip(table.column("name").to_pylist(), table.column("phase").to_pylist(),
                    strict=True))
    assert len(keys) == len(set(keys)) == 6 * 3
    assert set(table.column("test_run").to_pylist()) == {test_run}
    assert set(table.column("worker").to_pylist()) <= {"gw0", "gw1"}
    runs = lapse.sql("SELECT kind FROM runs", store).column("kind").to_pylist()
    assert runs == ["test", "test"]
    second = run(suite, store, "-n", "2", "--lapse-baseline", test_run, "--lapse-threshold",
                 THRESHOLD)
    second.assert_outcomes(passed=6)
    assert f"compared with {test_run}" in second.stdout.str()


def test_baseline_by_commit_directory_and_clear_errors(suite, tmp_path):
    """A git commit selects that commit's test runs, a directory another store's last run;
    'last' with no earlier run passes with a note; an unknown selector is a usage error."""
    store = tmp_path / "store"
    first = run(suite, store, "--lapse-baseline", "last")
    first.assert_outcomes(passed=6)
    assert first.ret == 0
    assert "no earlier test run" in first.stdout.str()
    by_commit = run(suite, store, "--lapse-baseline", "aaaa11", "--lapse-threshold", THRESHOLD,
                    f"--lapse-report={tmp_path / 'gate.html'}", commit="bbbb2222")
    assert "compared with commit aaaa11 (1 test run(s))" in by_commit.stdout.str()
    html = (tmp_path / "gate.html").read_text()
    assert html.startswith("<!doctype html>")
    assert "sample.predict" in html
    other = tmp_path / "elsewhere"
    by_dir = run(suite, other, f"--lapse-baseline={store}", "--lapse-threshold", THRESHOLD,
                 delay=0.0024)
    assert by_dir.ret == 1
    assert f"compared with {store}" in by_dir.stdout.str()
    bad = run(suite, store, "--lapse-baseline", "no-such-run")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    assert "names no test run, run id, git commit or store directory" in bad.stdout.str()


def test_without_the_option_nothing_is_recorded(suite, tmp_path):
    """Without --lapse the plugin stores nothing (the suite's own instrumented calls are
    recorded as usual, in a run that is not a test run), and lapse_bench still measures."""
    store = tmp_path / "store"
    suite._monkeypatch.setenv("LAPSE_DIR", str(store))
    result = suite.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=6)
    assert "test run" not in result.stdout.str()
    kinds = lapse.sql("SELECT DISTINCT kind FROM events", store).column("kind").to_pylist()
    assert kinds == ["function"]
    assert lapse.sql("SELECT kind FROM runs", store).column("kind").to_pylist() == ["process"]


def test_bench_result_statistics(pytester):
    """lapse_bench returns the function's result; its samples give median and five numbers."""
    pytester.makeini("[pytest]\n")
    pytester.makepyfile("""
        def test_it(lapse_bench):
            assert lapse_bench(sorted, [3, 1, 2]) == [1, 2, 3]
            result = lapse_bench.result
            assert result.loops > 1          # a call is far under the 1 ms round
            assert result.rounds >= 25
            low, _, median, _, high = result.fivenum
            assert low <= median <= high
            assert abs(result.median - median) < 1e-12
            assert result.name.endswith("::test_it::sorted")
    """)
    pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120).assert_outcomes(
        passed=1)
