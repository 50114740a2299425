"""The pytest plugin's release gate: find the baseline test run, compare, report.

``--lapse-baseline SELECTOR`` names the baseline (``last``, a test-run id, a run
id, a git commit, or another store); its tests' and events' durations are
compared with this run's through ``lapse compare``'s statistics, and the
session fails when anything is significantly slower beyond the threshold.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lapse.analysis.compare import Comparison


@dataclass(frozen=True)
class RecordedTestRun:
    """One pytest session found in a store."""

    test_run: str
    started_ns: int
    run_ids: tuple[str, ...]
    git_commit: str | None


def recorded_test_runs(store: Path) -> list[RecordedTestRun]:
    """Every test run in a store, oldest first."""
    from lapse.store._read import query

    table = query(
        "SELECT json_extract_string(e.attrs, '$.test_run') AS test_run, min(e.start_ns) AS "
        "started, list(DISTINCT e.run_id) AS runs, max(r.git_commit) AS git_commit "
        "FROM events_raw e LEFT JOIN runs r ON e.run_id = r.run_id "
        "WHERE e.kind = 'test' AND json_extract_string(e.attrs, '$.test_run') IS NOT NULL "
        "GROUP BY 1 ORDER BY started", (), store)
    return [RecordedTestRun(row["test_run"], row["started"], tuple(sorted(row["runs"])),
                    row["git_commit"]) for row in table.to_pylist()]


def resolve_baseline(
    selector: str, store: Path, current: str
) -> tuple[Path, list[RecordedTestRun], str]:
    """The baseline store and test runs a selector names (ConfigError when it names none).

    ``last`` (the latest test run before this one), a directory (another
    store: its latest test run), a test-run id, a run id (its test run), or a
    git commit (every test run at that commit; a prefix of 4+ characters).
    """
    from lapse._errors import ConfigError

    if selector == "last":
        runs = [r for r in recorded_test_runs(store) if r.test_run != current]
        return store, runs[-1:], f"last test run ({runs[-1].test_run})" if runs else "last"
    path = Path(selector).expanduser()
    if path.is_dir():
        runs = [r for r in recorded_test_runs(path) if r.test_run != current]
        if not runs:
            raise ConfigError(f"--lapse-baseline {selector!r}: the store has no test runs; "
                              "record one there with pytest --lapse --lapse-dir PATH.")
        return path, runs[-1:], f"{path} ({runs[-1].test_run})"
    if os.sep in selector or selector.startswith("."):
        raise ConfigError(f"--lapse-baseline {selector!r}: no such store directory.")
    runs = [r for r in recorded_test_runs(store) if r.test_run != current]
    chosen = [r for r in runs if r.test_run == selector or selector in r.run_ids]
    if chosen:
        return store, chosen, selector
    lowered = selector.lower()
    if len(selector) >= 4 and all(c in "0123456789abcdef" for c in lowered):
        chosen = [r for r in runs if r.git_commit and r.git_commit.lower().startswith(lowered)]
        if chosen:
            return store, chosen, f"commit {selector} ({len(chosen)} test run(s))"
    known = ", ".join(f"{r.test_run} ({(r.git_commit or '?')[:8]})" for r in runs[-3:])
    raise ConfigError(
        f"--lapse-baseline {selector!r} names no test run, run id, git commit or store "
        f"directory in {store}; latest test runs: {known or 'none'}. Use 'last' for the "
        "previous one."
    )


def samples(store: Path, run_ids: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Durations (s, sorted) per comparable key: ``node id (phase)`` for tests, else the name.

    Test phases count only when passed; benchmarks and lapse events always.
    """
    import numpy as np

    from lapse.store._read import query

    if not run_ids:
        return {}
    marks = ", ".join("?" for _ in run_ids)
    table = query(
        "SELECT CASE WHEN kind = 'test' THEN name || ' (' || "  # noqa: S608 - placeholders
        "json_extract_string(attrs, '$.phase') || ')' ELSE name END AS key, "
        "list(duration_ns) AS durations FROM events_raw "
        f"WHERE run_id IN ({marks}) AND (kind != 'test' OR "
        "json_extract_string(attrs, '$.outcome') = 'passed') GROUP BY 1",
        list(run_ids), store)
    return {row["key"]: np.sort(np.asarray(row["durations"], dtype=np.float64) / 1e9)
            for row in table.to_pylist()}


def gate(
    selector: str, store: Path, current: str, *, threshold: float, alpha: float,
    min_calls: int,
) -> tuple[Comparison | None, str | None]:
    """Compare the current test run with the baseline; (comparison, note)."""
    import numpy as np

    from lapse._errors import LapseError
    from lapse.analysis.compare import Comparison, compare_samples

    try:
        import scipy.stats  # noqa: F401 - the Brunner-Munzel test
    except ImportError:
        raise LapseError("the gate's statistics need scipy, which is not installed: "
                         "pip install 'lapse[stats]'") from None
    base_store, base_runs, label = resolve_baseline(selector, store, current)
    if not base_runs:
        return None, (f"no earlier test run in {store} to compare with ('last'): this run is "
                      "the baseline of the next one.")
    mine = [r for r in recorded_test_runs(store) if r.test_run == current]
    candidate = samples(store, [i for r in mine for i in r.run_ids])
    baseline = samples(base_store, [i for r in base_runs for i in r.run_ids])
    empty = np.empty(0)
    names = sorted(set(baseline) | set(candidate))
    events = compare_samples({n: (baseline.get(n, empty), candidate.get(n, empty))
                              for n in names},
                             threshold=threshold, alpha=alpha, min_calls=min_calls)
    notes = [] if candidate else ["this test run recorded nothing comparable"]
    return Comparison(events, label, f"test run {current}", threshold, alpha, "holm",
                      notes), None


def summary_lines(comparison: Comparison) -> list[tuple[str, dict[str, bool]]]:
    """The terminal summary: the events that changed, as a table, and the verdict."""
    from lapse.analysis.compare import FASTER, NOT_ENOUGH, SLOWER, UNCHANGED
    from lapse.reporting import human_seconds

    changed = [e for e in comparison.events if e.verdict in (SLOWER, FASTER)]
    counts = {v: sum(e.verdict == v for e in comparison.events)
              for v in (SLOWER, FASTER, UNCHANGED, NOT_ENOUGH)}
    lines: list[tuple[str, dict[str, bool]]] = [(
        f"compared with {comparison.baseline}: {counts[SLOWER]} slower, {counts[FASTER]} "
        f"faster, {counts[UNCHANGED]} unchanged, {counts[NOT_ENOUGH]} with too few samples "
        f"(threshold {comparison.threshold:.0%}, alpha {comparison.alpha:g}, Holm)", {})]
    if changed:
        level = 1 - comparison.alpha
        header = ("verdict", "baseline", "now", "ratio", f"{level:.0%} interval", "p adj",
                  "n", "event")
        rows = [header] + [(
            e.verdict, human_seconds(e.baseline_median), human_seconds(e.candidate_median),
            f"{e.ratio:.3f}", f"{e.ratio_low:.3f}–{e.ratio_high:.3f}",
            f"{e.p_adjusted:.2g}", f"{e.baseline_calls}/{e.candidate_calls}", e.name)
            for e in changed]
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(header) - 1)]
        for index, row in enumerate(rows):
            text = "  ".join(str(c).rjust(w) if i > 0 else str(c).ljust(w)
                             for i, (c, w) in enumerate(zip(row, widths, strict=False)))
            style = {} if index == 0 else {"red": True} if row[0] == SLOWER else {"green": True}
            lines.append((f"{text}  {row[-1]}", style))
    if comparison.regressed:
        lines.append((f"lapse performance gate FAILED: {counts[SLOWER]} significantly slower "
                      f"than {comparison.baseline} by more than {comparison.threshold:.0%}",
                      {"red": True, "bold": True}))
    else:
        lines.append(("lapse performance gate passed", {"green": True}))
    lines.extend((f"note: {note}", {"yellow": True}) for note in comparison.notes)
    return lines


def write_report(comparison: Comparison, path: Path) -> None:
    """The comparison as HTML (``.html``) or Markdown, for CI."""
    from lapse.reporting.compare import render_comparison

    text = render_comparison(comparison, "markdown")
    if path.suffix.lower() in (".html", ".htm"):
        from html import escape

        from lapse.analysis.compare import FASTER, SLOWER

        rows = []
        for e in comparison.events:
            color = {SLOWER: "#b00", FASTER: "#080"}.get(e.verdict, "inherit")
            cells = [e.name, e.verdict, _seconds(e.baseline_median),
                     _seconds(e.candidate_median), _number(e.ratio),
                     "—" if e.ratio_low is None else f"{e.ratio_low:.3f} – {e.ratio_high:.3f}",
                     "—" if e.p_adjusted is None else f"{e.p_adjusted:.2g}",
                     f"{e.baseline_calls} / {e.candidate_calls}"]
            rows.append(f"<tr style='color:{color}'>"
                        + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
        header = ["event", "verdict", "baseline median", "candidate median", "ratio",
                  f"{1 - comparison.alpha:.0%} interval", "p (adjusted)", "samples"]
        verdict = "FAILED" if comparison.regressed else "passed"
        text = (
            "<!doctype html><html><head><meta charset='utf-8'><title>lapse performance gate"
            "</title><style>body{font-family:system-ui,sans-serif;margin:2rem}table{border-"
            "collapse:collapse}td,th{border-bottom:1px solid #ddd;padding:.25rem .6rem;"
            "text-align:right}td:first-child,th:first-child{text-align:left}</style></head>"
            f"<body><h1>lapse performance gate: {verdict}</h1><p>"
            f"{escape(comparison.explain())}</p><table><tr>"
            + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>" + "".join(rows)
            + "</table></body></html>\n")
    path.write_text(text)


def _seconds(value: float | None) -> str:
    from lapse.reporting import human_seconds

    return human_seconds(value)


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"
