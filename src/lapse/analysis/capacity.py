"""Capacity: how many calls per second a worker sustains within a latency SLO, and how many
workers a target rate needs.

The model is a queue with ``c`` identical workers, Poisson arrivals at rate
λ and first-come-first-served service (M/G/c):

- each call occupies one worker for its **measured duration** (the service
  time S, from the event's calls outside stress runs); μ = 1 / mean(S);
- the probability of waiting is **Erlang C**, C(c, a) with offered load
  a = λ/μ (exact for M/M/c);
- the mean wait is the M/M/c one, C / (cμ − λ), scaled by (1 + CV²)/2 where
  CV is the coefficient of variation of S (**Allen–Cunneen**; exact for c = 1,
  the Pollaczek–Khinchine formula); a wait, when there is one, is taken as
  exponential with that mean;
- the response time is wait + S with S drawn from the measured durations, so
  its percentile comes from the real service-time distribution:
  P(T ≤ t) = mean over measured s of [s ≤ t] (1 − C e^(−θ(t − s))).

From it: the largest arrival rate that keeps the SLO percentile of response
time under its bound, for 1, 2, 4… workers; the fewest workers for a target
rate; and an auto-scale rule (the utilisation, i.e. in-flight calls per
worker, at which that many workers still meet the SLO).

The model assumes service times do not grow with load; the measured calls are
checked for that (duration at concurrency 1 against higher). Stress runs
(``runs.kind = 'stress'``) are compared with the model's prediction at their
measured rate: events carrying ``attrs.workers`` (the serving workers) are one
queue of that many workers; the requests of ``lapse stress`` on a Python
callable (``--name EVENT``) are one queue per generator process, each served by
its ``--threads``, with ``rate / workers`` arriving at each. Without a stress
run the result says it is a model-only estimate.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from lapse._errors import ConfigError, NotEnoughDataError
from lapse.analysis.calls import query_calls, require_event
from lapse.analysis.result import AnalysisResult
from lapse.analysis.selection import Selection
from lapse.analysis.slo import Slo, parse_slo
from lapse.store import _read

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import pyarrow as pa

MIN_CALLS = 50
SERVICE_SAMPLE = 4_000
"""Service times the response-time distribution is computed from (a fixed random subset)."""
WORKERS = (1, 2, 4, 8, 16, 32)
DEFAULT_PERCENTILE = 99.0


def erlang_b(c: int, load: float) -> float:
    """Erlang B blocking probability for ``c`` servers and offered load ``a`` (stable
    recurrence B(k) = a B(k-1) / (k + a B(k-1)))."""
    blocking = 1.0
    for k in range(1, c + 1):
        blocking = load * blocking / (k + load * blocking)
    return blocking


def erlang_c(c: int, load: float) -> float:
    """Probability that an arrival waits in M/M/c with offered load a = λ/μ (1 if a >= c)."""
    if load >= c:
        return 1.0
    if load <= 0:
        return 0.0
    blocking = erlang_b(c, load)
    return blocking / (1 - (load / c) * (1 - blocking))


def mmc_wait(rate: float, service_rate: float, c: int) -> tuple[float, float]:
    """(P(wait), mean wait in seconds) of M/M/c; mean wait is infinite when overloaded."""
    load = rate / service_rate
    waiting = erlang_c(c, load)
    if load >= c:
        return 1.0, math.inf
    return waiting, waiting / (c * service_rate - rate)


@dataclass(frozen=True)
class Service:
    """Measured service times: a sorted sample, mean and squared coefficient of variation."""

    sample: npt.NDArray[np.float64]
    mean: float
    cv2: float

    @classmethod
    def of(cls, durations: npt.NDArray[np.float64], size: int = SERVICE_SAMPLE,
           seed: int = 0) -> Service:
        """From measured durations (seconds); a random subset keeps the model fast."""
        import numpy as np

        mean = float(np.mean(durations))
        cv2 = float(np.var(durations) / mean**2) if mean > 0 else 0.0
        sample = np.sort(durations)  # so the subset does not depend on the order read
        if durations.size > size:
            sample = np.random.default_rng(seed).choice(sample, size, replace=False)
        return cls(np.sort(sample), mean, cv2)

    def percentile(self, p: float) -> float:
        """The p-th percentile of service time (no waiting)."""
        import numpy as np

        return float(np.percentile(self.sample, p))


def response_percentile(rate: float, workers: int, service: Service, p: float) -> float:
    """The p-th percentile (0-100) of response time at arrival rate ``rate`` (M/G/c model)."""
    import numpy as np

    mu = 1 / service.mean
    if rate >= workers * mu:
        return math.inf
    waiting = erlang_c(workers, rate / mu)
    if waiting <= 0:
        return service.percentile(p)
    theta = (workers * mu - rate) * 2 / (1 + service.cv2)
    target = p / 100
    s = service.sample

    def cdf(t: float) -> float:
        done = s <= t
        return float(np.sum(1 - waiting * np.exp(-theta * (t - s[done])))) / s.size

    low = service.percentile(p)
    high = float(s[-1]) + max(math.log(waiting / (1 - target)), 0.0) / theta
    for _ in range(60):
        middle = (low + high) / 2
        if cdf(middle) < target:
            low = middle
        else:
            high = middle
        if high - low <= 1e-9 * high:
            break
    return high


def max_rate(workers: int, service: Service, slo: Slo) -> float:
    """The largest arrival rate (calls/s) at which ``workers`` meet the SLO (0 if none)."""
    percentile = slo.percentile if slo.percentile is not None else DEFAULT_PERCENTILE
    if service.percentile(percentile) >= slo.threshold:
        return 0.0
    low, high = 0.0, workers / service.mean
    for _ in range(40):
        middle = (low + high) / 2
        if response_percentile(middle, workers, service, percentile) <= slo.threshold:
            low = middle
        else:
            high = middle
    return low


def workers_for(rate: float, service: Service, slo: Slo, limit: int = 100_000) -> int | None:
    """The fewest workers that serve ``rate`` calls/s within the SLO (None if none can)."""
    percentile = slo.percentile if slo.percentile is not None else DEFAULT_PERCENTILE
    if service.percentile(percentile) >= slo.threshold:
        return None
    workers = max(1, math.floor(rate * service.mean) + 1)
    while workers <= limit:
        if response_percentile(rate, workers, service, percentile) <= slo.threshold:
            return workers
        workers = workers + 1 if workers < 64 else math.ceil(workers * 1.02)
    return None


@dataclass(frozen=True)
class CapacityPoint:
    """What ``workers`` workers sustain within the SLO."""

    workers: int
    max_rate: float
    per_worker: float
    utilisation: float
    """Busy share of each worker at that rate (= in-flight calls per worker)."""
    wait_probability: float
    mean_wait: float


@dataclass(frozen=True)
class StressCheck:
    """The model's prediction against one stress run's measured response times."""

    run_id: str
    calls: int
    rate: float
    workers: int | None
    """Workers serving the run in all (None when unknown: an HTTP target's server)."""
    measured: float
    predicted: float | None
    error: float | None
    """predicted / measured − 1 (None when the workers are unknown)."""
    queues: int = 1
    """Separate queues the workers form (a callable stress run: one per generator process)."""


@dataclass(frozen=True)
class AutoScale:
    """A scaling rule: keep in-flight calls per worker (utilisation) near the target."""

    target_utilisation: float
    scale_in_below: float
    rate_per_worker: float
    min_workers: int | None
    rule: str


@dataclass
class Capacity(AnalysisResult):
    """Throughput per worker within an SLO, workers for a rate, and a scaling rule."""

    event: str
    slo: Slo
    calls: int
    mean_service: float
    cv_service: float
    service_percentile: float
    measured_rate: float | None
    mean_concurrency: float | None
    max_concurrency: int | None
    points: list[CapacityPoint]
    target_rate: float | None
    target_from: str
    workers_needed: int | None
    response_at_target: float | None
    autoscale: AutoScale | None
    stress: list[StressCheck]
    notes: list[str] = field(default_factory=list)

    @property
    def per_worker_rate(self) -> float:
        """Calls/s one worker sustains within the SLO."""
        return self.points[0].max_rate if self.points else 0.0

    @property
    def model_only(self) -> bool:
        """True when no stress run checked the model."""
        return not any(s.predicted is not None for s in self.stress)

    @property
    def percentile(self) -> float:
        """The response-time percentile the SLO bounds."""
        return self.slo.percentile if self.slo.percentile is not None else DEFAULT_PERCENTILE

    @property
    def table(self) -> pa.Table:
        """One row per number of workers."""
        import pyarrow as pa

        return pa.Table.from_pylist([asdict(p) for p in self.points])

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of ``lapse analyze capacity --format json``."""
        data = asdict(self)
        data["slo"] = {"text": str(self.slo), "threshold": self.slo.threshold,
                       "percentile": self.percentile}
        return {"schema": "lapse.analyze.capacity/1", **data,
                "per_worker_rate": self.per_worker_rate, "model_only": self.model_only,
                "explanation": self.explain()}

    def explain(self) -> str:
        """The model, its assumptions, the data and whether measurement checked it."""
        from lapse.reporting import human_seconds

        text = (
            f"M/G/c queue model of {self.event} (Poisson arrivals, first come first served, "
            f"one call per worker at a time): Erlang C for the chance of waiting, "
            f"Allen-Cunneen for the wait with service-time CV {self.cv_service:.2f}, response "
            f"time = wait + service time drawn from {min(self.calls, SERVICE_SAMPLE):,} of "
            f"the {self.calls:,} measured calls (mean and CV from all of them; mean "
            f"{human_seconds(self.mean_service)}, p{self.percentile:g} "
            f"{human_seconds(self.service_percentile)}). SLO: p{self.percentile:g} of "
            f"response time under {human_seconds(self.slo.threshold)}. It assumes service "
            f"times do not grow with load. ")
        checked = [s for s in self.stress if s.error is not None]
        if checked:
            worst = max(abs(s.error or 0) for s in checked)
            text += (f"Checked against {len(checked)} stress run(s): predicted "
                     f"p{self.percentile:g} within {worst:.0%} of measured.")
        else:
            text += ("Model-only estimate: no stress run (runs.kind = 'stress' with "
                     "attrs.workers, or lapse stress on a callable with --name "
                     f"{self.event!r}) measured this event under load to check it.")
        return text


def _percentile_sql(p: float) -> str:
    return f"quantile_cont(duration_ns::DOUBLE, {p / 100!r}) / 1e9"


def capacity(
    selection: Selection,
    dir: str | os.PathLike[str] | None = None,  # noqa: A002 - matches configure(dir=)
    *,
    event: str,
    slo: Slo | str,
    rate: float | None = None,
    workers: tuple[int, ...] = WORKERS,
    seed: int = 0,
) -> Capacity:
    """Capacity of one event's workers within an SLO such as ``"p99<200ms"``."""
    import numpy as np

    objective = parse_slo(slo, "slo", default_percentile=DEFAULT_PERCENTILE)
    if rate is not None and not rate > 0:
        raise ConfigError(f"rate: {rate!r} is not valid; expected calls per second above 0.")
    require_event(selection, dir, event, MIN_CALLS, "capacity")
    table = query_calls(selection, dir, event, "status", exclude_stress=True)
    if table.num_rows < MIN_CALLS:
        raise NotEnoughDataError(
            f"capacity needs at least {MIN_CALLS} calls of {event!r} outside stress runs to "
            f"measure service times; the selection has {table.num_rows:,}.")
    durations = table.column("duration_ns").to_numpy().astype(np.float64) / 1e9
    starts = table.column("start_ns").to_numpy()
    concurrency = table.column("concurrency").to_numpy().astype(np.float64)
    service = Service.of(durations, seed=seed)
    percentile = objective.percentile or DEFAULT_PERCENTILE
    notes: list[str] = []
    span = (int(starts.max()) - int(starts.min())) / 1e9
    measured = durations.size / span if span > 0 else None
    target, target_from = rate, "--rate"
    if target is None and measured is not None:
        target, target_from = measured, "measured throughput"
    grid = sorted(set(workers))
    needed = workers_for(target, service, objective) if target else None
    if needed is not None and needed not in grid:
        grid = sorted({*grid, needed})
    points = []
    for count in grid:
        top = max_rate(count, service, objective)
        waiting, wait = mmc_wait(top, 1 / service.mean, count) if top > 0 else (0.0, 0.0)
        points.append(CapacityPoint(count, top, top / count, top * service.mean / count,
                                    waiting, wait * (1 + service.cv2) / 2))
    response = (response_percentile(target, needed, service, percentile)
                if target and needed else None)
    scale = None
    if service.percentile(percentile) >= objective.threshold:
        notes.append(f"the service time alone has p{percentile:g} "
                     f"{service.percentile(percentile) * 1e3:.4g} ms, above the SLO: no "
                     "number of workers meets it; the calls themselves must get faster")
    else:
        scale = _autoscale(needed or 4, service, objective, needed)
    notes += _load_effect(durations, concurrency)
    stress = _stress(selection, dir, event, service, percentile)
    return Capacity(event, objective, int(durations.size), service.mean,
                    math.sqrt(service.cv2), service.percentile(percentile), measured,
                    float(concurrency.mean()) if concurrency.size else None,
                    int(concurrency.max()) if concurrency.size else None, points, target,
                    target_from if target else "", needed, response, scale, stress, notes)


def _autoscale(workers: int, service: Service, slo: Slo, needed: int | None) -> AutoScale:
    top = max_rate(workers, service, slo)
    utilisation = top * service.mean / workers
    per_worker = top / workers
    target = math.floor(utilisation * 0.9 * 100) / 100  # a 10% margin under the limit
    low = round(target / 2, 2)
    rule = (f"scale out when in-flight calls per worker (busy share) stay above {target:.2f} "
            f"or the rate exceeds {per_worker * 0.9:,.3g} calls/s per worker for a minute; "
            f"scale in below {low:.2f}")
    if needed is not None:
        rule += f"; keep at least {needed} worker(s) for the target rate"
    return AutoScale(target, low, per_worker * 0.9, needed, rule)


def _load_effect(durations: npt.NDArray[np.float64], concurrency: npt.NDArray[np.float64],
                 ) -> list[str]:
    """A note when calls made while others were in flight were clearly slower."""
    import numpy as np

    alone, shared = durations[concurrency <= 1], durations[concurrency >= 2]
    if alone.size < 30 or shared.size < 30:
        return []
    ratio = float(np.median(shared) / np.median(alone))
    if ratio > 1.2:
        return [f"calls made while others were in flight had a {ratio:.2f}x median duration: "
                "service time grows with load, so the model (which assumes it does not) is "
                "optimistic; check it with a stress run"]
    return []


def _stress(
    selection: Selection, folder: str | os.PathLike[str] | None, event: str, service: Service,
    percentile: float,
) -> list[StressCheck]:
    where, parameters = selection.where_sql()
    clause = f"{where} AND" if where else "WHERE"
    # A callable stress run's own `stress` events say how its load was served.
    table = _read.query(
        f"""
        SELECT run_id, count(*) AS calls, (max(start_ns) - min(start_ns)) / 1e9 AS span,
               {_percentile_sql(percentile)} AS measured,
               mode(TRY_CAST(json_extract_string(attrs, '$.workers') AS BIGINT)) AS workers,
               any_value(g.generators) AS generators, any_value(g.threads) AS threads
        FROM events LEFT JOIN (
            SELECT run_id,
                   max(TRY_CAST(json_extract_string(attrs, '$.workers') AS BIGINT))
                       AS generators,
                   max(TRY_CAST(json_extract_string(attrs, '$.threads') AS BIGINT)) AS threads
            FROM events_raw WHERE kind = 'stress' GROUP BY run_id) g USING (run_id)
        {clause} name = ?
          AND run_id IN (SELECT run_id FROM runs WHERE kind = 'stress')
        GROUP BY run_id ORDER BY run_id
        """,  # noqa: S608 - identifiers fixed, values are parameters
        [*parameters, event], folder)
    checks = []
    for row in table.to_pylist():
        rate = row["calls"] / row["span"] if row["span"] else 0.0
        if row["workers"]:
            queues, per_queue = 1, int(row["workers"])
        elif row["threads"] and row["generators"]:
            queues, per_queue = int(row["generators"]), int(row["threads"])
        else:
            queues, per_queue = 1, 0
        predicted = (response_percentile(rate / queues, per_queue, service, percentile)
                     if per_queue and rate else None)
        error = (predicted / row["measured"] - 1
                 if predicted is not None and math.isfinite(predicted) and row["measured"]
                 else None)
        checks.append(StressCheck(row["run_id"], int(row["calls"]), rate,
                                  queues * per_queue or None, float(row["measured"]),
                                  predicted, error, queues))
    return checks
