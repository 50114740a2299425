"""Commands that analyse and show: report, compare and dashboard."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from lapse.commands._common import (
    console,
    progress_bar,
    selection,
    selection_options,
    stderr_console,
    store,
    working,
)


def cmd_report(args: argparse.Namespace) -> int:
    """Per event: calls, errors, throughput, five-number summary, percentiles, outliers."""
    from lapse.analysis.summary import summary
    from lapse.reporting import Report

    chosen = selection(args, by=args.by)
    # Spark reads the store where --dir says, URIs included (s3a://, abfss://, file://).
    location = store(args) if args.engine == "duckdb" else (args.dir or store(args))
    with progress_bar("scanning events") as bar:
        task = bar.add_task("scanning events", total=1.0)
        result = Report(summary(chosen, location, engine=args.engine,
                                progress=lambda done: bar.update(task, completed=done)))
    if args.format == "table":
        text = None
    elif args.format == "html":
        text = result.to_html(title=args.title)
    else:
        text = result.render(args.format)
    if args.output:
        Path(args.output).write_text(text if text is not None else result.render("table"))
        stderr_console().print(f"wrote {args.output}")
    elif text is None:
        console().print(result)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Compare a candidate with a baseline per event; exit 1 if any is significantly slower."""
    from lapse.analysis.compare import compare, parse_selector
    from lapse.reporting.compare import render_comparison

    baseline_dir = Path(args.baseline_dir) if args.baseline_dir else store(args)
    candidate_dir = Path(args.candidate_dir) if args.candidate_dir else baseline_dir
    baseline = parse_selector(args.baseline) if args.baseline else everything()
    candidate = parse_selector(args.candidate) if args.candidate else everything()
    with working("comparing"):
        result = compare(
            baseline, candidate, baseline_dir=baseline_dir, candidate_dir=candidate_dir,
            threshold=args.threshold, alpha=args.alpha, correction=args.correction,
            min_calls=args.min_calls,
            labels=(args.baseline or str(baseline_dir), args.candidate or str(candidate_dir)),
            engine=args.engine,
        )
    text = None  # the terminal table is printed by Rich
    if args.format == "html":
        from lapse.reporting.html import page

        text = page(f"lapse compare: {result.candidate} against {result.baseline}",
                    result.render("html"))
    elif args.format != "table":
        text = render_comparison(result, args.format)
    if args.output:
        Path(args.output).write_text(
            text if text is not None else render_comparison(result, "markdown"))
        stderr_console().print(f"wrote {args.output}")
    elif text is None:
        console().print(render_comparison(result, "table"))
    else:
        sys.stdout.write(text)
    return 1 if result.regressed else 0


def everything() -> Any:
    from lapse.analysis.selection import Selection

    return Selection()


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Serve the web dashboard (127.0.0.1 by default; other addresses need a token)."""
    from lapse.dashboard import serve

    token = args.token or os.environ.get("LAPSE_DASHBOARD_TOKEN") or None
    serve(store(args), host=args.host, port=args.port, token=token)
    return 0


def add_report(commands: Any, common: argparse.ArgumentParser) -> None:
    report = commands.add_parser("report", parents=[common, selection_options()],
                                 help=cmd_report.__doc__,
                                 description=f"{cmd_report.__doc__} Durations are per call; "
                                 "hinges are Tukey's, exactly as R's fivenum().")
    report.add_argument("--by", action="append", default=[], metavar="COLUMN",
                        help="group by a column or attribute (version, host, attrs.model…); "
                        "repeat for several")
    report.add_argument("--format", choices=("table", "json", "csv", "markdown", "html"),
                        default="table", help="output format (default: a terminal table)")
    report.add_argument("-o", "--output", metavar="FILE", help="write to FILE, not stdout")
    report.add_argument("--title", default="lapse report", help="title of the HTML report")
    add_engine(report)
    report.set_defaults(handler=cmd_report)


def add_engine(parser: argparse.ArgumentParser) -> None:
    """The --engine option of the commands whose analyses also run on Spark."""
    parser.add_argument("--engine", choices=("duckdb", "spark"), default="duckdb",
                        help="where the analysis runs: duckdb (default, this machine) or "
                        "spark (the same analysis on a Spark cluster, or local mode; --dir "
                        "may then be a URI such as s3a://bucket/lapse)")


def add_compare(commands: Any, common: argparse.ArgumentParser) -> None:
    compare = commands.add_parser(
        "compare", parents=[common], help=cmd_compare.__doc__,
        description=f"{cmd_compare.__doc__} Per event: median ratio with a bootstrap interval, "
        "Brunner-Munzel rank test, Holm (or Benjamini-Hochberg) correction across events, and "
        "a practical threshold. Selectors are conditions joined by commas (version=1.3, "
        "run_id=RUN, attrs.model=b) or a time range (2h..1h).",
    )
    compare.add_argument("--baseline", metavar="SELECTOR", help="what to compare against")
    compare.add_argument("--candidate", metavar="SELECTOR", help="what is being judged")
    compare.add_argument("--baseline-dir", metavar="PATH", help="baseline store, if another")
    compare.add_argument("--candidate-dir", metavar="PATH", help="candidate store, if another")
    compare.add_argument("--threshold", type=float, default=0.05,
                         help="smallest change that matters, as a fraction (default 0.05 = 5%%)")
    compare.add_argument("--alpha", type=float, default=0.05,
                         help="significance level after correction (default 0.05)")
    compare.add_argument("--correction", choices=("holm", "bh", "none"), default="holm",
                         help="multiple-comparison control across events (default holm)")
    compare.add_argument("--min-calls", type=int, default=20,
                         help="calls needed on each side to judge an event (default 20)")
    compare.add_argument("--format", choices=("table", "json", "markdown", "html"),
                         default="table", help="output format (default: a terminal table)")
    compare.add_argument("-o", "--output", metavar="FILE",
                         help="write the comparison to FILE (the --format; Markdown for table)")
    add_engine(compare)
    compare.set_defaults(handler=cmd_compare)


def add_dashboard(commands: Any, common: argparse.ArgumentParser) -> None:
    dashboard = commands.add_parser("dashboard", parents=[common], help=cmd_dashboard.__doc__,
                                    description=cmd_dashboard.__doc__)
    dashboard.add_argument("--host", default="127.0.0.1",
                           help="address to bind (default 127.0.0.1, this machine only)")
    dashboard.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    dashboard.add_argument("--token", help="require this token on every request (default: "
                           "$LAPSE_DASHBOARD_TOKEN); needed to bind another address")
    dashboard.set_defaults(handler=cmd_dashboard)


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add this module's commands to the ``lapse`` parser."""
    add_report(commands, common)
    add_compare(commands, common)
    add_dashboard(commands, common)
