"""Release comparison: is the candidate slower than the baseline, per event, and by how much?

For each event name present in both selections:

- the **median ratio** candidate / baseline with a bootstrap confidence
  interval (percentile bootstrap of the ratio of medians);
- the **Brunner–Munzel test**, a rank test that, unlike Mann–Whitney, stays
  valid when the two samples have different variances and sizes; two-sided;
- **multiple-comparison control** across events (Holm by default, or
  Benjamini–Hochberg), so comparing twenty events does not raise twenty alarms;
- a **practical threshold** (default 5%): a difference must be both
  significant and larger than the threshold to count.

Verdicts: ``slower``, ``faster``, ``unchanged`` or ``not enough data``
(fewer than ``min_calls`` on either side). A CI gate fails on ``slower``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from lapse._errors import ConfigError
from lapse.analysis.result import AnalysisResult
from lapse.analysis.selection import Selection
from lapse.store import _read

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import pyarrow as pa

SLOWER, FASTER, UNCHANGED, NOT_ENOUGH = "slower", "faster", "unchanged", "not enough data"
CORRECTIONS = ("holm", "bh", "none")
BOOTSTRAP_CAP = 5_000
"""Largest sample resampled by the bootstrap; bigger ones are subsampled (CI width is then
dominated by the test's, and a 10M-event bootstrap would not fit in memory)."""


@dataclass(frozen=True)
class EventComparison:
    """The verdict for one event and the numbers behind it (durations in seconds)."""

    name: str
    verdict: str
    baseline_calls: int
    candidate_calls: int
    baseline_median: float | None
    candidate_median: float | None
    ratio: float | None
    ratio_low: float | None
    ratio_high: float | None
    p_value: float | None
    p_adjusted: float | None


_COLUMN_TYPES = {"name": "string", "verdict": "string", "baseline_calls": "int64",
                 "candidate_calls": "int64"}
"""Arrow types of the comparison table's columns; the others are float64."""


@dataclass
class Comparison(AnalysisResult):
    """Every event's comparison, and what was compared with what (``.table``: one row per
    event; shows as a table in Jupyter and terminals)."""

    schema = "lapse.compare/1"

    events: list[EventComparison]
    baseline: str
    candidate: str
    threshold: float
    alpha: float
    correction: str
    notes: list[str] = field(default_factory=list)

    @property
    def regressed(self) -> bool:
        """Whether any event is significantly slower beyond the threshold (a CI gate fails)."""
        return any(e.verdict == SLOWER for e in self.events)

    @property
    def table(self) -> pa.Table:
        """One row per event: verdict, medians (seconds), ratio, interval, p-values, calls."""
        import pyarrow as pa

        rows = [asdict(e) for e in self.events]
        return pa.table({
            f.name: pa.array([row[f.name] for row in rows],
                             type=pa.type_for_alias(_COLUMN_TYPES.get(f.name, "float64")))
            for f in fields(EventComparison)
        })

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of ``lapse compare --format json``."""
        return {
            "schema": self.schema, "baseline": self.baseline, "candidate": self.candidate,
            "threshold": self.threshold, "alpha": self.alpha, "correction": self.correction,
            "regressed": self.regressed, "notes": self.notes,
            "events": [asdict(e) for e in self.events],
        }

    def explain(self) -> str:
        """What was tested, on how much data, with what confidence, in one paragraph."""
        calls = sum(e.baseline_calls + e.candidate_calls for e in self.events)
        correction = {"holm": "Holm", "bh": "Benjamini-Hochberg", "none": "no"}[self.correction]
        return (
            f"Compared {len(self.events)} events ({calls:,} calls) of {self.candidate} "
            f"against {self.baseline}: Brunner-Munzel rank test per event with {correction} "
            f"correction across events at alpha {self.alpha:g}, median ratio with a "
            f"{1 - self.alpha:.0%} bootstrap interval (on at most {BOOTSTRAP_CAP:,} calls per "
            f"side, drawn at random); a change counts when it is significant "
            f"and beyond {self.threshold:.0%}."
        )


def _durations(selection: Selection, folder: str | os.PathLike[str] | None) -> dict[str, Any]:
    import numpy as np

    from lapse.analysis.summary import _durations as flatten

    where, parameters = selection.where_sql()
    table = _read.query(
        f"SELECT name, list(duration_ns) AS durations FROM events {where} GROUP BY name",  # noqa: S608
        parameters, folder,
    )
    flat, offsets = flatten(table.column("durations"))
    names = table.column("name").to_pylist()
    # Sorted, so the bootstrap does not depend on the order DuckDB happened to return.
    return {name: np.sort(flat[offsets[i]:offsets[i + 1]].astype(np.float64) / 1e9)
            for i, name in enumerate(names)}


def bootstrap_ratio(
    baseline: npt.NDArray[np.float64],
    candidate: npt.NDArray[np.float64],
    alpha: float,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of median(candidate) / median(baseline)."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def medians(sample: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        if sample.size > BOOTSTRAP_CAP:
            # The same draws as rng.choice(sample, ...), by index: a sample kept in an
            # engine (lapse.analysis.engines) hands over only the values drawn.
            sample = sample[rng.choice(sample.size, BOOTSTRAP_CAP, replace=False)]
        rows = max(1, 20_000_000 // sample.size)  # resample in chunks of ~160 MB at most
        out = []
        for start in range(0, resamples, rows):
            count = min(rows, resamples - start)
            picks = rng.integers(0, sample.size, (count, sample.size))
            out.append(np.median(sample[picks], axis=1))
        return np.concatenate(out)

    ratios = medians(candidate) / medians(baseline)
    low, high = np.quantile(ratios, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def adjust(p_values: Sequence[float], correction: str) -> list[float]:
    """P-values adjusted for testing several events at once (Holm or Benjamini-Hochberg)."""
    import numpy as np

    if not p_values or correction == "none":
        return list(p_values)
    p = np.asarray(p_values, dtype=float)
    if correction == "bh":
        from scipy.stats import false_discovery_control

        return [float(v) for v in false_discovery_control(p, method="bh")]
    order = np.argsort(p)
    m = len(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return [float(v) for v in adjusted]


@dataclass(frozen=True)
class Side:
    """One side of an event's comparison: what the tests need of its sample.

    ``values`` is the sample (durations in seconds) as the bootstrap draws from
    it: an array, or an object with ``size`` and indexing by position that
    fetches order statistics from an engine (``lapse.analysis.engines``).
    """

    size: int
    median: float | None
    minimum: float | None
    maximum: float | None
    values: Any


def side_of(values: npt.NDArray[np.float64]) -> Side:
    """A Side from an array of durations (seconds)."""
    import numpy as np

    if not values.size:
        return Side(0, None, None, None, values)
    return Side(int(values.size), float(np.median(values)), float(np.min(values)),
                float(np.max(values)), values)


def compare_samples(
    samples: dict[str, tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]],
    *,
    threshold: float = 0.05,
    alpha: float = 0.05,
    correction: str = "holm",
    min_calls: int = 20,
    resamples: int = 2000,
) -> list[EventComparison]:
    """Compare (baseline, candidate) duration samples per event name."""
    from scipy.stats import brunnermunzel

    def p_value(name: str, base: Side, cand: Side) -> float:
        return float(brunnermunzel(cand.values, base.values, alternative="two-sided").pvalue)

    sides = {name: (side_of(base), side_of(cand)) for name, (base, cand) in samples.items()}
    return compare_sides(sides, p_value, threshold=threshold, alpha=alpha,
                         correction=correction, min_calls=min_calls, resamples=resamples)


def compare_sides(
    sides: dict[str, tuple[Side, Side]],
    p_value: Any,
    *,
    threshold: float = 0.05,
    alpha: float = 0.05,
    correction: str = "holm",
    min_calls: int = 20,
    resamples: int = 2000,
) -> list[EventComparison]:
    """Compare (baseline, candidate) per event from each side's numbers.

    ``p_value(name, base, cand)`` gives the two-sided Brunner-Munzel p-value of
    an event with enough calls on both sides (scipy on arrays, or from ranks
    computed in an engine).
    """
    import numpy as np

    if correction not in CORRECTIONS:
        raise ConfigError(f"correction: {correction!r} is not valid; expected one of "
                          f"{', '.join(CORRECTIONS)}.")
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha: {alpha!r} is not valid; expected a probability such as 0.05.")
    if threshold < 0:
        raise ConfigError(f"threshold: {threshold!r} is not valid; expected 0.05 for 5%.")
    tested: list[tuple[str, float, float, float, float]] = []
    results: dict[str, EventComparison] = {}
    for name, (base, cand) in sorted(sides.items()):
        base_median, cand_median = base.median, cand.median
        if base.size < min_calls or cand.size < min_calls or not base_median:
            results[name] = EventComparison(name, NOT_ENOUGH, int(base.size), int(cand.size),
                                            base_median, cand_median, None, None, None, None,
                                            None)
            continue
        assert cand_median is not None
        if base.minimum == base.maximum and cand.minimum == cand.maximum:
            p = 1.0 if base.minimum == cand.minimum else 0.0
        else:
            p = p_value(name, base, cand)
            if np.isnan(p):  # no overlap at all: as different as samples can be
                p = 0.0
        low, high = bootstrap_ratio(base.values, cand.values, alpha, resamples)
        tested.append((name, p, cand_median / base_median, low, high))
        results[name] = EventComparison(name, UNCHANGED, int(base.size), int(cand.size),
                                        base_median, cand_median, cand_median / base_median,
                                        low, high, p, None)
    adjusted = adjust([t[1] for t in tested], correction)
    for (name, p_raw, ratio, low, high), p_adj in zip(tested, adjusted, strict=True):
        verdict = UNCHANGED
        if p_adj < alpha and ratio > 1 + threshold:
            verdict = SLOWER
        elif p_adj < alpha and ratio < 1 - threshold:
            verdict = FASTER
        base_entry = results[name]
        results[name] = EventComparison(
            name, verdict, base_entry.baseline_calls, base_entry.candidate_calls,
            base_entry.baseline_median, base_entry.candidate_median, ratio, low, high,
            p_raw, p_adj,
        )
    order = {SLOWER: 0, FASTER: 1, UNCHANGED: 2, NOT_ENOUGH: 3}
    return sorted(results.values(), key=lambda e: (order[e.verdict], -(e.ratio or 0)))


def compare(
    baseline: Selection,
    candidate: Selection,
    *,
    baseline_dir: str | os.PathLike[str] | None = None,
    candidate_dir: str | os.PathLike[str] | None = None,
    threshold: float = 0.05,
    alpha: float = 0.05,
    correction: str = "holm",
    min_calls: int = 20,
    labels: tuple[str, str] = ("baseline", "candidate"),
    engine: str = "duckdb",
) -> Comparison:
    """Compare two selections of one store (or of two stores) event by event.

    ``engine="spark"`` computes the medians, ranks and bootstrap draws on Spark
    (``lapse.analysis.engines``); the verdicts are the same as DuckDB's.
    """
    candidate_dir = candidate_dir if candidate_dir is not None else baseline_dir
    if engine != "duckdb":
        from lapse.analysis import engine_compare, engines

        engines.check_engine(engine)
        sides, p_value = engine_compare.compare_sides(
            baseline, candidate, baseline_dir=baseline_dir, candidate_dir=candidate_dir,
            engine=engine, min_calls=min_calls)
        events = compare_sides(sides, p_value, threshold=threshold, alpha=alpha,
                               correction=correction, min_calls=min_calls)
        has_base = any(base.size for base, _ in sides.values())
        has_cand = any(cand.size for _, cand in sides.values())
    else:
        base = _durations(baseline, baseline_dir)
        cand = _durations(candidate, candidate_dir)
        import numpy as np

        empty = np.empty(0)
        names = sorted(set(base) | set(cand))
        samples = {n: (base.get(n, empty), cand.get(n, empty)) for n in names}
        events = compare_samples(samples, threshold=threshold, alpha=alpha,
                                 correction=correction, min_calls=min_calls)
        has_base, has_cand = bool(base), bool(cand)
    notes = []
    if not has_base:
        notes.append(f"the baseline ({labels[0]}) selects no events")
    if not has_cand:
        notes.append(f"the candidate ({labels[1]}) selects no events")
    return Comparison(events, labels[0], labels[1], threshold, alpha, correction, notes)


def parse_selector(text: str) -> Selection:
    """A selection from ``version=1.3``, ``run_id=...``, ``2h..1h`` or several joined by commas."""
    from lapse.analysis.selection import between

    since = until = None
    conditions: list[str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if ".." in part and "=" not in part:
            since, until = between(part)
        else:
            conditions.append(part)
    if since is None and not conditions:
        raise ConfigError(
            f"selector {text!r} selects nothing; write conditions such as version=1.3, "
            "run_id=RUN, attrs.model=b, or a time range such as 2h..1h, joined by commas."
        )
    selection = Selection(since=since, until=until, where=tuple(conditions))
    selection.where_sql()  # check the conditions now, with the user's words
    return selection
