"""The demo command."""

from __future__ import annotations

import argparse
from typing import Any

from lapse.commands._common import store


def cmd_demo(args: argparse.Namespace) -> int:
    """Train a model, score it from worker processes and an endpoint, stress it, report."""
    from lapse import _demo

    return _demo.run(store(args), workers=args.workers, batches=args.batches,
                     requests=args.requests, ramp=args.ramp)


def add_demo(commands: Any, common: argparse.ArgumentParser) -> None:
    demo = commands.add_parser("demo", parents=[common], help=cmd_demo.__doc__,
                               description=cmd_demo.__doc__)
    demo.add_argument("--workers", type=int, default=4, help="scoring processes (default: 4)")
    demo.add_argument("--batches", type=int, default=50,
                      help="batches each worker scores (default: 50)")
    demo.add_argument("--requests", type=int, default=20,
                      help="requests sent to the demo's FastAPI model endpoint (default: 20; "
                      "0 skips the endpoint)")
    demo.add_argument("--ramp", default="50:200:50", metavar="START:STOP:STEP",
                      help="the stress test's open-loop rates in requests/s, 2 s per step "
                      "(default: 50:200:50; '' skips it)")
    demo.set_defaults(handler=cmd_demo)


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add this module's commands to the ``lapse`` parser."""
    add_demo(commands, common)
