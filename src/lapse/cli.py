"""The ``lapse`` command (also ``python -m lapse``).

Every command takes ``--dir`` (default: ``LAPSE_DIR``, else ``./.lapse``).
Commands live in ``lapse.commands``, one module per area, each adding its
subcommands with ``register(commands, common)``; the work is done by the
modules they call, imported only by the command that needs them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import import_module

from lapse._errors import LapseError
from lapse.commands._common import format_duration, format_time

COMMAND_MODULES = (
    "lapse.commands.store",
    "lapse.commands.reports",
    "lapse.commands.demo",
    "lapse.commands.stress",
    "lapse.commands.analyze",
)

__all__ = ["build_parser", "format_duration", "format_time", "main"]


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
    for module_name in COMMAND_MODULES:
        import_module(module_name).register(commands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lapse`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except LapseError as error:
        sys.stderr.write(f"lapse: error: {error}\n")
        return 2
    except BrokenPipeError:
        return 0
