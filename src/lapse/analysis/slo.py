"""Latency objectives as users write them: ``100ms``, ``p99<200ms``, ``p99.9 <= 1s``.

A bare duration bounds every call (what ``lapse analyze slow`` needs); a
percentile form bounds that percentile of the response time (what
``lapse analyze capacity`` plans for).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lapse._config import parse_duration_ns
from lapse._errors import ConfigError

_PERCENTILE = re.compile(r"^\s*p(\d+(?:\.\d+)?)\s*(<=|<)\s*(\S.*?)\s*$", re.IGNORECASE)
_FORMS = "a duration such as 100ms, or a percentile bound such as p99<200ms or p99.9<1s"


@dataclass(frozen=True)
class Slo:
    """A latency objective: ``threshold`` seconds, for a ``percentile`` or every call."""

    threshold: float
    percentile: float | None = None

    def __str__(self) -> str:
        from lapse.reporting import human_seconds

        bound = human_seconds(self.threshold).replace(" ", "")
        if self.percentile is None:
            return f"<{bound}"
        return f"p{self.percentile:g}<{bound}"


def parse_slo(value: object, setting: str = "slo", default_percentile: float | None = None,
              ) -> Slo:
    """An Slo from ``"100ms"``, ``"p99<200ms"``, a number of seconds or an Slo.

    A bare duration gets ``default_percentile`` (None: a bound on every call).
    """
    if isinstance(value, Slo):
        return value
    if isinstance(value, str):
        match = _PERCENTILE.match(value)
        if match is not None:
            percentile = float(match.group(1))
            if not 0 < percentile < 100:
                raise ConfigError(f"{setting}: {value!r} names percentile {percentile:g}; "
                                  "use one between 0 and 100, such as p99.")
            return Slo(_threshold(match.group(3), value, setting), percentile)
        if value.strip().lower().startswith("p"):
            raise ConfigError(f"{setting}: {value!r} is not an SLO; expected {_FORMS}.")
    return Slo(_threshold(value, value, setting), default_percentile)


def _threshold(text: object, original: object, setting: str) -> float:
    try:
        seconds = parse_duration_ns(text.strip() if isinstance(text, str) else text,
                                    setting) / 1e9
    except ConfigError:
        raise ConfigError(f"{setting}: {original!r} is not an SLO; expected {_FORMS}.") from None
    if seconds <= 0:
        raise ConfigError(f"{setting}: {original!r} is not an SLO; the bound must be above 0.")
    return seconds
