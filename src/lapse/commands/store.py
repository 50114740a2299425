"""Commands over the store itself: tail, runs, compact, purge and sql."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from lapse._errors import LapseError
from lapse.commands._common import (
    console,
    format_duration,
    format_time,
    progress_bar,
    seconds,
    store,
)

if TYPE_CHECKING:
    import pyarrow as pa
    from rich.console import Console

TAIL_COLUMNS = ("start_ns", "name", "duration_ns", "status", "error_type", "caller", "thread",
                "run_id")

def event_rows(table: pa.Table) -> list[dict[str, Any]]:
    present = [c for c in TAIL_COLUMNS if c in table.column_names]
    return table.select(present).to_pylist()  # type: ignore[no-any-return]


def print_events(console: Console, rows: list[dict[str, Any]]) -> None:
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

    out = console()
    root = store(args)
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
    print_events(out, event_rows(latest))
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
                    rows.extend(event_rows(pq.read_table(path, columns=list(TAIL_COLUMNS))))
                except OSError:
                    continue
            if args.name:
                rows = [r for r in rows if matches(r["name"], args.name)]
            print_events(out, sorted(rows, key=lambda r: r["start_ns"]))
    except KeyboardInterrupt:
        pass
    return 0


def matches(name: str, pattern: str) -> bool:
    from fnmatch import fnmatchcase

    return fnmatchcase(name, pattern)


def cmd_runs(args: argparse.Namespace) -> int:
    """List the processes (runs) that wrote to the store, newest first."""
    from rich.table import Table

    from lapse.store import _read

    root = store(args)
    rows = _read.runs(root)
    if args.format == "json":
        import json

        print(json.dumps(rows, indent=2))
        return 0
    out = Table(title=f"{len(rows)} runs in {root}", title_justify="left")
    for column in ("run", "kind", "service", "version", "level", "state", "events", "errors",
                   "dropped"):
        out.add_column(column, justify="right" if column in ("events", "errors", "dropped")
                       else "left", no_wrap=column == "run")
    for row in rows:
        dropped = f"[red]{row['dropped']:,}[/]" if row["dropped"] else "0"
        out.add_row(row["run_id"], row["kind"] or "process", row["service"],
                    row["version"] or "—", row["level"], run_state(row),
                    f"{row['events']:,}", f"{row['errors']:,}", dropped)
    console().print(out)
    return 0


def run_state(row: dict[str, Any]) -> str:
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


def cmd_compact(args: argparse.Namespace) -> int:
    """Merge small segments and apply retention (--max-age or LAPSE_MAX_AGE)."""
    from lapse._config import parse_duration_ns
    from lapse.store import _maintenance

    root = store(args)
    max_age = args.max_age or os.environ.get("LAPSE_MAX_AGE") or None
    max_age_ns = None if max_age is None else parse_duration_ns(max_age, "max_age")
    with progress_bar("compacting") as bar:
        task = bar.add_task("compacting", total=None)
        result = _maintenance.compact(
            root, max_age_ns=max_age_ns, target_rows=args.target_rows,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    out = console()
    out.print(
        f"{result.segments_before} segments → {result.segments_after} "
        f"({result.merged} merged, {result.expired} expired with "
        f"{result.expired_events:,} events); {result.events:,} events kept in {root}"
    )
    if result.temporaries_removed:
        out.print(f"removed {result.temporaries_removed} temporary files left by killed writers")
    for path in result.skipped:
        out.print(f"[yellow]skipped unreadable segment {path}[/]")
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    """Erase every event of one user (GDPR erasure)."""
    from lapse.store import _maintenance

    root = store(args)
    with progress_bar("purging") as bar:
        task = bar.add_task("purging", total=None)
        result = _maintenance.purge(
            root, user=args.user, pseudonym=args.pseudonym,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    console().print(
        f"erased {result.events_removed:,} events of {result.pseudonym} "
        f"({result.segments_rewritten} segments rewritten, {result.runs_cleared} runs cleared)"
    )
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    """Run DuckDB SQL over the views events, events_raw and runs."""
    from lapse.store import _read

    table = _read.query(args.query, (), store(args))
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
        console().print(out)
    return 0


def add_tail(commands: Any, common: argparse.ArgumentParser) -> None:
    tail = commands.add_parser("tail", parents=[common], help=cmd_tail.__doc__,
                               description=cmd_tail.__doc__)
    tail.add_argument("-n", "--lines", type=int, default=20, help="latest events to show first")
    tail.add_argument("--follow", action=argparse.BooleanOptionalAction, default=True,
                      help="keep showing new events as they are written (default: on)")
    tail.add_argument("--name", help="only events with this name (* matches anything)")
    tail.add_argument("--interval", type=seconds, default=0.5, metavar="DURATION",
                      help="how often to look for new segments (default: 500ms)")
    tail.add_argument("--for", dest="for_", type=seconds, metavar="DURATION",
                      help="stop following after this long (default: until Ctrl-C)")
    tail.set_defaults(handler=cmd_tail)


def add_runs(commands: Any, common: argparse.ArgumentParser) -> None:
    runs = commands.add_parser("runs", parents=[common], help=cmd_runs.__doc__,
                               description=cmd_runs.__doc__)
    runs.add_argument("--format", choices=("table", "json"), default="table")
    runs.set_defaults(handler=cmd_runs)


def add_compact(commands: Any, common: argparse.ArgumentParser) -> None:
    compact = commands.add_parser("compact", parents=[common], help=cmd_compact.__doc__,
                                  description=cmd_compact.__doc__)
    compact.add_argument("--max-age", metavar="DURATION",
                         help="delete segments whose events are all older (e.g. 30d)")
    compact.add_argument("--target-rows", type=int, default=1_000_000,
                         help="events per merged segment (default: 1,000,000)")
    compact.set_defaults(handler=cmd_compact)


def add_purge(commands: Any, common: argparse.ArgumentParser) -> None:
    purge = commands.add_parser("purge", parents=[common], help=cmd_purge.__doc__,
                                description=f"{cmd_purge.__doc__} The user id is turned into "
                                "its pseudonym with LAPSE_USER_KEY, the key used when recording.")
    who = purge.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", metavar="ID", help="the user's id as given to lapse.user()")
    who.add_argument("--pseudonym", help="the stored pseudonym (u_…), if the key is gone")
    purge.set_defaults(handler=cmd_purge)


def add_sql(commands: Any, common: argparse.ArgumentParser) -> None:
    sql = commands.add_parser("sql", parents=[common], help=cmd_sql.__doc__,
                              description=cmd_sql.__doc__)
    sql.add_argument("query", help="a DuckDB SELECT, e.g. \"select name, count(*) from events "
                     "group by name\"")
    sql.add_argument("--format", choices=("table", "csv", "json"), default="table")
    sql.set_defaults(handler=cmd_sql)


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add this module's commands to the ``lapse`` parser."""
    add_tail(commands, common)
    add_runs(commands, common)
    add_compact(commands, common)
    add_purge(commands, common)
    add_sql(commands, common)
