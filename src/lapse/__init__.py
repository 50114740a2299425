"""lapse: application performance monitoring built into data-science code.

::

    import lapse

    @lapse.timed
    def predict(X): ...

    with lapse.span("load_model", path=str(p)) as span:
        span.set(size_mb=3.2)

    lapse.load(since="1h")           # events as an Arrow table
    lapse.sql("select name, count(*) from events group by name")

Importing lapse is cheap and has no side effects: no threads start, no
environment is read, nothing heavy (pyarrow, DuckDB) is imported until used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lapse._control import configure, flush, reset, shutdown, status
from lapse._errors import ConfigError, LapseError, StoreError
from lapse._instrument import ActiveSpan, Instrument, set, span, timed, user  # noqa: A004

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "ActiveSpan",
    "ConfigError",
    "Instrument",
    "LapseError",
    "StoreError",
    "__version__",
    "configure",
    "flush",
    "load",
    "reset",
    "set",
    "shutdown",
    "span",
    "sql",
    "status",
    "timed",
    "user",
]


def load(
    dir: Any = None,  # noqa: A002 - matches configure(dir=)
    *,
    since: object = None,
    until: object = None,
    name: Any = None,
    run: Any = None,
) -> pa.Table:
    """Events of a store as a pyarrow Table, oldest first (see ``lapse.store``)."""
    from lapse.store._read import load as _load

    return _load(dir, since=since, until=until, name=name, run=run)


def sql(query: str, dir: Any = None) -> pa.Table:  # noqa: A002 - matches configure(dir=)
    """Run DuckDB SQL over the store's ``events``, ``events_raw`` and ``runs`` views."""
    from lapse.store._read import sql as _sql

    return _sql(query, dir)


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("lapse")
        except PackageNotFoundError:
            return "0.0.0"
    raise AttributeError(f"module 'lapse' has no attribute {name!r}")
