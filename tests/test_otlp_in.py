"""OpenTelemetry in: spans of already-instrumented code land in the lapse store.

In-process tests drive the SDK's own tracer; the end-to-end test runs a FastAPI
app instrumented by opentelemetry-instrumentation-fastapi under a real uvicorn.
"""

from __future__ import annotations

import json

import httpx
import pytest

import lapse

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode

from lapse.integrations.otel import LapseSpanProcessor, install
from tests.test_middleware import free_port, serve, uvicorn_command, write_app


@pytest.fixture
def tracer():
    """A private SDK TracerProvider with lapse's processor (the global one is left alone)."""
    provider = TracerProvider()
    provider.add_span_processor(LapseSpanProcessor())
    yield provider.get_tracer("tests")
    provider.shutdown()


def rows() -> list[dict]:
    lapse.flush()
    return lapse.sql("select * from events order by start_ns").to_pylist()


def test_spans_become_events_with_times_nesting_and_attributes(store, tracer):
    """Each ended span is one event with the span's own times, attributes, kind and parent;
    a lapse call inside a span nests under it, and a span inside a lapse call under that."""
    with tracer.start_as_current_span("GET /items/{id}", kind=SpanKind.SERVER,
                                      attributes={"http.route": "/items/{id}"}) as server:
        with tracer.start_as_current_span("db.query", kind=SpanKind.CLIENT) as query:
            query.set_attribute("db.system", "sqlite")

        @lapse.timed("model.predict")
        def predict():
            lapse.set(rows=3)
            with tracer.start_as_current_span("feature.fetch"):
                pass

        predict()
    events = {row["name"]: row for row in rows()}
    assert set(events) == {"GET /items/{id}", "db.query", "model.predict", "feature.fetch"}
    request = events["GET /items/{id}"]
    assert request["kind"] == "request"
    assert events["db.query"]["kind"] == "client"
    assert events["feature.fetch"]["kind"] == "span"
    assert events["db.query"]["parent_id"] == request["span_id"]
    assert events["model.predict"]["parent_id"] == request["span_id"]
    assert events["feature.fetch"]["parent_id"] == events["model.predict"]["span_id"]
    assert {row["trace_id"] for row in events.values()} == {request["span_id"]}
    attrs = json.loads(request["attrs"])
    assert attrs["http.route"] == "/items/{id}"
    assert attrs["otel.trace_id"] == f"{server.get_span_context().trace_id:032x}"
    assert json.loads(events["db.query"]["attrs"])["db.system"] == "sqlite"
    assert json.loads(events["model.predict"]["attrs"]) == {"rows": 3}
    # the span's own clock: start and duration as OpenTelemetry measured them (to 1 ms)
    span_start = server.start_time
    assert abs(request["start_ns"] - span_start) < 1_000_000
    assert request["duration_ns"] == server.end_time - server.start_time


def test_error_spans_keep_the_exception_type(store, tracer):
    """A span that recorded an exception is an error event with that exception's type."""
    with pytest.raises(KeyError), tracer.start_as_current_span("lookup"):
        raise KeyError("x")
    with tracer.start_as_current_span("http.get") as span:
        span.set_attribute("error.type", "503")
        span.set_status(Status(StatusCode.ERROR))
    events = {row["name"]: row for row in rows()}
    assert events["lookup"]["status"] == "error"
    assert events["lookup"]["error_type"] == "KeyError"
    assert events["http.get"]["error_type"] == "503"


def test_nothing_is_recorded_when_lapse_is_off(store, tracer):
    """At level off the processor records nothing (and costs one check per span)."""
    lapse.configure(level="off")
    with tracer.start_as_current_span("ignored"):
        pass
    lapse.flush()
    assert not (store / "events").exists() or not list((store / "events").iterdir())


def test_install_needs_an_sdk_provider():
    """install() on OpenTelemetry's no-op provider explains what to do."""
    from opentelemetry.trace import NoOpTracerProvider

    with pytest.raises(lapse.ConfigError, match="TracerProvider"):
        install(NoOpTracerProvider())
    provider = TracerProvider()
    assert isinstance(install(provider), LapseSpanProcessor)
    provider.shutdown()


OTEL_APP = """
from contextlib import asynccontextmanager

import lapse
from fastapi import FastAPI
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from lapse.integrations.otel import LapseSpanProcessor

provider = TracerProvider()
provider.add_span_processor(LapseSpanProcessor())


@asynccontextmanager
async def lifespan(app):
    yield
    lapse.shutdown()  # uvicorn ends with the signal re-raised: write what is buffered now


app = FastAPI(lifespan=lifespan)
FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)


@lapse.timed("model.predict")
def predict(n):
    return n * 2


@app.get("/items/{item_id}")
async def item(item_id: int):
    return {"y": predict(item_id)}
"""


@pytest.mark.slow
def test_fastapi_instrumentation_under_uvicorn_lands_in_the_store(tmp_path, store):
    """A FastAPI app instrumented by OpenTelemetry's FastAPI instrumentation, served by uvicorn:
    each request's server span is an event named by its route, with the instrumentation's
    attributes; the app's lapse-timed call nests under it; lapse report reads them."""
    pytest.importorskip("opentelemetry.instrumentation.fastapi")
    write_app(tmp_path, "otel_app", OTEL_APP)
    port = free_port()
    with (serve(uvicorn_command("otel_app", port), tmp_path, port, ready_path="/items/0") as base,
          httpx.Client(base_url=base, trust_env=False) as client):
        for i in range(1, 6):
            assert client.get(f"/items/{i}").json() == {"y": 2 * i}
    requests = lapse.sql("select * from events where kind = 'request'", store).to_pylist()
    assert {row["name"] for row in requests} == {"GET /items/{item_id}"}
    assert len(requests) == 6
    attrs = json.loads(requests[0]["attrs"])
    assert attrs["http.route"] == "/items/{item_id}"
    assert attrs.get("http.response.status_code", attrs.get("http.status_code")) == 200
    nested = lapse.sql("""
        select count(*) as n from events c join events p
          on c.parent_id = p.span_id and c.run_id = p.run_id
        where c.name = 'model.predict' and p.kind = 'request'
    """, store).to_pylist()
    assert nested == [{"n": 6}]
    report = {row["name"]: row for row in lapse.report(store).rows}
    assert report["GET /items/{item_id}"]["count"] == 6
