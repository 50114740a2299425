"""Rendering the results of ``lapse analyze``: terminal tables, Markdown, HTML and JSON.

Each result becomes a short document of blocks (headings, paragraphs, bullet
lists and tables) built from its fields; one renderer per format draws any
document, so the terminal, a pull-request comment and a notebook show the
same numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html import escape
from typing import TYPE_CHECKING, Any

from lapse.reporting import human_seconds

if TYPE_CHECKING:
    from lapse.analysis.capacity import Capacity
    from lapse.analysis.changes import Change, Changes
    from lapse.analysis.compare import Comparison
    from lapse.analysis.drivers import Drivers, Prediction
    from lapse.analysis.outliers import Outliers
    from lapse.analysis.result import AnalysisResult
    from lapse.analysis.slowcalls import SlowCalls

FORMATS = ("table", "json", "markdown", "html")


@dataclass
class Table:
    """A titled table of text cells; ``right`` marks numeric columns."""

    title: str
    header: list[str]
    rows: list[list[str]]
    right: set[int] = field(default_factory=set)


Block = str | list[str] | Table
"""A paragraph, a bullet list or a table; a paragraph starting with '# ' is a heading."""


def _when(ns: int | None) -> str:
    from lapse.commands._common import format_time

    return format_time(ns)


def _percent(ratio: float | None, signed: bool = True) -> str:
    if ratio is None:
        return "—"
    change = (ratio - 1) * 100
    return f"{change:+.1f}%" if signed else f"{abs(change):.1f}%"


def change_sentence(change: Change) -> str:
    """One change in words: what moved, by how much, when, how sure."""
    when = _when(change.time_ns)
    sure = f"confidence {change.confidence:.1%}"
    if change.metric == "latency":
        verb = "rose" if (change.ratio or 1) > 1 else "fell"
        return (f"{change.name}: median latency {verb} {_percent(change.ratio, False)} "
                f"({human_seconds(change.before)} → {human_seconds(change.after)}) at {when}, "
                f"{sure}.")
    if change.metric == "throughput":
        verb = "rose" if (change.ratio or 1) > 1 else "fell"
        return (f"{change.name}: throughput {verb} {_percent(change.ratio, False)} "
                f"({change.before:,.3g} → {change.after:,.3g} calls/s) at {when}, {sure}.")
    verb = "rose" if change.after > change.before else "fell"
    return (f"{change.name}: error rate {verb} from {change.before:.2%} to {change.after:.2%} "
            f"at {when}, {sure}.")


def _changes(result: Changes) -> list[Block]:
    blocks: list[Block] = ["# Change points"]
    if result.changes:
        rows = []
        for rank, c in enumerate(result.changes, start=1):
            if c.metric == "latency":
                before, after = human_seconds(c.before), human_seconds(c.after)
            elif c.metric == "throughput":
                before, after = f"{c.before:,.3g}/s", f"{c.after:,.3g}/s"
            else:
                before, after = f"{c.before:.2%}", f"{c.after:.2%}"
            interval = ("—" if c.ratio_low is None or c.ratio_high is None
                        else f"{_percent(c.ratio_low)} – {_percent(c.ratio_high)}")
            rows.append([str(rank), c.name, c.metric, _when(c.time_ns), before, after,
                         _percent(c.ratio), interval, f"{c.confidence:.1%}",
                         f"{c.calls_before:,} / {c.calls_after:,}"])
        blocks.append(Table("changes, most confident and largest first",
                            ["#", "event", "metric", "time", "before", "after", "change",
                             f"{1 - result.alpha:.0%} interval", "confidence", "calls"],
                            rows, {0, 4, 5, 6, 7, 8, 9}))
        blocks.append([change_sentence(c) for c in result.changes[:10]])
    else:
        blocks.append("No change points: every series looks steady over the window.")
    if result.skipped:
        blocks.append([f"skipped {name}: {why}" for name, why in result.skipped.items()])
    return [*blocks, *_closing(result, result.notes)]


def _closing(result: AnalysisResult, notes: list[str]) -> list[Block]:
    blocks: list[Block] = []
    if notes:
        blocks.append([f"Note: {n}." for n in notes])
    blocks.append(result.explain())
    return blocks


def _drivers(result: Drivers) -> list[Block]:
    blocks: list[Block] = [
        f"# What drives the duration of {result.event}",
        f"Held-out accuracy: R² {result.r2_log:.2f} (log duration), {result.r2:.2f} "
        f"(duration); mean absolute error {human_seconds(result.mae)} against a median of "
        f"{human_seconds(result.median_duration)}; {result.level:.0%} intervals held "
        f"{result.coverage:.1%} of held-out durations.",
    ]
    if result.findings:
        blocks.append(result.findings)
    rows = [[str(d.rank), d.feature, d.kind, f"{d.importance:.3f} ± {d.importance_sd:.3f}",
             "yes" if d.noticeable else "no", d.finding] for d in result.drivers]
    blocks.append(Table("features, most important first",
                        ["#", "feature", "kind", "importance (ΔR²)", "driver", "effect"],
                        rows, {0, 3}))
    if result.dropped:
        blocks.append([f"not used: {k} ({v})" for k, v in result.dropped.items()])
    return [*blocks, *_closing(result, result.notes)]


def prediction_text(prediction: Prediction) -> str:
    """A prediction as one paragraph."""
    return prediction.explain()


def _slow(result: SlowCalls) -> list[Block]:
    blocks: list[Block] = [f"# Calls of {result.event} slower than {human_seconds(result.slo)}"]
    if result.rules:
        rows = [[str(i), f"IF {rule} THEN slow", f"{rule.support:,} ({rule.support_fraction:.1%})",
                 f"{rule.precision:.0%}", f"{rule.recall:.0%}"]
                for i, rule in enumerate(result.rules, start=1)]
        blocks.append(Table("rules (precision and recall on held-out calls)",
                            ["#", "rule", "support", "precision", "recall"], rows, {0, 2, 3, 4}))
    if result.exemplars:
        rows = []
        for example in result.exemplars:
            stack = " ← ".join(reversed((example.stack or [])[-2:])) or "—"
            attrs = json.dumps(example.attrs, separators=(",", ":"))
            rows.append(["—" if example.rule is None else str(example.rule + 1),
                         human_seconds(example.duration), _when(example.start_ns),
                         example.caller or "—", stack, attrs,
                         f"{example.run_id}/{example.span_id}"])
        blocks.append(Table("exemplars: slowest calls per rule (— : no rule)",
                            ["rule", "duration", "time", "caller", "stack (innermost first)",
                             "attrs", "run/span"], rows, {1}))
    return [*blocks, *_closing(result, result.notes)]


def _outliers(result: Outliers) -> list[Block]:
    blocks: list[Block] = ["# Outliers (Tukey's fences)"]
    rows = []
    for e in result.events:
        rows.append([e.name, f"{e.calls:,}", f"{e.outliers:,} ({e.fraction:.1%})",
                     f"{e.high:,} / {e.low:,}", human_seconds(e.median),
                     human_seconds(e.upper_hinge), human_seconds(e.high_fence),
                     "; ".join(e.patterns) or "—"])
    blocks.append(Table("per event", ["event", "calls", "outliers", "high / low", "median",
                                      "upper hinge", "high fence", "over-represented"],
                        rows, {1, 2, 3, 4, 5, 6}))
    if result.calls.num_rows:
        rows = [[c["name"], _when(c["start_ns"]), human_seconds(c["duration"]), c["side"],
                 c.get("caller") or "—", c.get("host") or "—", c.get("version") or "—",
                 c.get("attrs") or "{}"] for c in result.calls.to_pylist()]
        blocks.append(Table(f"outlier calls (up to {result.limit} per event, most extreme "
                            "first)", ["event", "time", "duration", "side", "caller", "host",
                                       "version", "attrs"], rows, {2}))
    if result.skipped:
        blocks.append([f"skipped {name}: {why}" for name, why in result.skipped.items()])
    return [*blocks, result.explain()]


def _capacity(result: Capacity) -> list[Block]:
    slo = f"p{result.percentile:g} < {human_seconds(result.slo.threshold)}"
    headline = (f"One worker sustains {result.per_worker_rate:,.3g} calls/s of "
                f"{result.event} within {slo}.")
    if result.target_rate:
        if result.workers_needed is None:
            headline += (f" No number of workers serves {result.target_rate:,.3g} calls/s "
                         "within the SLO.")
        else:
            headline += (f" {result.target_rate:,.3g} calls/s ({result.target_from}) needs "
                         f"{result.workers_needed} worker(s), at p{result.percentile:g} "
                         f"{human_seconds(result.response_at_target)}.")
    blocks: list[Block] = [f"# Capacity of {result.event}", headline]
    measured = []
    if result.measured_rate is not None:
        measured.append(f"measured throughput {result.measured_rate:,.3g} calls/s")
    if result.mean_concurrency is not None:
        measured.append(f"calls in flight at a call's start: mean "
                        f"{result.mean_concurrency:.2f}, max {result.max_concurrency}")
    measured.append(f"service time mean {human_seconds(result.mean_service)}, CV "
                    f"{result.cv_service:.2f}, p{result.percentile:g} "
                    f"{human_seconds(result.service_percentile)}")
    blocks.append(measured)
    rows = [[str(p.workers), f"{p.max_rate:,.4g}", f"{p.per_worker:,.4g}",
             f"{p.utilisation:.0%}", f"{p.wait_probability:.0%}", human_seconds(p.mean_wait)]
            for p in result.points]
    if result.per_worker_rate > 0:
        blocks.append(Table(f"largest rate within {slo}",
                            ["workers", "calls/s", "per worker", "utilisation", "P(wait)",
                             "mean wait"], rows, {0, 1, 2, 3, 4, 5}))
    if result.autoscale is not None:
        blocks.append(f"Auto-scale: {result.autoscale.rule}.")
    if result.stress:
        rows = [[s.run_id, f"{s.calls:,}", f"{s.rate:,.4g}",
                 "—" if not s.workers else
                 f"{s.queues} × {s.workers // s.queues}" if s.queues > 1 else str(s.workers),
                 human_seconds(s.measured),
                 "—" if s.predicted is None else human_seconds(s.predicted),
                 "—" if s.error is None else f"{s.error:+.0%}"] for s in result.stress]
        blocks.append(Table("stress runs: model against measurement",
                            ["run", "calls", "calls/s", "workers",
                             f"measured p{result.percentile:g}", "predicted", "error"],
                            rows, {1, 2, 3, 4, 5, 6}))
    return [*blocks, *_closing(result, result.notes)]


def _comparison(result: Comparison) -> list[Block]:
    from lapse.reporting.compare import cells

    header, rows = cells(result)
    return [f"# {result.candidate} against {result.baseline}",
            Table("per event", header, rows, set(range(2, len(header)))),
            *_closing(result, result.notes)]


def blocks_of(result: AnalysisResult) -> list[Block]:
    """The document of any analysis result."""
    from lapse.analysis.capacity import Capacity
    from lapse.analysis.changes import Changes
    from lapse.analysis.compare import Comparison
    from lapse.analysis.drivers import Drivers
    from lapse.analysis.outliers import Outliers
    from lapse.analysis.slowcalls import SlowCalls

    builders: list[tuple[type, Any]] = [(Changes, _changes), (Drivers, _drivers),
                                        (SlowCalls, _slow), (Outliers, _outliers),
                                        (Capacity, _capacity), (Comparison, _comparison)]
    for kind, build in builders:
        if isinstance(result, kind):
            built: list[Block] = build(result)
            return built
    raise TypeError(f"no renderer for {type(result).__name__}")


def render(result: AnalysisResult, fmt: str) -> str:
    """The result as ``table`` (plain text), ``markdown``, ``html`` or ``json``."""
    if fmt == "json":
        return result.to_json()
    if fmt == "markdown":
        return _markdown(blocks_of(result))
    if fmt == "html":
        return _html(blocks_of(result))
    if fmt == "table":
        import io

        from rich.console import Console

        console = Console(width=200, record=True, file=io.StringIO())
        console.print(rich_renderable(result))
        return console.export_text()
    raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")


def rich_renderable(result: AnalysisResult) -> Any:
    """A Rich renderable (tables and paragraphs) for the terminal."""
    from rich.console import Group
    from rich.table import Table as RichTable
    from rich.text import Text

    parts: list[Any] = []
    for block in blocks_of(result):
        if isinstance(block, Table):
            table = RichTable(title=block.title, title_justify="left")
            for index, name in enumerate(block.header):
                table.add_column(name, justify="right" if index in block.right else "left",
                                 overflow="fold")
            for row in block.rows:
                table.add_row(*row)
            parts.append(table)
        elif isinstance(block, list):
            parts.append(Text("\n".join(f"• {line}" for line in block)))
        elif block.startswith("# "):
            parts.append(Text(block[2:], style="bold"))
        else:
            parts.append(Text(block))
        parts.append(Text(""))
    return Group(*parts)


def _markdown(blocks: list[Block]) -> str:
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Table):
            lines.append(f"**{block.title}**")
            lines.append("")
            lines.append("| " + " | ".join(block.header) + " |")
            lines.append("|" + "".join("---:|" if i in block.right else "---|"
                                       for i in range(len(block.header))))
            lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
                      for row in block.rows]
        elif isinstance(block, list):
            lines += [f"- {line}" for line in block]
        elif block.startswith("# "):
            lines.append(f"### {block[2:]}")
        else:
            lines.append(block)
        lines.append("")
    return "\n".join(lines)


def _html(blocks: list[Block]) -> str:
    parts: list[str] = ["<div class='lapse-analysis'>"]
    for block in blocks:
        if isinstance(block, Table):
            head = "".join(f"<th>{escape(h)}</th>" for h in block.header)
            body = "".join(
                "<tr>" + "".join(
                    f"<td style='text-align:{'right' if i in block.right else 'left'}'>"
                    f"{escape(cell)}</td>" for i, cell in enumerate(row)) + "</tr>"
                for row in block.rows)
            parts.append(f"<table><caption style='text-align:left'>{escape(block.title)}"
                         f"</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
                         "</table>")
        elif isinstance(block, list):
            parts.append("<ul>" + "".join(f"<li>{escape(line)}</li>" for line in block)
                         + "</ul>")
        elif block.startswith("# "):
            parts.append(f"<h4>{escape(block[2:])}</h4>")
        else:
            parts.append(f"<p>{escape(block)}</p>")
    parts.append("</div>")
    return "".join(parts)
