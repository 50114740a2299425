"""``lapse demo``: an instrumented scikit-learn model scored from several processes.

A gradient-boosting classifier is trained on the breast-cancer data set that
ships with scikit-learn (nothing is downloaded), saved with joblib, then
loaded and scored in batches of varying size by worker processes started with
``spawn``, all at standard level. Then the demo shows what ``lapse runs``,
``lapse tail`` and ``lapse report`` show, and writes the HTML report.
"""

from __future__ import annotations

import random
import tempfile
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


def run(store: Path, *, workers: int = 4, batches: int = 50) -> int:
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
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(score, w, str(model_path), batches) for w in range(workers)]
            total = sum(f.result() for f in futures)
    lapse.flush()
    console.print(f"scored {workers * batches} batches in {workers} processes "
                  f"({total} positive predictions)\n")
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
