"""``lapse compare`` on an engine: medians, Brunner-Munzel ranks and bootstrap draws in it.

The companion of ``lapse.analysis.engines`` (which holds the sources, the
selection in Ibis and the report's query). Per event and side, one query
gives the size, the median's order statistics, the range, the mean midrank
within both sides and the sum of squared rank deviations that scipy's
``brunnermunzel`` uses; the p-value is then computed here, exactly as scipy
does, from those sums. Samples small enough for the bootstrap to use whole
come back whole; larger ones stay in the engine and only the order statistics
the bootstrap draws are fetched, so its interval equals DuckDB's.
"""

from __future__ import annotations

import os
from typing import Any

from lapse.analysis.engines import execute, filters, open_source, uses_runs
from lapse.analysis.selection import Selection


class RankedSample:
    """A side's sample kept in the engine: its size, and order statistics fetched by position.

    The bootstrap of ``lapse.analysis.compare`` draws positions of the sorted
    sample (``sample[rng.choice(size, ...)]``); only those values are fetched.
    """

    def __init__(self, size: int, fetch: Any) -> None:
        self.size = size
        self._fetch = fetch

    def __getitem__(self, positions: Any) -> Any:
        import numpy as np

        wanted = np.asarray(positions, dtype=np.int64)
        unique = np.unique(wanted)
        values: dict[int, float] = self._fetch([int(rank) for rank in unique])
        lookup = np.array([values[int(rank)] for rank in unique], dtype=np.float64)
        return lookup[np.searchsorted(unique, wanted)]


def brunner_munzel_p(*, nx: int, ny: int, mean_x: float, mean_y: float, sum_x: float,
                     sum_y: float) -> float:
    """Two-sided Brunner-Munzel p-value (t approximation) from per-sample rank sums.

    ``mean_*`` are the mean midranks of each sample within both samples together;
    ``sum_*`` the sums of squared deviations of scipy's ``brunnermunzel``
    (x is the candidate, y the baseline, as ``compare`` calls it).
    """
    import numpy as np
    from scipy.stats import t

    with np.errstate(divide="ignore", invalid="ignore"):
        sx = np.float64(sum_x) / (nx - 1)
        sy = np.float64(sum_y) / (ny - 1)
        statistic = nx * ny * (np.float64(mean_y) - mean_x)
        statistic /= (nx + ny) * np.sqrt(nx * sx + ny * sy)
        numerator = np.power(nx * sx + ny * sy, 2.0)
        denominator = np.power(nx * sx, 2.0) / (nx - 1) + np.power(ny * sy, 2.0) / (ny - 1)
        df = numerator / denominator
        p = 2 * t.sf(np.abs(statistic), df)
    return float(np.clip(p, 0.0, 1.0)) if not np.isnan(p) else float("nan")


def compare_sides(
    baseline: Selection,
    candidate: Selection,
    *,
    baseline_dir: str | os.PathLike[str] | None,
    candidate_dir: str | os.PathLike[str] | None,
    engine: str,
    min_calls: int,
) -> tuple[dict[str, tuple[Any, Any]], Any]:
    """Each event's baseline and candidate Sides, and its Brunner-Munzel p-value function.

    One query over both selections together (two stores if need be): per event
    and side the size, the median's order statistics, min, max, the mean
    midrank within both sides and the sum of squared rank deviations; samples
    small enough for the bootstrap to use whole (``BOOTSTRAP_CAP``) come back
    whole, larger ones stay in the engine (RankedSample).
    """
    import ibis
    import numpy as np

    from lapse.analysis.compare import BOOTSTRAP_CAP, Side

    con = None
    parts = []
    for side, selection, folder in ((0, baseline, baseline_dir), (1, candidate, candidate_dir)):
        source = open_source(engine, folder, with_runs=uses_runs(selection), con=con)
        con = source.con
        table = source.events
        predicates = filters(source, table, selection)
        if predicates:
            table = table.filter(predicates)
        parts.append(table.select("name", "duration_ns").mutate(
            side=ibis.literal(side, type="int8")))
    union = parts[0].union(parts[1])
    by_side = ["name", "side"]
    ties_all = union.count().over(ibis.window(group_by=["name", "duration_ns"]))
    ties_side = union.count().over(ibis.window(group_by=["name", "side", "duration_ns"]))
    ranked_union = union.mutate(
        # midranks (ties share the mean of their ranks), 1-based, as scipy's rankdata
        rc=ibis.rank().over(ibis.window(group_by="name", order_by=union.duration_ns))
        + 1 + (ties_all - 1) / 2,
        rs=ibis.rank().over(ibis.window(group_by=by_side, order_by=union.duration_ns))
        + 1 + (ties_side - 1) / 2,
        rn=ibis.row_number().over(ibis.window(group_by=by_side, order_by=union.duration_ns)),
        n=union.count().over(ibis.window(group_by=by_side)),
    )
    r = ranked_union.mutate(mc=ranked_union.rc.mean().over(ibis.window(group_by=by_side)))
    deviation = r.rc - r.rs - r.mc + (r.n + 1) / 2
    small = r.n <= BOOTSTRAP_CAP
    middle = (r.rn == (r.n - 1) // 2) | (r.rn == r.n // 2)
    rows_query = r.group_by(by_side).aggregate(
        n=r.n.max(), mean_rank=r.mc.max(), squares=(deviation * deviation).sum(),
        minimum=r.duration_ns.min(), maximum=r.duration_ns.max(),
        stats=ibis.struct({"rn": r.rn, "duration_ns": r.duration_ns}).collect(
            where=small | middle),
    )
    rows = execute(source, rows_query).to_pylist()

    def fetcher(name: str, side: int) -> Any:
        def fetch(ranks: list[int]) -> dict[int, float]:
            # A filter on the window's partition keys: engines push it below the window.
            table = ranked_union
            found = table.filter(table.name == name, table.side == side,
                                 table.rn.isin(ranks)).select("rn", "duration_ns")
            return {int(row["rn"]): row["duration_ns"] / 1e9
                    for row in execute(source, found).to_pylist()}
        return fetch

    numbers: dict[tuple[str, int], dict[str, Any]] = {(row["name"], row["side"]): row
                                                     for row in rows}
    sides: dict[str, tuple[Any, Any]] = {}
    for name in sorted({name for name, _ in numbers}):
        pair = []
        for side in (0, 1):
            row = numbers.get((name, side))
            if row is None:
                pair.append(Side(0, None, None, None, np.empty(0)))
                continue
            n = int(row["n"])
            stats = {int(s["rn"]): s["duration_ns"] / 1e9 for s in row["stats"]}
            median = float(np.median(np.array([stats[(n - 1) // 2], stats[n // 2]])
                                     if n % 2 == 0 else np.array([stats[(n - 1) // 2]])))
            values: Any = (np.array([stats[i] for i in range(n)], dtype=np.float64)
                           if n <= BOOTSTRAP_CAP else RankedSample(n, fetcher(name, side)))
            pair.append(Side(n, median, row["minimum"] / 1e9, row["maximum"] / 1e9, values))
        sides[name] = (pair[0], pair[1])

    def p_value(name: str, base: Any, cand: Any) -> float:
        x, y = numbers[(name, 1)], numbers[(name, 0)]
        return brunner_munzel_p(nx=int(x["n"]), ny=int(y["n"]), mean_x=x["mean_rank"],
                                mean_y=y["mean_rank"], sum_x=x["squares"], sum_y=y["squares"])

    return sides, p_value
