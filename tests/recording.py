"""Helpers for tests that need a store written by real instrumented processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

PROGRAM = """
import lapse, time
lapse.configure(service="svc", version="{version}", level="{level}")

@lapse.timed("predict")
def predict(n):
    lapse.set(rows=n)
    with lapse.span("preprocess"):
        pass
    return n

for i in range({calls}):
    predict(i)
"""


def record(store: Path, calls: int = 10, version: str = "1.0", level: str = "standard") -> None:
    """Run a separate Python process that records ``calls`` predict calls into ``store``."""
    code = textwrap.dedent(PROGRAM.format(calls=calls, version=version, level=level))
    env = {**os.environ, "LAPSE_DIR": str(store)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def lapse_cli(*args: str, store: Path | None = None, timeout: float = 120,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real ``lapse`` command (as ``python -m lapse``) and capture its output."""
    command = [sys.executable, "-m", "lapse", *args]
    if store is not None:
        command += ["--dir", str(store)]
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=full_env,
                          check=False)
