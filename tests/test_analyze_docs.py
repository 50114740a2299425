"""docs/analysis.md is true: its Python example runs, and it documents every result field."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lapse.analysis.capacity import AutoScale, Capacity, CapacityPoint, StressCheck
from lapse.analysis.changes import Change, Changes, Series
from lapse.analysis.drivers import Driver, Drivers, Prediction
from lapse.analysis.outliers import EventOutliers, Outliers
from lapse.analysis.slowcalls import Exemplar, Rule, SlowCalls

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "analysis.md").read_text()


JSON_NAMES = {"window_ns": "window"}
"""Fields named otherwise in the JSON document."""


def _section(title: str) -> str:
    return DOC.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize(("section", "classes"), [
    ("changes", (Change, Series, Changes)),
    ("drivers", (Drivers, Driver, Prediction)),
    ("slow", (SlowCalls, Rule, Exemplar)),
    ("outliers", (Outliers, EventOutliers)),
    ("capacity", (Capacity, CapacityPoint, AutoScale, StressCheck)),
])
def test_every_result_field_is_documented(section, classes):
    """Each field of an analysis's JSON document is named in its section of the doc."""
    text = _section(section)
    for cls in classes:
        for field in dataclasses.fields(cls):
            if field.name.startswith("_") or field.name in ("notes", "skipped"):
                continue
            name = JSON_NAMES.get(field.name, field.name)
            assert f"`{name}`" in text, f"{cls.__name__}.{field.name}"


def test_python_example_runs(tmp_path):
    """The Python example, run as a script, prints what its comments promise."""
    code = re.findall(r"```python\n(.*?)```", DOC, flags=re.DOTALL)[0]
    env = {**os.environ, "LAPSE_DIR": str(tmp_path / "unused")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=180, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("predict: median latency rose")
    assert "rows" in lines[1]
    assert lines[2].startswith("predict with attrs.rows=5000")
    assert lines[3].startswith("attrs.cache = miss AND attrs.rows > 5,0")
    assert "M/G/c" in lines[4]
