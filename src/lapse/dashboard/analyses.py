"""The dashboard's analyses under ``/api/analyze/``: ``lapse analyze`` and ``lapse compare``.

One endpoint per analysis, so the OpenAPI schema shows exactly the parameters
each one takes. Every answer has the same shape (``models.AnalysisOut``): the
result's JSON document, its explanation and its HTML rendering, which the page
inserts as it is (``render("html")`` escapes every value).

Analyses are CPU-bound and take seconds on a large store, so each runs in a
worker thread while the event loop keeps answering the other pages. They run
one at a time: each already spreads over the cores (DuckDB, NumPy,
scikit-learn), and ``lapse.analyze.drivers`` keeps a process-wide cache of
fitted models that is not meant for concurrent writers. Requests waiting for
their turn wait in the event loop, not in a thread.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, HTTPException, Query, Request

from lapse import analyze
from lapse._errors import ConfigError, LapseError, NotEnoughDataError, StoreError
from lapse.analysis.drivers import Drivers, Prediction, parse_inputs
from lapse.analysis.result import AnalysisResult, _clean
from lapse.dashboard import models
from lapse.dashboard.api import Store, versions

router = APIRouter(prefix="/api/analyze", tags=["analyses"])
ANALYSES = ("compare", "changes", "drivers", "slow", "outliers", "capacity")
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": models.Problem, "description": "a bad selector, time, condition, version, "
          "SLO, event name or prediction input, or too little data for the analysis; `detail` "
          "says which and what would do"},
    501: {"model": models.Problem, "description": "the statistics extra is not installed"},
}

Since = Annotated[str | None, Query(
    description="only calls from this time: a duration ago (15m, 1h, 7d), an ISO time, "
    "or 'all' (the time range of the other pages)", examples=["1h"])]
Until = Annotated[str | None, Query(
    description="only calls up to this time: a duration ago (15m, 1h) or an ISO time "
    "(default: now)", examples=["15m"])]
Version = Annotated[str | None, Query(
    description="only calls of this release (the version its process was configured with); "
    "/api/versions lists them", examples=["1.1"])]
Where = Annotated[list[str] | None, Query(
    description="only calls meeting these conditions, COLUMN OP VALUE with OP one of "
    "= != > >= < <= ~ (glob), such as attrs.rows>=1000 or host=web-1; several joined by "
    "commas or given as repeated parameters", examples=[["attrs.rows>=1000,host=web-1"]])]
Predict = Annotated[str | None, Query(
    description="also estimate the duration for these feature values, with its interval: "
    "NAME=VALUE joined by commas (rows finds attrs.rows; features not given take their "
    "typical value)", examples=["rows=50000,model=large"])]
Event = Annotated[str, Query(description="the event (name) to analyse", examples=["predict"])]
OptionalEvent = Annotated[str | None, Query(
    description="only this event (default: every event)", examples=["predict"])]


def _since(value: str | None) -> str | None:
    """The pages send ``all`` (or nothing) for no lower bound, as /api/summary accepts."""
    return None if not value or value == "all" else value


@dataclass(frozen=True)
class Filters:
    """The calls an analysis looks at, as ``lapse analyze --since --until --version --where``.

    Compare does not take them: its two selectors carry their own conditions."""

    store: Path
    since: str | None
    until: str | None
    version: str | None
    where: tuple[str, ...]

    def arguments(self) -> dict[str, Any]:
        """Keyword arguments for ``lapse.analyze``. A version the store never recorded is
        refused here, naming the ones it has: otherwise it would pass as an empty selection
        and read as "too little data" or "no outliers". Reads the store: call it in the
        worker thread."""
        if self.version is not None:
            known = versions(self.store)
            if self.version not in known:
                raise ConfigError(f"version {self.version!r} is not in the store; its "
                                  f"versions are {', '.join(known) or 'none'}.")
        return {"since": self.since, "until": self.until, "version": self.version,
                "where": self.where}


def filters(*, store: Store, since: Since = None, until: Until = None,
            version: Version = None, where: Where = None) -> Filters:
    """The filters of a request; ``where`` is split at commas, as compare's selectors are,
    so one text box can hold several conditions."""
    conditions = tuple(part.strip() for text in where or () for part in text.split(",")
                       if part.strip())
    return Filters(store, _since(since), until or None, version or None, conditions)


Filtered = Annotated[Filters, Depends(filters)]


def _limiter(request: Request) -> anyio.CapacityLimiter:
    """The app's one analysis slot, made on first use (in the event loop, so without races)."""
    state = request.app.state
    if getattr(state, "analysis_limiter", None) is None:
        state.analysis_limiter = anyio.CapacityLimiter(1)
    limiter: anyio.CapacityLimiter = state.analysis_limiter
    return limiter


async def _run(request: Request, analysis: str, call: Callable[..., AnalysisResult],
               selected: Filters | None = None,
               predict: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run ``call`` (with the filters' arguments) in a worker thread and shape its result,
    or its error, for the page; with ``predict``, the fitted model's estimate is added to the
    result, the explanation and the HTML, as ``lapse analyze drivers --predict`` shows it."""

    def work() -> tuple[AnalysisResult, Prediction | None]:
        result = call(**(selected.arguments() if selected else {}))
        if predict is None or not isinstance(result, Drivers):
            return result, None
        return result, result.predict(predict)

    try:
        result, prediction = await anyio.to_thread.run_sync(work, limiter=_limiter(request))
    except NotEnoughDataError as error:
        raise HTTPException(400, str(error)) from None
    except (ConfigError, StoreError):
        raise  # the app's handlers: 400, or 404 for a store that is not there
    except LapseError as error:  # only the missing statistics extra reaches here
        raise HTTPException(501, str(error)) from None
    answer = {"analysis": analysis, "explain": result.explain(), "html": result.render("html"),
              "result": _clean(result.to_dict())}
    if prediction is not None:
        said = f"Prediction: {prediction.explain()}"
        answer["explain"] += f"\n{said}"
        answer["html"] += f"<p class='prediction'>{escape(said)}</p>"
        answer["result"]["prediction"] = _clean(prediction.to_dict())
    return answer


@router.get("/compare", response_model=models.AnalysisOut, responses=ERRORS,
            summary="Compare releases",
            description="`lapse compare`: per event, is the candidate slower than the "
            "baseline? A Brunner-Munzel rank test with Holm correction across events and the "
            "ratio of medians with a bootstrap interval; `result.regressed` is what makes the "
            "command exit 1. Selectors choose the calls on each side, including their time.")
async def get_compare(
    *, request: Request, store: Store,
    baseline: Annotated[str, Query(
        description="the calls to compare against: conditions such as version=1.0 or "
        "run_id=RUN, or a time range such as 2h..1h, joined by commas",
        examples=["version=1.0"])],
    candidate: Annotated[str, Query(
        description="the calls under test, written like baseline", examples=["version=1.1"])],
    threshold: Annotated[float, Query(
        ge=0, description="smallest change of the median that counts, as a fraction "
        "(0.05 = 5%)")] = 0.05,
) -> dict[str, Any]:
    """Baseline against candidate (``lapse.analyze.compare``)."""
    return await _run(request, "compare", functools.partial(
        analyze.compare, baseline, candidate, store, threshold=threshold))


@router.get("/changes", response_model=models.AnalysisOut, responses=ERRORS,
            summary="Change points",
            description="`lapse analyze changes`: when did each event's latency, throughput or "
            "error rate shift, and by how much, ranked by confidence and size.")
async def get_changes(*, request: Request, store: Store, selected: Filtered,
                      event: OptionalEvent = None) -> dict[str, Any]:
    """Change points (``lapse.analyze.changes``)."""
    return await _run(request, "changes", functools.partial(
        analyze.changes, store, event=event or None), selected)


@router.get("/drivers", response_model=models.AnalysisOut, responses=ERRORS,
            summary="Drivers of latency",
            description="`lapse analyze drivers`: a gradient-boosting model of the event's "
            "duration from its attributes and context, with held-out accuracy, the importance "
            "of each feature and its effect in words.")
async def get_drivers(*, request: Request, store: Store, event: Event, selected: Filtered,
                      predict: Predict = None) -> dict[str, Any]:
    """What drives the event's duration (``lapse.analyze.drivers``), and optionally an
    estimate for given inputs (``Drivers.predict``)."""
    inputs = parse_inputs([predict]) if predict and predict.strip() else None
    return await _run(request, "drivers", functools.partial(analyze.drivers, event, store),
                      selected, inputs)


@router.get("/slow", response_model=models.AnalysisOut, responses=ERRORS,
            summary="Rules of slow calls",
            description="`lapse analyze slow`: IF ... THEN slow rules for the calls slower "
            "than the SLO, with held-out precision and recall and exemplar slow calls.")
async def get_slow(
    *, request: Request, store: Store, event: Event,
    slo: Annotated[str, Query(description="a call is slow above this duration",
                              examples=["100ms"])],
    selected: Filtered,
) -> dict[str, Any]:
    """Which calls are slow (``lapse.analyze.slow``)."""
    return await _run(request, "slow", functools.partial(analyze.slow, event, slo, store),
                      selected)


@router.get("/outliers", response_model=models.AnalysisOut, responses=ERRORS,
            summary="Outliers",
            description="`lapse analyze outliers`: calls outside Tukey's fences (1.5 hinge "
            "spreads from the hinges, as R's fivenum), per event, with their attributes.")
async def get_outliers(*, request: Request, store: Store, selected: Filtered,
                       event: OptionalEvent = None) -> dict[str, Any]:
    """Outlier calls (``lapse.analyze.outliers``)."""
    return await _run(request, "outliers", functools.partial(
        analyze.outliers, store, event=event or None), selected)


@router.get("/capacity", response_model=models.AnalysisOut, responses=ERRORS,
            summary="Capacity",
            description="`lapse analyze capacity`: calls/s one worker sustains within the SLO, "
            "workers needed for a rate, and an auto-scale rule, from an M/G/c queue model.")
async def get_capacity(
    *, request: Request, store: Store, event: Event,
    slo: Annotated[str, Query(description="the latency objective: a percentile under a "
                              "duration", examples=["p99<200ms"])],
    selected: Filtered,
    rate: Annotated[float | None, Query(
        gt=0, description="calls/s to size the workers for (default: the measured rate)")
    ] = None,
) -> dict[str, Any]:
    """How many calls/s within the SLO (``lapse.analyze.capacity``)."""
    return await _run(request, "capacity", functools.partial(
        analyze.capacity, event, slo, store, rate=rate), selected)


@router.get("/{analysis}", include_in_schema=False)
def unknown(analysis: str) -> None:
    """Any other name: 404 naming the analyses there are (instead of a bare Not Found)."""
    raise HTTPException(404, f"no analysis {analysis!r}; there are {', '.join(ANALYSES)}")
