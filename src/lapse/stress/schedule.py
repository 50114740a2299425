"""When requests are due: rates, ramps, SLOs and arrival times, parsed from the user's words.

An open-loop run sends request ``i`` at its *intended* time, whatever happened
to earlier requests; latency is measured from that time, so a stalled server
cannot slow the generator down and hide its own stall (coordinated omission).
The intended times come from here: evenly spaced (``constant``) or a Poisson
process (``poisson``: exponential gaps with the same mean).

Every parser raises ConfigError with the bad text and an example of good text.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

from lapse._config import parse_duration_ns
from lapse._errors import ConfigError

ARRIVALS = ("constant", "poisson")

_RATE = re.compile(
    r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(k)?\s*(?:/\s*(s|sec|second|m|min|minute|h|hour))?\s*$",
    re.IGNORECASE,
)
_PER = {None: 1.0, "s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0,
        "minute": 60.0, "h": 3600.0, "hour": 3600.0}
_SLO = re.compile(
    r"^\s*(p(?:[0-9]+(?:\.[0-9]+)?)|mean|max|errors)\s*(<=|<)\s*(.+?)\s*$", re.IGNORECASE
)

MAX_RATE = 10_000_000.0
"""Rates above this are surely typos (ten million requests a second from one machine)."""


def parse_rate(text: object, setting: str = "rate") -> float:
    """Requests per second from ``200``, ``200/s``, ``1.5k/s`` or ``3000/min``."""
    match = _RATE.match(str(text)) if isinstance(text, str | int | float) else None
    if match is None or isinstance(text, bool):
        raise ConfigError(
            f"{setting}: {text!r} is not a rate; expected requests per second such as "
            "200, 200/s, 1.5k/s or 3000/min."
        )
    number, kilo, per = match.groups()
    rate = float(number) * (1000.0 if kilo else 1.0) / _PER[per.lower() if per else None]
    if not 0 < rate <= MAX_RATE:
        raise ConfigError(
            f"{setting}: {text!r} is not a usable rate; expected more than 0 and at most "
            f"{MAX_RATE:,.0f} requests per second."
        )
    return rate


def parse_positive_duration_ns(text: object, setting: str) -> int:
    """A duration greater than zero (``10s``, ``500ms``, ``2m``) in nanoseconds."""
    ns = parse_duration_ns(text, setting)
    if ns <= 0:
        raise ConfigError(f"{setting}: {text!r} is not valid; expected a duration greater "
                          "than zero, such as 10s, 500ms or 2m.")
    return ns


def parse_ramp(text: str) -> list[float]:
    """The rates of ``START:STOP:STEP`` (``50:1000:50``: 50, 100, ..., 1000 requests/s)."""
    parts = text.split(":")
    if len(parts) != 3:
        raise ConfigError(
            f"ramp: {text!r} is not a ramp; expected START:STOP:STEP in requests per second, "
            "such as 50:1000:50 (50, 100, ... 1000)."
        )
    start, stop, step = (parse_rate(part, "ramp") for part in parts)
    if stop < start:
        raise ConfigError(f"ramp: {text!r} goes down; START must not exceed STOP.")
    count = int((stop - start) / step + 1e-9) + 1
    if count > 200:
        raise ConfigError(f"ramp: {text!r} has {count} steps; use at most 200 (a larger STEP).")
    return [start + i * step for i in range(count)]


@dataclass(frozen=True)
class Objective:
    """One service-level objective: ``p99<200ms``, ``mean<=50ms`` or ``errors<1%``."""

    text: str
    metric: str
    """``p99``, ``p99.9``, ``mean``, ``max`` or ``errors``."""
    inclusive: bool
    limit: float
    """Seconds for latencies, a fraction (0.01) for errors."""

    @property
    def percentile(self) -> float | None:
        """The percentile this objective bounds, if it bounds one."""
        return float(self.metric[1:]) if self.metric.startswith("p") else None

    def met_by(self, value: float | None) -> bool:
        """Whether a measured value satisfies the objective (no value: not met)."""
        if value is None:
            return False
        return value <= self.limit if self.inclusive else value < self.limit


def parse_slo(text: str) -> list[Objective]:
    """Objectives from ``p99<200ms``, several joined by commas (``p50<20ms,errors<1%``)."""
    objectives = []
    for part in (p for p in text.split(",") if p.strip()):
        match = _SLO.match(part)
        if match is None:
            raise ConfigError(
                f"slo: {part.strip()!r} is not an objective; expected METRIC<LIMIT such as "
                "p99<200ms, p50<=20ms, mean<50ms, max<1s or errors<1%, joined by commas."
            )
        metric, operator, limit_text = match.groups()
        metric = metric.lower()
        if metric == "errors":
            limit = _parse_fraction(limit_text, part)
        else:
            if metric.startswith("p") and not 0 < float(metric[1:]) < 100:
                raise ConfigError(f"slo: {part.strip()!r}: a percentile is between p0 and p100, "
                                  "such as p99 or p99.9.")
            limit = parse_duration_ns(limit_text, "slo") / 1e9
        objectives.append(Objective(part.strip(), metric, operator == "<=", limit))
    if not objectives:
        raise ConfigError(f"slo: {text!r} names no objective; write one such as p99<200ms.")
    return objectives


def _parse_fraction(text: str, part: str) -> float:
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise ConfigError(f"slo: {part.strip()!r}: the error limit is a percentage such as 1% "
                          "(or a fraction such as 0.01).")
    return value


def intended_times(
    start_ns: int,
    duration_ns: int,
    rate: float,
    arrivals: str,
    *,
    offset: float = 0.0,
    seed: int | None = None,
    limit: int | None = None,
) -> Iterator[int]:
    """Intended start times (ns, the caller's clock) of one open-loop stream.

    ``rate`` is this stream's requests per second; ``offset`` (a fraction of
    one gap) staggers constant streams of several workers so that together
    they are evenly spaced; ``limit`` caps the count. Times before
    ``start_ns + duration_ns`` only.
    """
    if arrivals not in ARRIVALS:
        raise ConfigError(f"arrivals: {arrivals!r} is not valid; expected one of "
                          f"{', '.join(ARRIVALS)}.")
    end = start_ns + duration_ns
    gap = 1e9 / rate
    count = 0
    if arrivals == "constant":
        while limit is None or count < limit:
            at = start_ns + round((count + offset) * gap)
            if at >= end:
                return
            yield at
            count += 1
        return
    draw = random.Random(seed).expovariate
    at_f = float(start_ns) + draw(1.0) * gap
    while (limit is None or count < limit) and at_f < end:
        yield round(at_f)
        count += 1
        at_f += draw(1.0) * gap
