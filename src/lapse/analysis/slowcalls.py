"""Slow calls: which calls break the latency objective, as rules a person can read.

A call is *slow* when its duration exceeds the SLO threshold. A shallow
decision tree (scikit-learn ``DecisionTreeClassifier``, depth 3 by default)
learns slow / not slow from the calls' attributes and context (numbers as
they are; each category as its own yes/no column, so a rule reads
``attrs.cache = miss``). Calls are split 70/30: the tree is grown on the
first part and judged on the held-out part only.

Each branch of the tree whose calls are mostly slow becomes a rule (sibling
branches that are both slow are merged into their parent, and repeated
bounds on one feature are reduced to the tightest), with:

- **support**: calls the rule matches (all calls analysed);
- **precision**: share of the held-out calls it matches that are slow;
- **recall**: share of the held-out slow calls it matches.

The rule set as a whole (slow if any rule matches) also gets its held-out
precision and recall. Exemplars are the slowest calls each rule matches
(and the slowest no rule explains), with caller, stack and attributes.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from lapse.analysis.calls import (
    CONTEXT,
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
from lapse.analysis.slo import Slo, parse_slo

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import pyarrow as pa

MIN_CALLS = 100
MIN_SLOW = 10
"""Slow calls (and calls within the SLO) needed to learn rules."""
MAX_CALLS = 50_000
RULE_PRECISION = 0.5
"""A branch becomes a rule when at least this share of its training calls is slow."""


@dataclass(frozen=True)
class Condition:
    """One test of a rule: ``feature op value`` (op one of <=, >, =, !=)."""

    feature: str
    op: str
    value: Any

    def __str__(self) -> str:
        value = self.value if isinstance(self.value, str) else _number(self.value)
        return f"{self.feature} {self.op} {value}"


@dataclass(frozen=True)
class Rule:
    """IF all conditions THEN slow, with how often it applies and how often it is right."""

    conditions: list[Condition]
    support: int
    support_fraction: float
    precision: float
    recall: float
    train_precision: float

    def __str__(self) -> str:
        return " AND ".join(str(c) for c in self.conditions) or "(every call)"


@dataclass(frozen=True)
class Exemplar:
    """One slow call, to look at: where it came from and what it carried."""

    rule: int | None
    start_ns: int
    duration: float
    run_id: str
    span_id: int | None
    caller: str | None
    thread: str | None
    host: str | None
    version: str | None
    stack: list[str] | None
    attrs: dict[str, Any]


@dataclass
class SlowCalls(AnalysisResult):
    """Rules that describe the calls slower than the SLO, and examples of them."""

    event: str
    slo: float
    calls: int
    used: int
    slow: int
    train: int
    test: int
    rules: list[Rule]
    precision: float | None
    recall: float | None
    exemplars: list[Exemplar]
    depth: int
    notes: list[str] = field(default_factory=list)

    @property
    def slow_fraction(self) -> float:
        """Share of the analysed calls that are slow."""
        return self.slow / self.used if self.used else 0.0

    @property
    def table(self) -> pa.Table:
        """One row per rule."""
        import pyarrow as pa

        return pa.Table.from_pylist([
            {"rule": str(r), "support": r.support, "support_fraction": r.support_fraction,
             "precision": r.precision, "recall": r.recall} for r in self.rules
        ]) if self.rules else pa.table({"rule": pa.array([], pa.string())})

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of ``lapse analyze slow --format json``."""
        data = asdict(self)
        for rule, original in zip(data["rules"], self.rules, strict=True):
            rule["text"] = str(original)
        return {"schema": "lapse.analyze.slow/1", **data, "slow_fraction": self.slow_fraction,
                "explanation": self.explain()}

    def explain(self) -> str:
        """What was learned, from how much data, and how well it holds on held-out calls."""
        from lapse.reporting import human_seconds

        sample = (f"a random sample of {self.used:,} of its {self.calls:,} calls"
                  if self.used < self.calls else f"its {self.calls:,} calls")
        text = (f"{self.slow:,} of {self.used:,} calls of {self.event} "
                f"({self.slow_fraction:.1%}) took longer than the SLO of "
                f"{human_seconds(self.slo)}. A decision tree of depth {self.depth} "
                f"(scikit-learn) learned slow / not slow from their attributes and context "
                f"on {sample} ({self.train:,} to grow the tree, {self.test:,} held out). ")
        if self.rules and self.precision is not None and self.recall is not None:
            text += (f"Its {len(self.rules)} rule(s) together, on held-out calls: precision "
                     f"{self.precision:.0%} (matched calls that are slow), recall "
                     f"{self.recall:.0%} (slow calls matched).")
        else:
            text += "No rule singles out the slow calls."
        return text


def _number(value: float) -> str:
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.4g}"


def _onehot(table: Features) -> tuple[npt.NDArray[np.float64], list[tuple[str, str | None]]]:
    """Numeric columns as they are, each category level as a 0/1 column."""
    import numpy as np

    columns: list[npt.NDArray[np.float64]] = []
    meaning: list[tuple[str, str | None]] = []
    for index, name in enumerate(table.names):
        values = table.matrix[:, index]
        if table.is_categorical(name):
            for code, level in enumerate(table.levels[name]):
                columns.append((values == code).astype(np.float64))
                meaning.append((name, level))
        else:
            columns.append(values)
            meaning.append((name, None))
    return np.column_stack(columns), meaning


def _rules(
    tree: Any, meaning: list[tuple[str, str | None]], complete: dict[str, list[str]]
) -> list[list[Condition]]:
    """Conditions of each branch whose training calls are mostly slow (merged, simplified)."""
    inner = tree.tree_
    left, right = inner.children_left, inner.children_right

    def slow_share(node: int) -> float:
        counts = inner.value[node][0]
        total = float(counts.sum())
        return float(counts[1]) / total if total else 0.0

    def all_slow(node: int) -> bool:
        if left[node] == -1:
            return slow_share(node) >= RULE_PRECISION
        return all_slow(left[node]) and all_slow(right[node])

    found: list[list[Condition]] = []

    def walk(node: int, path: list[Condition]) -> None:
        if all_slow(node):
            if path:
                found.append(path)
            return
        if left[node] == -1:
            return
        name, level = meaning[inner.feature[node]]
        threshold = float(inner.threshold[node])
        if level is None:
            walk(left[node], [*path, Condition(name, "<=", threshold)])
            walk(right[node], [*path, Condition(name, ">", threshold)])
        else:
            walk(left[node], [*path, Condition(name, "!=", level)])
            walk(right[node], [*path, Condition(name, "=", level)])

    walk(0, [])
    # Tests of categories first, then bounds, each by feature name: the same rule always
    # reads the same, whichever split the tree happened to make first.
    return [sorted(_simplify(path, complete), key=lambda c: (c.op not in ("=", "!="),
                                                             c.feature))
            for path in found]


def _simplify(path: list[Condition], complete: dict[str, list[str]]) -> list[Condition]:
    """Keep the tightest bound per feature, drop != tests implied by an = test, and say
    ``= b`` for ``!= a`` when b is the only level left of a feature never missing
    (``complete`` maps those features to their levels)."""
    upper: dict[str, float] = {}
    lower: dict[str, float] = {}
    equal: dict[str, str] = {}
    different: dict[str, list[str]] = {}
    order: list[str] = []
    for condition in path:
        if condition.feature not in order:
            order.append(condition.feature)
        if condition.op == "<=":
            upper[condition.feature] = min(upper.get(condition.feature, float("inf")),
                                           condition.value)
        elif condition.op == ">":
            lower[condition.feature] = max(lower.get(condition.feature, float("-inf")),
                                           condition.value)
        elif condition.op == "=":
            equal[condition.feature] = condition.value
        else:
            different.setdefault(condition.feature, []).append(condition.value)
    result = []
    for name in order:
        if name in equal:
            result.append(Condition(name, "=", equal[name]))
            continue
        excluded = different.get(name, [])
        left_over = [level for level in complete.get(name, []) if level not in excluded]
        if excluded and len(left_over) == 1:
            result.append(Condition(name, "=", left_over[0]))
            continue
        result += [Condition(name, "!=", level) for level in excluded]
        if name in lower:
            result.append(Condition(name, ">", _tidy(lower[name])))
        if name in upper:
            result.append(Condition(name, "<=", _tidy(upper[name])))
    return result


def _tidy(threshold: float) -> float:
    """Tree thresholds sit halfway between values (5000.5): show the integer side."""
    if (threshold * 2).is_integer() and not threshold.is_integer():
        return float(int(threshold - 0.5))
    return float(f"{threshold:.4g}")


def matches(rule: list[Condition], table: Features) -> npt.NDArray[np.bool_]:
    """Which calls meet every condition of a rule."""
    import numpy as np

    hit = np.ones(table.matrix.shape[0], dtype=bool)
    for condition in rule:
        column = table.matrix[:, table.names.index(condition.feature)]
        if condition.op in ("=", "!="):
            code = table.levels[condition.feature].index(condition.value)
            same = column == code
            hit &= same if condition.op == "=" else ~same
        elif condition.op == "<=":
            hit &= column <= condition.value
        else:
            hit &= column > condition.value
    return hit


def learn(
    calls: Calls, slo: Slo | str | float, *, depth: int = 3, exemplars: int = 3,
    seed: int = 0,
) -> SlowCalls:
    """Learn the rules of slow calls of one event (see the module doc)."""
    import numpy as np

    try:
        from sklearn.tree import DecisionTreeClassifier
    except ImportError as error:
        raise stats_import_error(error) from None
    threshold = parse_slo(slo, "slo").threshold if not isinstance(slo, Slo) else slo.threshold
    duration = calls.duration_s
    slow = duration > threshold
    n_slow = int(slow.sum())
    notes: list[str] = []
    table = features(calls, context=(*CONTEXT, "thread"))
    train, test = split(calls.n, (0.7, 0.3), seed)
    if calls.n < calls.total:
        notes.append(f"analysed a random sample of {calls.n:,} of {calls.total:,} calls")
    base = SlowCalls(calls.event, threshold, calls.total, calls.n, n_slow, int(train.size),
                     int(test.size), [], None, None, [], depth, notes)
    if min(n_slow, calls.n - n_slow) < MIN_SLOW or not table.names:
        if not table.names:
            notes.append("the calls carry no attributes or context that vary, so no rule "
                         "can be learned")
        elif n_slow < MIN_SLOW:
            notes.append(f"only {n_slow:,} calls are slower than the SLO; rules need at "
                         f"least {MIN_SLOW}")
        else:
            notes.append(f"only {calls.n - n_slow:,} calls are within the SLO; rules need "
                         f"at least {MIN_SLOW}")
        base.exemplars = _exemplars(calls, slow, [], table, exemplars)
        return base
    matrix, meaning = _onehot(table)
    tree = DecisionTreeClassifier(max_depth=depth, min_samples_leaf=max(5, calls.n // 200),
                                  random_state=seed)
    tree.fit(matrix[train], slow[train])
    found: list[tuple[list[Condition], Rule]] = []
    complete = {name: levels for name, levels in table.levels.items()
                if not np.isnan(table.matrix[:, table.names.index(name)]).any()}
    for conditions in _rules(tree, meaning, complete):
        hit = matches(conditions, table)
        test_hit, train_hit = hit[test], hit[train]
        precision = float(slow[test][test_hit].mean()) if test_hit.any() else 0.0
        recall = float(test_hit[slow[test]].mean()) if slow[test].any() else 0.0
        train_precision = float(slow[train][train_hit].mean()) if train_hit.any() else 0.0
        found.append((conditions, Rule(conditions, int(hit.sum()), float(hit.mean()),
                                       precision, recall, train_precision)))
    found.sort(key=lambda item: -item[1].support * item[1].precision)
    base.rules = [rule for _, rule in found]
    if found:
        any_rule = np.zeros(calls.n, dtype=bool)
        for conditions, _ in found:
            any_rule |= matches(conditions, table)
        predicted = any_rule[test]
        base.precision = float(slow[test][predicted].mean()) if predicted.any() else 0.0
        base.recall = float(predicted[slow[test]].mean()) if slow[test].any() else 0.0
    else:
        notes.append("no branch of the tree holds mostly slow calls: slowness does not "
                     "follow the recorded attributes (look at the exemplars)")
    base.exemplars = _exemplars(calls, slow, [c for c, _ in found], table, exemplars)
    return base


def _exemplars(
    calls: Calls, slow: npt.NDArray[np.bool_], rules: list[list[Condition]], table: Features,
    per_rule: int,
) -> list[Exemplar]:
    """The slowest calls of each rule (those with a stack first), then the unexplained."""
    import numpy as np

    duration = calls.duration_s
    has_stack = np.zeros(calls.n, dtype=bool)
    if "stack" in calls.table.column_names:
        import pyarrow.compute as pc

        lengths = pc.fill_null(pc.list_value_length(calls.table.column("stack")), 0)
        has_stack = lengths.to_numpy() > 0
    explained = np.zeros(calls.n, dtype=bool)
    picked: list[tuple[int | None, int]] = []
    for number, rule in enumerate(rules):
        hit = matches(rule, table) & slow
        explained |= hit
        picked += [(number, int(i)) for i in _slowest(hit, duration, has_stack, per_rule)]
    rest = slow & ~explained
    picked += [(None, int(i)) for i in _slowest(rest, duration, has_stack, per_rule)]
    if not picked:
        return []
    import pyarrow as pa

    rows = calls.table.take(pa.array([index for _, index in picked], pa.int64())).to_pylist()
    found = []
    for (rule_number, index), row in zip(picked, rows, strict=True):
        found.append(Exemplar(
            rule_number, int(row["start_ns"]), float(duration[index]), row["run_id"],
            row.get("span_id"), row.get("caller"), row.get("thread"), row.get("host"),
            row.get("version"), row.get("stack"), json.loads(row["attrs"] or "{}")))
    return found


def _slowest(mask: npt.NDArray[np.bool_], duration: npt.NDArray[np.float64],
             has_stack: npt.NDArray[np.bool_], count: int) -> list[int]:
    import numpy as np

    candidates = np.flatnonzero(mask)
    order = np.lexsort((-duration[candidates], ~has_stack[candidates]))
    return [int(i) for i in candidates[order[:count]]]


def slow_calls(
    selection: Selection,
    dir: str | os.PathLike[str] | None = None,  # noqa: A002 - matches configure(dir=)
    *,
    event: str,
    slo: Slo | str | float,
    depth: int = 3,
    exemplars: int = 3,
    max_calls: int = MAX_CALLS,
    seed: int = 0,
) -> SlowCalls:
    """Load one event's calls and learn the rules of the slow ones (see ``learn``)."""
    checked = slo if isinstance(slo, Slo) else parse_slo(slo, "slo")
    if not 1 <= depth <= 6:
        from lapse._errors import ConfigError

        raise ConfigError(f"depth: {depth} is not valid; rules stay readable with a depth "
                          "of 1 to 6 (default 3).")
    require_event(selection, dir, event, MIN_CALLS, "slow")
    calls = load_calls(selection, dir, event, max_calls=max_calls, with_stack=True)
    return learn(calls, checked, depth=depth, exemplars=exemplars, seed=seed)
