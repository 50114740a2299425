"""The ``lapse`` command (also ``python -m lapse``).

Every command takes ``--dir`` (default: ``LAPSE_DIR``, else ``./.lapse``).
This module parses arguments and prints; the work is done by the store and
demo modules, imported only by the command that needs them.
"""

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
    import pyarrow as pa
    from rich.console import Console

TAIL_COLUMNS = ("start_ns", "name", "duration_ns", "status", "error_type", "caller", "thread",
                "run_id")


def format_duration(ns: float | None) -> str:
    """Nanoseconds in the unit a person reads best: ``812 ns``, ``3.20 ms``, ``1.25 s``."""
    if ns is None:
        return "—"
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


def _console() -> Console:
    from rich.console import Console

    # Piped output (CI logs, files) is not cut to 80 columns: tables stay readable.
    wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(highlight=False, width=160 if wide else None)


def _store(args: argparse.Namespace) -> Path:
    return Path(args.dir) if args.dir else Path(os.environ.get("LAPSE_DIR") or ".lapse")


# -- tail ---------------------------------------------------------------------


def _event_rows(table: pa.Table) -> list[dict[str, Any]]:
    present = [c for c in TAIL_COLUMNS if c in table.column_names]
    return table.select(present).to_pylist()  # type: ignore[no-any-return]


def _print_events(console: Console, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        status = row.get("status") or "ok"
        mark = "[green]ok[/]" if status == "ok" else f"[red]{row.get('error_type') or status}[/]"
        where = f" [dim]← {row['caller']}[/]" if row.get("caller") else ""
        console.print(
            f"{format_time(row['start_ns'])}  {format_duration(row['duration_ns']):>9}  "
            f"{mark}  [bold]{row['name']}[/]{where}  [dim]{row.get('thread') or ''} "
            f"{row['run_id']}[/]",
            soft_wrap=True,
        )


def cmd_tail(args: argparse.Namespace) -> int:
    """Show the latest events, then new ones as they are written."""
    import pyarrow.parquet as pq

    from lapse.store import _layout, _read

    console = _console()
    root = _store(args)
    if not root.is_dir():
        raise LapseError(f"no lapse store at {root}: run an instrumented program first, or "
                         "pass --dir (or set LAPSE_DIR).")
    names = [args.name] if args.name else None
    clauses, parameters = _read.where_clauses(name=names)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    latest = _read.query(
        f"SELECT * FROM (SELECT * FROM events_raw {where} ORDER BY start_ns DESC "  # noqa: S608
        f"LIMIT {int(args.lines)}) ORDER BY start_ns",
        parameters, root,
    )
    _print_events(console, _event_rows(latest))
    if not args.follow:
        return 0
    seen = set(_layout.segment_files(root))
    deadline = None if args.for_ is None else time.monotonic() + args.for_
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(args.interval)
            current = _layout.segment_files(root)
            fresh = [p for p in current if p not in seen and not p.name.startswith("compacted-")]
            seen.update(current)
            rows: list[dict[str, Any]] = []
            for path in _read.readable_files(fresh):
                try:
                    rows.extend(_event_rows(pq.read_table(path, columns=list(TAIL_COLUMNS))))
                except OSError:
                    continue
            if args.name:
                rows = [r for r in rows if _matches(r["name"], args.name)]
            _print_events(console, sorted(rows, key=lambda r: r["start_ns"]))
    except KeyboardInterrupt:
        pass
    return 0


def _matches(name: str, pattern: str) -> bool:
    from fnmatch import fnmatchcase

    return fnmatchcase(name, pattern)


# -- runs -------------------------------------------------------------------


def cmd_runs(args: argparse.Namespace) -> int:
    """List the processes (runs) that wrote to the store, newest first."""
    from rich.table import Table

    from lapse.store import _read

    root = _store(args)
    table = _read.query(
        """
        SELECT r.run_id, r.service, r.version, r.environment, r.host, r.pid, r.level,
               r.git_commit, r.started_ns,
               r.ended_ns, r.updated_ns, r.dropped, coalesce(e.events, 0) AS events,
               coalesce(e.errors, 0) AS errors
        FROM runs r LEFT JOIN (
            SELECT run_id, count(*) AS events, count(*) FILTER (status = 'error') AS errors
            FROM events_raw GROUP BY run_id) e USING (run_id)
        ORDER BY r.started_ns DESC
        """,
        (), root,
    )
    rows = table.to_pylist()
    if args.format == "json":
        import json

        print(json.dumps(rows, indent=2))
        return 0
    out = Table(title=f"{len(rows)} runs in {root}", title_justify="left")
    for column in ("run", "service", "version", "level", "state", "events", "errors", "dropped"):
        out.add_column(column, justify="right" if column in ("events", "errors", "dropped")
                       else "left", no_wrap=column == "run")
    for row in rows:
        dropped = f"[red]{row['dropped']:,}[/]" if row["dropped"] else "0"
        out.add_row(row["run_id"], row["service"], row["version"] or "—", row["level"],
                    _run_state(row), f"{row['events']:,}", f"{row['errors']:,}", dropped)
    _console().print(out)
    return 0


def _run_state(row: dict[str, Any]) -> str:
    """ended (clean exit), running (its process is alive here), or no clean exit (killed)."""
    if row["ended_ns"]:
        return "ended"
    from lapse._capture import host_name

    if row["host"] == host_name():
        try:
            os.kill(row["pid"], 0)
        except ProcessLookupError:
            return "[yellow]no clean exit[/]"
        except PermissionError:
            pass
        return "running"
    return "no end recorded"


# -- compact and purge -----------------------------------------------------------


def _progress_bar(description: str) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    return Progress("[progress.description]{task.description}", BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), transient=True,
                    disable=not sys.stderr.isatty(), console=_stderr_console())


def _stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True)


def cmd_compact(args: argparse.Namespace) -> int:
    """Merge small segments and apply retention (--max-age or LAPSE_MAX_AGE)."""
    from lapse._config import parse_duration_ns
    from lapse.store import _maintenance

    root = _store(args)
    max_age = args.max_age or os.environ.get("LAPSE_MAX_AGE") or None
    max_age_ns = None if max_age is None else parse_duration_ns(max_age, "max_age")
    with _progress_bar("compacting") as bar:
        task = bar.add_task("compacting", total=None)
        result = _maintenance.compact(
            root, max_age_ns=max_age_ns, target_rows=args.target_rows,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    console = _console()
    console.print(
        f"{result.segments_before} segments → {result.segments_after} "
        f"({result.merged} merged, {result.expired} expired with "
        f"{result.expired_events:,} events); {result.events:,} events kept in {root}"
    )
    for path in result.skipped:
        console.print(f"[yellow]skipped unreadable segment {path}[/]")
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    """Erase every event of one user (GDPR erasure)."""
    from lapse.store import _maintenance

    root = _store(args)
    with _progress_bar("purging") as bar:
        task = bar.add_task("purging", total=None)
        result = _maintenance.purge(
            root, user=args.user, pseudonym=args.pseudonym,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    _console().print(
        f"erased {result.events_removed:,} events of {result.pseudonym} "
        f"({result.segments_rewritten} segments rewritten, {result.runs_cleared} runs cleared)"
    )
    return 0


# -- report and dashboard ------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    """Per event: calls, errors, throughput, five-number summary, percentiles, outliers."""
    from lapse.analysis.selection import between
    from lapse.reporting import report

    since, until = args.since, args.until
    if args.between:
        since, until = between(args.between)
    with _progress_bar("scanning events") as bar:
        task = bar.add_task("scanning events", total=1.0)
        result = report(
            _store(args), by=args.by, since=since, until=until, name=args.name, run=args.run,
            service=args.service, version=args.version, where=args.where,
            progress=lambda done: bar.update(task, completed=done),
        )
    if args.format == "table":
        text = None
    elif args.format == "html":
        text = result.to_html(title=args.title)
    else:
        text = result.render(args.format)
    if args.output:
        Path(args.output).write_text(text if text is not None else result.render("table"))
        _stderr_console().print(f"wrote {args.output}")
    elif text is None:
        _console().print(result)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Compare a candidate with a baseline per event; exit 1 if any is significantly slower."""
    from lapse.analysis.compare import compare, parse_selector
    from lapse.reporting.compare import render_comparison

    baseline_dir = Path(args.baseline_dir) if args.baseline_dir else _store(args)
    candidate_dir = Path(args.candidate_dir) if args.candidate_dir else baseline_dir
    result = compare(
        parse_selector(args.baseline) if args.baseline else _everything(),
        parse_selector(args.candidate) if args.candidate else _everything(),
        baseline_dir=baseline_dir, candidate_dir=candidate_dir,
        threshold=args.threshold, alpha=args.alpha, correction=args.correction,
        min_calls=args.min_calls,
        labels=(args.baseline or str(baseline_dir), args.candidate or str(candidate_dir)),
    )
    if args.format == "table":
        _console().print(render_comparison(result, "table"))
    else:
        sys.stdout.write(render_comparison(result, args.format))
    return 1 if result.regressed else 0


def _everything() -> Any:
    from lapse.analysis.selection import Selection

    return Selection()


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Serve the web dashboard (127.0.0.1 by default; other addresses need a token)."""
    from lapse.dashboard import serve

    token = args.token or os.environ.get("LAPSE_DASHBOARD_TOKEN") or None
    serve(_store(args), host=args.host, port=args.port, token=token)
    return 0


# -- sql and demo -------------------------------------------------------------------


def cmd_sql(args: argparse.Namespace) -> int:
    """Run DuckDB SQL over the views events, events_raw and runs."""
    from lapse.store import _read

    table = _read.query(args.query, (), _store(args))
    if args.format == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, sys.stdout.buffer)
    elif args.format == "json":
        import json

        print(json.dumps(table.to_pylist(), indent=2, default=str))
    else:
        from rich.table import Table

        out = Table()
        for name in table.column_names:
            out.add_column(name)
        for row in table.to_pylist():
            out.add_row(*("—" if v is None else str(v) for v in row.values()))
        _console().print(out)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Train a model, score it in batches from worker processes, then show tail and runs."""
    from lapse import _demo

    return _demo.run(_store(args), workers=args.workers, batches=args.batches)


# -- parser ---------------------------------------------------------------------------


def _seconds(text: str) -> float:
    from lapse._config import parse_duration_ns

    try:
        return parse_duration_ns(text, "duration") / 1e9
    except LapseError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_tail(commands: Any, common: argparse.ArgumentParser) -> None:
    tail = commands.add_parser("tail", parents=[common], help=cmd_tail.__doc__,
                               description=cmd_tail.__doc__)
    tail.add_argument("-n", "--lines", type=int, default=20, help="latest events to show first")
    tail.add_argument("--follow", action=argparse.BooleanOptionalAction, default=True,
                      help="keep showing new events as they are written (default: on)")
    tail.add_argument("--name", help="only events with this name (* matches anything)")
    tail.add_argument("--interval", type=_seconds, default=0.5, metavar="DURATION",
                      help="how often to look for new segments (default: 500ms)")
    tail.add_argument("--for", dest="for_", type=_seconds, metavar="DURATION",
                      help="stop following after this long (default: until Ctrl-C)")
    tail.set_defaults(handler=cmd_tail)


def _add_runs(commands: Any, common: argparse.ArgumentParser) -> None:
    runs = commands.add_parser("runs", parents=[common], help=cmd_runs.__doc__,
                               description=cmd_runs.__doc__)
    runs.add_argument("--format", choices=("table", "json"), default="table")
    runs.set_defaults(handler=cmd_runs)


def _add_compact(commands: Any, common: argparse.ArgumentParser) -> None:
    compact = commands.add_parser("compact", parents=[common], help=cmd_compact.__doc__,
                                  description=cmd_compact.__doc__)
    compact.add_argument("--max-age", metavar="DURATION",
                         help="delete segments whose events are all older (e.g. 30d)")
    compact.add_argument("--target-rows", type=int, default=1_000_000,
                         help="events per merged segment (default: 1,000,000)")
    compact.set_defaults(handler=cmd_compact)


def _add_purge(commands: Any, common: argparse.ArgumentParser) -> None:
    purge = commands.add_parser("purge", parents=[common], help=cmd_purge.__doc__,
                                description=f"{cmd_purge.__doc__} The user id is turned into "
                                "its pseudonym with LAPSE_USER_KEY, the key used when recording.")
    who = purge.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", metavar="ID", help="the user's id as given to lapse.user()")
    who.add_argument("--pseudonym", help="the stored pseudonym (u_…), if the key is gone")
    purge.set_defaults(handler=cmd_purge)


def _add_sql(commands: Any, common: argparse.ArgumentParser) -> None:
    sql = commands.add_parser("sql", parents=[common], help=cmd_sql.__doc__,
                              description=cmd_sql.__doc__)
    sql.add_argument("query", help="a DuckDB SELECT, e.g. \"select name, count(*) from events "
                     "group by name\"")
    sql.add_argument("--format", choices=("table", "csv", "json"), default="table")
    sql.set_defaults(handler=cmd_sql)


def _add_report(commands: Any, common: argparse.ArgumentParser) -> None:
    report = commands.add_parser("report", parents=[common], help=cmd_report.__doc__,
                                 description=f"{cmd_report.__doc__} Durations are per call; "
                                 "hinges are Tukey's, exactly as R's fivenum().")
    report.add_argument("--by", action="append", default=[], metavar="COLUMN",
                        help="group by a column or attribute (version, host, attrs.model…); "
                        "repeat for several")
    report.add_argument("--since", metavar="TIME", help="from this time: 1h (ago), ISO time")
    report.add_argument("--until", metavar="TIME", help="up to this time: 10m (ago), ISO time")
    report.add_argument("--between", metavar="START..END", help="a time range, e.g. 2h..1h")
    report.add_argument("--name", action="append", metavar="NAME",
                        help="only this event (* matches anything); repeat for several")
    report.add_argument("--where", action="append", default=[], metavar="CONDITION",
                        help="COLUMN OP VALUE with OP in = != > >= < <= ~ (glob), e.g. "
                        "attrs.rows>=1000 or status=error; repeat for several")
    report.add_argument("--run", action="append", metavar="RUN_ID", help="only this run")
    report.add_argument("--service", help="only this service")
    report.add_argument("--version", help="only this release")
    report.add_argument("--format", choices=("table", "json", "csv", "markdown", "html"),
                        default="table", help="output format (default: a terminal table)")
    report.add_argument("-o", "--output", metavar="FILE", help="write to FILE, not stdout")
    report.add_argument("--title", default="lapse report", help="title of the HTML report")
    report.set_defaults(handler=cmd_report)


def _add_compare(commands: Any, common: argparse.ArgumentParser) -> None:
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
    compare.add_argument("--format", choices=("table", "json", "markdown"), default="table")
    compare.set_defaults(handler=cmd_compare)


def _add_dashboard(commands: Any, common: argparse.ArgumentParser) -> None:
    dashboard = commands.add_parser("dashboard", parents=[common], help=cmd_dashboard.__doc__,
                                    description=cmd_dashboard.__doc__)
    dashboard.add_argument("--host", default="127.0.0.1",
                           help="address to bind (default 127.0.0.1, this machine only)")
    dashboard.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    dashboard.add_argument("--token", help="require this token on every request (default: "
                           "$LAPSE_DASHBOARD_TOKEN); needed to bind another address")
    dashboard.set_defaults(handler=cmd_dashboard)


def _add_demo(commands: Any, common: argparse.ArgumentParser) -> None:
    demo = commands.add_parser("demo", parents=[common], help=cmd_demo.__doc__,
                               description=cmd_demo.__doc__)
    demo.add_argument("--workers", type=int, default=4, help="scoring processes (default: 4)")
    demo.add_argument("--batches", type=int, default=50,
                      help="batches each worker scores (default: 50)")
    demo.set_defaults(handler=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; its --help texts are the CLI reference."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dir", metavar="PATH",
        help="store directory (default: $LAPSE_DIR, else ./.lapse)",
    )
    parser = argparse.ArgumentParser(
        prog="lapse",
        description="Application performance monitoring for data-science code: "
        "look at what instrumented programs recorded.",
        epilog="Run 'lapse COMMAND --help' for a command's options.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_tail(commands, common)
    _add_runs(commands, common)
    _add_compact(commands, common)
    _add_purge(commands, common)
    _add_sql(commands, common)
    _add_report(commands, common)
    _add_compare(commands, common)
    _add_dashboard(commands, common)
    _add_demo(commands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lapse`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except LapseError as error:
        print(f"lapse: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
