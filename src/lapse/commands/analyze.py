"""``lapse analyze``: change points, drivers of latency, slow-call rules, outliers, capacity."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from lapse.commands._common import (
    console,
    selection,
    selection_options,
    stderr_console,
    store,
    working,
)

if TYPE_CHECKING:
    from lapse.analysis.result import AnalysisResult


def _show(result: AnalysisResult, args: argparse.Namespace,
          extra: dict[str, Any] | None = None, after: str | None = None) -> int:
    """Print the result in ``--format``, or write it to ``--output``."""
    fmt = args.format
    if args.output:
        from pathlib import Path

        if fmt == "table":
            fmt = "html" if args.output.endswith((".html", ".htm")) else "markdown"
        text = _text(result, fmt, extra, after)
        Path(args.output).write_text(text)
        stderr_console().print(f"wrote {args.output}")
        return 0
    if fmt == "table":
        console().print(result)
        if after:
            console().print(after)
        return 0
    sys.stdout.write(_text(result, fmt, extra, after))
    return 0


def _text(result: AnalysisResult, fmt: str, extra: dict[str, Any] | None,
          after: str | None) -> str:
    """The result as JSON, Markdown, or a whole HTML page (``--format html``)."""
    if fmt == "json":
        import json

        from lapse.analysis.result import _clean

        document = {**result.to_dict(), **(extra or {})}
        return json.dumps(_clean(document), indent=2) + "\n"
    if fmt == "html":
        from html import escape

        from lapse.reporting.html import page

        note = f"<p>{escape(after)}</p>" if after else ""
        return page(f"lapse analyze {result.__class__.__name__.lower()}",
                    result.render("html") + note)
    return result.render(fmt) + (f"\n{after}\n" if after else "")


def cmd_changes(args: argparse.Namespace) -> int:
    """Change points in each event's latency, throughput and error rate, ranked."""
    from lapse.analysis.changes import METRICS, changes

    with working("looking for change points"):
        result = changes(selection(args), store(args), event=args.event,
                         metrics=tuple(args.metric or METRICS), buckets=args.buckets,
                         alpha=args.alpha, threshold=args.threshold)
    return _show(result, args)


def cmd_drivers(args: argparse.Namespace) -> int:
    """A model of an event's duration from its attributes and context: accuracy, drivers."""
    from lapse.analysis.drivers import drivers, parse_inputs

    inputs = parse_inputs(args.predict) if args.predict else None
    with working("fitting a model of the duration"):
        result = drivers(selection(args), store(args), event=args.event, level=args.level,
                         max_calls=args.max_calls)
    if inputs is None:
        return _show(result, args)
    prediction = result.predict(inputs)
    return _show(result, args, {"prediction": prediction.to_dict()},
                 f"Prediction: {prediction.explain()}")


def cmd_slow(args: argparse.Namespace) -> int:
    """Rules that pick out the calls slower than an SLO, with held-out precision and recall."""
    from lapse.analysis.slowcalls import slow_calls

    with working("learning the rules of slow calls"):
        result = slow_calls(selection(args), store(args), event=args.event, slo=args.slo,
                            depth=args.depth, exemplars=args.exemplars, max_calls=args.max_calls)
    return _show(result, args)


def cmd_outliers(args: argparse.Namespace) -> int:
    """Calls outside Tukey's fences, per event, with their attributes."""
    from lapse.analysis.outliers import outliers

    with working("finding outliers"):
        result = outliers(selection(args), store(args), event=args.event, k=args.k, log=args.log,
                          limit=args.limit)
    return _show(result, args)


def cmd_capacity(args: argparse.Namespace) -> int:
    """Calls/s per worker within an SLO, workers for a rate, and an auto-scale rule."""
    from lapse.analysis.capacity import WORKERS, capacity

    workers: tuple[int, ...] = WORKERS
    if args.workers:
        try:
            workers = tuple(int(w) for w in args.workers.split(",") if w.strip())
        except ValueError:
            from lapse._errors import ConfigError

            raise ConfigError(f"workers: {args.workers!r} is not a list of whole numbers; "
                              "write 1,2,4,8.") from None
        if not workers or min(workers) < 1:
            from lapse._errors import ConfigError

            raise ConfigError(f"workers: {args.workers!r} must list numbers of 1 or more.")
    with working("modelling capacity"):
        result = capacity(selection(args), store(args), event=args.event, slo=args.slo,
                          rate=args.rate, workers=workers)
    return _show(result, args)


def _output_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--format", choices=("table", "json", "markdown", "html"),
                         default="table",
                         help="output format (default: terminal tables; html: a whole page)")
    options.add_argument("-o", "--output", metavar="FILE",
                         help="write the result to FILE (.html: a page, else the --format)")
    return options


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``lapse analyze`` and its analyses to the ``lapse`` parser."""
    analyze = commands.add_parser(
        "analyze", help="Statistics over the store: changes, drivers, slow, outliers, "
        "capacity", description="Data science over the recorded events. Each analysis says "
        "what it tested, on how much data and with what confidence (see docs/analysis.md). "
        "Each takes --dir PATH (default: $LAPSE_DIR, else ./.lapse) and the selection "
        "options of lapse report.")
    analyses = analyze.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    parents = [common, selection_options(), _output_options()]

    def add(name: str, handler: Any, description: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = analyses.add_parser(
            name, parents=parents, help=handler.__doc__,
            description=f"{handler.__doc__} {description}")
        parser.set_defaults(handler=handler)
        return parser

    changes = add("changes", cmd_changes,
                  "Calls are cut into time buckets; binary segmentation on ranks finds "
                  "splits, each confirmed by a permutation test; sizes are ratios of medians "
                  "(bootstrap interval), of call rates, or error rates before and after.")
    changes.add_argument("--event", metavar="NAME", help="only this event")
    changes.add_argument("--metric", action="append", choices=("latency", "throughput",
                                                               "errors"),
                         help="only this metric; repeat for several (default: all three)")
    changes.add_argument("--buckets", type=int, metavar="N",
                         help="time buckets per event (default: ~30 calls each, 20 to 200)")
    changes.add_argument("--alpha", type=float, default=0.05,
                         help="significance level of each split (default 0.05)")
    changes.add_argument("--threshold", type=float, default=0.05,
                         help="smallest change reported, as a fraction (default 0.05 = 5%%)")

    drivers = add("drivers", cmd_drivers,
                  "Gradient boosting of log duration; R² and MAE on held-out calls; "
                  "permutation importance; partial dependence in plain words; conformal "
                  "prediction intervals.")
    drivers.add_argument("--event", metavar="NAME", required=True, help="the event to model")
    drivers.add_argument("--predict", action="append", metavar="NAME=VALUE",
                         help="estimate the duration of this input, e.g. rows=50000 (repeat or "
                         "join with commas; other features take typical values)")
    drivers.add_argument("--level", type=float, default=0.9,
                         help="coverage of prediction intervals (default 0.9)")
    drivers.add_argument("--max-calls", type=int, default=20_000,
                         help="fit on a random sample of at most this many calls (default "
                         "20000)")

    slow = add("slow", cmd_slow,
               "A shallow decision tree turned into IF ... THEN slow rules with support, "
               "held-out precision and recall, and exemplar slow calls with caller and stack.")
    slow.add_argument("--event", metavar="NAME", required=True, help="the event to examine")
    slow.add_argument("--slo", required=True, metavar="DURATION",
                      help="a call is slow above this duration, e.g. 100ms")
    slow.add_argument("--depth", type=int, default=3, help="depth of the tree (default 3)")
    slow.add_argument("--exemplars", type=int, default=3,
                      help="slow calls shown per rule (default 3)")
    slow.add_argument("--max-calls", type=int, default=50_000,
                      help="learn from a random sample of at most this many calls")

    outliers = add("outliers", cmd_outliers,
                   "Hinges as R's fivenum (the same count as lapse report's outliers column).")
    outliers.add_argument("--event", metavar="NAME", help="only this event")
    outliers.add_argument("--k", type=float, default=1.5,
                          help="fences this many hinge spreads out (default 1.5; 3 = far out)")
    outliers.add_argument("--log", action="store_true",
                          help="take the fences on log durations (suits long right tails)")
    outliers.add_argument("--limit", type=int, default=20,
                          help="outlier calls listed per event (default 20)")

    capacity = add("capacity", cmd_capacity,
                   "An M/G/c queue (Erlang C, Allen-Cunneen with the measured service-time "
                   "variability) over the measured durations; checked against stress runs "
                   "where they exist.")
    capacity.add_argument("--event", metavar="NAME", required=True, help="the event to size")
    capacity.add_argument("--slo", required=True, metavar="SLO",
                          help='response-time objective, e.g. "p99<200ms" (a bare duration '
                          "means p99)")
    capacity.add_argument("--rate", type=float, metavar="CALLS_PER_S",
                          help="target arrival rate to size for (default: measured throughput)")
    capacity.add_argument("--workers", metavar="LIST",
                          help="worker counts to tabulate (default 1,2,4,8,16,32)")
