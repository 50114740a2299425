"""Sinks: where each written batch of events also goes, beside the local store.

A sink is any object with ``export(table, run)``: the background writer calls
it with each batch it has just written as a segment (an Arrow table in the
event schema of docs/schema.md, and the run that recorded it), in the writer
thread, never in instrumented code. A sink that raises loses that batch only:
the writer counts the rows in ``lapse.status()["sink_dropped"]`` and logs one
warning per sink; the store already has them. An optional ``close(timeout)``
is called at ``lapse.shutdown()`` and at exit, after the last batch.

``configure(sinks=["otlp", "prometheus"])`` and ``LAPSE_SINKS`` name the
built-in ones; each name is built once per process, in the writer, the first
time a batch is exported (so a service pays for OpenTelemetry only if asked).
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

_built: dict[str, Any] = {}
_used: dict[int, Any] = {}
_lock = threading.Lock()


class Sink(Protocol):
    """What the writer needs of a sink."""

    def export(self, table: Any, run: Any) -> None:
        """Take one written batch (an Arrow table of events) of ``run``."""


def name_of(spec: Any) -> str:
    """The name a sink's drops are counted under: its configured name, or its ``name``."""
    if isinstance(spec, str):
        return spec
    return str(getattr(spec, "name", None) or type(spec).__name__)


def get(spec: Any) -> Sink:
    """The sink for a configured name (built on first use) or the sink object itself."""
    if not isinstance(spec, str):
        _used.setdefault(id(spec), spec)
        sink: Sink = spec
        return sink
    with _lock:
        built: Sink | None = _built.get(spec)
        if built is None:
            built = _built[spec] = _build(spec)
            _used[id(built)] = built
    return built


def _build(name: str) -> Sink:
    if name == "otlp":
        from lapse.integrations.otlp import OTLPSink

        return OTLPSink()
    if name == "prometheus":
        from lapse.integrations.prometheus import PrometheusSink

        return PrometheusSink()
    raise ValueError(f"unknown sink {name!r}")  # names are checked by configure()


def close_all(timeout: float) -> None:
    """Close every sink used in this process (export what they hold), within ``timeout``."""
    import logging
    import time

    deadline = time.monotonic() + timeout
    for sink in list(_used.values()):
        close = getattr(sink, "close", None)
        if close is None:
            continue
        try:
            close(max(0.0, deadline - time.monotonic()))
        except Exception as error:  # noqa: BLE001 - closing a sink never fails shutdown
            logging.getLogger("lapse").warning("lapse could not close sink %s: %s",
                                               name_of(sink), error)


def forget() -> None:
    """Drop the sinks built by name, so the next use builds them afresh (``lapse.reset()``)."""
    with _lock:
        _built.clear()
        _used.clear()
