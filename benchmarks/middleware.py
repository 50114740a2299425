"""What lapse's request middleware adds per request, beside OpenTelemetry's FastAPI instrumentation.

Run from the repository root::

    .venv/bin/python benchmarks/middleware.py            # full run, about 30 s
    .venv/bin/python benchmarks/middleware.py --quick    # rougher, about 15 s
    .venv/bin/python benchmarks/middleware.py --json results.json

Sections (benchmarks/README.md, "Middleware", has the method and the latest figures):

1. ``inprocess``: one small FastAPI app called directly through ASGI (no server,
   no socket) as it is bare, with lapse's ``LapseMiddleware`` (standard and
   minimal levels) and with OpenTelemetry's FastAPI instrumentation (SDK
   TracerProvider, BatchSpanProcessor, an exporter that discards); and a Flask
   app through WSGI, bare and with ``LapseWSGIMiddleware``. Variants interleave
   in a shuffled order every round; figures are medians of per-request means.
2. ``http``: the same FastAPI variants served by uvicorn (one process each) and
   called over loopback HTTP by a keep-alive client, one request at a time;
   the client's median and p90 latency per request.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from importlib.metadata import version
from pathlib import Path

FULL = {"rounds": 25, "block_s": 0.1, "http_rounds": 5, "http_requests": 400}
QUICK = {"rounds": 12, "block_s": 0.05, "http_rounds": 3, "http_requests": 200}

ASGI_VARIANTS = ("bare", "lapse standard", "lapse minimal", "OpenTelemetry")
WSGI_VARIANTS = ("Flask bare", "Flask lapse standard")

APP_SOURCE = textwrap.dedent("""
    import os

    from fastapi import FastAPI

    VARIANT = os.environ.get("BENCH_VARIANT", "bare")


    def make_app():
        app = FastAPI()

        @app.get("/items/{item_id}")
        async def item(item_id: int):
            return {"item": item_id}

        if VARIANT.startswith("lapse"):
            import lapse
            from lapse.integrations.asgi import LapseMiddleware

            lapse.configure(level=VARIANT.split()[1], flush_interval="1h",
                            buffer_size=50_000_000)
            app.add_middleware(LapseMiddleware)
        elif VARIANT == "OpenTelemetry":
            from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import (
                BatchSpanProcessor, SpanExporter, SpanExportResult)

            class Discard(SpanExporter):
                def export(self, spans):
                    return SpanExportResult.SUCCESS

            provider = TracerProvider()
            provider.add_span_processor(BatchSpanProcessor(Discard()))
            FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)
            app.state.provider = provider
        return app


    app = make_app()
""")


def median(values):
    return statistics.median(values)


def quartiles(values):
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


# -- in process ------------------------------------------------------------------------


def load_app(variant, folder):
    """A fresh module instance of the benchmark app, built for ``variant``."""
    import importlib.util

    os.environ["BENCH_VARIANT"] = variant
    path = Path(folder) / "bench_app.py"
    path.write_text(APP_SOURCE)
    spec = importlib.util.spec_from_file_location(f"bench_app_{variant.replace(' ', '_')}",
                                                  path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.app


def asgi_runner(app):
    """A coroutine function sending ``n`` GET requests through the ASGI app directly."""
    scope_base = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                  "method": "GET", "scheme": "http", "query_string": b"", "root_path": "",
                  "headers": [(b"host", b"bench")], "client": ("127.0.0.1", 50000),
                  "server": ("127.0.0.1", 80)}
    statuses = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def run(n):
        for i in range(n):
            path = f"/items/{i % 100}"
            scope = {**scope_base, "path": path, "raw_path": path.encode()}
            await app(scope, receive, send)
        assert statuses[-1] == 200, statuses[-1]
        statuses.clear()

    return run


def flask_app(with_lapse):
    from flask import Flask

    app = Flask(f"bench{with_lapse}")

    @app.get("/items/<int:item_id>")
    def item(item_id):
        return {"item": item_id}

    if with_lapse:
        from lapse.integrations.wsgi import LapseWSGIMiddleware

        app.wsgi_app = LapseWSGIMiddleware(app.wsgi_app)
    return app


def wsgi_runner(app):
    def start_response(status, headers, exc_info=None):
        return None

    base = {"REQUEST_METHOD": "GET", "SERVER_NAME": "bench", "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http", "wsgi.input": None,
            "wsgi.errors": sys.stderr, "wsgi.multithread": False, "wsgi.multiprocess": False,
            "wsgi.run_once": False, "QUERY_STRING": "", "SCRIPT_NAME": ""}

    def run(n):
        for i in range(n):
            body = app({**base, "PATH_INFO": f"/items/{i % 100}"}, start_response)
            for _ in body:
                pass
            close = getattr(body, "close", None)
            if close is not None:
                close()

    return run


def inprocess(config):
    """Mean µs per request of each variant, per round; interleaved, shuffled rounds."""
    import lapse
    from lapse._recorder import RECORDER

    folder = tempfile.mkdtemp(prefix="lapse-bench-")
    lapse.configure(dir=Path(folder) / "store", level="standard", flush_interval="1h",
                    buffer_size=50_000_000)
    apps = {}
    for variant in ASGI_VARIANTS:
        app = load_app(variant, folder)
        apps[variant] = ("asgi", app, asgi_runner(app))
    apps["Flask bare"] = ("wsgi", None, wsgi_runner(flask_app(False)))
    apps["Flask lapse standard"] = ("wsgi", None, wsgi_runner(flask_app(True)))
    loop = asyncio.new_event_loop()

    def block(variant, n):
        kind, app, run = apps[variant]
        if variant.startswith("lapse"):
            lapse.configure(level=variant.split()[1], flush_interval="1h",
                            buffer_size=50_000_000)
        elif variant == "Flask lapse standard":
            lapse.configure(level="standard", flush_interval="1h", buffer_size=50_000_000)
        else:
            lapse.configure(level="off")
        gc.collect()
        start = time.perf_counter()
        if kind == "asgi":
            loop.run_until_complete(run(n))
        else:
            run(n)
        elapsed = time.perf_counter() - start
        RECORDER.buffer.clear()
        if variant == "OpenTelemetry":
            app.state.provider.force_flush()
        return elapsed

    # the writer starts with the first recorded call: let its start-up work finish first
    lapse.configure(level="standard", flush_interval="1h", buffer_size=50_000_000)
    loop.run_until_complete(apps["lapse standard"][2](10))
    lapse.flush()
    sizes = {}
    for variant in apps:  # calibrate: requests per block of about block_s
        block(variant, 50)
        took = block(variant, 200)
        sizes[variant] = max(50, int(config["block_s"] / (took / 200)))
    results = {variant: [] for variant in apps}
    order = list(apps)
    for _ in range(config["rounds"]):
        random.shuffle(order)
        for variant in order:
            n = sizes[variant]
            results[variant].append(block(variant, n) / n * 1e6)
    loop.close()
    lapse.configure(level="off")
    for _kind, app, _run in apps.values():
        provider = getattr(getattr(app, "state", None), "provider", None)
        if provider is not None:
            provider.shutdown()
    return results


# -- over HTTP ------------------------------------------------------------------------


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http(config):
    """Client-side latency per request (µs) of each FastAPI variant under uvicorn."""
    import httpx

    folder = tempfile.mkdtemp(prefix="lapse-bench-http-")
    (Path(folder) / "bench_app.py").write_text(APP_SOURCE)
    servers = {}
    for variant in ASGI_VARIANTS:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("LAPSE_")}
        env.update(BENCH_VARIANT=variant, LAPSE_DIR=str(Path(folder) / "store"))
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "bench_app:app", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning", "--no-access-log"],
            cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        servers[variant] = (process, f"http://127.0.0.1:{port}")
    results = {variant: [] for variant in ASGI_VARIANTS}
    try:
        clients = {}
        for variant, (process, url) in servers.items():
            client = httpx.Client(base_url=url, trust_env=False)
            deadline = time.monotonic() + 60
            while True:
                try:
                    client.get("/items/0")
                    break
                except httpx.HTTPError:
                    assert process.poll() is None, f"{variant}: the server exited"
                    assert time.monotonic() < deadline, f"{variant}: the server did not start"
                    time.sleep(0.1)
            for i in range(200):  # warm up
                client.get(f"/items/{i}")
            clients[variant] = client
        order = list(ASGI_VARIANTS)
        for _ in range(config["http_rounds"]):
            random.shuffle(order)
            for variant in order:
                client = clients[variant]
                for i in range(config["http_requests"]):
                    start = time.perf_counter()
                    client.get(f"/items/{i % 100}")
                    results[variant].append((time.perf_counter() - start) * 1e6)
        for client in clients.values():
            client.close()
    finally:
        for process, _url in servers.values():
            process.terminate()
            process.wait(timeout=30)
    return results


# -- report -------------------------------------------------------------------------------


def table(headers, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(str(c).rjust(w) if i else str(c).ljust(w)
                              for i, (c, w) in enumerate(zip(r, widths, strict=True))) + " |"
            for r in rows]
    return "\n".join([line, rule, *body])


def report_inprocess(results):
    bare = median(results["bare"])
    flask_bare = median(results["Flask bare"])
    rows = []
    for variant, values in results.items():
        base = flask_bare if variant.startswith("Flask") else bare
        m = median(values)
        q1, q3 = quartiles(values)
        rows.append([variant, f"{m:.1f}", f"{q1:.1f}-{q3:.1f}", f"{m - base:+.1f}",
                     f"{m / base:.2f}"])
    text = table(["variant (in process)", "µs/request", "q1-q3", "added µs", "x bare"], rows)
    lapse_added = median(results["lapse standard"]) - bare
    otel_added = median(results["OpenTelemetry"]) - bare
    ratio = otel_added / lapse_added if lapse_added > 0 else float("nan")
    per_round = [(o - b) / (s - b) for o, b, s in zip(results["OpenTelemetry"], results["bare"],
                                                       results["lapse standard"], strict=True)
                 if s > b]
    text += (f"\n\nOpenTelemetry's added µs / lapse standard's added µs: {ratio:.1f} "
             f"(per-round median {median(per_round):.1f})" if per_round else "")
    return text


def report_http(results):
    bare = median(results["bare"])
    rows = []
    for variant, values in results.items():
        m = median(values)
        p90 = statistics.quantiles(values, n=10)[8]
        rows.append([variant, f"{m:.0f}", f"{p90:.0f}", f"{m - bare:+.0f}"])
    return table(["variant (uvicorn, HTTP)", "median µs", "p90 µs", "added µs (median)"], rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, rougher figures")
    parser.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    parser.add_argument("--only", default="inprocess,http",
                        help="comma-separated sections: inprocess, http")
    args = parser.parse_args(argv)
    for name in [n for n in os.environ if n.startswith("LAPSE_")]:
        del os.environ[name]
    config = QUICK if args.quick else FULL
    sections = args.only.split(",")
    started = time.time()
    print(f"Machine: {os.cpu_count()} cores, {platform.system()} {platform.release()} "
          f"{platform.machine()}, {platform.python_implementation()} "
          f"{platform.python_version()}; fastapi {version('fastapi')}, starlette "
          f"{version('starlette')}, uvicorn {version('uvicorn')}, flask {version('flask')}, "
          f"opentelemetry-sdk {version('opentelemetry-sdk')}, "
          f"opentelemetry-instrumentation-fastapi "
          f"{version('opentelemetry-instrumentation-fastapi')}.\n")
    figures = {}
    if "inprocess" in sections:
        figures["inprocess"] = inprocess(config)
        print("### In process (ASGI / WSGI calls, no server)\n")
        print(report_inprocess(figures["inprocess"]) + "\n")
    if "http" in sections:
        figures["http"] = http(config)
        print("### Over HTTP (uvicorn, loopback, one request at a time)\n")
        print(report_http(figures["http"]) + "\n")
    print(f"{'Quick' if args.quick else 'Full'} run, {time.time() - started:.0f} s.")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
