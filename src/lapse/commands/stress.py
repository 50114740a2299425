"""``lapse stress``: load and stress tests of an HTTP endpoint or a Python callable."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from lapse._errors import ConfigError
from lapse.commands._common import add_command, console, stderr_console, store

EXIT_SLO = 1
EXIT_INTERRUPTED = 130

DESCRIPTION = """\
Send load to TARGET and measure every request: an HTTP endpoint
(http://127.0.0.1:8000/predict) or a Python callable (package.module:function),
run in several generator processes. Open loop (--rate): requests are due at
their intended times whatever the target does, and latency is measured from
those times, so a stall is not hidden by the generator waiting for it
(coordinated omission corrected; the uncorrected figure is shown beside it).
Closed loop (--users): each user sends, waits, thinks and sends again.
--ramp runs open-loop steps of rising rate; with --slo it stops at the first
step that misses the objective and reports the knee. Every request is an
event (kind "request") of the stress run, so report, compare and the
dashboard show it. Exit status: 0, 1 when the SLO is missed or every request
failed, 2 for bad input, 130 when interrupted (what was measured is kept).
Only this machine is a target unless --allow-remote names the host."""


def _rate(text: str) -> str:
    from lapse.stress.schedule import parse_rate

    try:
        parse_rate(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error).split(": ", 1)[1]) from None
    return text


def _duration(text: str) -> str:
    from lapse.stress.schedule import parse_positive_duration_ns

    try:
        parse_positive_duration_ns(text, "duration")
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error).split(": ", 1)[1]) from None
    return text


def _header(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    if not colon or not name.strip() or not name.strip().replace("-", "").isalnum():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a header; expected 'Name: value', such as "
            "'Authorization: Bearer abc'.")
    return name.strip(), value.strip()


class _Progress:
    """Live progress on stderr: a redrawn line on a terminal, a line every 5 s otherwise."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.terminal = sys.stderr.isatty()
        self.console = stderr_console()
        self.live: Any = None
        self.last_line = time.monotonic()

    def __enter__(self) -> _Progress:
        if self.terminal and not self.quiet:
            from rich.live import Live

            self.live = Live("starting generator processes…", console=self.console,
                             refresh_per_second=4, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def __call__(self, s: dict[str, Any]) -> None:
        if self.quiet:
            return
        from lapse.reporting import human_seconds

        load = f"{s['rate']:g} req/s" if s["rate"] is not None else f"{s['users']} users"
        step = f"step {s['step'] + 1}/{s['steps']} " if s["steps"] > 1 else ""
        line = (f"{step}{load}  {min(s['elapsed'], s['duration']):.1f}/{s['duration']:g} s  "
                f"achieved "
                f"{s['achieved']:,.0f} req/s  p50 {human_seconds(s['p50'])}  p99 "
                f"{human_seconds(s['p99'])}  requests {s['requests']:,}  errors "
                f"{s['errors']:,}  late {s['late']:,}  dropped {s['dropped']:,}"
                + ("  stopping…" if s["stopping"] else ""))
        if self.live is not None:
            self.live.update(line)
        elif time.monotonic() - self.last_line >= 5 or s["final"]:
            self.last_line = time.monotonic()
            self.console.print(line, highlight=False, soft_wrap=True)


def cmd_stress(args: argparse.Namespace) -> int:
    """Load-test an HTTP endpoint or a Python callable; store every request as an event."""
    from lapse import stress
    from lapse.stress import summary

    body = None
    if args.body:
        try:
            body = Path(args.body).read_bytes()
        except OSError as error:
            raise ConfigError(f"body: cannot read {args.body!r} ({error.strerror}).") from None
    plan = stress.plan(
        args.target, rate=args.rate, users=args.users, ramp=args.ramp, arrivals=args.arrivals,
        duration=args.duration, requests=args.requests, warmup=args.warmup, think=args.think,
        workers=args.workers, connections=args.connections, threads=args.threads,
        timeout=args.timeout, method=args.method, headers=tuple(args.header), body=body,
        payload=args.payload, allow_remote=tuple(args.allow_remote), name=args.name,
        seed=args.seed,
    )
    if args.slo:
        from lapse.stress.schedule import parse_slo

        parse_slo(args.slo)  # a typo fails now, not after the run
    with _Progress(args.quiet or args.format == "json") as progress:
        document = stress.run(plan, slo=args.slo, dir=store(args), progress=progress)
    if args.report:
        _write_report(document, Path(args.report))
    if args.format == "json":
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        out = console()
        for part in summary.render(document):
            out.print(part)
    if document["interrupted"]:
        return EXIT_INTERRUPTED
    requests = document["requests"]
    if requests["total"] and not requests["ok"]:
        first = document["errors"][0] if document["errors"] else {"type": "?", "example": ""}
        stderr_console().print(
            f"lapse: every request failed ({requests['total']:,}); first error "
            f"{first['type']}:\n{first['example']}", highlight=False, markup=False)
        return EXIT_SLO
    if document["slo"] is not None and not (document["slo"]["met"] or
                                            document["slo"]["knee"] is not None):
        return EXIT_SLO
    return 0


def _write_report(document: dict[str, Any], path: Path) -> None:
    if path.suffix.lower() in (".html", ".htm"):
        from lapse.stress.html import render

        path.write_text(render(document))
    elif path.suffix.lower() == ".json":
        path.write_text(json.dumps(document, indent=2) + "\n")
    else:
        from lapse.stress.html import markdown

        path.write_text(markdown(document))
    stderr_console().print(f"wrote {path}")


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``lapse stress``."""
    parser = add_command(commands, common, "stress", cmd_stress, description=DESCRIPTION,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", metavar="TARGET",
                        help="http://127.0.0.1:PORT/path, or package.module:function")
    load = parser.add_argument_group("load (one of --rate, --users, --ramp)")
    load.add_argument("--rate", type=_rate, metavar="RATE",
                      help="open loop: requests per second (200, 200/s, 1.5k/s, 3000/min)")
    load.add_argument("--arrivals", choices=("constant", "poisson"), default="constant",
                      help="open loop: evenly spaced or Poisson arrivals (default constant)")
    load.add_argument("--users", type=int, metavar="N",
                      help="closed loop: N users, each waiting for its answer")
    load.add_argument("--think", type=_duration, metavar="TIME",
                      help="closed loop: pause between a user's requests (e.g. 100ms)")
    load.add_argument("--ramp", metavar="START:STOP:STEP",
                      help="open-loop steps of rising rate, e.g. 50:1000:50 (req/s)")
    load.add_argument("--slo", metavar="OBJECTIVES",
                      help="objectives such as 'p99<200ms' or 'p99<200ms,errors<1%%'; with "
                      "--ramp, the knee is the highest rate meeting them")
    limits = parser.add_argument_group("limits (safe by default)")
    limits.add_argument("--duration", type=_duration, metavar="TIME",
                        help="how long to send (default 10s; per step with --ramp: 5s)")
    limits.add_argument("--requests", type=int, metavar="N",
                        help="stop (each step) after N requests (default 1,000,000)")
    limits.add_argument("--warmup", type=_duration, metavar="TIME",
                        help="send but do not measure or store the first TIME of each step")
    limits.add_argument("--timeout", type=_duration, metavar="TIME",
                        help="a request without an answer after TIME fails (default 10s)")
    limits.add_argument("--allow-remote", action="append", default=[], metavar="HOST",
                        help="allow this host off this machine (only hosts you may load-test)")
    generator = parser.add_argument_group("generator")
    generator.add_argument("--workers", type=int, metavar="N",
                           help="generator processes (default: one per CPU)")
    generator.add_argument("--connections", type=int, metavar="N",
                           help="HTTP open loop: most connections open at once (default 64)")
    generator.add_argument("--threads", type=int, metavar="N",
                           help="callable open loop: calls each worker runs at once (default 1)")
    generator.add_argument("--seed", type=int, help="seed of the Poisson arrivals")
    http = parser.add_argument_group("HTTP target")
    http.add_argument("--method", default="GET", help="HTTP method (default GET)")
    http.add_argument("--header", "-H", type=_header, action="append", default=[],
                      metavar="'NAME: VALUE'", help="a request header; repeat for several")
    http.add_argument("--body", metavar="FILE", help="request body, read from FILE")
    parser.add_argument("--payload", metavar="MODULE:FACTORY",
                        help="a function returning the inputs: call arguments of a callable, "
                        "or request bodies (bytes, text, or JSON-able objects)")
    parser.add_argument("--name", help="stored event name (default 'GET /path' or the target)")
    output = parser.add_argument_group("output")
    output.add_argument("--format", choices=("table", "json"), default="table",
                        help="summary as tables or as JSON (schema lapse.stress/1)")
    output.add_argument("--report", metavar="FILE",
                        help="also write a report: .html (with charts), .md or .json")
    output.add_argument("-q", "--quiet", action="store_true", help="no progress display")
