"""Prometheus: per-event latency histograms and error counts for scraping, and ``/metrics``.

::

    lapse.configure(sinks=["prometheus"])      # or LAPSE_SINKS=prometheus
    lapse.serve_metrics(9464)                  # http://127.0.0.1:9464/metrics

The sink updates, from each batch the writer has just stored:

- ``lapse_event_duration_seconds{service, event, kind}``: a histogram of durations
  (its ``_count`` is the number of calls, ``_sum`` the time spent);
- ``lapse_event_errors_total{service, event, error_type}``: calls that raised.

Metrics therefore trail the calls by up to one flush interval (``LAPSE_FLUSH_INTERVAL``,
1 s by default), the same delay as the store. Under gunicorn (several worker
processes) set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory before the
server starts: prometheus_client then keeps each worker's values in files there
and ``serve_metrics`` (run it once, in the master: gunicorn's ``when_ready``
hook) or ``wsgi_app()`` / ``asgi_app()`` (any worker) add them up.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

    from lapse._recorder import Run

logger = logging.getLogger("lapse")

BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, math.inf,
)
"""Histogram bucket upper bounds, seconds: from 100 µs (a fast predict) to a minute (a fit)."""

DURATION = "lapse_event_duration_seconds"
ERRORS = "lapse_event_errors_total"

_metrics: dict[int, tuple[Any, Any]] = {}
_metrics_lock = threading.Lock()


def _registered(registry: Any, buckets: Sequence[float]) -> tuple[Any, Any]:
    """The histogram and counter in ``registry``, created once per registry and process."""
    from prometheus_client import Counter, Histogram

    with _metrics_lock:
        found = _metrics.get(id(registry))
        if found is None:
            duration = Histogram(
                DURATION, "Duration of lapse events (instrumented calls, spans, requests).",
                ["service", "event", "kind"], buckets=list(buckets), registry=registry)
            errors = Counter(
                # prometheus_client adds the _total suffix to a counter's name itself
                ERRORS.removesuffix("_total"), "lapse events that ended with an error.",
                ["service", "event", "error_type"], registry=registry)
            found = _metrics[id(registry)] = (duration, errors)
    return found


class PrometheusSink:
    """Feeds each stored batch into prometheus_client metrics (see the module's doc)."""

    name = "prometheus"

    def __init__(self, registry: Any = None, buckets: Sequence[float] = BUCKETS) -> None:
        from prometheus_client import REGISTRY

        self.registry = REGISTRY if registry is None else registry
        self.duration, self.errors = _registered(self.registry, buckets)
        self._bounds: list[float] | None = None

    def export(self, table: pa.Table, run: Run) -> None:
        """Add one batch's durations and errors to the metrics (in the writer thread)."""
        import pyarrow.compute as pc

        if table.num_rows == 0:
            return
        service = str(run.resource.get("service") or run.settings.service)
        key = pc.binary_join_element_wise(table.column("name"), table.column("kind"), "\n")
        encoded = pc.dictionary_encode(key).combine_chunks()
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        seconds = table.column("duration_ns").to_numpy() / 1e9
        for index, text in enumerate(encoded.dictionary.to_pylist()):
            event, kind = text.split("\n", 1)
            self._observe(self.duration.labels(service, event, kind), seconds[codes == index])
        errors = table.filter(pc.equal(table.column("status"), "error"))
        if errors.num_rows:
            counts = errors.group_by(["name", "error_type"]).aggregate([("name", "count")])
            for row in counts.to_pylist():
                self.errors.labels(service, row["name"], row["error_type"] or "").inc(
                    row["name_count"])

    def _observe(self, child: Any, values: Any) -> None:
        """Observe many values at once: one increment per bucket, not one call per value.

        prometheus_client has no bulk observe; its histogram keeps one value per
        bucket (``_buckets``) and a ``_sum``, in memory or in the multiprocess
        files alike. If a release changes that, observe one by one.
        """
        import numpy as np

        buckets = getattr(child, "_buckets", None)
        total = getattr(child, "_sum", None)
        bounds = getattr(child, "_upper_bounds", None)
        if buckets is None or total is None or bounds is None or len(buckets) != len(bounds):
            for value in values.tolist():
                child.observe(value)
            return
        # A value goes in the first bucket whose upper bound is >= it (``le``).
        counts = np.bincount(np.searchsorted(np.asarray(bounds), values, side="left"),
                             minlength=len(bounds))
        for index, count in enumerate(counts.tolist()):
            if count:
                buckets[index].inc(count)
        total.inc(float(values.sum()))


def registry() -> Any:
    """The registry to expose: all gunicorn workers' values with PROMETHEUS_MULTIPROC_DIR."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import CollectorRegistry, multiprocess

        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined)  # type: ignore[no-untyped-call]
        return combined
    from prometheus_client import REGISTRY

    return REGISTRY


def serve_metrics(port: int, addr: str = "127.0.0.1") -> Any:
    """Serve ``/metrics`` on ``addr:port`` from a daemon thread; returns the server.

    Binds 127.0.0.1 by default: pass ``addr="0.0.0.0"`` for a Prometheus on
    another host. If the port is taken, logs a warning and returns None (the
    service and its local store carry on).
    """
    from prometheus_client import start_http_server

    try:
        server, _thread = start_http_server(port, addr=addr, registry=registry())
    except OSError as error:
        logger.warning("lapse could not serve Prometheus metrics on %s:%s (%s); events are "
                       "still stored locally", addr, port, error.strerror or error)
        return None
    return server


def wsgi_app() -> Any:
    """A WSGI app answering with the metrics (mount it at ``/metrics`` in Flask and others)."""
    from prometheus_client import make_wsgi_app

    return make_wsgi_app(registry())


def asgi_app() -> Any:
    """An ASGI app answering with the metrics (``app.mount("/metrics", asgi_app())``)."""
    from prometheus_client import make_asgi_app

    return make_asgi_app(registry())
