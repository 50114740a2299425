"""OpenTelemetry in: spans from OpenTelemetry instrumentation become lapse events.

::

    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from lapse.integrations.otel import LapseSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(LapseSpanProcessor())   # or lapse.integrations.otel.install()
    trace.set_tracer_provider(provider)
    FastAPIInstrumentor.instrument_app(app)

Code already instrumented with OpenTelemetry (its FastAPI, requests,
SQLAlchemy… instrumentations, or your own tracer) then lands in the lapse
store beside lapse's own events, so ``lapse report``, ``compare``, the
dashboard and the pytest gate work on it. Each ended span is one event: its
name, start and end, attributes (``lapse.set()`` inside adds to them), status
(an error's type from the span's ``exception`` event or ``error.type``), the
kind (``request`` for server spans, ``client`` for client spans, else
``span``) and nesting: a span nests under the innermost lapse call open in its
context (an ``@lapse.timed`` call inside its OpenTelemetry parent), else under
its OpenTelemetry parent when that was recorded in this process, else under
the lapse call it started in.
While a span is open it is also lapse's current span, so ``@lapse.timed``
calls inside a traced request nest under it. The OpenTelemetry trace and span
ids are kept as the attributes ``otel.trace_id`` and ``otel.span_id``.

This processor does not export anything itself, and lapse's OTLP sink does not
go through a TracerProvider, so using both never loops.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import SpanKind, StatusCode

from lapse._hotpath import _current_call
from lapse.integrations._calls import Call, begin, end, error_type, instrument_for

_KINDS = {SpanKind.SERVER: "request", SpanKind.CLIENT: "client", SpanKind.PRODUCER: "producer",
          SpanKind.CONSUMER: "consumer", SpanKind.INTERNAL: "span"}


class LapseSpanProcessor(SpanProcessor):
    """Records every span that ends as a lapse event (see the module's doc)."""

    def __init__(self, *, nest: bool = True) -> None:
        self.nest = nest
        self._open: dict[tuple[int, int], Call] = {}
        self._lock = threading.Lock()

    def on_start(self, span: Span, parent_context: Any = None) -> None:
        """Open the lapse call of a span that starts (it becomes lapse's current span)."""
        context = span.get_span_context()
        if context is None:
            return
        parent = span.parent
        outer = None
        if parent is not None:
            with self._lock:
                known = self._open.get((parent.trace_id, parent.span_id))
            if known is not None:
                outer = known.ctx
                inner = _current_call()
                if inner is not None and outer is not None and inner[1] == outer[1]:
                    outer = inner  # a lapse call inside the parent span is closer still
        call = begin(parent=outer, current=self.nest)
        if call is not None:
            with self._lock:
                self._open[(context.trace_id, context.span_id)] = call

    def on_end(self, span: ReadableSpan) -> None:
        """Record the span as a lapse event, with its own start and end times."""
        context = span.get_span_context()
        if context is None:
            return
        with self._lock:
            call = self._open.pop((context.trace_id, context.span_id), None)
        if call is None or span.start_time is None or span.end_time is None:
            return
        # OpenTelemetry times are epoch ns; the buffer holds perf_counter_ns, which
        # the writer turns back into epoch ns: convert with the current offset.
        offset = time.time_ns() - time.perf_counter_ns()
        attrs = dict(span.attributes or {})
        attrs["otel.trace_id"] = f"{context.trace_id:032x}"
        attrs["otel.span_id"] = f"{context.span_id:016x}"
        end(call, instrument_for(span.name, _KINDS.get(span.kind, "span")), _error_of(span),
            attrs, t0=span.start_time - offset, t1=span.end_time - offset)

    def shutdown(self) -> None:
        """Nothing to release: events go to lapse's buffer."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Write lapse's buffered events to the store now."""
        from lapse._recorder import RECORDER

        RECORDER.flush()
        return True


def _error_of(span: ReadableSpan) -> type[BaseException] | None:
    if span.status.status_code != StatusCode.ERROR:
        return None
    for event in span.events:
        if event.name == "exception" and event.attributes:
            name = event.attributes.get("exception.type")
            if name:
                return error_type(str(name))
    name = (span.attributes or {}).get("error.type")
    return error_type(str(name) if name else "Error")


def install(provider: Any = None) -> LapseSpanProcessor:
    """Add a LapseSpanProcessor to ``provider`` (default: the global TracerProvider)."""
    from opentelemetry import trace

    from lapse._errors import ConfigError

    provider = provider or trace.get_tracer_provider()
    if not hasattr(provider, "add_span_processor"):
        raise ConfigError(
            "install: the global TracerProvider is OpenTelemetry's no-op one; create an SDK "
            "TracerProvider first (trace.set_tracer_provider(TracerProvider())), or pass it.")
    processor = LapseSpanProcessor()
    provider.add_span_processor(processor)
    return processor
