"""The Prometheus sink: exact bucket counts, a taken port, and the real Prometheus server
scraping a Flask service run by gunicorn with two worker processes (multiprocess mode)."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import socket
import subprocess
import textwrap
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import lapse

pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from lapse.integrations.prometheus import BUCKETS, PrometheusSink
from tests.test_middleware import free_port, gunicorn_command, serve, write_app


def samples(registry: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a registry's exposition, keyed by name and sorted labels."""
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_histograms_match_the_store_exactly(store):
    """Bucket counts, counts, sums and error counts equal what the store holds, event by event."""
    registry = CollectorRegistry()
    lapse.configure(sinks=[PrometheusSink(registry=registry)], service="svc",
                    flush_interval="50ms")

    @lapse.timed("work")
    def work(i: int) -> None:
        time.sleep((i % 7) / 2000)
        if i % 10 == 0:
            raise KeyError(i)

    for i in range(200):
        with contextlib.suppress(KeyError):
            work(i)
        if i == 100:
            lapse.flush()  # two batches: the sink adds up
    lapse.flush()
    rows = lapse.sql("select duration_ns, status from events where name = 'work'").to_pylist()
    seconds = np.array([r["duration_ns"] for r in rows]) / 1e9
    got = samples(registry)
    base = (("event", "work"), ("kind", "function"), ("service", "svc"))
    for bound in BUCKETS:
        le = "+Inf" if bound == float("inf") else repr(float(bound))
        label = tuple(sorted((*base, ("le", le))))
        assert got[("lapse_event_duration_seconds_bucket", label)] == np.count_nonzero(
            seconds <= bound), le
    assert got[("lapse_event_duration_seconds_count", base)] == 200
    assert got[("lapse_event_duration_seconds_sum", base)] == pytest.approx(seconds.sum(),
                                                                            rel=1e-9)
    error_labels = (("error_type", "KeyError"), ("event", "work"), ("service", "svc"))
    assert got[("lapse_event_errors_total", error_labels)] == 20


def test_a_taken_port_is_a_warning_not_a_failure(caplog):
    """serve_metrics() on a port already in use logs one warning and returns None."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.WARNING, logger="lapse"):
            assert lapse.serve_metrics(port) is None
    (record,) = [r for r in caplog.records if r.name == "lapse"]
    assert str(port) in record.getMessage()


SERVICE = """
import os
import time

import lapse
from flask import Flask, request
from lapse.integrations.wsgi import LapseWSGIMiddleware

app = Flask(__name__)
app.wsgi_app = LapseWSGIMiddleware(app.wsgi_app)


@app.get("/ping")
def ping():  # slow enough that two at once are served by two workers
    time.sleep(0.05)
    return str(os.getpid())


@app.get("/work")
def work():
    time.sleep(int(request.args["ms"]) / 1000)
    return "done"
"""

GUNICORN_CONFIG = """
import lapse


def when_ready(server):  # the master serves every worker's metrics (multiprocess mode)
    lapse.serve_metrics({port})


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
"""

PROMETHEUS_CONFIG = """
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: lapse
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """The real Prometheus server, on loopback; yields its URL and the port it scrapes."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the prometheus server is not installed (apt-get install prometheus)")
    target = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(PROMETHEUS_CONFIG.format(port=target))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/-/ready", trust_env=False, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()
            assert time.monotonic() < deadline, "Prometheus was not ready in 30 s"
            time.sleep(0.1)
        yield url, target
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def promql(url: str, query: str) -> float | None:
    """The single value of an instant PromQL query through Prometheus's HTTP API."""
    address = f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(address, timeout=5) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    result = answer["data"]["result"]
    return float(result[0]["value"][1]) if result else None


DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana" / "lapse-dashboard.json"
METRICS = {"lapse_event_duration_seconds_bucket", "lapse_event_duration_seconds_count",
           "lapse_event_duration_seconds_sum", "lapse_event_errors_total"}


def dashboard_queries() -> list[tuple[str, str]]:
    """Each panel's PromQL with Grafana's variables filled in as Grafana would."""
    dashboard = json.loads(DASHBOARD.read_text())
    values = {"$service": ".*", "$event": ".*", "$__rate_interval": "1m", "$__range": "5m"}
    queries = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in values.items():
                expr = expr.replace(variable, value)
            queries.append((panel["title"], expr))
    return queries


def test_the_grafana_dashboard_charts_lapse_metrics_only():
    """Every panel of the shipped dashboard queries metrics the sink exports, by their labels."""
    import re

    queries = dashboard_queries()
    assert len(queries) >= 8
    for title, expr in queries:
        names = set(re.findall(r"\b(lapse_[a-z_]+)\b", expr))
        assert names, title
        assert names <= METRICS, (title, names - METRICS)
        assert "$" not in expr, title


def bucket_of(value: float) -> tuple[float, float]:
    """The histogram bucket (lower, upper] that holds ``value``."""
    lower = 0.0
    for upper in BUCKETS:
        if value <= upper:
            return lower, upper
        lower = upper
    raise AssertionError(value)


@pytest.mark.slow
def test_prometheus_scrapes_gunicorn_workers_consistently_with_lapse_report(
        tmp_path, store, prometheus):
    """gunicorn with two workers and PROMETHEUS_MULTIPROC_DIR; the master serves /metrics;
    the real Prometheus scrapes it. Its request count equals the store's, and PromQL's
    histogram_quantile for the median and p90 falls in the bucket that holds lapse report's
    exact value."""
    url, metrics_port = prometheus
    write_app(tmp_path, "service", SERVICE)
    (tmp_path / "gunicorn_conf.py").write_text(
        textwrap.dedent(GUNICORN_CONFIG.format(port=metrics_port)))
    multiproc = tmp_path / "prometheus-multiproc"
    multiproc.mkdir()
    env = {"LAPSE_SINKS": "prometheus", "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
           "LAPSE_SERVICE": "scoring"}
    port = free_port()
    durations_ms = [3] * 48 + [60] * 12
    event = 'event="GET /work"'
    command = gunicorn_command("service", port, workers=2, extra=["-c", "gunicorn_conf.py"])
    with (serve(command, tmp_path, port, env=env, ready_path="/ping") as base,
          httpx.Client(base_url=base, trust_env=False) as client):
        def get(path: str, **params: int) -> str:
            return client.get(path, params=params, headers={"Connection": "close"}).text

        # two at a time: a sync worker serves one request at once, so both workers serve
        # once both have started (the first to start answers the readiness check alone)
        with ThreadPoolExecutor(2) as pool:
            workers: set[str] = set()
            deadline = time.monotonic() + 30
            while len(workers) < 2:
                assert time.monotonic() < deadline, f"only {workers} answered in 30 s"
                workers.update(pool.map(get, ["/ping"] * 2))
            assert set(pool.map(lambda ms: get("/work", ms=ms), durations_ms)) == {"done"}
        deadline = time.monotonic() + 30
        count = None
        while time.monotonic() < deadline:  # a flush interval, then a scrape interval
            count = promql(url, f"sum(lapse_event_duration_seconds_count{{{event}}})")
            if count == len(durations_ms):
                break
            time.sleep(0.25)
        assert count == len(durations_ms)
        median = promql(url, "histogram_quantile(0.5, sum by (le) "
                        f"(lapse_event_duration_seconds_bucket{{{event}}}))")
        p90 = promql(url, "histogram_quantile(0.9, sum by (le) "
                     f"(lapse_event_duration_seconds_bucket{{{event}}}))")
        for title, expr in dashboard_queries():  # the Grafana dashboard's PromQL is valid
            address = f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
            with urllib.request.urlopen(address, timeout=5) as response:
                assert json.load(response)["status"] == "success", title
    report = {row["name"]: row for row in lapse.report(store).rows}
    ours = report["GET /work"]
    assert ours["count"] == len(durations_ms)
    assert median is not None
    assert p90 is not None
    low, high = bucket_of(ours["median"])
    assert low <= median <= high, (median, ours["median"])
    low, high = bucket_of(ours["p90"])
    assert low <= p90 <= high, (p90, ours["p90"])
    served_by = lapse.sql("select count(distinct run_id) as n from events "
                          "where name = 'GET /work'", store).to_pylist()[0]["n"]
    assert served_by == 2  # both workers' values were added up in the one series
