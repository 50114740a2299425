"""Drivers: what an event's duration depends on, and how long a given input will take.

A model of the duration of one event's calls from their attributes and
context (``lapse.analysis.calls.features``: numeric and text attributes,
version, host, service, caller, concurrency, threads, hour of day):

- **model**: gradient boosting (scikit-learn ``HistGradientBoostingRegressor``,
  native categories) of the log duration, so its prediction is a median and
  multiplicative effects need no interaction terms;
- **held-out accuracy**: calls are split 60/20/20 into training, calibration
  and test sets; R² (of log duration and of duration) and the mean absolute
  error are measured on the test set only;
- **importance**: permutation importance on the test set (drop in R² of log
  duration when a feature's values are shuffled, 5 repeats);
- **effects**: partial dependence of the median duration on each driver,
  summarized in words (slope per round number of units when it is about
  linear, difference between categories otherwise);
- **interval**: conformalized quantile regression (Romano et al. 2019):
  quantile models at (1 - level)/2 and (1 + level)/2, widened by the
  calibration set's conformity score, so on data like the training data the
  interval holds the duration ``level`` of the time (the test set measures it).

``Drivers.predict(rows=50000)`` estimates one input's duration with that
interval; beyond the range seen, a feature whose effect is about linear is
extrapolated along its slope (and the prediction says so).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from lapse._errors import ConfigError
from lapse.analysis.calls import (
    Calls,
    Features,
    features,
    load_calls,
    require_event,
    split,
    stats_import_error,
)
from lapse.analysis.result import AnalysisResult
from lapse.analysis.selection import Selection

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import pyarrow as pa

MIN_CALLS = 200
MAX_CALLS = 20_000
"""Calls the model is fitted on, at most (a fixed random sample of the selection)."""
LINEAR_R2 = 0.9
"""Partial dependence this close to a straight line is called linear."""
SMALL_EFFECT = 0.02
"""Drivers whose partial dependence moves the median by less than this fraction, or whose
importance is under IMPORTANCE_FLOOR, are reported as having no noticeable effect."""
IMPORTANCE_FLOOR = 0.005


@dataclass(frozen=True)
class Driver:
    """One feature: its importance, its effect in words and its partial dependence."""

    feature: str
    kind: str
    importance: float
    importance_sd: float
    rank: int
    noticeable: bool
    finding: str
    slope_s_per_unit: float | None
    slope_unit: float | None
    """The round number of units the finding states the slope per (1,000 rows…)."""
    linear_r2: float | None
    partial_dependence: list[tuple[Any, float]]
    """(value, median duration in seconds) pairs: values of a numeric feature on a grid of
    its quantiles, or each category."""


@dataclass(frozen=True)
class Prediction:
    """An estimated duration for one input, with its interval (seconds)."""

    event: str
    inputs: dict[str, Any]
    assumed: dict[str, Any]
    estimate: float
    low: float
    high: float
    level: float
    coverage: float
    notes: list[str]

    def explain(self) -> str:
        """The prediction in a sentence, with what it assumed."""
        from lapse.reporting import human_seconds

        given = ", ".join(f"{k}={v}" for k, v in self.inputs.items()) or "typical inputs"
        text = (f"{self.event} with {given}: about {human_seconds(self.estimate)} (median), "
                f"{self.level:.0%} interval {human_seconds(self.low)} – "
                f"{human_seconds(self.high)} (held-out coverage {self.coverage:.0%}).")
        if self.assumed:
            text += " Assumed typical values for " + ", ".join(
                f"{k}={v}" for k, v in self.assumed.items()) + "."
        return text + "".join(f" {note}" for note in self.notes)

    def to_dict(self) -> dict[str, Any]:
        """As JSON-ready objects."""
        return {**asdict(self), "explanation": self.explain()}

    def _repr_html_(self) -> str:
        from html import escape

        return f"<p>{escape(self.explain())}</p>"


@dataclass
class Drivers(AnalysisResult):
    """A fitted model of one event's duration, its accuracy and what drives it."""

    event: str
    calls: int
    used: int
    train: int
    calibration: int
    test: int
    r2_log: float
    r2: float
    mae: float
    median_duration: float
    level: float
    coverage: float
    drivers: list[Driver]
    dropped: dict[str, str]
    notes: list[str] = field(default_factory=list)
    _model: _Model | None = field(default=None, repr=False, compare=False)

    @property
    def table(self) -> pa.Table:
        """One row per feature, most important first."""
        import pyarrow as pa

        return pa.Table.from_pylist([
            {"feature": d.feature, "kind": d.kind, "rank": d.rank,
             "importance": d.importance, "importance_sd": d.importance_sd,
             "noticeable": d.noticeable, "slope_s_per_unit": d.slope_s_per_unit,
             "slope_unit": d.slope_unit,
             "linear_r2": d.linear_r2, "finding": d.finding} for d in self.drivers
        ]) if self.drivers else pa.table({"feature": pa.array([], pa.string())})

    @property
    def findings(self) -> list[str]:
        """The effects in plain words, most important first."""
        return [d.finding for d in self.drivers if d.noticeable]

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of ``lapse analyze drivers --format json``."""
        data = {f.name: getattr(self, f.name) for f in fields(self)
                if not f.name.startswith("_")}
        data["drivers"] = [asdict(d) for d in self.drivers]
        return {"schema": "lapse.analyze.drivers/1", **data, "findings": self.findings,
                "explanation": self.explain()}

    def explain(self) -> str:
        """What was fitted, on how much data, and how accurate it is on held-out calls."""
        sample = (f"a random sample of {self.used:,} of its {self.calls:,} calls"
                  if self.used < self.calls else f"its {self.calls:,} calls")
        return (
            f"Gradient boosting (scikit-learn HistGradientBoostingRegressor) of the log "
            f"duration of {self.event} from {len(self.drivers)} features, fitted on {sample} "
            f"({self.train:,} to train, {self.calibration:,} to calibrate intervals, "
            f"{self.test:,} held out). On the held-out calls: R² {self.r2_log:.2f} of log "
            f"duration ({self.r2:.2f} of duration), mean absolute error "
            f"{_human(self.mae)}. Importance is the drop in held-out R² when a feature is "
            f"shuffled; effects are partial dependences of the median. Prediction intervals "
            f"({self.level:.0%}, conformalized quantile regression) held "
            f"{self.coverage:.1%} of held-out durations."
        )

    def predict(self, inputs: Mapping[str, Any] | None = None, **attrs: Any) -> Prediction:
        """Estimated duration (seconds) for these feature values, with an interval.

        Names are features (``rows`` finds ``attrs.rows``; also ``version``,
        ``host``, ``concurrency``…); features not given take their typical value.
        """
        if self._model is None:
            raise ConfigError("this result has no fitted model (it was loaded from JSON?); "
                              "run lapse.analyze.drivers() again to predict.")
        return self._model.predict(self, {**(inputs or {}), **attrs})

    def predict_many(
        self, inputs: list[Mapping[str, Any]]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """(estimates, lows, highs) in seconds for many inputs at once, within the range
        seen (no extrapolation, no notes): for checking the model on new calls."""
        import numpy as np

        if self._model is None:
            raise ConfigError("this result has no fitted model; run drivers() again.")
        matrix = np.array([self._model.row(values)[0] for values in inputs])
        model = self._model
        return (np.exp(model.point.predict(matrix)),
                np.exp(model.low.predict(matrix) - model.margin),
                np.exp(model.high.predict(matrix) + model.margin))


def _human(seconds: float) -> str:
    from lapse.reporting import human_seconds

    return human_seconds(seconds)


@dataclass
class _Model:
    """The fitted estimators and what prediction needs to know about the features."""

    features: Features
    point: Any
    low: Any
    high: Any
    margin: float
    typical: list[float]
    ranges: dict[str, tuple[float, float]]

    def row(self, values: Mapping[str, Any]) -> tuple[Any, dict[str, Any], dict[str, Any],
                                                      list[str], dict[str, float]]:
        """The feature vector for these values; (row, given, assumed, notes, beyond)."""
        import numpy as np

        names = self.features.names
        row = np.array(self.typical, dtype=np.float64)
        given: dict[str, Any] = {}
        notes: list[str] = []
        beyond: dict[str, float] = {}
        for key, value in values.items():
            column = self.features.index(key)
            name = names[column]
            given[name] = value
            if self.features.is_categorical(name):
                levels = self.features.levels[name]
                text = str(value).lower() if isinstance(value, bool) else str(value)
                if text in levels:
                    row[column] = levels.index(text)
                else:
                    row[column] = np.nan
                    notes.append(f"{name}={text} was never seen (seen: "
                                 f"{', '.join(levels[:10])}); treated as unknown.")
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{name}: {value!r} is not a number.") from None
            low, high = self.ranges[name]
            clamped = min(max(number, low), high)
            if clamped != number:
                beyond[name] = number - clamped
            row[column] = clamped
        assumed = {}
        for index, name in enumerate(names):
            if name not in given:
                value = self.typical[index]
                assumed[name] = (self.features.levels[name][int(value)]
                                 if self.features.is_categorical(name)
                                 and not math.isnan(value) else _round(value))
        return row, given, assumed, notes, beyond

    def predict(self, result: Drivers, values: Mapping[str, Any]) -> Prediction:
        import numpy as np

        row, given, assumed, notes, beyond = self.row(values)
        matrix = row.reshape(1, -1)
        estimate = float(np.exp(self.point.predict(matrix)[0]))
        low = float(np.exp(self.low.predict(matrix)[0] - self.margin))
        high = float(np.exp(self.high.predict(matrix)[0] + self.margin))
        slopes = {d.feature: d for d in result.drivers}
        for name, excess in beyond.items():
            driver = slopes.get(name)
            low_edge, high_edge = self.ranges[name]
            seen = f"{_round(low_edge)}–{_round(high_edge)}"
            if (driver is not None and driver.slope_s_per_unit is not None
                    and (driver.linear_r2 or 0) >= LINEAR_R2):
                shift = driver.slope_s_per_unit * excess
                estimate, low, high = estimate + shift, low + shift, high + shift
                unit = driver.slope_unit or 1.0
                notes.append(f"{name}={_round(given[name])} is outside the range seen "
                             f"({seen}): extrapolated along its linear effect "
                             f"({_signed(driver.slope_s_per_unit * unit)} per {unit:,.0f}); "
                             "the interval is not calibrated there.")
            else:
                notes.append(f"{name}={_round(given[name])} is outside the range seen "
                              f"({seen}) and its effect is not linear: predicted as at the "
                              "edge of that range, likely an underestimate.")
        low, high = min(low, estimate), max(high, estimate)
        return Prediction(result.event, given, assumed, estimate, max(low, 0.0), high,
                          result.level, result.coverage, notes)


def _round(value: float) -> Any:
    if math.isnan(value):
        return None
    if float(value).is_integer():
        return int(value)
    return float(f"{value:.4g}")


def _estimator(loss: str, categorical: list[bool], seed: int, quantile: float | None = None,
               ) -> Any:
    from sklearn.ensemble import HistGradientBoostingRegressor

    options: dict[str, Any] = {"quantile": quantile} if quantile is not None else {}
    return HistGradientBoostingRegressor(
        loss=loss, max_iter=300, learning_rate=0.1, max_leaf_nodes=31, min_samples_leaf=20,
        early_stopping=True, validation_fraction=0.15, n_iter_no_change=15,
        categorical_features=categorical if any(categorical) else None, random_state=seed,
        **options)


def fit(
    calls: Calls,
    *,
    level: float = 0.9,
    seed: int = 0,
    importance: bool = True,
    repeats: int = 5,
) -> Drivers:
    """Fit, evaluate and explain the model of one event's calls (see the module doc)."""
    try:
        import sklearn.ensemble  # noqa: F401 - loads OpenMP before its threads are limited
        from threadpoolctl import threadpool_limits
    except ImportError as error:
        raise stats_import_error(error) from None
    # One OpenMP thread: on these sizes more threads gain little, and on a busy machine
    # spinning OpenMP workers made fitting 100x slower. (threadpoolctl only limits
    # libraries already loaded, hence the import above.)
    with threadpool_limits(limits=1, user_api="openmp"):
        return _fit(calls, level=level, seed=seed, importance=importance, repeats=repeats)


def _fit(calls: Calls, *, level: float, seed: int, importance: bool, repeats: int) -> Drivers:
    import numpy as np

    try:
        from sklearn.inspection import permutation_importance
        from sklearn.metrics import r2_score
    except ImportError as error:
        raise stats_import_error(error) from None
    if not 0.5 <= level < 1:
        raise ConfigError(f"level: {level!r} is not valid; expected a coverage such as 0.9.")
    table = features(calls)
    duration = np.maximum(calls.duration_s, 1e-9)
    if not table.names:
        reasons = "; ".join(f"{k}: {v}" for k, v in table.dropped.items()) or "none recorded"
        raise ConfigError(
            f"drivers: the calls of {calls.event!r} have nothing that varies to model "
            f"(attributes and context: {reasons}). Record attributes with lapse.set(rows=...) "
            "or span attributes, at level standard or debug.")
    y = np.log(duration)
    x = table.matrix
    categorical = [table.is_categorical(n) for n in table.names]
    train, calibrate, test = split(calls.n, (0.6, 0.2, 0.2), seed)
    alpha = 1 - level
    point = _estimator("squared_error", categorical, seed).fit(x[train], y[train])
    low = _estimator("quantile", categorical, seed, alpha / 2).fit(x[train], y[train])
    high = _estimator("quantile", categorical, seed, 1 - alpha / 2).fit(x[train], y[train])
    scores = np.maximum(low.predict(x[calibrate]) - y[calibrate],
                        y[calibrate] - high.predict(x[calibrate]))
    rank = min(math.ceil((1 - alpha) * (calibrate.size + 1)), calibrate.size) - 1
    margin = float(np.sort(scores)[rank])
    predicted = point.predict(x[test])
    inside = ((low.predict(x[test]) - margin <= y[test])
              & (y[test] <= high.predict(x[test]) + margin))
    r2_log = float(r2_score(y[test], predicted))
    r2 = float(r2_score(duration[test], np.exp(predicted)))
    mae = float(np.mean(np.abs(duration[test] - np.exp(predicted))))
    finite = np.where(np.isfinite(x), x, np.nan)
    typical, ranges = _typical(table, finite[train])
    model = _Model(table, point, low, high, margin, typical, ranges)
    if importance:
        cap = test[:5000]
        found = permutation_importance(point, x[cap], y[cap], n_repeats=repeats,
                                       random_state=seed, scoring="r2")
        means, sds = found.importances_mean, found.importances_std
    else:
        means = sds = np.zeros(len(table.names))
    median = float(np.median(duration))
    background = x[train][np.random.default_rng(seed).permutation(train.size)[:500]]
    drivers = [
        _driver(point, table, int(column), position, finite[train],
                background=background, importance=(float(means[column]), float(sds[column])),
                median=median, judged=importance)
        for position, column in enumerate(np.argsort(-means, kind="stable"), start=1)
    ]
    notes = []
    if calls.n < calls.total:
        notes.append(f"fitted on a random sample of {calls.n:,} of {calls.total:,} calls")
    if "hour" not in table.names and "hour" not in table.dropped:
        notes.append("hour of day not used: the calls span less than a day")
    return Drivers(calls.event, calls.total, calls.n, int(train.size), int(calibrate.size),
                   int(test.size), r2_log, r2, mae, median, level,
                   float(np.mean(inside)), drivers, table.dropped, notes, model)


def _typical(
    table: Features, train: npt.NDArray[np.float64]
) -> tuple[list[float], dict[str, tuple[float, float]]]:
    """Each feature's typical value (median, or commonest category) and numeric ranges."""
    import numpy as np

    typical = []
    ranges: dict[str, tuple[float, float]] = {}
    for column, name in enumerate(table.names):
        values = train[:, column]
        values = values[~np.isnan(values)]
        if table.is_categorical(name):
            typical.append(float(np.bincount(values.astype(int)).argmax()) if values.size
                           else np.nan)
        else:
            typical.append(float(np.median(values)) if values.size else np.nan)
            ranges[name] = ((float(values.min()), float(values.max())) if values.size
                            else (np.nan, np.nan))
    return typical, ranges


def _driver(
    model: Any, table: Features, column: int, position: int, train: npt.NDArray[np.float64],
    *, background: npt.NDArray[np.float64], importance: tuple[float, float], median: float,
    judged: bool,
) -> Driver:
    """One feature's importance, partial dependence and finding."""
    name = table.names[column]
    curve, slope, linear = _partial_dependence(model, background, table, column,
                                               train[:, column])
    spread = max(v for _, v in curve) - min(v for _, v in curve) if curve else 0.0
    noticeable = spread >= SMALL_EFFECT * median
    if judged:
        noticeable = noticeable and importance[0] >= IMPORTANCE_FLOOR
    finding = _finding(name, table, curve, slope=slope, linear=linear, noticeable=noticeable,
                       values=train[:, column])
    unit = None if slope is None else _unit(train[:, column])
    return Driver(name, table.kinds[name], importance[0], importance[1], position,
                  bool(noticeable), finding, slope, unit, linear, curve)


def _partial_dependence(
    model: Any, background: npt.NDArray[np.float64], table: Features, column: int,
    values: npt.NDArray[np.float64],
) -> tuple[list[tuple[Any, float]], float | None, float | None]:
    """Median duration (s) averaged over ``background`` with the feature set to each grid
    value; for a numeric feature also the least-squares slope (s per unit) and its R²."""
    import numpy as np

    name = table.names[column]
    present = values[~np.isnan(values)]
    if present.size == 0:
        return [], None, None
    if table.is_categorical(name):
        codes = np.unique(present.astype(int))
        counts = np.bincount(present.astype(int))
        codes = np.array([c for c in codes if counts[c] >= max(5, 0.01 * present.size)])
        grid = codes.astype(np.float64)
    else:
        unique = np.unique(present)
        grid = unique if unique.size <= 20 else np.unique(
            np.quantile(present, np.linspace(0.02, 0.98, 20)))
    if grid.size == 0:
        return [], None, None
    batch = np.repeat(background, grid.size, axis=0)
    batch[:, column] = np.tile(grid, background.shape[0])
    medians = np.exp(model.predict(batch)).reshape(background.shape[0], grid.size).mean(axis=0)
    if table.is_categorical(name):
        levels = table.levels[name]
        return [(levels[int(g)], float(m)) for g, m in zip(grid, medians, strict=True)], \
            None, None
    whole = bool(np.all(present == np.round(present)))
    curve = [(_round(float(np.round(g) if whole else g)), float(m))
             for g, m in zip(grid, medians, strict=True)]
    if grid.size < 3:
        slope = float((medians[-1] - medians[0]) / (grid[-1] - grid[0]))
        return curve, slope, 1.0
    slope, intercept = np.polyfit(grid, medians, 1)
    fitted = slope * grid + intercept
    total = float(np.sum((medians - medians.mean()) ** 2))
    r2 = 1 - float(np.sum((medians - fitted) ** 2)) / total if total > 0 else 0.0
    return curve, float(slope), r2


def _unit(values: npt.NDArray[np.float64]) -> float:
    """A round number of units to state a slope per (1,000 rows, 10 items…)."""
    import numpy as np

    present = values[~np.isnan(values)]
    spread = float(np.subtract(*np.quantile(present, [0.75, 0.25]))) if present.size else 1.0
    if spread <= 0:
        spread = float(np.ptp(present)) if present.size else 1.0
    return float(10 ** math.floor(math.log10(spread))) if spread >= 1 else 1.0


def _finding(
    name: str, table: Features, curve: list[tuple[Any, float]], *, slope: float | None,
    linear: float | None, noticeable: bool, values: npt.NDArray[np.float64],
) -> str:
    """The effect of one feature in plain words."""
    label = name.removeprefix("attrs.")
    if not curve:
        return f"{label}: no data to judge its effect."
    if not noticeable:
        return f"{label}: no noticeable effect on duration."
    if table.is_categorical(name):
        ordered = sorted(curve, key=lambda item: item[1])
        base_level, base = ordered[0]
        parts = [f"{level} {_signed(value - base)}" for level, value in ordered[1:6]]
        return (f"{label}: compared with {base_level} (median {_human(base)}), "
                + ", ".join(parts) + ".")
    first, last = curve[0], curve[-1]
    if slope is not None and linear is not None and linear >= LINEAR_R2:
        unit = _unit(values)
        per = f"{unit:,.0f} {label}" if unit > 1 else f"unit of {label}"
        trend = "grows" if slope > 0 else "falls"
        return (f"duration {trend} about linearly with {label}: {_signed(slope * unit)} "
                f"per {per} (median {_human(first[1])} at {first[0]:,}, "
                f"{_human(last[1])} at {last[0]:,}).")
    peak = max(curve, key=lambda item: item[1])
    trough = min(curve, key=lambda item: item[1])
    rising = all(b[1] >= a[1] - 1e-12 for a, b in itertools.pairwise(curve))
    falling = all(b[1] <= a[1] + 1e-12 for a, b in itertools.pairwise(curve))
    shape = "grows with" if rising else "falls with" if falling else "changes with"
    return (f"duration {shape} {label}, not linearly: median {_human(first[1])} at "
            f"{first[0]:,}, {_human(last[1])} at {last[0]:,} (lowest {_human(trough[1])} at "
            f"{trough[0]:,}, highest {_human(peak[1])} at {peak[0]:,}).")


def _signed(seconds: float) -> str:
    return ("+" if seconds >= 0 else "−") + _human(abs(seconds))


def drivers(
    selection: Selection,
    dir: str | os.PathLike[str] | None = None,  # noqa: A002 - matches configure(dir=)
    *,
    event: str,
    level: float = 0.9,
    max_calls: int = MAX_CALLS,
    seed: int = 0,
) -> Drivers:
    """Load one event's calls from a store and fit its model (see ``fit``)."""
    require_event(selection, dir, event, MIN_CALLS, "drivers")
    calls = load_calls(selection, dir, event, max_calls=max_calls)
    return fit(calls, level=level, seed=seed)


def parse_inputs(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["rows=50000", "model=large"]`` (or comma-joined) as a dict; numbers parsed."""
    values: dict[str, Any] = {}
    for item in (part.strip() for text in items for part in text.split(",")):
        if not item:
            continue
        key, sign, value = item.partition("=")
        if not sign or not key.strip():
            raise ConfigError(f"predict: {item!r} is not NAME=VALUE; write rows=50000 or "
                              "model=large (several joined by commas).")
        text = value.strip()
        try:
            values[key.strip()] = int(text)
        except ValueError:
            try:
                values[key.strip()] = float(text)
            except ValueError:
                values[key.strip()] = text
    return values
