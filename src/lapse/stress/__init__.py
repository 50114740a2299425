"""``lapse stress``: load and stress tests of an HTTP endpoint or a Python callable.

::

    from lapse import stress

    plan = stress.plan("http://127.0.0.1:8000/predict", rate="200/s", duration="30s")
    result = stress.run(plan, slo="p99<200ms")      # the JSON document of --format json
    result["latency"]["corrected"]["p99"]

Open loop (``rate``): requests are due at fixed or Poisson-distributed times
whatever the target does, and latency is measured from those intended times
(coordinated omission corrected; the uncorrected figure is kept beside it).
Closed loop (``users``): each user sends, waits for the answer, thinks, and
sends again. ``ramp`` runs open-loop steps of rising rate and, with an SLO,
finds the knee: the highest rate that still meets it.

Modules: ``schedule`` (rates, ramps, SLOs, arrival times), ``plan`` (what to
run, checked), ``worker``, ``http`` (with ``wire``, the HTTP/1.1 client) and
``callables`` (the generator processes), ``runner`` (the coordinator, which
stores every request), ``summary`` (the figures) and ``html`` (the report).
"""

from __future__ import annotations

import os
from typing import Any

from lapse._errors import ConfigError, TargetError
from lapse.stress.plan import (
    DEFAULT_CONNECTIONS,
    DEFAULT_DURATION_NS,
    DEFAULT_REQUESTS,
    DEFAULT_STEP_NS,
    DEFAULT_TIMEOUT_NS,
    MAX_WORKERS,
    Plan,
    Step,
    callable_target,
    http_target,
)
from lapse.stress.runner import ProgressCallback
from lapse.stress.schedule import (
    ARRIVALS,
    parse_positive_duration_ns,
    parse_ramp,
    parse_rate,
    parse_slo,
)

__all__ = ["Plan", "TargetError", "plan", "run"]


def _duration(value: object, setting: str) -> int:
    return parse_positive_duration_ns(value, setting)


def _count(value: object, setting: str, most: int | None = None) -> int:
    try:
        number = int(str(value).replace("_", "")) if not isinstance(value, int) else value
    except ValueError:
        number = 0
    if isinstance(value, bool) or number <= 0 or (most is not None and number > most):
        bound = f" and at most {most}" if most is not None else ""
        raise ConfigError(f"{setting}: {value!r} is not valid; expected a whole number greater "
                          f"than zero{bound}.")
    return number


def plan(
    target: str,
    *,
    rate: object = None,
    users: object = None,
    ramp: str | None = None,
    arrivals: str = "constant",
    duration: object = None,
    requests: object = None,
    warmup: object = None,
    think: object = None,
    workers: object = None,
    connections: object = None,
    threads: object = None,
    timeout: object = None,
    method: str = "GET",
    headers: tuple[tuple[str, str], ...] = (),
    body: bytes | None = None,
    payload: str | None = None,
    allow_remote: tuple[str, ...] = (),
    name: str | None = None,
    seed: int | None = None,
) -> Plan:
    """A checked plan from user words (``rate="200/s"``, ``duration="30s"``, ...).

    Exactly one of ``rate`` (open loop), ``users`` (closed loop) or ``ramp``
    (open-loop steps, ``"50:1000:50"``) says how much load. Durations take
    ``500ms``, ``10s``, ``2m``. Without ``duration`` a run lasts 10 s (5 s per
    ramp step); without ``requests`` a step stops at 1,000,000 requests.
    """
    given = [n for n, v in (("rate", rate), ("users", users), ("ramp", ramp)) if v is not None]
    if len(given) != 1:
        raise ConfigError(
            "say how much load, in one way: --rate 200 (open loop, requests/s), --users 16 "
            "(closed loop) or --ramp 50:1000:50 (open-loop steps)"
            + (f"; got {' and '.join(given)}." if given else ".")
        )
    if arrivals not in ARRIVALS:
        raise ConfigError(f"arrivals: {arrivals!r} is not valid; expected one of "
                          f"{', '.join(ARRIVALS)}.")
    step_ns = (_duration(duration, "duration") if duration is not None
               else DEFAULT_STEP_NS if ramp is not None else DEFAULT_DURATION_NS)
    warmup_ns = 0 if warmup is None else parse_positive_duration_ns(warmup, "warmup")
    if warmup_ns >= step_ns:
        raise ConfigError(f"warmup: {warmup!r} is not shorter than the duration; nothing would "
                          "be measured.")
    if ramp is not None:
        steps = tuple(Step(i, step_ns, rate=r, warmup_ns=warmup_ns)
                      for i, r in enumerate(parse_ramp(ramp)))
    elif rate is not None:
        steps = (Step(0, step_ns, rate=parse_rate(rate), warmup_ns=warmup_ns),)
    else:
        steps = (Step(0, step_ns, users=_count(users, "users", 100_000), warmup_ns=warmup_ns),)
    if target.startswith(("http://", "https://")) or "://" in target:
        made = http_target(target, method=method, headers=headers, body=body, payload=payload,
                           allow_remote=allow_remote, name=name)
    else:
        made = callable_target(target, payload=payload, name=name)
    cores = os.cpu_count() or 1
    count = _count(workers, "workers", MAX_WORKERS) if workers is not None else min(cores,
                                                                                     MAX_WORKERS)
    if steps[0].users is not None:
        count = min(count, steps[0].users)
    return Plan(
        target=made,
        steps=steps,
        arrivals=arrivals,
        requests=_count(requests, "requests") if requests is not None else DEFAULT_REQUESTS,
        workers=count,
        connections=(_count(connections, "connections", 100_000) if connections is not None
                     else DEFAULT_CONNECTIONS),
        threads=_count(threads, "threads", 1000) if threads is not None else 1,
        think_ns=0 if think is None else parse_positive_duration_ns(think, "think"),
        timeout_ns=(_duration(timeout, "timeout") if timeout is not None
                    else DEFAULT_TIMEOUT_NS),
        seed=seed,
    )


def run(
    plan: Plan,
    *,
    slo: str | None = None,
    dir: str | os.PathLike[str] | None = None,  # noqa: A002 - matches configure(dir=)
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Run a plan, store every request, and return the summary document (``lapse.stress/1``).

    ``dir`` is the store (default: as configured, else ``LAPSE_DIR``, else
    ``./.lapse``). With ``slo`` (``"p99<200ms,errors<1%"``) a ramp stops at
    the first step that misses it, and the document says which rate was the knee.
    """
    from lapse._control import configure
    from lapse._recorder import RECORDER
    from lapse.store._read import resolve_dir
    from lapse.stress import summary
    from lapse.stress.runner import Coordinator, StepData

    objectives = parse_slo(slo) if slo else []
    if dir is not None or RECORDER.settings is None:
        configure(dir=dir if dir is not None else resolve_dir(None))
    store = str(resolve_dir(None).absolute())

    def stop_when(data: StepData, errors: dict[int, tuple[str, str]]) -> bool:
        if not objectives or len(plan.steps) == 1:
            return False
        return not summary.meets(objectives, plan, data, errors)

    outcome = Coordinator(plan, progress=progress, stop_when=stop_when).run()
    document = summary.build(outcome, objectives, store)
    if outcome.recording is not None:
        for data, step in zip(outcome.steps, document["steps"], strict=True):
            end = data.stopped_ns or data.start_ns + data.step.duration_ns
            outcome.recording.add_summary(data.start_ns, max(0, end - data.start_ns),
                                          summary.summary_attrs(step, document))
        outcome.recording.flush()
    return document
