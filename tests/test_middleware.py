"""Request middleware in real servers: FastAPI under uvicorn, Flask under gunicorn workers.

Each test writes a small app into its temporary directory, starts the real
server on a free loopback port as a subprocess, sends requests, stops the
server (SIGTERM, so workers flush at exit) and reads the store.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

import lapse

pytestmark = pytest.mark.slow

ASGI_APP = """
import lapse
from fastapi import FastAPI, HTTPException
from lapse.integrations.asgi import LapseMiddleware

app = FastAPI()
app.add_middleware(LapseMiddleware)


@lapse.timed("model.predict")
def predict(n):
    with lapse.span("model.features"):
        pass
    return n * 2


@app.get("/items/{item_id}")
async def item(item_id: int):
    lapse.set(item_kind="async")
    return {"y": predict(item_id)}


@app.get("/sync/{x}")
def sync(x: int):  # runs in Starlette's threadpool
    return {"y": predict(x)}


@app.get("/boom")
async def boom():
    raise RuntimeError("boom")


@app.get("/unavailable")
async def unavailable():
    raise HTTPException(503)
"""

WSGI_APP = """
import lapse
from flask import Flask
from lapse.integrations.wsgi import LapseWSGIMiddleware

app = Flask(__name__)
app.wsgi_app = LapseWSGIMiddleware(app.wsgi_app)


@lapse.timed("model.predict")
def predict(n):
    with lapse.span("model.features"):
        pass
    return n * 2


@app.get("/items/<int:item_id>")
def item(item_id):
    return {"y": predict(item_id)}


@app.get("/boom")
def boom():
    raise ValueError("boom")
"""


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Wait until ``url`` answers (any status), failing early if the server died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}")
        try:
            httpx.get(url, timeout=1, trust_env=False)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer in {timeout} s")


@contextmanager
def serve(command: Sequence[str], cwd: Path, port: int, env: dict[str, str] | None = None,
          ready_path: str = "/") -> Iterator[str]:
    """Run a server command until the block ends; yields its base URL.

    Stopped with SIGTERM (a graceful stop: workers flush their events at exit).
    """
    full_env = {**os.environ, "LAPSE_FLUSH_INTERVAL": "100ms", **(env or {})}
    log = (cwd / f"server-{port}.log").open("wb")
    process = subprocess.Popen(list(command), cwd=cwd, env=full_env, stdout=log,
                               stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(base + ready_path, process)
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
    output = (cwd / f"server-{port}.log").read_text(errors="replace")
    assert "Traceback" not in output.replace("ValueError: boom", "").replace(
        "RuntimeError: boom", "") or "boom" in output, output


def uvicorn_command(module: str, port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", f"{module}:app", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning"]


def gunicorn_command(module: str, port: int, workers: int = 2,
                     extra: Sequence[str] = ()) -> list[str]:
    return [sys.executable, "-m", "gunicorn", f"{module}:app", "--bind", f"127.0.0.1:{port}",
            "--workers", str(workers), "--graceful-timeout", "10", "--log-level", "warning",
            *extra]


def write_app(folder: Path, name: str, code: str) -> None:
    (folder / f"{name}.py").write_text(textwrap.dedent(code))


def requests_in(store: Path) -> list[dict]:
    return lapse.sql("select * from events where kind = 'request' order by start_ns",
                     store).to_pylist()


def check_nesting(store: Path, request_names: set[str]) -> int:
    """Each model.predict sits under a request and each model.features under a predict."""
    rows = lapse.sql("""
        select c.name as child, p.name as parent, c.trace_id = p.trace_id as same_trace
        from events c join events p on c.parent_id = p.span_id and c.run_id = p.run_id
        where c.name in ('model.predict', 'model.features')
    """, store).to_pylist()
    for row in rows:
        expected = request_names if row["child"] == "model.predict" else {"model.predict"}
        assert row["parent"] in expected, row
        assert row["same_trace"], row
    return len(rows)


def test_asgi_middleware_under_uvicorn(tmp_path, store):
    """FastAPI under uvicorn: one event per request named by method and route template, with
    status and HTTP attributes; handler calls (async and threadpool) nest under it; a raised
    exception and a 5xx response are errors; unmatched paths share one event name."""
    write_app(tmp_path, "asgi_app", ASGI_APP)
    port = free_port()
    with (serve(uvicorn_command("asgi_app", port), tmp_path, port, ready_path="/items/0") as base,
          httpx.Client(base_url=base, trust_env=False) as client):
        for i in (1, 2, 3):
            assert client.get(f"/items/{i}").json() == {"y": 2 * i}
        assert client.get("/sync/5").json() == {"y": 10}
        # uvicorn closes a connection whose app raised: ask for that up front
        assert client.get("/boom", headers={"Connection": "close"}).status_code == 500
        assert client.get("/unavailable").status_code == 503
        assert client.get("/no/such/path").status_code == 404
    rows = requests_in(store)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["name"]] = counts.get(row["name"], 0) + 1
    assert counts == {"GET /items/{item_id}": 4, "GET /sync/{x}": 1, "GET /boom": 1,
                      "GET /unavailable": 1, "GET": 1}
    attrs = [json.loads(row["attrs"]) for row in rows]
    first = attrs[1]  # the wait_for probe was /items/0
    assert first["http.route"] == "/items/{item_id}"
    assert first["http.request.method"] == "GET"
    assert first["http.response.status_code"] == 200
    assert first["item_kind"] == "async"  # lapse.set() in the handler lands on the request
    assert all("url.path" not in a for a in attrs)  # no raw paths (ids) stored
    by_name = {row["name"]: row for row in rows}
    assert by_name["GET /boom"]["status"] == "error"
    assert by_name["GET /boom"]["error_type"] == "RuntimeError"
    assert json.loads(by_name["GET /boom"]["attrs"])["http.response.status_code"] == 500
    assert by_name["GET /unavailable"]["error_type"] == "503"
    assert by_name["GET"]["status"] == "ok"  # a 404 is the client's error, not the server's
    assert json.loads(by_name["GET"]["attrs"])["http.response.status_code"] == 404
    assert check_nesting(store, {"GET /items/{item_id}", "GET /sync/{x}"}) == 10
    # uvicorn re-raises SIGTERM after shutting down (no exit hooks): the middleware wrote
    # the events at the lifespan's shutdown, and the run is marked ended
    ended = lapse.sql("select ended_ns from runs", store).to_pylist()
    assert [row["ended_ns"] is not None for row in ended] == [True]


def test_wsgi_middleware_under_gunicorn_workers(tmp_path, store):
    """Flask under gunicorn with two worker processes: every request is one event with Flask's
    url rule, from the worker that served it; the view's calls nest; an exception Flask turns
    into a 500 keeps its type."""
    write_app(tmp_path, "wsgi_app", WSGI_APP)
    port = free_port()
    calls = 40
    with (serve(gunicorn_command("wsgi_app", port), tmp_path, port, ready_path="/items/0")
          as base, httpx.Client(base_url=base, trust_env=False) as client):
        for i in range(1, calls + 1):
            assert client.get(f"/items/{i}", headers={"Connection": "close"}).json() == {
                "y": 2 * i}
        assert client.get("/boom").status_code == 500
    rows = requests_in(store)
    items = [row for row in rows if row["name"] == "GET /items/<int:item_id>"]
    assert len(items) == calls + 1
    assert {json.loads(r["attrs"])["http.route"] for r in items} == {"/items/<int:item_id>"}
    assert {json.loads(r["attrs"])["http.response.status_code"] for r in items} == {200}
    (boom,) = [row for row in rows if row["name"] == "GET /boom"]
    assert boom["error_type"] == "ValueError"
    assert json.loads(boom["attrs"])["http.response.status_code"] == 500
    pids = {row["pid"] for row in rows}
    assert 1 <= len(pids) <= 2  # a worker still starting when the requests end serves none
    run_pids = [row["pid"] for row in lapse.sql("select pid from runs", store).to_pylist()]
    assert sorted(run_pids) == sorted(pids)  # one run per worker that served, none for others
    assert check_nesting(store, {"GET /items/<int:item_id>"}) == 2 * (calls + 1)
