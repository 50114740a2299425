"""The pytest plugin (registered through the ``pytest11`` entry point; inactive without --lapse)."""

from __future__ import annotations

from typing import Any


def pytest_addoption(parser: Any) -> None:
    """Add lapse's options to pytest."""
    group = parser.getgroup("lapse", "lapse performance recording")
    group.addoption("--lapse", action="store_true", default=False,
                    help="record test durations and lapse events into the lapse store")
