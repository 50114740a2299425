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

# No `from __future__ import annotations` and only private aliases of typing
# names: every public name of this module is one listed in __all__.
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from lapse._control import configure, flush, reset, shutdown, status
from lapse._errors import (
    ConfigError,
    LapseError,
    NotEnoughDataError,
    StoreError,
    TargetError,
)
from lapse._instrument import ActiveSpan, Instrument, set, span, timed, user  # noqa: A004

if _TYPE_CHECKING:
    from collections.abc import Iterable as _Iterable
    from collections.abc import Sequence as _Sequence

    import pyarrow as pa

    from lapse.reporting import Report

__all__ = [
    "ActiveSpan",
    "ConfigError",
    "Instrument",
    "LapseError",
    "NotEnoughDataError",
    "Report",
    "StoreError",
    "TargetError",
    "__version__",
    "analyze",
    "configure",
    "fivenum",
    "flush",
    "instrument",
    "load",
    "predict_latency",
    "report",
    "reset",
    "serve_metrics",
    "set",
    "shutdown",
    "span",
    "sql",
    "status",
    "timed",
    "uninstrument",
    "user",
]


def load(
    dir: _Any = None,  # noqa: A002 - matches configure(dir=)
    *,
    since: object = None,
    until: object = None,
    name: _Any = None,
    run: _Any = None,
) -> "pa.Table":
    """Events of a store as a pyarrow Table, oldest first (see ``lapse.store``)."""
    from lapse.store._read import load as _load

    return _load(dir, since=since, until=until, name=name, run=run)


def sql(query: str, dir: _Any = None) -> "pa.Table":  # noqa: A002 - matches configure(dir=)
    """Run DuckDB SQL over the store's ``events``, ``events_raw`` and ``runs`` views."""
    from lapse.store._read import sql as _sql

    return _sql(query, dir)


def report(
    dir: _Any = None,  # noqa: A002 - matches configure(dir=)
    *,
    by: "str | _Sequence[str]" = (),
    since: object = None,
    until: object = None,
    name: "str | _Sequence[str] | None" = None,
    run: "str | _Sequence[str] | None" = None,
    service: "str | None" = None,
    version: "str | None" = None,
    where: "str | _Sequence[str]" = (),
    engine: str = "duckdb",
) -> "Report":
    """Per event (and ``by`` group): calls, errors, throughput, five-number summary, percentiles.

    Returns a Report: a table in Jupyter and terminals, ``.to_pandas()``,
    ``.to_arrow()``, ``.to_json()``, ``.to_html()`` (see ``lapse.reporting.report``).
    ``engine="spark"`` runs it on Spark (the ``spark`` extra) over the same segments.
    """
    from lapse.reporting import report as _report

    return _report(dir, by=by, since=since, until=until, name=name, run=run, service=service,
                   version=version, where=where, engine=engine)


def fivenum(values: "_Iterable[float]") -> tuple[float, float, float, float, float]:
    """Tukey's five-number summary, exactly as R's ``fivenum()`` (NaNs ignored)."""
    from lapse.analysis.fivenum import fivenum as _fivenum

    return _fivenum(values)


def instrument(library: str) -> int:
    """Auto-instrument a library's calls: ``lapse.instrument("sklearn")`` times every estimator.

    scikit-learn's fit, predict, predict_proba, transform, score… become events
    named ``sklearn.<Class>.<method>`` with ``rows`` and ``features``; pipeline
    steps nest. Returns how many methods were wrapped (0 if already done).
    ``lapse.uninstrument("sklearn")`` undoes it.
    """
    from lapse.integrations import instrument as _instrument

    return _instrument(library)


def uninstrument(library: str) -> int:
    """Undo ``lapse.instrument(library)``: every original method is put back."""
    from lapse.integrations import uninstrument as _uninstrument

    return _uninstrument(library)


def serve_metrics(port: int, addr: str = "127.0.0.1") -> _Any:
    """Serve Prometheus ``/metrics`` (latency histograms, errors per event) on ``addr:port``.

    Needs the Prometheus sink: ``configure(sinks=["prometheus"])`` or
    ``LAPSE_SINKS=prometheus``. Under gunicorn, see docs/integrations.md
    (``PROMETHEUS_MULTIPROC_DIR``). A port already taken logs a warning and
    returns None. Returns the HTTP server otherwise.
    """
    from lapse.integrations.prometheus import serve_metrics as _serve

    return _serve(port, addr)


def predict_latency(
    event: str,
    inputs: "_Any" = None,
    *,
    dir: _Any = None,  # noqa: A002 - matches configure(dir=)
    level: float = 0.9,
    **attrs: _Any,
) -> _Any:
    """Estimated duration of a call of ``event`` with these attributes, with an interval.

    ``lapse.predict_latency("predict", rows=50_000)`` fits (once per store
    state) the model of ``lapse.analyze.drivers(event)`` and returns a
    Prediction: ``estimate``, ``low``, ``high`` in seconds, ``explain()``.
    Needs the stats extra: ``pip install 'lapse[stats]'``.
    """
    from lapse.analysis.api import predict_latency as _predict

    return _predict(event, inputs, dir=dir, level=level, **attrs)


def __getattr__(name: str) -> _Any:
    if name == "analyze":
        from importlib import import_module

        return import_module("lapse.analysis.api")
    if name == "Report":
        from lapse.reporting import Report

        return Report
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("lapse")
        except PackageNotFoundError:
            return "0.0.0"
    raise AttributeError(f"module 'lapse' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})  # with the names __getattr__ provides lazily
