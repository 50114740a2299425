"""What every command shares: the store option, human units, consoles and progress bars."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lapse._errors import LapseError

if TYPE_CHECKING:
    from rich.console import Console

    from lapse.analysis.selection import Selection



def format_duration(ns: float | None) -> str:
    """Nanoseconds in the unit a person reads best: ``812 ns``, ``3.2 ms``, ``1.25 s``."""
    if ns is None:
        return "—"
    # Round to what is shown first, so 999.96 ms reads "1 s", not "1e+03 ms".
    ns = float(f"{ns:.3g}")
    for limit, unit, scale in ((1e3, "ns", 1.0), (1e6, "µs", 1e3), (1e9, "ms", 1e6)):
        if abs(ns) < limit:
            value = ns / scale
            return f"{value:.0f} {unit}" if unit == "ns" else f"{value:.3g} {unit}"
    seconds = ns / 1e9
    return f"{seconds:.3g} s" if seconds < 600 else f"{seconds / 60:.1f} min"


def format_time(ns: int | None) -> str:
    """Epoch nanoseconds as local time with milliseconds."""
    if ns is None:
        return "—"
    seconds, rest = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) + f".{rest // 1_000_000:03d}"


def console() -> Console:
    """A console for results (wide when piped, so tables stay readable)."""
    from rich.console import Console

    # Piped output (CI logs, files) is not cut to 80 columns: tables stay readable.
    wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(highlight=False, width=160 if wide else None)


def store(args: argparse.Namespace) -> Path:
    """The store a command works on: --dir, else $LAPSE_DIR, else ./.lapse."""
    return Path(args.dir) if args.dir else Path(os.environ.get("LAPSE_DIR") or ".lapse")


def progress_bar(description: str) -> Any:
    """A transient progress bar on stderr (hidden when stderr is not a terminal)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    return Progress("[progress.description]{task.description}", BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), transient=True,
                    disable=not sys.stderr.isatty(), console=stderr_console())


def working(description: str) -> Any:
    """A spinner on stderr while a long computation runs (nothing when stderr is not a
    terminal), so a minute of model fitting does not look like a hang."""
    import contextlib

    if not sys.stderr.isatty():
        return contextlib.nullcontext()
    return stderr_console().status(f"{description}…")


def stderr_console() -> Console:
    """A console for messages about the work, on stderr."""
    from rich.console import Console

    return Console(stderr=True)


def seconds(text: str) -> float:
    """An argparse type: a duration such as 500ms, in seconds."""
    from lapse._config import parse_duration_ns

    try:
        return parse_duration_ns(text, "duration") / 1e9
    except LapseError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_command(
    commands: Any, common: argparse.ArgumentParser, name: str, handler: Any, **options: Any
) -> argparse.ArgumentParser:
    """Add a subcommand whose help is its handler's docstring; returns its parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        name, parents=[common], help=handler.__doc__,
        description=options.pop("description", handler.__doc__), **options)
    parser.set_defaults(handler=handler)
    return parser


def selection_options() -> argparse.ArgumentParser:
    """The selection of ``lapse report``, shared as a parent parser by the analyses."""
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("selection")
    group.add_argument("--since", metavar="TIME", help="from this time: 1h (ago), ISO time")
    group.add_argument("--until", metavar="TIME", help="up to this time: 10m (ago), ISO time")
    group.add_argument("--between", metavar="START..END", help="a time range, e.g. 2h..1h")
    group.add_argument("--name", action="append", metavar="NAME",
                       help="only this event (* matches anything); repeat for several")
    group.add_argument("--where", action="append", default=[], metavar="CONDITION",
                       help="COLUMN OP VALUE with OP in = != > >= < <= ~ (glob), e.g. "
                       "attrs.rows>=1000 or status=error; repeat for several")
    group.add_argument("--run", action="append", metavar="RUN_ID", help="only this run")
    group.add_argument("--service", help="only this service")
    group.add_argument("--version", help="only this release")
    return options


def selection(args: argparse.Namespace, by: Sequence[str] = ()) -> Selection:
    """The Selection the options of ``selection_options`` describe, checked now so a bad
    condition is reported in the user's words."""
    from lapse.analysis.selection import Selection, between

    since, until = args.since, args.until
    if args.between:
        since, until = between(args.between)
    chosen = Selection(since=since, until=until, name=args.name, run=args.run,
                       service=args.service, version=args.version, where=args.where, by=by)
    chosen.where_sql()
    return chosen
