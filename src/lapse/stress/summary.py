"""The summary of a stress run: the JSON document of ``--format json`` and the terminal tables.

Latencies are in seconds. *Corrected* latency runs from a request's intended
start (open loop) to the last byte of its response; *uncorrected* from when it
was actually sent. In a closed loop there is no intended time, and both are
the time from sending to response (``corrected`` is then null in JSON).
Percentiles are exact (linear interpolation between order statistics, as
``lapse report``) and cover successful requests; failed ones are counted by
error type. Warm-up requests are neither summarised nor stored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lapse.analysis.fivenum import summarize
from lapse.stress.plan import CLOSED, OPEN, Plan
from lapse.stress.runner import LATE_NS, Outcome, StepData
from lapse.stress.schedule import Objective

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

JSON_SCHEMA = "lapse.stress/1"

FIELDS: tuple[tuple[str, str], ...] = (
    ("schema", "`lapse.stress/1`"),
    ("run_id", "the stress run: the coordinator's run id, `kind` stress (null if not stored)"),
    ("stored", "whether the requests were stored (false when LAPSE_LEVEL is off)"),
    ("store", "the store directory"),
    ("target", "the URL or `module:function`"),
    ("name", "the stored event name (`GET /path` or the target)"),
    ("kind", "`http` or `callable`"),
    ("mode", "`open` (a rate) or `closed` (users)"),
    ("arrivals", "`constant` or `poisson` (open loop; else null)"),
    ("rate", "requests/s asked (a single-rate run; else null)"),
    ("ramp", "the rates of the ramp's steps (else null)"),
    ("users", "closed-loop users (else null)"),
    ("think", "closed-loop think time, s (else null)"),
    ("workers", "generator processes"),
    ("threads", "calls each generator process runs at once (callables; null for HTTP)"),
    ("connections", "most HTTP connections open at once (open loop; null for callables)"),
    ("duration", "seconds per step"),
    ("warmup", "seconds at the start of each step not measured nor stored"),
    ("interrupted", "true when stopped by Ctrl-C or SIGTERM (what was measured is kept)"),
    ("requests", "counts: `total` measured, `ok`, `errors`, `late` (left 1 ms or more after "
     "their intended time), `dropped` (due but never sent), `warmup`"),
    ("achieved_rate", "requests answered per second during the measured time (a backlog "
     "answered after a step's end does not count)"),
    ("throughput", "successful requests answered per second during the measured time"),
    ("latency", "`corrected` (from the intended time; null in a closed loop) and "
     "`uncorrected` (from sending): each the latency statistics below, or null"),
    ("lag", "how late requests left: `p50`, `p90`, `p99`, `max` in s (open loop; else null)"),
    ("errors", "by type, most frequent first: `type`, `count`, `example` (first message, "
     "with the traceback for a callable)"),
    ("steps", "one object per step, fields below"),
    ("slo", "with --slo: `objectives`, `met`, `knee` (ramp: highest rate meeting them), "
     "`first_failing_step`; else null"),
    ("timeline", "per second (by intended time): `second`, `step`, `rate`, `errors`, "
     "`p50`, `p99`, `uncorrected_p50`, `uncorrected_p99`"),
    ("notes", "what went wrong on the way (a generator process that failed)"),
)
"""Every field of the JSON document, as docs/testing.md documents it."""

STEP_FIELDS: tuple[tuple[str, str], ...] = (
    ("index", "0, 1, ..."),
    ("mode", "`open` or `closed`"),
    ("target_rate", "requests/s asked (open loop)"),
    ("users", "users (closed loop)"),
    ("duration", "seconds the step was to last"),
    ("measured_seconds", "the measured window: after warm-up, to the end (or the stop)"),
    ("requests", "measured requests"),
    ("ok", "successful ones"),
    ("errors", "failed ones"),
    ("error_types", "failed ones by type"),
    ("late", "left 1 ms or more after their intended time"),
    ("dropped", "due but never sent"),
    ("warmup_requests", "sent during the warm-up"),
    ("achieved_rate", "requests answered per second in the window"),
    ("throughput", "successful requests answered per second in the window"),
    ("latency", "`corrected` and `uncorrected` statistics"),
    ("lag", "as above, for the step"),
    ("interrupted", "whether the step was cut short"),
    ("slo", "with --slo: per objective `objective`, `value`, `met`"),
    ("slo_met", "with --slo: whether the step met every objective"),
)
"""The fields of each step."""
PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)
LATENCY_FIELDS = ("count", "mean", "min", "lower_hinge", "median", "upper_hinge", "max",
                  "p50", "p90", "p95", "p99", "p99.9", "outliers")


def latency(seconds: npt.NDArray[np.float64]) -> dict[str, Any] | None:
    """Count, mean, exact five numbers, percentiles and Tukey outliers of latencies (s)."""
    if not seconds.size:
        return None
    data = seconds.astype("float64", copy=True)
    mean = float(data.mean())
    order = summarize(data, PERCENTILES)
    stats: dict[str, Any] = {
        "count": order.n, "mean": mean, "min": order.minimum, "lower_hinge": order.lower_hinge,
        "median": order.median, "upper_hinge": order.upper_hinge, "max": order.maximum,
    }
    for p, value in zip(PERCENTILES, order.percentiles, strict=True):
        stats[f"p{p:g}"] = value
    stats["outliers"] = order.outliers
    return stats


def lag(seconds: npt.NDArray[np.float64]) -> dict[str, float] | None:
    """How late requests left after their intended times (open loop): p50, p90, p99, max (s).

    Waiting for a free connection (or caller) is in it, and so is the generator's own
    delay: on a saturated machine, its wake-ups come late. Corrected latency includes lag.
    """
    import numpy as np

    if not seconds.size:
        return None
    p50, p90, p99 = np.percentile(seconds, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99),
            "max": float(seconds.max())}


def _window(data: StepData, plan_requests: int, total: int,
            rows: npt.NDArray[np.int64]) -> tuple[int, int]:
    """The measured window of a step (ns): after warm-up, until its planned end or its stop."""
    start = data.start_ns + data.step.warmup_ns
    end = data.start_ns + data.step.duration_ns
    if data.stopped_ns is not None:
        end = min(end, data.stopped_ns)
    if total >= plan_requests and rows.size:  # the request bound ended the step early
        end = min(end, int(rows[:, 1].max()))
    return start, max(end, start + 1)


def step_summary(outcome: Outcome, data: StepData) -> dict[str, Any]:
    """The figures of one step."""
    import numpy as np

    plan = outcome.plan
    table = data.table()
    measured = table[table[:, 4] >= 0]
    start, end = _window(data, plan.requests, len(table), measured)
    ok = measured[measured[:, 3] == 0]
    failed = measured[measured[:, 3] != 0]
    corrected = (ok[:, 2] - ok[:, 0]) / 1e9
    uncorrected = (ok[:, 2] - ok[:, 1]) / 1e9
    step = data.step
    counts = np.bincount(failed[:, 3]) if failed.size else np.zeros(1, dtype=np.int64)
    errors = {outcome.errors[int(c)][0]: int(n) for c, n in enumerate(counts) if n and c}
    window = (end - start) / 1e9
    done = measured[(measured[:, 2] >= start) & (measured[:, 2] < end)]
    done_ok = int(np.count_nonzero(done[:, 3] == 0))
    summary: dict[str, Any] = {
        "index": step.index,
        "mode": step.mode,
        "target_rate": step.rate,
        "users": step.users,
        "duration": step.duration_ns / 1e9,
        "measured_seconds": window,
        "requests": len(measured),
        "ok": len(ok),
        "errors": len(failed),
        "error_types": errors,
        "late": int(np.count_nonzero(measured[:, 1] - measured[:, 0] >= LATE_NS))
        if step.mode == OPEN else 0,
        "dropped": data.dropped,
        "warmup_requests": int(len(table) - len(measured)),
        "achieved_rate": len(done) / window if window > 0 else 0.0,
        "throughput": done_ok / window if window > 0 else 0.0,
        "latency": {
            "corrected": latency(corrected) if step.mode == OPEN else None,
            "uncorrected": latency(uncorrected),
        },
        "lag": lag((measured[:, 1] - measured[:, 0]) / 1e9) if step.mode == OPEN else None,
        "interrupted": data.stopped_ns is not None,
    }
    return summary


def timeline(outcome: Outcome, bucket_s: float = 1.0) -> list[dict[str, Any]]:
    """Per-second buckets (by intended start): requests/s, errors and p50/p99 latencies."""
    import numpy as np

    if not outcome.steps:
        return []
    origin = outcome.steps[0].start_ns
    points = []
    for data in outcome.steps:
        table = data.table()
        measured = table[table[:, 4] >= 0]
        if not measured.size:
            continue
        bucket = ((measured[:, 0] - origin) // int(bucket_s * 1e9)).astype(np.int64)
        for b in np.unique(bucket):
            rows = measured[bucket == b]
            ok = rows[rows[:, 3] == 0]
            corrected = (ok[:, 2] - ok[:, 0]) / 1e9
            uncorrected = (ok[:, 2] - ok[:, 1]) / 1e9
            points.append({
                "second": float(b * bucket_s), "step": data.step.index,
                "rate": len(rows) / bucket_s, "errors": int(len(rows) - len(ok)),
                "p50": _pct(corrected, 50), "p99": _pct(corrected, 99),
                "uncorrected_p50": _pct(uncorrected, 50), "uncorrected_p99": _pct(uncorrected, 99),
            })
    return points


def _pct(values: npt.NDArray[np.float64], q: float) -> float | None:
    import numpy as np

    return float(np.percentile(values, q)) if values.size else None


def evaluate(objectives: list[Objective], step: dict[str, Any]) -> list[dict[str, Any]]:
    """Each objective's measured value for a step and whether it is met.

    Latency objectives use the corrected latency (open loop), the measured one
    in a closed loop; a step with dropped requests (never sent) fails them all.
    """
    stats = step["latency"]["corrected"] or step["latency"]["uncorrected"]
    results = []
    for objective in objectives:
        value: float | None
        if objective.metric == "errors":
            value = step["errors"] / step["requests"] if step["requests"] else None
        elif stats is None:
            value = None
        elif objective.metric in ("mean", "max"):
            value = stats[objective.metric]
        else:
            value = _percentile_of(step, objective.percentile or 0.0, stats)
        met = objective.met_by(value) and not step["dropped"]
        results.append({"objective": objective.text, "value": value, "met": met})
    return results


def _percentile_of(step: dict[str, Any], q: float, stats: dict[str, Any]) -> float | None:
    key = f"p{q:g}"
    if key in stats:
        return float(stats[key])
    values = step.get("_latencies")
    return None if values is None else _pct(values, q)


def _with_latencies(data: StepData, summary: dict[str, Any]) -> None:
    """Keep the raw latencies beside a step summary, for objectives at unusual percentiles."""
    table = data.table()
    ok = table[(table[:, 4] >= 0) & (table[:, 3] == 0)]
    summary["_latencies"] = (ok[:, 2] - (ok[:, 0] if data.step.mode == OPEN else ok[:, 1])) / 1e9


def meets(objectives: list[Objective], plan: Plan, data: StepData,
          errors: dict[int, tuple[str, str]]) -> bool:
    """Whether a finished step met every objective (a ramp stops at the first that did not)."""
    outcome = Outcome(plan, [data], errors, None, False, False, [], 0)
    step = step_summary(outcome, data)
    _with_latencies(data, step)
    return all(result["met"] for result in evaluate(objectives, step))


def build(outcome: Outcome, objectives: list[Objective] | None = None,
          store: str | None = None) -> dict[str, Any]:
    """The JSON document of a stress run (see docs/testing.md)."""
    import numpy as np

    plan = outcome.plan
    objectives = objectives or []
    steps = []
    for data in outcome.steps:
        summary = step_summary(outcome, data)
        if objectives:
            _with_latencies(data, summary)
            summary["slo"] = evaluate(objectives, summary)
            summary["slo_met"] = all(r["met"] for r in summary["slo"])
            del summary["_latencies"]
        steps.append(summary)
    tables = [d.table() for d in outcome.steps]
    table = np.concatenate(tables) if tables else np.empty((0, 5), dtype=np.int64)
    measured = table[table[:, 4] >= 0]
    ok = measured[measured[:, 3] == 0]
    mode = plan.mode
    window = sum(s["measured_seconds"] for s in steps)
    errors: list[dict[str, Any]] = []
    for code, (name, message) in sorted(outcome.errors.items()):
        count = int(np.count_nonzero(measured[:, 3] == code))
        if count:
            errors.append({"type": name, "count": count, "example": message})
    errors.sort(key=lambda e: -e["count"])
    slo: dict[str, Any] | None = None
    if objectives:
        passing = []
        for s in steps:
            if not s["slo_met"]:
                break
            passing.append(s)
        slo = {
            "objectives": [o.text for o in objectives],
            "met": bool(steps) and all(s["slo_met"] for s in steps),
            "knee": passing[-1]["target_rate"] if passing and len(plan.steps) > 1 else None,
            "first_failing_step": next((s["index"] for s in steps if not s["slo_met"]), None),
        }
    first = plan.steps[0]
    return {
        "schema": JSON_SCHEMA,
        "run_id": outcome.run_id,
        "stored": outcome.stored,
        "store": store,
        "target": plan.target.spec,
        "name": plan.target.name,
        "kind": plan.target.kind,
        "mode": mode,
        "arrivals": plan.arrivals if mode == OPEN else None,
        "rate": first.rate if len(plan.steps) == 1 else None,
        "ramp": [s.rate for s in plan.steps] if len(plan.steps) > 1 else None,
        "users": first.users,
        "think": plan.think_ns / 1e9 if mode == CLOSED else None,
        "workers": plan.workers,
        "threads": plan.threads if plan.target.kind != "http" else None,
        "connections": plan.connections if plan.target.kind == "http" else None,
        "duration": first.duration_ns / 1e9,
        "warmup": first.warmup_ns / 1e9,
        "interrupted": outcome.interrupted,
        "requests": {
            "total": len(measured),
            "ok": len(ok),
            "errors": int(len(measured) - len(ok)),
            "late": sum(s["late"] for s in steps),
            "dropped": sum(s["dropped"] for s in steps),
            "warmup": sum(s["warmup_requests"] for s in steps),
        },
        "achieved_rate": (sum(s["achieved_rate"] * s["measured_seconds"] for s in steps)
                          / window if window > 0 else 0.0),
        "throughput": (sum(s["throughput"] * s["measured_seconds"] for s in steps)
                       / window if window > 0 else 0.0),
        "latency": {
            "corrected": latency((ok[:, 2] - ok[:, 0]) / 1e9) if mode == OPEN else None,
            "uncorrected": latency((ok[:, 2] - ok[:, 1]) / 1e9),
        },
        "lag": lag((measured[:, 1] - measured[:, 0]) / 1e9) if mode == OPEN else None,
        "errors": errors,
        "steps": steps,
        "slo": slo,
        "timeline": timeline(outcome),
        "notes": outcome.notes,
    }


def summary_attrs(step: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    """The attributes of a step's stored ``stress`` event: parameters and headline figures."""
    attrs: dict[str, Any] = {
        "target": document["target"], "mode": step["mode"], "step": step["index"],
        "target_rate": step["target_rate"], "users": step["users"],
        "workers": document["workers"], "threads": document["threads"],
        "arrivals": document["arrivals"],
        "requests": step["requests"], "errors": step["errors"], "late": step["late"],
        "dropped": step["dropped"], "achieved_rate": round(step["achieved_rate"], 3),
    }
    for kind in ("corrected", "uncorrected"):
        stats = step["latency"][kind]
        if stats:
            for key in ("median", "p90", "p99", "p99.9", "max"):
                attrs[f"{kind}_{key}"] = stats[key]
    if "slo_met" in step:
        attrs["slo_met"] = step["slo_met"]
    return attrs


# -- terminal -------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    from lapse.reporting import human_seconds

    return human_seconds(value)


def render(document: dict[str, Any]) -> list[Any]:
    """Rich renderables: the headline, latency table, steps, errors and objectives."""
    parts = [_headline(document), _latency_table(document)]
    if len(document["steps"]) > 1:
        parts.append(_steps_table(document))
    if document["errors"]:
        parts.append(_errors_table(document))
    if document["slo"] is not None:
        parts.append(_slo_line(document))
    parts.append(_tail(document))
    return parts


def _headline(document: dict[str, Any]) -> Any:
    from rich.text import Text

    requests = document["requests"]
    if document["rate"]:
        load = f"{document['rate']:g} req/s ({document['arrivals']} arrivals)"
    elif document["ramp"]:
        load = f"ramp {document['ramp'][0]:g}..{document['ramp'][-1]:g} req/s"
    else:
        load = f"{document['users']} users, think {document['think']:g} s"
    head = Text()
    head.append(f"lapse stress {document['target']}", style="bold")
    head.append(f"  {document['mode']} loop, {load}, {document['workers']} generator "
                "process(es)\n")
    head.append(f"{requests['total']:,} requests ({requests['errors']:,} errors, "
                f"{requests['late']:,} late, {requests['dropped']:,} dropped), achieved "
                f"{document['achieved_rate']:,.1f} req/s")
    if document["interrupted"]:
        head.append("  (interrupted: what was measured is kept)", style="yellow")
    lag = document["lag"]
    if lag:
        head.append(f"\nrequests left after their intended times by p50 {_ms(lag['p50'])}, "
                    f"p99 {_ms(lag['p99'])}, max {_ms(lag['max'])}")
        if lag["p99"] >= LATE_NS / 1e9:
            head.append(" (waiting for a free connection or caller, or a busy machine: "
                        "corrected latency includes it)", style="yellow")
    return head


def _latency_table(document: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title="latency of successful requests", title_justify="left")
    keys = ("min", "lower_hinge", "median", "upper_hinge", "max", "p90", "p95", "p99",
            "p99.9", "mean")
    table.add_column("")
    for key in keys:
        table.add_column(key.replace("_", " "), justify="right")
    labels = {"corrected": "corrected (from intended start)",
              "uncorrected": "uncorrected (from send)" if document["mode"] == OPEN
              else "measured (send to response)"}
    for kind, label in labels.items():
        stats = document["latency"][kind]
        if stats:
            table.add_row(label, *(_ms(stats[k]) for k in keys))
    return table


def _steps_table(document: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title="throughput and latency per step", title_justify="left")
    for name in ("target req/s", "achieved req/s", "requests", "errors", "late", "dropped",
                 "p50", "p99", "p99 uncorrected", "SLO"):
        table.add_column(name, justify="right")
    for step in document["steps"]:
        corrected = step["latency"]["corrected"] or {}
        uncorrected = step["latency"]["uncorrected"] or {}
        met = step.get("slo_met")
        table.add_row(f"{step['target_rate']:g}", f"{step['achieved_rate']:,.1f}",
                      f"{step['requests']:,}", f"{step['errors']:,}", f"{step['late']:,}",
                      f"{step['dropped']:,}", _ms(corrected.get("p50")),
                      _ms(corrected.get("p99")), _ms(uncorrected.get("p99")),
                      "—" if met is None else ("met" if met else "missed"),
                      style=None if met is not False else "red")
    return table


def _errors_table(document: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title="errors by type", title_justify="left")
    table.add_column("type")
    table.add_column("count", justify="right")
    table.add_column("first message")
    for error in document["errors"]:
        example = error["example"].strip().splitlines()
        table.add_row(error["type"], f"{error['count']:,}", example[-1] if example else "")
    return table


def _slo_line(document: dict[str, Any]) -> Any:
    from rich.text import Text

    slo = document["slo"]
    line = Text()
    objectives = ", ".join(slo["objectives"])
    if len(document["steps"]) > 1:
        if slo["knee"] is not None:
            line.append(f"knee: {slo['knee']:g} req/s is the highest rate meeting {objectives}",
                        style="bold green")
        else:
            line.append(f"no step met {objectives}", style="bold red")
        return line
    for result in document["steps"][0]["slo"] if document["steps"] else []:
        value = result["value"]
        if value is None:
            shown = "—"
        elif result["objective"].lower().startswith("errors"):
            shown = f"{value:.2%}"
        else:
            shown = _ms(value)
        line.append(f"{result['objective']}: {shown} {'met' if result['met'] else 'MISSED'}  ",
                    style="green" if result["met"] else "bold red")
    return line


def _tail(document: dict[str, Any]) -> Any:
    from rich.text import Text

    tail = Text(style="dim")
    if document["run_id"]:
        tail.append(f"stress run {document['run_id']} stored in {document['store']}: "
                    f"lapse report --run {document['run_id']}")
    else:
        tail.append("not stored (LAPSE_LEVEL is off)")
    for note in document["notes"]:
        tail.append(f"\nnote: {note}")
    return tail
