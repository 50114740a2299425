"""``lapse.analyze``: every analysis of ``lapse analyze`` as a Python function.

::

    import lapse

    lapse.analyze.compare("version=1.2", "version=1.3")     # is the release slower?
    lapse.analyze.changes(since="1d")                       # change points, ranked
    model = lapse.analyze.drivers("predict")                # what drives its duration
    model.predict(rows=50_000)                              # estimate with an interval
    lapse.analyze.slow("predict", slo="100ms")              # rules of slow calls
    lapse.analyze.outliers(name="predict")                  # Tukey outliers per event
    lapse.analyze.capacity("predict", slo="p99<200ms", rate=300)

Each takes the store (``dir``, default as ``lapse.load``) and the selection of
``lapse.report`` (``since``, ``until``, ``name``, ``run``, ``service``,
``version``, ``where``) and returns a result with ``.table`` (Arrow),
``to_pandas()``, ``to_dict()``, ``explain()``, and a rendering in Jupyter.
The statistics need the ``stats`` extra: ``pip install 'lapse[stats]'``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lapse.analysis.capacity import Capacity
    from lapse.analysis.changes import Changes
    from lapse.analysis.compare import Comparison
    from lapse.analysis.drivers import Drivers, Prediction
    from lapse.analysis.outliers import Outliers
    from lapse.analysis.selection import Selection
    from lapse.analysis.slo import Slo
    from lapse.analysis.slowcalls import SlowCalls

__all__ = ["capacity", "changes", "compare", "drivers", "outliers", "predict_latency", "slow"]

Folder = str | os.PathLike[str] | None
_MODELS: dict[tuple[Any, ...], Drivers] = {}
"""Fitted driver models by store state and selection (the last _KEEP)."""
_KEEP = 4


def _selection(
    *, since: object, until: object, name: str | Sequence[str] | None,
    run: str | Sequence[str] | None, service: str | None, version: str | None,
    where: str | Sequence[str],
) -> Selection:
    from lapse.analysis.selection import Selection

    selection = Selection(since=since, until=until, name=name, run=run, service=service,
                          version=version, where=where)
    selection.where_sql()  # fail now, naming what the user wrote
    return selection


def changes(
    dir: Folder = None,  # noqa: A002 - matches lapse.report(dir)
    *,
    event: str | None = None,
    metrics: Sequence[str] = ("latency", "throughput", "errors"),
    buckets: int | None = None,
    alpha: float = 0.05,
    threshold: float = 0.05,
    since: object = None,
    until: object = None,
    name: str | Sequence[str] | None = None,
    run: str | Sequence[str] | None = None,
    service: str | None = None,
    version: str | None = None,
    where: str | Sequence[str] = (),
) -> Changes:
    """Change points in latency, throughput and error rate of each event, ranked by confidence
    and size (see ``lapse.analysis.changes``)."""
    from lapse.analysis.changes import changes as run_changes

    return run_changes(_selection(since=since, until=until, name=name, run=run, service=service,
                                  version=version, where=where), dir,
                       event=event, metrics=tuple(metrics), buckets=buckets, alpha=alpha,
                       threshold=threshold)


def drivers(
    event: str,
    dir: Folder = None,  # noqa: A002 - matches lapse.report(dir)
    *,
    level: float = 0.9,
    max_calls: int = 20_000,
    seed: int = 0,
    since: object = None,
    until: object = None,
    run: str | Sequence[str] | None = None,
    service: str | None = None,
    version: str | None = None,
    where: str | Sequence[str] = (),
) -> Drivers:
    """A model of ``event``'s duration from its attributes and context: held-out accuracy,
    importance, effects in words, and ``.predict(...)`` (see ``lapse.analysis.drivers``).

    The fitted model is kept (the last few) while the store and selection stay the same,
    so ``predict_latency`` reuses it."""
    from lapse.analysis.drivers import drivers as fit_drivers
    from lapse.store import _layout
    from lapse.store._read import resolve_dir

    selection = _selection(since=since, until=until, name=None, run=run, service=service,
                           version=version, where=where)
    root = resolve_dir(dir)
    files = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                  for p in _layout.segment_files(root) if p.exists())
    key = (str(root.absolute()), event, repr(selection), level, max_calls, seed, files)
    model = _MODELS.get(key)
    if model is None:
        model = fit_drivers(selection, root, event=event, level=level, max_calls=max_calls,
                            seed=seed)
        while len(_MODELS) >= _KEEP:
            del _MODELS[next(iter(_MODELS))]
        _MODELS[key] = model
    return model


def slow(
    event: str,
    slo: str | float | Slo,
    dir: Folder = None,  # noqa: A002 - matches lapse.report(dir)
    *,
    depth: int = 3,
    exemplars: int = 3,
    max_calls: int = 50_000,
    since: object = None,
    until: object = None,
    run: str | Sequence[str] | None = None,
    service: str | None = None,
    version: str | None = None,
    where: str | Sequence[str] = (),
) -> SlowCalls:
    """Rules (IF ... THEN slow) for the calls of ``event`` slower than ``slo`` (``"100ms"``),
    with held-out precision and recall and exemplars (see ``lapse.analysis.slowcalls``)."""
    from lapse.analysis.slowcalls import slow_calls

    return slow_calls(_selection(since=since, until=until, name=None, run=run, service=service,
                                 version=version, where=where), dir,
                      event=event, slo=slo, depth=depth, exemplars=exemplars,
                      max_calls=max_calls)


def compare(
    baseline: str,
    candidate: str,
    dir: Folder = None,  # noqa: A002 - matches lapse.report(dir)
    *,
    candidate_dir: Folder = None,
    threshold: float = 0.05,
    alpha: float = 0.05,
    correction: str = "holm",
    min_calls: int = 20,
    engine: str = "duckdb",
) -> Comparison:
    """``lapse compare`` from Python: per event, is ``candidate`` slower than ``baseline``?

    Selectors as on the command line: ``"version=1.3"``, ``"run_id=RUN"``, ``"2h..1h"``,
    several joined by commas. ``candidate_dir`` compares with another store. The result's
    ``regressed`` is what makes the command exit 1 (see ``lapse.analysis.compare``).
    """
    from lapse.analysis.compare import compare as run_compare
    from lapse.analysis.compare import parse_selector

    return run_compare(parse_selector(baseline), parse_selector(candidate), baseline_dir=dir,
                       candidate_dir=candidate_dir, threshold=threshold, alpha=alpha,
                       correction=correction, min_calls=min_calls,
                       labels=(baseline, candidate), engine=engine)


def outliers(
    dir: Folder = None,  # noqa: A002 - matches lapse.report(dir)
    *,
    event: str | None = None,
    k: float = 1.5,
    log: bool = False,
    limit: int = 20,
    since: object = None,
    until: object = None,
    name: str | Sequence[str] | None = None,
    run: str | Sequence[str] | None = None,
    service: str | None = None,
    version: str | None = None,
    where: str | Sequence[str] = (),
) -> Outliers:
    """Calls outside Tukey's fences per event, with their attributes
    (see ``lapse.analysis.outliers``)."""
    from lapse.analysis.outliers import outliers as find_outliers

    return find_outliers(_selection(since=since, until=until, name=name, run=run,
                                    service=service, version=version, where=where), dir,
                         event=event, k=k, log=log, limit=limit)


def capacity(
    event: str,
    slo: str | Slo,
    dir: Folder = None,  # noqa: A002 - matches lapse.report(dir)
    *,
    rate: float | None = None,
    workers: Sequence[int] = (1, 2, 4, 8, 16, 32),
    since: object = None,
    until: object = None,
    run: str | Sequence[str] | None = None,
    service: str | None = None,
    version: str | None = None,
    where: str | Sequence[str] = (),
) -> Capacity:
    """Calls/s one worker sustains within ``slo`` (``"p99<200ms"``), workers for ``rate``,
    and an auto-scale rule, from an M/G/c model (see ``lapse.analysis.capacity``)."""
    from lapse.analysis.capacity import capacity as size

    return size(_selection(since=since, until=until, name=None, run=run, service=service,
                           version=version, where=where), dir,
                event=event, slo=slo, rate=rate, workers=tuple(workers))


def predict_latency(
    event: str,
    inputs: Mapping[str, Any] | None = None,
    *,
    dir: Folder = None,  # noqa: A002 - matches lapse.report(dir)
    level: float = 0.9,
    since: object = None,
    until: object = None,
    where: str | Sequence[str] = (),
    **attrs: Any,
) -> Prediction:
    """Estimated duration of one call of ``event`` with these attributes, with an interval.

    ``lapse.predict_latency("predict", rows=50_000, model="large")``: keywords
    other than the selection (``since``, ``until``, ``where``) are feature
    values, so ``version="1.1"`` predicts for that release (select releases
    with ``where="version=1.1"``). The model is that of ``drivers(event)``,
    fitted once and reused while the store and the selection stay the same.
    """
    model = drivers(event, dir, level=level, since=since, until=until, where=where)
    return model.predict(inputs, **attrs)
