"""The docs are true: README commands and example run; schema and settings tables match code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from lapse._config import OPTIONS
from lapse.store._schema import EVENT_COLUMNS, RUN_COLUMNS, SCHEMA_VERSION, event_schema
from tests.recording import record

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_readme_opens_with_the_demo_and_test_commands():
    """The first two commands of the README set up and run the demo, then the tests."""
    commands = re.findall(r"```bash\n(.*?)\n```", README, flags=re.DOTALL)[:2]
    assert "lapse demo" in commands[0]
    assert "pip install" in commands[0]
    assert commands[1].endswith(".venv/bin/pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "'.[dev]'" in ci
    assert ".venv/bin/pytest" in ci


def test_readme_quick_start_runs(tmp_path):
    """The quick start, run as a script, records its events and prints what it promises."""
    code = _python_blocks(README)[0]
    env = {**os.environ, "LAPSE_DIR": str(tmp_path / "store")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("3 ")
    assert '"batch_size": 10' in first
    assert "preprocess" in result.stdout
    assert "score_batch" in result.stdout


def test_schema_doc_lists_every_column_with_its_type():
    """docs/schema.md documents each stored column and its type, and the schema version."""
    doc = (ROOT / "docs" / "schema.md").read_text()
    assert f"version {SCHEMA_VERSION}" in doc
    for name, kind, _ in EVENT_COLUMNS + RUN_COLUMNS:
        assert f"| `{name}` | {kind} |" in doc, name


def test_stored_files_carry_the_documented_schema(store):
    """A real segment has exactly the documented columns, types and version metadata."""
    record(store, calls=2)
    segment = next((store / "events").glob("*.parquet"))
    schema = pq.read_schema(segment)
    # Parquet names a list's item field "element"; the type is the documented list<string>
    stored = [(f.name, re.sub(r"list<\w+: ", "list<", str(f.type))) for f in schema]
    assert stored == [(name, kind) for name, kind, _ in EVENT_COLUMNS]
    assert schema.metadata[b"lapse.schema_version"] == str(SCHEMA_VERSION).encode()
    assert schema.names == event_schema().names


def test_report_doc_lists_every_json_field():
    """docs/report.md documents the JSON schema id and every field of a summary row."""
    from lapse.analysis.summary import SUMMARY_FIELDS
    from lapse.reporting import JSON_SCHEMA

    doc = (ROOT / "docs" / "report.md").read_text()
    assert JSON_SCHEMA in doc
    for field, meaning in SUMMARY_FIELDS:
        assert f"| `{field}` | {meaning} |" in doc


def test_configuration_doc_lists_every_setting():
    """docs/configuration.md has a row per setting with its variable and default."""
    doc = (ROOT / "docs" / "configuration.md").read_text()
    for option in OPTIONS:
        assert f"| `{option.name}` | `{option.env}` |" in doc, option.name
        assert option.doc in doc, option.name
