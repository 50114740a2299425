"""The demo command."""

from __future__ import annotations

import argparse
from typing import Any

from lapse.commands._common import store


def cmd_demo(args: argparse.Namespace) -> int:
    """Train a model, score it in batches from worker processes, then show tail and runs."""
    from lapse import _demo

    return _demo.run(store(args), workers=args.workers, batches=args.batches,
                     requests=args.requests)


def add_demo(commands: Any, common: argparse.ArgumentParser) -> None:
    demo = commands.add_parser("demo", parents=[common], help=cmd_demo.__doc__,
                               description=cmd_demo.__doc__)
    demo.add_argument("--workers", type=int, default=4, help="scoring processes (default: 4)")
    demo.add_argument("--batches", type=int, default=50,
                      help="batches each worker scores (default: 50)")
    demo.add_argument("--requests", type=int, default=20,
                      help="requests sent to the demo's FastAPI model endpoint (default: 20; "
                      "0 skips the endpoint)")
    demo.set_defaults(handler=cmd_demo)


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add this module's commands to the ``lapse`` parser."""
    add_demo(commands, common)
