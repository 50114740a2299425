"""``lapse report`` and ``lapse.report()``: the summary of a selection, in every format.

The numbers come from ``lapse.analysis.summary``; this package only renders
them: a Rich table for the terminal, JSON (documented in docs/report.md),
CSV, Markdown for CI comments, and a self-contained HTML report with charts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lapse.analysis.selection import Selection
from lapse.analysis.summary import SUMMARY_FIELDS, Progress, Summary, summary

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from rich.table import Table

JSON_SCHEMA = "lapse.report/1"
FORMATS = ("table", "json", "csv", "markdown", "html")


def human_seconds(value: float | None) -> str:
    """A duration in seconds in the unit a person reads best (ns, µs, ms, s)."""
    from lapse.commands._common import format_duration

    return format_duration(None if value is None else value * 1e9)


def _iso(ns: int | None) -> str | None:
    if ns is None:
        return None
    import datetime as dt

    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.timezone.utc).isoformat()


class Report:
    """A summary of events per name and group; renders as a table in Jupyter and terminals."""

    def __init__(self, result: Summary) -> None:
        self.summary = result

    @property
    def rows(self) -> list[dict[str, Any]]:
        """One dict per event name (and group), durations in seconds."""
        return self.summary.rows

    def to_arrow(self) -> pa.Table:
        """The summary as an Arrow table."""
        return self.summary.to_arrow()

    def to_pandas(self) -> pd.DataFrame:
        """The summary as a pandas DataFrame (pandas must be installed)."""
        return self.to_arrow().to_pandas()

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of ``--format json`` as Python objects."""
        start, end = self.summary.window_ns
        return {
            "schema": JSON_SCHEMA,
            "store": str(self.summary.store),
            "window": {"start": _iso(start), "end": _iso(end)},
            "group_by": list(self.summary.group_by),
            "events": self.summary.events,
            "dropped": self.summary.dropped,
            "rows": self.rows,
        }

    def to_json(self) -> str:
        """JSON text: durations as float seconds (see docs/report.md)."""
        return json.dumps(self.to_dict(), indent=2)

    def to_csv(self) -> str:
        """CSV text, one line per row, durations in seconds."""
        import csv
        import io

        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=self.summary.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        return out.getvalue()

    def _display_rows(self) -> tuple[list[str], list[list[str]]]:
        groups = list(self.summary.group_by)
        header = ["event", *groups, "calls", "errors", "calls/s", "min", "lower hinge",
                  "median", "upper hinge", "max", "mean", "p90", "p95", "p99", "p99.9",
                  "outliers", "total"]
        body = []
        for row in self.rows:
            throughput = row["throughput"]
            body.append([
                row["name"], *("—" if row[g] is None else str(row[g]) for g in groups),
                f"{row['count']:,}",
                f"{row['errors']:,} ({row['error_rate']:.1%})" if row["errors"] else "0",
                "—" if throughput is None else f"{throughput:,.3g}",
                *(human_seconds(row[k]) for k in ("min", "lower_hinge", "median", "upper_hinge",
                                                  "max", "mean", "p90", "p95", "p99", "p99_9")),
                f"{row['outliers']:,}", human_seconds(row["total"]),
            ])
        return header, body

    def footer(self) -> str:
        """The line under the table: window, event count and dropped events (never hidden)."""
        start, end = self.summary.window_ns
        window = f"{_iso(start)} → {_iso(end)}" if start is not None else "empty selection"
        dropped = self.summary.dropped
        drops = (f"{dropped:,} events were dropped by the recorder and are not counted"
                 if dropped else "no events dropped")
        return f"{self.summary.events:,} events, {window}; {drops}."

    def to_markdown(self) -> str:
        """A Markdown table (for pull requests and CI comments)."""
        header, body = self._display_rows()
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
                  for row in body]
        return "\n".join(lines) + f"\n\n{self.footer()}\n"

    def __rich__(self) -> Table:
        from rich.table import Table

        header, body = self._display_rows()
        table = Table(caption=self.footer(), caption_justify="left")
        for index, name in enumerate(header):
            table.add_column(name, justify="left" if index <= len(self.summary.group_by)
                             else "right", no_wrap=index == 0)
        for row in body:
            table.add_row(*row)
        return table

    def _repr_html_(self) -> str:
        from html import escape

        header, body = self._display_rows()
        head = "".join(f"<th>{escape(h)}</th>" for h in header)
        rows = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>"
                       for row in body)
        return (f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
                f"<p>{escape(self.footer())}</p>")

    def to_html(self, title: str = "lapse report") -> str:
        """A self-contained HTML report with charts (needs plotly: pip install 'lapse[html]')."""
        from lapse.reporting.html import render

        return render(self, title)

    def render(self, fmt: str) -> str:
        """The report in one of FORMATS (``table`` gives plain text)."""
        if fmt == "table":
            import io

            from rich.console import Console

            console = Console(width=200, record=True, file=io.StringIO())
            console.print(self)
            return console.export_text()
        renderers = {"json": self.to_json, "csv": self.to_csv, "markdown": self.to_markdown,
                     "html": self.to_html}
        return renderers[fmt]()


def report(
    dir: str | os.PathLike[str] | None = None,  # noqa: A002 - matches configure(dir=)
    *,
    by: str | Sequence[str] = (),
    since: object = None,
    until: object = None,
    name: str | Sequence[str] | None = None,
    run: str | Sequence[str] | None = None,
    service: str | None = None,
    version: str | None = None,
    where: str | Sequence[str] = (),
    progress: Progress | None = None,
    engine: str = "duckdb",
) -> Report:
    """Summarise events per name (and ``by`` groups): counts, errors, throughput, fivenum, pXX.

    ``by`` takes columns (``version``, ``host``…) or attributes (``attrs.model``);
    ``where`` takes conditions such as ``"attrs.rows>=1000"`` or ``"status=error"``.
    ``engine="spark"`` computes the same report on Spark over the same segments.
    """
    selection = Selection(since=since, until=until, name=name, run=run, service=service,
                          version=version, where=where, by=by)
    return Report(summary(selection, dir, progress=progress, engine=engine))


__all__ = ["FORMATS", "JSON_SCHEMA", "SUMMARY_FIELDS", "Report", "report"]
