"""Rendering a release comparison: a Rich table, Markdown for pull requests, or JSON."""

from __future__ import annotations

import json
from typing import Any

from lapse.analysis.compare import FASTER, SLOWER, Comparison


def cells(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """The comparison table as text cells: its header and one row per event."""
    from lapse.reporting import human_seconds

    header = ["event", "verdict", "baseline median", "candidate median", "ratio",
              f"{1 - comparison.alpha:.0%} interval", "p (adjusted)", "calls"]
    rows = []
    for e in comparison.events:
        interval = "—" if e.ratio_low is None else f"{e.ratio_low:.3f} – {e.ratio_high:.3f}"
        rows.append([
            e.name, e.verdict, human_seconds(e.baseline_median),
            human_seconds(e.candidate_median),
            "—" if e.ratio is None else f"{e.ratio:.3f}", interval,
            "—" if e.p_adjusted is None else f"{e.p_adjusted:.2g}",
            f"{e.baseline_calls:,} / {e.candidate_calls:,}",
        ])
    return header, rows


def render_comparison(comparison: Comparison, fmt: str) -> Any:
    """``table`` gives a Rich renderable; ``markdown`` and ``json`` give text."""
    if fmt == "json":
        return json.dumps(comparison.to_dict(), indent=2) + "\n"
    header, rows = cells(comparison)
    summary = comparison.explain() + "".join(f" Note: {n}." for n in comparison.notes)
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in rows:
            mark = {SLOWER: "🔴 ", FASTER: "🟢 "}.get(row[1], "")
            lines.append("| " + " | ".join([row[0], mark + row[1], *row[2:]]) + " |")
        return "\n".join(lines) + f"\n\n{summary}\n"
    from rich.table import Table

    table = Table(caption=summary, caption_justify="left")
    for index, name in enumerate(header):
        table.add_column(name, justify="left" if index < 2 else "right", no_wrap=index == 0)
    for row in rows:
        style = {SLOWER: "red", FASTER: "green"}.get(row[1])
        table.add_row(*row, style=style)
    return table
