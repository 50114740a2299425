"""`lapse stress` measures what really happened: checked against targets that know the truth.

The HTTP server records how long it spent on each request and the callable
how long each call really slept; lapse's percentiles must match those at a
moderate load. A server stall shows what correcting for coordinated omission
means: the corrected p99 follows the queueing theory (computed here by
replaying the run's schedule), while the uncorrected one hides the stall.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lapse
from tests.stress_targets import SERVICE_S, CpuPressure, serving
from tests.test_stress import stress

MS = 1e-3


def _truth(durations_ns: list[int] | np.ndarray) -> dict[str, float]:
    values = np.asarray(durations_ns, dtype=float) / 1e9
    return {f"p{q}": float(np.percentile(values, q)) for q in (50, 90, 99)}


def _check(doc: dict[str, Any], truth: dict[str, float], pressure: CpuPressure) -> None:
    """Every percentile within 1 ms of the truth, on a machine with CPU to spare.

    These tests run beside other work that can saturate the CPUs, and a busy machine wakes
    every process late, the target's and the generator's alike. With some tasks waiting for
    a CPU over 5% of the time, only the medians are held to 1 ms, and corrected latency to
    the uncorrected one plus how late requests left (the ``lag`` lapse reports: tens of
    microseconds on a quiet machine); over 30% (saturated), the check is skipped, saying so.
    """
    if pressure.saturated:
        pytest.skip(f"the machine was saturated (tasks waited for a CPU {pressure.share:.0%} "
                    "of the time): millisecond accuracy cannot be checked")
    corrected, uncorrected, lag = (doc["latency"]["corrected"], doc["latency"]["uncorrected"],
                                   doc["lag"])
    for key in ("p50", "p90", "p99") if pressure.quiet else ("p50",):
        for stats in (corrected, uncorrected):
            assert abs(stats[key] - truth[key]) < MS, (key, stats, truth, lag, pressure.share)
    if pressure.quiet:
        assert lag["p99"] < MS
    assert lag["p50"] < 0.5 * MS  # requests leave on time
    for key in ("p50", "p90", "p99"):
        assert uncorrected[key] <= corrected[key] <= uncorrected[key] + lag["max"] + MS


ATTEMPTS = 3


def _check_undisturbed(measure: Callable[[Path], tuple[dict[str, Any], dict[str, float],
                                                      CpuPressure]], tmp_path: Path) -> None:
    """``_check`` a run of ``measure`` (in a fresh store), measuring again when it fails on a
    run the machine disturbed.

    Pressure averaged over the run misses bursts: a 2-core machine with 1% pressure still
    wakes a thread several milliseconds late now and then, and corrected latency rightly
    includes that. Four such wake-ups in 300 requests move a p99, and the calls' own timings
    (the truth) cannot see them. A run whose generator left some request a millisecond or
    more late (lapse's ``lag``) had such a burst, so a failed check on it is measured again,
    at most ``ATTEMPTS`` times; a failure on an undisturbed run, or on the last attempt,
    stands.
    """
    for attempt in range(ATTEMPTS):
        doc, truth, pressure = measure(tmp_path / f"attempt{attempt}")
        try:
            _check(doc, truth, pressure)
            return
        except AssertionError:
            if doc["lag"]["max"] < MS or attempt == ATTEMPTS - 1:
                raise


def test_http_percentiles_are_within_a_millisecond_of_the_servers(tmp_path):
    """100 requests/s to a 5 ms endpoint: median, p90 and p99, corrected and not, are within
    1 ms of the server's own timings."""

    def measure(where: Path) -> tuple[dict[str, Any], dict[str, float], CpuPressure]:
        with serving() as server, CpuPressure() as pressure:
            result = stress(server.url, "--rate", "100", "--duration", "3s", "--workers", "1",
                            "--format", "json", store=where / "store")
            truth = _truth(server.durations_ns)
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        assert doc["requests"]["total"] == 300
        assert SERVICE_S <= truth["p50"] < SERVICE_S + MS
        return doc, truth, pressure

    _check_undisturbed(measure, tmp_path)


def test_callable_percentiles_are_within_a_millisecond_of_the_calls(tmp_path, monkeypatch):
    """100 calls/s of a function sleeping 5 ms (one worker, two callers, so a call the OS
    delays does not hold up the next): every percentile within 1 ms of the sleeps the
    function itself timed."""

    def measure(where: Path) -> tuple[dict[str, Any], dict[str, float], CpuPressure]:
        truth_dir = where / "truth"
        truth_dir.mkdir(parents=True)
        monkeypatch.setenv("STRESS_TRUTH_DIR", str(truth_dir))
        with CpuPressure() as pressure:
            result = stress("tests.stress_targets:measured_sleep_5ms", "--rate", "100",
                            "--duration", "3s", "--workers", "1", "--threads", "2",
                            "--format", "json", store=where / "store")
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        durations = [int(line) for path in truth_dir.glob("*.txt")
                     for line in Path(path).read_text().split()]
        assert len(durations) == doc["requests"]["total"] == 300
        return doc, _truth(durations), pressure

    _check_undisturbed(measure, tmp_path)


def _replay(intended: np.ndarray, connections: int, service: float, stall: tuple[float, float],
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The theory: each request goes out at its intended time on the first free connection
    (or waits for one); the server takes ``service`` s, and nothing finishes during the stall
    before its end. Returns corrected and uncorrected latencies and lateness, in s."""
    free = [float("-inf")] * connections
    corrected, uncorrected, late = [], [], []
    start, end = stall
    for t in intended:
        index = int(np.argmin(free))
        sent = max(t, free[index])
        begins = max(sent, end) if start <= sent < end else sent
        done = begins + service
        free[index] = done
        corrected.append(done - t)
        uncorrected.append(done - sent)
        late.append(sent - t)
    return np.array(corrected), np.array(uncorrected), np.array(late)


@pytest.mark.slow
def test_a_stall_shows_in_the_corrected_p99_as_theory_says_and_hides_in_the_uncorrected(store):
    """A 1 s stall in a 4 s run at 100 requests/s over 2 connections (wrk2's situation): the
    generator cannot send while both connections wait, so uncorrected latency sees the stall
    in 2 requests only and its p99 stays near 5 ms; measured from the intended times, the ~100
    requests due during the stall wait up to 1 s, and the corrected p99 is the replayed
    theory's (about S - 1% of D = 0.96 s)."""
    with serving(stall_after_s=1.0, stall_s=1.0) as server, CpuPressure() as pressure:
        result = stress(server.url, "--rate", "100", "--duration", "4s", "--connections", "2",
                        "--workers", "1", "--format", "json", store=store)
        first = min(server.arrivals_ns)
        stall_start = (server.stall_started_ns - first) / 1e9
        service = float(np.median(server.durations_ns)) / 1e9
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    corrected, uncorrected = doc["latency"]["corrected"], doc["latency"]["uncorrected"]
    assert doc["requests"]["total"] == 400
    intended = np.arange(400) / 100.0
    theory_c, theory_u, theory_late = _replay(intended, 2, service,
                                              (stall_start, stall_start + 1.0))
    slack = 0.0 if pressure.quiet else 0.05  # a busy machine slows the backlog's drain
    assert abs(corrected["p99"] - np.percentile(theory_c, 99)) < 0.03 + slack
    assert abs(corrected["p90"] - np.percentile(theory_c, 90)) < 0.05 + slack
    assert corrected["p99"] > 0.9
    assert np.percentile(theory_u, 99) < 0.02
    assert uncorrected["p99"] < (0.02 if pressure.quiet else 0.1)  # the stall is hidden
    assert 0.95 < corrected["max"] < 1.1
    assert 0.95 < uncorrected["max"] < 1.1
    late = doc["requests"]["late"]  # those due during the stall, and the backlog after it
    expected_late = int(np.sum(theory_late >= MS))
    assert expected_late - 15 <= late
    if pressure.quiet:
        assert late <= expected_late + 15
    stored = lapse.sql(
        "SELECT count(*) FILTER (duration_ns > 500e6) * 1.0 / count(*) AS share FROM events "
        "WHERE kind = 'request'", store).column(0)[0].as_py()
    assert abs(stored - float(np.mean(theory_c > 0.5))) < 0.03 + slack


@pytest.mark.slow
def test_a_ramp_finds_the_knee(store):
    """Steps of 100, 300 and 500 requests/s at a 5 ms endpoint over 2 connections (at most
    ~390/s): 100 and 300 meet p99<200ms, 500 piles up a queue (over 0.4 s by the step's end)
    and misses it; the knee is 300. (On a saturated machine the server itself slows down and
    may miss at 300 already: then the knee is 100.)"""
    with serving() as server, CpuPressure() as pressure:
        result = stress(server.url, "--ramp", "100:500:200", "--duration", "1.5s",
                        "--connections", "2", "--workers", "1", "--slo", "p99<200ms",
                        "--format", "json", store=store)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    steps = doc["steps"]
    met = [s["slo_met"] for s in steps]
    if pressure.saturated and met[:2] == [True, False]:
        assert doc["slo"]["knee"] == 100
        return
    assert [s["target_rate"] for s in steps] == [100, 300, 500]
    assert met == [True, True, False]
    assert doc["slo"]["knee"] == 300
    assert doc["slo"]["first_failing_step"] == 2
    assert steps[2]["latency"]["corrected"]["p99"] > 0.3
    assert steps[2]["achieved_rate"] < 450  # what 2 connections can answer, not the rate asked
    tolerance = 0.05 if pressure.quiet else 0.15
    for step in steps[:2]:
        assert abs(step["achieved_rate"] - step["target_rate"]) < tolerance * step["target_rate"]
