"""`lapse analyze capacity`: queueing formulas checked by hand and by simulation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import lapse
from lapse import synthetic
from lapse.analysis.calls import load_calls
from lapse.analysis.capacity import (
    Service,
    capacity,
    erlang_c,
    max_rate,
    mmc_wait,
    response_percentile,
    workers_for,
)
from lapse.analysis.selection import Selection
from lapse.analysis.slo import Slo
from lapse.synthetic import simulate_queue
from tests.recording import lapse_cli


def _erlang_c_by_sum(c: int, a: float) -> float:
    """Erlang C from its textbook sum (an independent formula)."""
    top = a**c / math.factorial(c) * c / (c - a)
    return top / (sum(a**k / math.factorial(k) for k in range(c)) + top)


def test_erlang_c_matches_hand_formulas():
    """M/M/1 waits with probability rho and mean rho/(mu-lambda); Erlang C equals its sum form."""
    for rho in (0.1, 0.5, 0.9):
        waiting, wait = mmc_wait(rho * 10, 10, 1)
        assert waiting == pytest.approx(rho)
        assert wait == pytest.approx(rho / (10 - rho * 10))
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
    for c, a in ((2, 1.5), (5, 3.2), (10, 8.7), (40, 35.0)):
        assert erlang_c(c, a) == pytest.approx(_erlang_c_by_sum(c, a), rel=1e-10)
    assert erlang_c(3, 3.0) == 1.0
    assert mmc_wait(30, 10, 3)[1] == math.inf


def test_erlang_c_matches_a_simulated_queue():
    """A discrete-event simulation of M/M/3 at 80% load agrees with Erlang C within 6%."""
    rng = np.random.default_rng(5)
    n, rate, mu, c = 60_000, 24.0, 10.0, 3
    arrivals = np.cumsum(rng.exponential(1 / rate, n))
    waits = simulate_queue(arrivals, rng.exponential(1 / mu, n), c)[5_000:]
    waiting, wait = mmc_wait(rate, mu, c)
    assert (waits > 0).mean() == pytest.approx(waiting, rel=0.06)
    assert waits.mean() == pytest.approx(wait, rel=0.06)


def test_response_percentile_of_mm1_is_exact():
    """With exponential service, M/M/1 response time is exponential with rate mu - lambda."""
    service = Service.of(np.random.default_rng(1).exponential(0.1, 100_000), size=100_000)
    assert response_percentile(7, 1, service, 99) == pytest.approx(math.log(100) / 3, rel=0.02)
    assert response_percentile(0.0, 1, service, 50) == pytest.approx(
        0.1 * math.log(2), rel=0.03)


def test_mgc_percentile_matches_simulation():
    """For lognormal service on 4 workers at 85% load, the model's p99 is within 10% of a
    simulated queue's (Allen-Cunneen plus the measured service distribution)."""
    rng = np.random.default_rng(7)
    durations = 0.01 * rng.lognormal(0, 0.5, 80_000)
    service = Service.of(durations, size=8_000)
    rate = 0.85 * 4 / service.mean
    arrivals = np.cumsum(rng.exponential(1 / rate, durations.size))
    response = simulate_queue(arrivals, durations, 4) + durations
    measured = np.percentile(response[5_000:], 99)
    assert response_percentile(rate, 4, service, 99) == pytest.approx(measured, rel=0.10)


def test_max_rate_and_workers_are_consistent():
    """The largest rate meets the SLO and a bit more breaks it; one worker fewer is not enough."""
    service = Service.of(0.02 * np.random.default_rng(2).lognormal(0, 0.4, 20_000))
    slo = Slo(0.08, 99.0)
    for workers in (1, 3, 8):
        top = max_rate(workers, service, slo)
        assert response_percentile(top, workers, service, 99) <= 0.08
        assert response_percentile(top * 1.02, workers, service, 99) > 0.08
    needed = workers_for(400, service, slo)
    assert needed is not None
    assert response_percentile(400, needed, service, 99) <= 0.08
    assert response_percentile(400, needed - 1, service, 99) > 0.08
    assert workers_for(400, service, Slo(0.01, 99.0)) is None  # service alone is too slow


def test_concurrency_counts_overlapping_calls(tmp_path):
    """Concurrency at a call's start counts the calls of its event in flight on its host,
    itself included, as a brute-force count over [start, start + duration) says."""
    store = tmp_path / "store"
    synthetic.write(store, synthetic.Workload(events=1_200, runs=4, names=("f",), seed=8,
                                              median_ms=20, arrivals="poisson"))
    calls = load_calls(Selection(), store, "f")
    starts = calls.column("start_ns")
    ends = starts + calls.column("duration_ns")
    hosts = calls.column("host")
    expected = [int(np.sum((hosts == hosts[i]) & (starts <= starts[i]) & (ends > starts[i])))
                for i in range(calls.n)]
    assert calls.column("concurrency").astype(int).tolist() == expected
    assert max(expected) > 1


@pytest.fixture(scope="module")
def stressed_store(tmp_path_factory):
    """Service times from normal runs, and two stress runs of 4 and 8 workers near capacity."""
    store = tmp_path_factory.mktemp("capacity") / "store"
    truth = synthetic.write(store, synthetic.Workload(
        events=8_000, runs=2, names=("predict",), sigma=0.5, seed=3, rate_per_s=50,
        arrivals="poisson",
        stress=(synthetic.StressRun(rate_per_s=300, workers=4, calls=4_000),
                synthetic.StressRun(rate_per_s=600, workers=8, calls=4_000))))
    return store, truth


def test_capacity_is_checked_against_stress_runs(stressed_store):
    """The model's p99 at each stress run's rate is within 15% of the measured p99."""
    store, truth = stressed_store
    result = capacity(Selection(), store, event="predict", slo="p99<60ms", rate=500)
    assert result.calls == 8_000  # service times come from the normal runs only
    assert not result.model_only
    assert len(result.stress) == 2
    for check, planted in zip(result.stress, truth["stress"], strict=True):
        assert check.workers == planted["workers"]
        assert check.measured == pytest.approx(planted["p99_s"], rel=0.01)
        assert abs(check.error) < 0.15
    assert "Checked against 2 stress run(s)" in result.explain()
    assert result.workers_needed is not None
    assert result.response_at_target <= 0.06
    assert result.per_worker_rate > 0
    assert result.autoscale is not None
    assert 0 < result.autoscale.target_utilisation < 1
    assert "scale out" in result.autoscale.rule


def test_model_only_estimate_and_unmeetable_slo(stressed_store):
    """Without stress runs it says model-only; an SLO below the service time says so."""
    store, _ = stressed_store
    result = capacity(Selection(where=("run_id~*-000?",)), store, event="predict",
                      slo="200ms")
    assert result.percentile == 99.0
    assert result.stress == []
    assert result.model_only
    assert "Model-only estimate" in result.explain()
    assert result.target_from == "measured throughput"
    impossible = capacity(Selection(), store, event="predict", slo="p99.9<1ms")
    assert impossible.per_worker_rate == 0
    assert impossible.workers_needed is None
    assert any("no number of workers" in note for note in impossible.notes)
    assert "No number of workers" in impossible.render("markdown")


def test_cli_capacity_and_bad_input(stressed_store, tmp_path):
    """JSON from the command line; a bad --slo and an unknown event are explained."""
    store, _ = stressed_store
    run = lapse_cli("analyze", "capacity", "--event", "predict", "--slo", "p99<60ms",
                    "--rate", "500", "--workers", "1,2,4", "--format", "json", store=store)
    assert run.returncode == 0, run.stderr
    document = json.loads(run.stdout)
    assert document["schema"] == "lapse.analyze.capacity/1"
    assert document["slo"]["percentile"] == 99.0
    assert {p["workers"] for p in document["points"]} >= {1, 2, 4}
    assert document["workers_needed"] >= 1
    run = lapse_cli("analyze", "capacity", "--event", "predict", "--slo", "p99 > 1s",
                    store=store)
    assert run.returncode == 2
    assert "not an SLO" in run.stderr
    with pytest.raises(lapse.ConfigError, match="is not in the selection"):
        capacity(Selection(), store, event="score", slo="p99<60ms")
    with pytest.raises(lapse.ConfigError, match="rate"):
        capacity(Selection(), store, event="predict", slo="p99<60ms", rate=0)


STEADY_CV = 0.3
"""Measured calls of ``sleep(5 ms)`` have a CV of about 0.1 (0.13 with both cores busy with
other work); well above that, something (disk-heavy work, in the case seen) stretched some of
them, and the sample no longer describes the service."""


def _measure_and_stress(store):
    """300 calls of the 5 ms service outside any stress run, then a real `lapse stress` of
    the same callable at about 60% load on one generator process; the capacity result."""
    from tests import stress_targets

    lapse.configure(dir=store, flush_interval="1h")
    timed = lapse.timed("svc")(stress_targets.sleep_5ms)
    for _ in range(300):
        timed()
    lapse.shutdown()
    lapse.reset()
    run = lapse_cli("stress", "tests.stress_targets:sleep_5ms", "--name", "svc",
                    "--rate", "110", "--arrivals", "poisson", "--workers", "1",
                    "--duration", "6s", "--seed", "3", "-q", store=store, timeout=120)
    assert run.returncode == 0, run.stderr
    return capacity(Selection(), store, event="svc", slo="p99<50ms")


@pytest.mark.slow
def test_capacity_is_checked_against_a_real_stress_run(tmp_path):
    """A real `lapse stress` on a callable that sleeps 5 ms, Poisson arrivals at 60% load on
    one generator process: capacity reads the service time from calls made outside the
    stress run, recognises the run as one M/G/1 queue, and predicts its measured p99
    response time, never optimistically.

    The prediction is only as good as the service times it is given: when other work on
    the machine stretched the 300 measured calls (CV above STEADY_CV), the model rightly
    predicts a slow queue that the later stress run does not see, so the test measures
    again in a fresh store (at most three times)."""
    for attempt in range(3):
        result = _measure_and_stress(tmp_path / f"store{attempt}")
        if result.cv_service < STEADY_CV:
            break
    assert result.cv_service < STEADY_CV, f"machine too busy: service CV {result.cv_service:.2f}"
    assert result.calls == 300  # service times from outside the stress run only
    (check,) = result.stress
    assert (check.workers, check.queues) == (1, 1)
    assert check.calls > 500
    assert check.predicted is not None
    # The model errs high (safe) for one worker and steady service (a simulation of this
    # queue gives p99 ~26 ms, the model ~29 ms); a p99 of ~650 calls varies by ~15%.
    assert -0.15 < check.error < 0.45, (check.measured, check.predicted)
    assert "Checked against 1 stress run(s)" in result.explain()
