"""The self-contained HTML report: summary table, per event four Plotly charts, and the
analyses that need no parameters (change points, outliers).

plotly.js is inlined once from the plotly package (no CDN), so the file opens
offline and can be attached to a CI run or mailed.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING, Any

from lapse._errors import LapseError
from lapse.analysis import series

if TYPE_CHECKING:
    from lapse.reporting import Report

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; font-size: 0.85rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
section.event, section.analysis { margin-top: 2.5rem; }
.lapse-analysis table { margin: 0.5rem 0 1rem; }
.lapse-analysis th { text-align: left; }
.charts { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 1rem; }
.note { color: #666; }
"""


def _plotly() -> Any:
    try:
        import plotly.graph_objects as go
    except ImportError:
        raise LapseError(
            "the HTML report draws its charts with plotly, which is not installed: "
            "pip install 'lapse[html]'"
        ) from None
    return go


def render(report: Report, title: str) -> str:
    """The whole report as one HTML document."""
    go = _plotly()
    summary = report.summary
    selection = summary.selection
    width = series.bucket_ns(summary.window_ns)
    over_time = series.timeseries(selection, summary.store, width)
    bins = series.histogram(selection, summary.store)
    names = list(dict.fromkeys(row["name"] for row in summary.rows))
    sections = []
    first = True
    for index, name in enumerate(names):
        figures = _figures(go, name, rows=summary.rows, over_time=over_time, bins=bins,
                           width_ns=width)
        charts = []
        for kind, figure in figures:
            charts.append(figure.to_html(
                full_html=False, include_plotlyjs=first, div_id=f"{kind}-{index}",
                config={"displaylogo": False, "responsive": True},
            ))
            first = False
        sections.append(
            f'<section class="event" data-event="{escape(name)}"><h2>{escape(name)}</h2>'
            f'<div class="charts">{"".join(charts)}</div></section>'
        )
    return page(title, (
        f"<p class='note'>{escape(report.footer())} Durations per call; hinges are Tukey's "
        f"(R fivenum); outliers lie beyond 1.5 × the hinge spread.</p>"
        f"{report._repr_html_()}{''.join(sections)}{_analyses(report)}"
    ))


def page(title: str, body: str) -> str:
    """A whole HTML document around ``body``, in the report's style."""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>{body}</body></html>"
    )


def _analyses(report: Report) -> str:
    """Change points and outliers of the report's selection, or why they are missing.

    The other analyses need an event and an objective: ``lapse analyze ... --format html``.
    """
    from lapse.analysis.changes import changes
    from lapse.analysis.outliers import outliers

    summary = report.summary
    parts = []
    for title, analyse in (
        ("Change points", lambda: changes(summary.selection, summary.store)),
        ("Outliers", lambda: outliers(summary.selection, summary.store, limit=10)),
    ):
        try:
            body = analyse().render("html")
        except LapseError as error:  # not enough data, or the stats extra is missing
            body = f"<p class='note'>{escape(str(error))}</p>"
        parts.append(f"<section class='analysis'><h2>{title}</h2>{body}</section>")
    return "".join(parts)


def _figures(
    go: Any,
    name: str,
    *,
    rows: list[dict[str, Any]],
    over_time: list[dict[str, Any]],
    bins: list[dict[str, Any]],
    width_ns: int,
) -> list[tuple[str, Any]]:
    import datetime as dt

    layout = {"height": 320, "margin": {"l": 50, "r": 20, "t": 40, "b": 40}}
    mine = [r for r in rows if r["name"] == name]
    box = go.Figure(layout={**layout, "title": "five-number summary (ms)"})
    for row in mine:
        label = " ".join(str(v) for k, v in row.items() if k in _group_keys(rows)) or name
        box.add_trace(go.Box(
            name=label, x=[label], q1=[row["lower_hinge"] * 1e3], median=[row["median"] * 1e3],
            q3=[row["upper_hinge"] * 1e3], lowerfence=[row["min"] * 1e3],
            upperfence=[row["max"] * 1e3], mean=[row["mean"] * 1e3], boxpoints=False,
        ))
    hist_rows = [b for b in bins if b["name"] == name]
    histogram = go.Figure(
        go.Bar(x=[f"{b['low'] * 1e3:.3g}–{b['high'] * 1e3:.3g}" for b in hist_rows],
               y=[b["count"] for b in hist_rows], name="calls"),
        layout={**layout, "title": "duration histogram (ms, log bins)"},
    )
    points = [p for p in over_time if p["name"] == name]
    times = [dt.datetime.fromtimestamp(p["bucket_ns"] / 1e9, tz=dt.timezone.utc) for p in points]
    latency = go.Figure(layout={**layout, "title": "latency percentiles over time (ms)"})
    for key in ("p50", "p95", "p99"):
        latency.add_trace(go.Scatter(x=times, y=[p[key] * 1e3 for p in points], name=key,
                                     mode="lines+markers"))
    volume = go.Figure(layout={
        **layout, "title": f"throughput (calls/s, {width_ns / 1e9:g} s buckets) and errors",
        "barmode": "overlay"})
    volume.add_trace(go.Bar(x=times, y=[p["throughput"] for p in points], name="calls/s"))
    volume.add_trace(go.Scatter(x=times, y=[p["errors"] for p in points], name="errors",
                                mode="lines+markers"))
    return [("box", box), ("histogram", histogram), ("latency", latency), ("volume", volume)]


def _group_keys(rows: list[dict[str, Any]]) -> set[str]:
    from lapse.analysis.summary import SUMMARY_FIELDS

    fixed = {"name", *(field for field, _ in SUMMARY_FIELDS)}
    return {key for row in rows[:1] for key in row if key not in fixed}
