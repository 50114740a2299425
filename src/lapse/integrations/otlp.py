"""OTLP out: lapse events as OpenTelemetry spans and duration histograms, to any collector.

::

    lapse.configure(sinks=["otlp"])        # or LAPSE_SINKS=otlp
    # OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318, OTEL_EXPORTER_OTLP_PROTOCOL=grpc, ...

Built on the OpenTelemetry SDK's own OTLP exporters (HTTP/protobuf by default,
gRPC with ``OTEL_EXPORTER_OTLP_PROTOCOL=grpc``), so the standard
``OTEL_EXPORTER_OTLP_*`` variables (endpoint, headers, timeout, TLS, compression,
per-signal variants) apply as documented by OpenTelemetry.

Each stored event becomes one span with its recorded start and end times. Span
and trace ids are derived from ``(run_id, span_id)`` and ``(run_id, trace_id)``
by a hash, so nesting survives and exporting the same events twice gives the
same ids. Names, attributes, status and resource follow the semantic
conventions (docs/integrations.md has the mapping). Durations also go to a
histogram ``lapse.event.duration`` (seconds) per event name.

The writer hands each batch over without waiting: conversion and export run
in this sink's own thread. If the collector is down or slow, batches are
dropped and counted (``lapse.status()["sink_dropped"]["otlp"]``) with one
warning, and exports pause for ``retry_after`` seconds; the local store keeps
every event.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

    from lapse._recorder import Run

logger = logging.getLogger("lapse")

PROTOCOLS = ("http/protobuf", "grpc")
BATCH = 512
"""Spans per export request (the SDK batch processor's default)."""

HISTOGRAM = "lapse.event.duration"
BOUNDARIES: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
"""Explicit histogram bucket boundaries, seconds (the same as the Prometheus sink's)."""

_COLUMNS = ("name", "kind", "level", "span_id", "parent_id", "trace_id", "start_ns",
            "duration_ns", "cpu_ns", "status", "error_type", "caller", "thread", "stack",
            "user", "attrs")


def otel_id(run_id: str, local_id: object, size: int) -> int:
    """A non-zero OpenTelemetry id of ``size`` bytes for a lapse id within a run."""
    digest = hashlib.blake2b(f"{run_id}/{local_id}".encode(), digest_size=size).digest()
    return int.from_bytes(digest, "big") or 1


def resource_attributes(run: Run) -> dict[str, Any]:
    """The run's resource in semantic-convention names (service, deployment, host, process)."""
    from lapse import __version__

    resource = run.resource
    settings = run.settings
    attributes: dict[str, Any] = {
        "service.name": resource.get("service") or settings.service,
        "service.instance.id": run.run_id,
        "process.pid": run.pid,
        "telemetry.distro.name": "lapse",
        "telemetry.distro.version": __version__,
    }
    version = resource.get("version") or settings.version
    environment = resource.get("environment") or settings.environment
    if version:
        attributes["service.version"] = version
    if environment:
        # deployment.environment.name is the current convention; the older
        # deployment.environment is what many backends still chart by.
        attributes["deployment.environment.name"] = environment
        attributes["deployment.environment"] = environment
    for key, attribute in (("host", "host.name"), ("python", "process.runtime.description"),
                           ("program", "process.executable.name"),
                           ("git_commit", "vcs.ref.head.revision")):
        if resource.get(key):
            attributes[attribute] = resource[key]
    return attributes


def _attribute_value(value: Any) -> Any:
    """A value OpenTelemetry accepts: str, bool, int, float, or a list of one of those."""
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    return json.dumps(value, default=str)


_SPAN_KINDS = {"request": "SERVER", "client": "CLIENT", "producer": "PRODUCER",
               "consumer": "CONSUMER"}


def to_spans(table: pa.Table, run: Run, segment: int, resource: Any, scope: Any, *,
             first: int = 0) -> list[Any]:
    """The SDK's ReadableSpans for a batch of events (one per row, nesting kept).

    ``first`` is the table's first row within its segment (minimal-level events,
    which have no span id, get one from their segment and row).
    """
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

    columns = {name: table.column(name).to_pylist() for name in _COLUMNS}
    run_id = run.run_id
    sampled = TraceFlags(TraceFlags.SAMPLED)
    spans = []
    for row in range(table.num_rows):
        column = {name: values[row] for name, values in columns.items()}
        local_span = column["span_id"]
        if local_span is None:  # minimal level: a root span of its own
            local = f"m/{segment}/{first + row}"
            span_id, trace_id, parent = otel_id(run_id, local, 8), otel_id(run_id, local, 16), None
        else:
            span_id = otel_id(run_id, local_span, 8)
            trace_id = otel_id(run_id, column["trace_id"], 16)
            parent_local = column["parent_id"]
            parent = None if parent_local is None else SpanContext(
                trace_id, otel_id(run_id, parent_local, 8), is_remote=False, trace_flags=sampled)
        start = column["start_ns"]
        end = start + column["duration_ns"]
        attributes = _span_attributes(column, run_id)
        events: list[Any] = []
        status = Status(StatusCode.UNSET)
        if column["status"] == "error":
            error_type = column["error_type"] or "error"
            attributes["error.type"] = error_type
            status = Status(StatusCode.ERROR, error_type)
            events.append(Event("exception", {"exception.type": error_type}, end))
        spans.append(ReadableSpan(
            name=column["name"],
            context=SpanContext(trace_id, span_id, is_remote=False, trace_flags=sampled),
            parent=parent,
            resource=resource,
            attributes=attributes,
            events=events,
            kind=getattr(SpanKind, _SPAN_KINDS.get(column["kind"], "INTERNAL")),
            status=status,
            start_time=start,
            end_time=end,
            instrumentation_scope=scope,
        ))
    return spans


def _span_attributes(column: dict[str, Any], run_id: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    if column["attrs"]:
        try:
            user = json.loads(column["attrs"])
        except ValueError:
            user = {"lapse.attrs": column["attrs"]}
        attributes.update({str(key): _attribute_value(value) for key, value in user.items()
                           if value is not None})
    caller = column["caller"]
    if caller:
        # The call site, as lapse records it: module:qualname of the calling function.
        module, _, function = caller.partition(":")
        attributes["code.function.name"] = f"{module}.{function}" if function else module
        attributes["code.namespace"] = module  # older conventions, still read by backends
        if function:
            attributes["code.function"] = function
    if column["stack"]:
        attributes["code.stacktrace"] = "\n".join(column["stack"])  # outermost first
    if column["thread"]:
        attributes["thread.name"] = column["thread"]
    if column["user"]:
        attributes["enduser.pseudo.id"] = column["user"]
    attributes["lapse.run_id"] = run_id
    attributes["lapse.kind"] = column["kind"]
    attributes["lapse.level"] = column["level"]
    if column["span_id"] is not None:
        attributes["lapse.span_id"] = column["span_id"]
    if column["cpu_ns"] is not None:
        attributes["lapse.cpu_ns"] = column["cpu_ns"]
    return attributes


@dataclass
class _Batch:
    table: pa.Table
    run: Run
    segment: int


class OTLPSink:
    """Sends stored events to an OpenTelemetry collector as spans and duration histograms.

    ``endpoint`` is the collector's base address (``http://host:4318`` for
    HTTP, ``host:4317`` for gRPC); without it the exporters read
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` and the per-signal variables. ``protocol``
    defaults to ``OTEL_EXPORTER_OTLP_PROTOCOL``, else ``http/protobuf``.
    ``span_exporter`` and ``metric_exporter`` replace the OTLP ones with any SDK
    exporters (for instance Azure Monitor's). ``metrics_interval`` (seconds)
    spaces metric exports (default ``OTEL_METRIC_EXPORT_INTERVAL``, else 60 s;
    always at ``lapse.shutdown()`` and exit). ``max_pending`` batches wait at
    most; beyond that, and for ``retry_after`` seconds after a failed export,
    batches are dropped and counted.
    """

    name = "otlp"

    def __init__(
        self,
        *,
        endpoint: str | None = None,
        protocol: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        traces: bool = True,
        metrics: bool = True,
        span_exporter: Any = None,
        metric_exporter: Any = None,
        metrics_interval: float | None = None,
        max_pending: int = 64,
        retry_after: float = 30.0,
    ) -> None:
        from lapse._errors import ConfigError

        protocol = (protocol or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                    or "http/protobuf").strip().lower()
        if protocol not in PROTOCOLS:
            raise ConfigError(f"OTLP protocol: {protocol!r} is not valid; expected one of "
                              f"{', '.join(PROTOCOLS)} (OTEL_EXPORTER_OTLP_PROTOCOL).")
        self.protocol = protocol
        self.endpoint = endpoint
        self.headers = headers
        self.timeout = timeout
        self.traces = traces
        self.metrics = metrics
        self._span_exporter = span_exporter
        self._metric_exporter = metric_exporter
        if metrics_interval is None:
            metrics_interval = float(os.environ.get("OTEL_METRIC_EXPORT_INTERVAL") or 60000) / 1000
        self.metrics_interval = metrics_interval
        self.max_pending = max_pending
        self.retry_after = retry_after
        self.exported = 0
        """Spans the collector accepted, in this process."""
        self._start_state()

    def _start_state(self) -> None:
        self._pid = os.getpid()
        self._pending: deque[_Batch | threading.Event] = deque()
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None
        self._down_until = 0.0
        self._meters: dict[str, tuple[Any, Any, Any]] = {}
        self._last_metrics = time.monotonic()
        self._spans_out: Any = None
        self._metrics_out: Any = None

    # -- the writer's side (never blocks) ---------------------------------------

    def export(self, table: pa.Table, run: Run) -> None:
        """Queue one stored batch for export; raises (the writer counts it) if it cannot."""
        if self._pid != os.getpid():  # a forked child: the parent's thread and clients are gone
            self._start_state()
        if time.monotonic() < self._down_until:
            raise ConnectionError("the collector failed recently; exports resume in "
                                  f"{self._down_until - time.monotonic():.0f} s")
        batch = _Batch(table, run, run.segments)
        with self._ready:
            if sum(isinstance(b, _Batch) for b in self._pending) >= self.max_pending:
                raise BufferError(f"{self.max_pending} batches already wait for the collector")
            started = self._thread is not None and self._thread.is_alive()
            if not started:
                thread = threading.Thread(target=self._loop, name="lapse-otlp", daemon=True)
                try:
                    thread.start()
                    self._thread, started = thread, True
                except RuntimeError:  # interpreter exit: no new thread, export right here
                    pass
            if started:
                self._pending.append(batch)
                self._ready.notify()
                return
        self._send(batch)
        self._export_metrics(force=True)

    def close(self, timeout: float = 5.0) -> None:
        """Export what is queued and the metrics, then stop the thread (restarts on use)."""
        if self._pid != os.getpid():
            return
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        deadline = time.monotonic() + timeout
        done = threading.Event()
        with self._ready:
            self._pending.append(done)
            self._ready.notify()
        done.wait(timeout)
        thread.join(max(0.0, deadline - time.monotonic()))

    # -- the sink's thread ------------------------------------------------------------

    def _loop(self) -> None:
        from opentelemetry import context

        # The exporters' own HTTP or gRPC calls must not be traced by an instrumented
        # client library (and come back to lapse through its span processor).
        context.attach(context.set_value(context._SUPPRESS_INSTRUMENTATION_KEY, True))
        while True:
            with self._ready:
                while not self._pending:
                    waited = self._ready.wait(self._metrics_wait())
                    if not waited and not self._pending:
                        break
                item = self._pending.popleft() if self._pending else None
            if item is None:
                self._export_metrics()
                continue
            if isinstance(item, threading.Event):
                self._export_metrics(force=True)
                item.set()
                with self._ready:
                    if not self._pending:  # else a batch came meanwhile: carry on with it
                        self._thread = None
                        return
                continue
            try:
                self._send(item)
            except Exception as error:  # noqa: BLE001 - a sink failure never reaches the app
                self._fail(item.table.num_rows, error)

    def _metrics_wait(self) -> float:
        if not self.metrics or not self._meters:
            return 3600.0
        return max(0.05, self._last_metrics + self.metrics_interval - time.monotonic())

    def _send(self, batch: _Batch) -> None:
        if time.monotonic() < self._down_until:
            raise ConnectionError("the collector failed recently")
        if self.metrics:
            self._record(batch)
        if not self.traces:
            return
        from opentelemetry.sdk.trace.export import SpanExportResult

        resource, scope = self._resource(batch.run), self._scope()
        exporter = self._span_exporter_now()
        rows = batch.table.num_rows
        for start in range(0, rows, BATCH):
            spans = to_spans(batch.table.slice(start, BATCH), batch.run, batch.segment, resource,
                             scope, first=start)
            if exporter.export(spans) != SpanExportResult.SUCCESS:
                self._fail(rows - start, "the collector did not accept the spans "
                           "(see the opentelemetry logger for its reply)")
                return
            self.exported += len(spans)
        self._export_metrics()

    def _fail(self, rows: int, error: object) -> None:
        from lapse._recorder import RECORDER

        self._down_until = time.monotonic() + self.retry_after
        RECORDER.drop_sink(self.name, rows, error)
        with self._ready:  # what waits now would meet the same collector
            stale = [b for b in self._pending if isinstance(b, _Batch)]
            self._pending = deque(b for b in self._pending if not isinstance(b, _Batch))
        if stale:
            RECORDER.drop_sink(self.name, sum(b.table.num_rows for b in stale), error)

    # -- OpenTelemetry objects, made in this thread on first use ------------------------

    def _exporter_options(self, signal: str) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.endpoint:
            base = self.endpoint.rstrip("/")
            options["endpoint"] = base if self.protocol == "grpc" else f"{base}/v1/{signal}"
        if self.headers is not None:
            options["headers"] = self.headers
        if self.timeout is not None:
            options["timeout"] = self.timeout
        return options

    def _span_exporter_now(self) -> Any:
        if self._spans_out is None:
            if self._span_exporter is not None:
                self._spans_out = self._span_exporter
            elif self.protocol == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                    OTLPSpanExporter as GrpcSpanExporter,
                )

                self._spans_out = GrpcSpanExporter(**self._exporter_options("traces"))
            else:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )

                self._spans_out = OTLPSpanExporter(**self._exporter_options("traces"))
        return self._spans_out

    def _metric_exporter_now(self) -> Any:
        if self._metrics_out is None:
            if self._metric_exporter is not None:
                self._metrics_out = self._metric_exporter
            elif self.protocol == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                    OTLPMetricExporter as GrpcMetricExporter,
                )

                self._metrics_out = GrpcMetricExporter(**self._exporter_options("metrics"))
            else:
                from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                    OTLPMetricExporter,
                )

                self._metrics_out = OTLPMetricExporter(**self._exporter_options("metrics"))
        return self._metrics_out

    @staticmethod
    def _scope() -> Any:
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        from lapse import __version__

        return InstrumentationScope("lapse", __version__)

    @staticmethod
    def _resource(run: Run) -> Any:
        # Not Resource.create(): it runs its detectors in a thread pool, and a process's
        # last batch is exported at exit, when no thread can start any more.
        from opentelemetry.sdk.resources import (
            TELEMETRY_SDK_LANGUAGE,
            TELEMETRY_SDK_NAME,
            TELEMETRY_SDK_VERSION,
            OTELResourceDetector,
            Resource,
        )
        from opentelemetry.sdk.version import __version__ as sdk_version

        sdk = Resource({TELEMETRY_SDK_LANGUAGE: "python", TELEMETRY_SDK_NAME: "opentelemetry",
                        TELEMETRY_SDK_VERSION: sdk_version})
        from_environment = OTELResourceDetector().detect()  # OTEL_RESOURCE_ATTRIBUTES
        return sdk.merge(from_environment).merge(Resource(resource_attributes(run)))

    def _record(self, batch: _Batch) -> None:
        """Add the batch's durations to the run's histogram (exported every interval)."""
        meter = self._meters.get(batch.run.run_id)
        if meter is None:
            meter = self._meters[batch.run.run_id] = self._meter(batch.run)
        histogram = meter[2]
        table = batch.table
        names = table.column("name").to_pylist()
        kinds = table.column("kind").to_pylist()
        errors = table.column("error_type").to_pylist()
        seconds = (table.column("duration_ns").to_numpy() / 1e9).tolist()
        for name, kind, error, value in zip(names, kinds, errors, seconds, strict=True):
            attributes = {"lapse.event.name": name, "lapse.event.kind": kind}
            if error is not None:
                attributes["error.type"] = error
            histogram.record(value, attributes)

    def _meter(self, run: Run) -> tuple[Any, Any, Any]:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import MetricReader

        from lapse import __version__

        exporter = self._metric_exporter_now()

        class Reader(MetricReader):  # collected by this thread, not by a timer thread of its own
            def __init__(self) -> None:
                super().__init__(preferred_temporality=exporter._preferred_temporality,
                                 preferred_aggregation=exporter._preferred_aggregation)
                self.ok = True

            def _receive_metrics(self, metrics_data: Any, timeout_millis: float = 10_000,
                                 **kwargs: Any) -> None:
                from opentelemetry.sdk.metrics.export import MetricExportResult

                result = exporter.export(metrics_data, timeout_millis=timeout_millis)
                self.ok = result == MetricExportResult.SUCCESS

            def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
                return None

        reader = Reader()
        provider = MeterProvider(metric_readers=[reader], resource=self._resource(run),
                                 shutdown_on_exit=False)
        histogram = provider.get_meter("lapse", __version__).create_histogram(
            HISTOGRAM, unit="s", description="Duration of lapse events",
            explicit_bucket_boundaries_advisory=list(BOUNDARIES))
        return provider, reader, histogram

    def _export_metrics(self, *, force: bool = False) -> None:
        """Collect and export the histograms (every interval, or now with ``force``).

        Skipped while the collector is considered down: cumulative values are
        sent whole at the next export, so nothing is lost but time resolution.
        """
        if not self.metrics or not self._meters or time.monotonic() < self._down_until:
            return
        if not force and time.monotonic() - self._last_metrics < self.metrics_interval:
            return
        from lapse._recorder import RECORDER

        self._last_metrics = time.monotonic()
        for _provider, reader, _histogram in list(self._meters.values()):
            try:
                reader.collect()
                ok = reader.ok
            except Exception:  # noqa: BLE001 - reported below, once
                ok = False
            if not ok:
                self._down_until = time.monotonic() + self.retry_after
                RECORDER.drop_sink(self.name, 0, "the collector did not accept the metrics")
                return
