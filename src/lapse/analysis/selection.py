"""Which events an analysis looks at, and how it groups them: safe SQL from user words.

``--by version``, ``--by attrs.model``, ``--where "attrs.rows>=1000"``,
``--since 1h``: every column and attribute name is checked against the
``events`` view (or a strict pattern for attribute keys) and every value is a
query parameter, so no user text is ever pasted into SQL.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lapse._errors import ConfigError
from lapse.store._read import RUN_COLUMNS_IN_EVENTS, parse_time_ns, where_clauses
from lapse.store._schema import EVENT_COLUMNS

COLUMNS: tuple[str, ...] = tuple(name for name, _, _ in EVENT_COLUMNS) + RUN_COLUMNS_IN_EVENTS
_NUMERIC = {name for name, kind, _ in EVENT_COLUMNS if kind == "int64"} | {"pid"}
_ATTR = re.compile(r"^attrs\.([A-Za-z0-9_][A-Za-z0-9_.\-]*)$")
_CONDITION = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(!=|>=|<=|=|>|<|~)\s*(.*?)\s*$")


def column_sql(term: str) -> str:
    """SQL for a column or ``attrs.KEY`` named by a user; ConfigError if unknown."""
    if term in COLUMNS:
        return f'"{term}"'
    match = _ATTR.match(term)
    if match:
        return f"json_extract_string(attrs, '$.\"{match.group(1)}\"')"
    raise ConfigError(
        f"{term!r} is not a column; use one of {', '.join(COLUMNS)}, "
        "or attrs.KEY for an attribute (such as attrs.rows)."
    )


def _condition(text: str) -> tuple[str, list[Any]]:
    match = _CONDITION.match(text)
    if match is None:
        raise ConfigError(
            f"where: {text!r} is not a condition; write COLUMN OP VALUE with OP one of "
            "= != > >= < <= ~ (glob), such as version=1.3 or attrs.rows>=1000."
        )
    term, operator, value = match.groups()
    sql = column_sql(term)
    if operator == "~":
        return f"{sql} GLOB ?", [value]
    if term in _NUMERIC or term.startswith("attrs."):
        number = _number(value)
        if number is not None:
            target = sql if term in _NUMERIC else f"TRY_CAST({sql} AS DOUBLE)"
            return f"{target} {operator} ?", [number]
    if operator in (">", ">=", "<", "<="):
        raise ConfigError(f"where: {text!r} compares {term} with {value!r}, which is not a number.")
    return f"{sql} {operator} ?", [value]


def _number(text: str) -> float | int | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class Selection:
    """A filter over events plus the grouping of an analysis (beside the event name)."""

    since: object = None
    until: object = None
    name: str | Sequence[str] | None = None
    run: str | Sequence[str] | None = None
    service: str | None = None
    version: str | None = None
    where: Sequence[str] = ()
    by: Sequence[str] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        # One condition or grouping term may be given as a bare string.
        for name in ("where", "by"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        for term in self.by:  # fail at construction, with the name the user typed
            column_sql(term)

    def where_sql(self) -> tuple[str, list[Any]]:
        """``WHERE ...`` (or empty) with its parameters."""
        clauses, parameters = where_clauses(since=self.since, until=self.until, name=self.name,
                                            run=self.run)
        for column, value in (("service", self.service), ("version", self.version)):
            if value is not None:
                clauses.append(f"{column} = ?")
                parameters.append(value)
        for text in self.where:
            clause, values = _condition(text)
            clauses.append(clause)
            parameters.extend(values)
        return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), parameters

    def group_sql(self) -> list[tuple[str, str]]:
        """(label, SQL) of each grouping term, in order."""
        return [(term, column_sql(term)) for term in self.by]

    def window_ns(self) -> tuple[int | None, int | None]:
        """The requested time window, where given."""
        since = None if self.since is None else parse_time_ns(self.since, "since")
        until = None if self.until is None else parse_time_ns(self.until, "until")
        return since, until


def between(text: str) -> tuple[str, str]:
    """Split ``"A..B"`` (``--between``) into since and until."""
    if ".." not in text:
        raise ConfigError(
            f"between: {text!r} is not a range; write START..END, such as "
            "2026-12-01T00:00..2026-12-02T00:00 or 2h..1h (from two hours ago to one)."
        )
    since, until = text.split("..", 1)
    return since.strip(), until.strip()
