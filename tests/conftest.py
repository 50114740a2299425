"""Shared fixtures: every test gets a fresh lapse (no leaked settings, threads or env)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import lapse

_LAPSE_VARIABLES = [name for name in os.environ if name.startswith("LAPSE_")]


@pytest.fixture(autouse=True)
def fresh_lapse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Each test starts unconfigured, with LAPSE_DIR pointing at its own empty store.

    Afterwards lapse is reset, and a test that leaves a writer thread running
    (other than lapse's own, stopped by the reset) fails.
    """
    for name in list(os.environ):
        if name.startswith("LAPSE_"):
            monkeypatch.delenv(name)
    store = tmp_path / "store"
    monkeypatch.setenv("LAPSE_DIR", str(store))
    lapse.reset()
    before = set(threading.enumerate())
    yield store
    lapse.reset()
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()
              and t.name == "lapse-writer"]
    assert not leaked, f"lapse writer threads left running: {leaked}"


@pytest.fixture
def store(fresh_lapse: Path) -> Path:
    """The test's own store directory (also in LAPSE_DIR)."""
    return fresh_lapse
