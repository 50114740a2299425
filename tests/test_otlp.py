"""The OTLP sink against real receivers: OTLP/HTTP and gRPC servers started here decode what
arrives with the official opentelemetry-proto classes, and a collector that is down."""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

import lapse

pytest.importorskip("opentelemetry.exporter.otlp.proto.http")

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from lapse.integrations.otlp import OTLPSink, otel_id
from tests.recording import record


class Receiver:
    """What an OTLP collector got: decoded export requests, traces and metrics."""

    def __init__(self) -> None:
        self.traces: list[Any] = []
        self.metrics: list[Any] = []
        self.lock = threading.Lock()

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """Every span received, with its resource's attributes."""
        with self.lock:
            return [(attributes(rs.resource.attributes), span) for request in self.traces
                    for rs in request.resource_spans for ss in rs.scope_spans
                    for span in ss.spans]

    def histogram_counts(self) -> dict[str, int]:
        """Calls per event name in the latest cumulative duration histograms."""
        counts: dict[str, int] = {}
        with self.lock:
            for request in self.metrics:
                for rm in request.resource_metrics:
                    for sm in rm.scope_metrics:
                        for metric in sm.metrics:
                            if metric.name != "lapse.event.duration":
                                continue
                            assert metric.unit == "s"
                            for point in metric.histogram.data_points:
                                name = attributes(point.attributes)["lapse.event.name"]
                                key = name + "|" + attributes(point.attributes).get(
                                    "error.type", "")
                                counts[key] = int(point.count)  # cumulative: the latest wins
        totals: dict[str, int] = {}
        for key, count in counts.items():
            name = key.split("|")[0]
            totals[name] = totals.get(name, 0) + count
        return totals


def attributes(values: Any) -> dict[str, Any]:
    """OTLP KeyValues as a dict of Python values."""
    out: dict[str, Any] = {}
    for item in values:
        kind = item.value.WhichOneof("value")
        out[item.key] = getattr(item.value, kind)
    return out


@pytest.fixture
def http_receiver() -> Iterator[tuple[Receiver, str]]:
    """An OTLP/HTTP (protobuf) receiver on a loopback port: yields it and its base URL."""
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path == "/v1/traces":
                message = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                reply = trace_service_pb2.ExportTraceServiceResponse()
                with receiver.lock:
                    receiver.traces.append(message)
            elif self.path == "/v1/metrics":
                message = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
                reply = metrics_service_pb2.ExportMetricsServiceResponse()
                with receiver.lock:
                    receiver.metrics.append(message)
            else:
                self.send_error(404)
                return
            data = reply.SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield receiver, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


WORKLOAD_THREADS = 4
WORKLOAD_CALLS = 150


def workload() -> None:
    """Nested calls from several threads, with attributes and some errors."""

    @lapse.timed("score", capture=["n"])
    def score(n: int) -> int:
        lapse.set(rows=n, model="churn")
        with lapse.span("features", step="scale"):
            pass
        if n % 25 == 0:
            raise ValueError(n)
        return n

    def run() -> None:
        for n in range(1, WORKLOAD_CALLS + 1):
            with contextlib.suppress(ValueError):
                score(n)

    threads = [threading.Thread(target=run, name=f"worker-{i}") for i in range(WORKLOAD_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_every_event_arrives_once_with_nesting_and_attributes(store, http_receiver):
    """Every stored event arrives as exactly one span, with the stored start and end times, the
    parent given by the store's parent_id, the trace of its tree, semantic-convention attributes
    and resource, error status; the duration histograms count every call."""
    receiver, url = http_receiver
    lapse.configure(sinks=[OTLPSink(endpoint=url)], service="churn-api", version="2.1.0",
                    environment="staging", flush_interval="200ms")
    workload()
    lapse.shutdown()
    events = lapse.sql("select * from events").to_pylist()
    assert len(events) == 2 * WORKLOAD_THREADS * WORKLOAD_CALLS
    received = receiver.spans()
    assert len(received) == len(events)
    spans = {span.span_id: (resource, span) for resource, span in received}
    assert len(spans) == len(events)  # no span twice
    for event in events:
        run_id = event["run_id"]
        resource, span = spans[otel_id(run_id, event["span_id"], 8).to_bytes(8, "big")]
        assert span.name == event["name"]
        assert span.trace_id == otel_id(run_id, event["trace_id"], 16).to_bytes(16, "big")
        if event["parent_id"] is None:
            assert span.parent_span_id == b""
        else:
            assert span.parent_span_id == otel_id(run_id, event["parent_id"], 8).to_bytes(8, "big")
        assert span.start_time_unix_nano == event["start_ns"]
        assert span.end_time_unix_nano == event["start_ns"] + event["duration_ns"]
        attrs = attributes(span.attributes)
        assert attrs["thread.name"] == event["thread"]
        assert attrs["lapse.run_id"] == run_id
        assert attrs["code.function.name"] == event["caller"].replace(":", ".")
        if event["name"] == "score":
            assert (attrs["rows"], attrs["model"], attrs["n"]) == (
                json.loads(event["attrs"])["rows"], "churn", attrs["rows"])
            assert attrs["code.function"] == "workload.<locals>.run"
        else:
            assert attrs["step"] == "scale"
        if event["status"] == "error":
            assert span.status.code == span.status.STATUS_CODE_ERROR
            assert attrs["error.type"] == "ValueError"
            assert [e.name for e in span.events] == ["exception"]
        else:
            assert span.status.code == span.status.STATUS_CODE_UNSET
        assert resource["service.name"] == "churn-api"
        assert resource["service.version"] == "2.1.0"
        assert resource["deployment.environment.name"] == "staging"
        assert resource["service.instance.id"] == run_id
        assert resource["process.pid"] == os.getpid()
    errors = sum(1 for e in events if e["status"] == "error")
    assert errors == WORKLOAD_THREADS * (WORKLOAD_CALLS // 25)
    assert receiver.histogram_counts() == {"score": WORKLOAD_THREADS * WORKLOAD_CALLS,
                                           "features": WORKLOAD_THREADS * WORKLOAD_CALLS}
    assert lapse.status()["sink_dropped"] == {}


def test_lapse_sinks_variable_exports_from_a_process_without_code_changes(store, http_receiver,
                                                                         monkeypatch):
    """LAPSE_SINKS=otlp and the standard OTEL_EXPORTER_OTLP_ENDPOINT turn export on for a
    program that only uses @lapse.timed: its events arrive, with the service's resource."""
    receiver, url = http_receiver
    monkeypatch.setenv("LAPSE_SINKS", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
    record(store, calls=20, version="3.0")
    events = lapse.sql("select name, span_id from events", store).to_pylist()
    received = receiver.spans()
    assert sorted(span.name for _, span in received) == sorted(e["name"] for e in events)
    assert len(received) == 40
    assert {resource["service.version"] for resource, _ in received} == {"3.0"}
    assert receiver.histogram_counts() == {"predict": 20, "preprocess": 20}


def test_grpc_protocol_reaches_a_grpc_receiver(store):
    """With protocol grpc the same spans arrive at an OTLP gRPC server."""
    grpc = pytest.importorskip("grpc")
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    receiver = Receiver()

    class Traces(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            with receiver.lock:
                receiver.traces.append(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            with receiver.lock:
                receiver.metrics.append(request)
            return metrics_service_pb2.ExportMetricsServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        lapse.configure(sinks=[OTLPSink(endpoint=f"http://127.0.0.1:{port}", protocol="grpc")])
        workload()
        lapse.shutdown()
    finally:
        server.stop(None)
    events = lapse.sql("select count(*) as n from events").to_pylist()[0]["n"]
    assert len(receiver.spans()) == events == 2 * WORKLOAD_THREADS * WORKLOAD_CALLS
    assert receiver.histogram_counts()["score"] == WORKLOAD_THREADS * WORKLOAD_CALLS


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # nothing listens once the socket is closed


def test_collector_down_is_one_warning_and_counted_drops(store, caplog):
    """With no collector listening the application and the store are unaffected: every event
    is stored, the sink's losses are counted in lapse.status(), and lapse warns once."""
    sink = OTLPSink(endpoint=f"http://127.0.0.1:{closed_port()}", timeout=1, retry_after=60)
    lapse.configure(sinks=[sink, "prometheus"], flush_interval="100ms")
    with caplog.at_level(logging.WARNING, logger="lapse"):
        workload()
        lapse.flush()
        workload()
        lapse.shutdown()
    stored = lapse.sql("select count(*) as n from events").to_pylist()[0]["n"]
    assert stored == 2 * 2 * WORKLOAD_THREADS * WORKLOAD_CALLS
    status = lapse.status()
    assert status["sink_dropped"] == {"otlp": stored}  # prometheus took them all
    assert status["dropped"] == {"buffer_full": 0, "write_error": 0, "internal": 0}
    warnings = [r for r in caplog.records if r.name == "lapse"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "otlp" in warnings[0].getMessage()
    assert sink.exported == 0


def test_configure_rejects_unknown_sinks():
    """A misspelt sink name fails at configure() with the names that exist."""
    with pytest.raises(lapse.ConfigError, match="otlp, prometheus"):
        lapse.configure(sinks=["otlpp"])
    with pytest.raises(lapse.ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        OTLPSink(protocol="thrift")


def test_import_lapse_with_sinks_configured_stays_light(tmp_path):
    """LAPSE_SINKS=otlp costs nothing at import or decoration: OpenTelemetry is imported by
    the writer, in the background, when the first batch is exported."""
    code = ("import sys, lapse\n@lapse.timed\ndef f(): pass\n"
            "print('opentelemetry' in sys.modules)\n")
    env = {**os.environ, "LAPSE_SINKS": "otlp", "LAPSE_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=60, check=True)
    assert result.stdout.strip() == "False"


def test_a_sink_without_its_package_names_the_install_command(monkeypatch):
    """configure() fails fast when a named sink's package is missing, with the pip command."""
    from lapse import _config

    monkeypatch.setitem(_config.SINK_NAMES, "otlp", ("lapse_no_such_module", "otel"))
    with pytest.raises(lapse.ConfigError, match=r"pip install 'lapse\[otel\]'"):
        lapse.configure(sinks="otlp")


def test_sink_names_reach_spawned_workers_objects_stay(store):
    """configure() exports sink names in LAPSE_SINKS for worker processes; objects stay here."""
    sink = OTLPSink(endpoint="http://127.0.0.1:9")
    settings = lapse.configure(sinks=["prometheus", sink])
    assert settings.sinks == ("prometheus", sink)
    assert os.environ["LAPSE_SINKS"] == "prometheus"


def test_minimal_level_events_each_get_their_own_span(store, http_receiver):
    """At minimal level (no span ids) every event still arrives as its own root span, also
    in batches larger than one export request."""
    receiver, url = http_receiver
    lapse.configure(level="minimal", sinks=[OTLPSink(endpoint=url, metrics=False)])

    @lapse.timed("tick")
    def tick() -> None:
        pass

    for _ in range(1_300):  # three export requests of at most 512 spans
        tick()
    lapse.shutdown()
    spans = [span for _, span in receiver.spans()]
    assert len(spans) == 1_300
    assert len({span.span_id for span in spans}) == 1_300
    assert all(span.parent_span_id == b"" for span in spans)
