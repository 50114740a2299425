"""``lapse demo``: an instrumented scikit-learn model scored from several processes.

A gradient-boosting classifier is trained on the breast-cancer data set that
ships with scikit-learn (nothing is downloaded), saved with joblib, then
loaded and scored in batches of varying size by worker processes started with
``spawn``, all at standard level. Meanwhile the same model is served as a
FastAPI endpoint under uvicorn with lapse's ASGI middleware, and the demo sends
it requests: each is a ``POST /predict`` event with the scoring nested inside.
Then ``lapse stress`` ramps an open-loop load on the endpoint to find the
highest rate that meets a p99 objective, and the demo shows what ``lapse
runs``, ``lapse tail`` and ``lapse report`` show, and writes the HTML report.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import lapse


@lapse.timed("demo.train")
def train(path: Path) -> None:
    """Fit the model and save it where the workers will load it."""
    import joblib
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import HistGradientBoostingClassifier

    features, labels = load_breast_cancer(return_X_y=True)
    lapse.set(rows=len(features), features=features.shape[1])
    model = HistGradientBoostingClassifier(max_iter=100, random_state=0)
    model.fit(features, labels)
    joblib.dump(model, path)


@lapse.timed("demo.predict_batch", capture=["batch_size"])
def predict_batch(model: Any, data: Any, batch_size: int) -> int:
    """Score one batch; returns how many rows were predicted positive."""
    rows = data[:batch_size]
    with lapse.span("demo.preprocess", rows=len(rows)):
        rows = rows.astype("float64", copy=True)
    return int(model.predict(rows).sum())


def score(worker: int, model_path: str, batches: int) -> int:
    """One worker process: load the model, score ``batches`` batches of random size."""
    import joblib
    from sklearn.datasets import load_breast_cancer

    features, _ = load_breast_cancer(return_X_y=True)
    with lapse.span("demo.load_model", worker=worker) as span:
        model = joblib.load(model_path)
        span.set(size_kb=round(Path(model_path).stat().st_size / 1024, 1))
    pick = random.Random(worker)
    positives = 0
    for _ in range(batches):
        size = pick.choice((1, 8, 32, 128, 512))
        start = pick.randrange(0, len(features) - size)
        positives += predict_batch(model, features[start:], batch_size=size)
    lapse.shutdown()
    return positives


MODEL_VARIABLE = "LAPSE_DEMO_MODEL"
"""Where the model endpoint (a separate uvicorn process) finds the saved model."""


def model_app() -> Any:
    """The demo's model endpoint: FastAPI with lapse's ASGI middleware (``uvicorn --factory``).

    ``POST /predict`` with ``{"rows": [[30 numbers], ...]}`` answers how many
    rows are predicted positive; ``GET /health`` answers ok.
    """
    import joblib
    import numpy as np
    from fastapi import Body, FastAPI

    from lapse.integrations.asgi import LapseMiddleware

    with lapse.span("demo.load_model", worker="endpoint"):
        model = joblib.load(os.environ[MODEL_VARIABLE])
    app = FastAPI(title="lapse demo model")
    app.add_middleware(LapseMiddleware)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict")
    def predict(rows: list[list[float]] = Body(..., embed=True)) -> dict[str, int]:  # noqa: B008
        data = np.asarray(rows, dtype=np.float64)
        return {"positives": predict_batch(model, data, batch_size=len(data))}

    return app


def serve_model(model_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start the model endpoint under uvicorn on a free loopback port; its process and URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, MODEL_VARIABLE: str(model_path)}
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "lapse._demo:model_app", "--factory",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return process, f"http://127.0.0.1:{port}"


def call_model(process: subprocess.Popen[bytes], url: str, requests: int) -> int:
    """Send ``requests`` prediction requests (batches of random size); the positives."""
    from sklearn.datasets import load_breast_cancer

    features, _ = load_breast_cancer(return_X_y=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):  # noqa: S310 - loopback
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                error = process.stderr.read().decode() if process.stderr else ""
                raise RuntimeError(f"the demo's model endpoint did not start: {error}") from None
            time.sleep(0.1)
    pick = random.Random(99)
    positives = 0
    for _ in range(requests):
        size = pick.choice((1, 8, 32))
        start = pick.randrange(0, len(features) - size)
        body = json.dumps({"rows": features[start:start + size].tolist()}).encode()
        request = urllib.request.Request(  # noqa: S310 - the demo's own http:// endpoint
            f"{url}/predict", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
            positives += int(json.load(response)["positives"])
    return positives


def stress_model(store: Path, url: str, folder: Path, ramp: str) -> int:
    """``lapse stress`` on the endpoint: open-loop steps of rising rate, 8 rows per request.

    Run as its own process, as a user would, so the stress run is a run of its own.
    """
    from sklearn.datasets import load_breast_cancer

    features, _ = load_breast_cancer(return_X_y=True)
    body = folder / "request.json"
    body.write_text(json.dumps({"rows": features[:8].tolist()}))
    return subprocess.call([
        sys.executable, "-m", "lapse", "stress", f"{url}/predict", "--dir", str(store),
        "--method", "POST", "--header", "Content-Type: application/json", "--body", str(body),
        "--ramp", ramp, "--duration", "2s", "--slo", "p99<50ms", "--workers", "1",
        "--name", "client POST /predict",
    ])


def run(store: Path, *, workers: int = 4, batches: int = 50, requests: int = 20,
        ramp: str = "50:200:50") -> int:
    """Run the demo against ``store``; returns the exit status."""
    from rich.console import Console

    from lapse import cli

    console = Console(highlight=False)
    lapse.configure(dir=store, service="demo-churn-model", version="1.0.0", level="standard")
    console.rule("[bold]lapse demo")
    console.print(f"store: {store.absolute()}   workers: {workers}   batches each: {batches}")
    with tempfile.TemporaryDirectory() as folder:
        model_path = Path(folder) / "model.joblib"
        train(model_path)
        console.print("trained a gradient-boosting model on scikit-learn's breast-cancer data")
        server, url = serve_model(model_path) if requests else (None, "")
        try:
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(score, w, str(model_path), batches)
                           for w in range(workers)]
                total = sum(f.result() for f in futures)
            console.print(f"scored {workers * batches} batches in {workers} processes "
                          f"({total} positive predictions)")
            if server is not None:
                served = call_model(server, url, requests)
                console.print(f"sent {requests} requests to the model endpoint {url}/predict "
                              f"(FastAPI + lapse.integrations.asgi.LapseMiddleware under "
                              f"uvicorn; {served} positive predictions)")
                if ramp:
                    console.rule(f"lapse stress {url}/predict --ramp {ramp} --slo 'p99<50ms'")
                    stress_model(store, url, Path(folder), ramp)
        finally:
            if server is not None:
                server.terminate()  # the middleware writes the endpoint's events at shutdown
                server.wait(timeout=60)
    lapse.flush()
    console.print()
    console.rule("lapse runs")
    cli.main(["runs", "--dir", str(store)])
    console.rule("lapse tail -n 8 --no-follow")
    cli.main(["tail", "--dir", str(store), "-n", "8", "--no-follow"])
    console.rule("lapse report")
    cli.main(["report", "--dir", str(store)])
    html = store / "report.html"
    cli.main(["report", "--dir", str(store), "--format", "html", "-o", str(html),
              "--title", "lapse demo report"])
    console.print(f"open {html.absolute()} in a browser for the charts, "
                  f"or run: lapse dashboard --dir {store}")
    return 0
