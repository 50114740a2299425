"""The stress report: one self-contained HTML file with charts, or Markdown for CI.

Charts (Plotly, inlined so the file opens offline): throughput against
latency (one point per ramp step, or per second of a single-rate run),
latency over time (corrected and uncorrected p50 and p99), and errors by type.
"""

from __future__ import annotations

from html import escape
from typing import Any

from lapse._errors import LapseError
from lapse.stress.summary import LATENCY_FIELDS

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 1rem 0; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.charts { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 1rem; }
.note { color: #666; }
.missed { color: #b00; font-weight: bold; }
"""


def _ms(value: float | None) -> str:
    from lapse.reporting import human_seconds

    return human_seconds(value)


def _rows(document: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["latency", *LATENCY_FIELDS[1:-1]]
    rows = []
    for kind in ("corrected", "uncorrected"):
        stats = document["latency"][kind]
        if stats:
            rows.append([kind, *(_ms(stats[k]) for k in LATENCY_FIELDS[1:-1])])
    return header, rows


def _headline(document: dict[str, Any]) -> str:
    requests = document["requests"]
    return (f"{document['mode']} loop against {document['target']}: {requests['total']:,} "
            f"requests, {requests['errors']:,} errors, {requests['late']:,} late, "
            f"{requests['dropped']:,} dropped; achieved {document['achieved_rate']:,.1f} req/s"
            f"{' (interrupted)' if document['interrupted'] else ''}; stress run "
            f"{document['run_id'] or '(not stored)'}.")


def markdown(document: dict[str, Any]) -> str:
    """The summary as Markdown (latency table, steps, errors, objectives)."""
    header, rows = _rows(document)
    lines = [f"# lapse stress: {document['name']}", "", _headline(document), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    if len(document["steps"]) > 1:
        lines += ["", "| target req/s | achieved req/s | p50 | p99 | p99 uncorrected | errors "
                  "| SLO |", "|---|---|---|---|---|---|---|"]
        for step in document["steps"]:
            corrected = step["latency"]["corrected"] or {}
            uncorrected = step["latency"]["uncorrected"] or {}
            met = step.get("slo_met")
            lines.append(f"| {step['target_rate']:g} | {step['achieved_rate']:,.1f} | "
                         f"{_ms(corrected.get('p50'))} | {_ms(corrected.get('p99'))} | "
                         f"{_ms(uncorrected.get('p99'))} | {step['errors']:,} | "
                         f"{'—' if met is None else 'met' if met else 'missed'} |")
    if document["errors"]:
        lines += ["", "| error | count |", "|---|---|"]
        lines += [f"| {e['type']} | {e['count']:,} |" for e in document["errors"]]
    slo = document["slo"]
    if slo:
        knee = f"; knee {slo['knee']:g} req/s" if slo["knee"] is not None else ""
        lines += ["", f"Objectives {', '.join(slo['objectives'])}: "
                  f"{'met' if slo['met'] else 'missed'}{knee}."]
    return "\n".join(lines) + "\n"


def render(document: dict[str, Any]) -> str:
    """The whole report as one HTML document."""
    try:
        import plotly.graph_objects as go
    except ImportError:
        raise LapseError("the HTML report draws its charts with plotly, which is not "
                         "installed: pip install 'lapse[html]'") from None
    header, rows = _rows(document)
    table = ("<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>"
             + "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>"
                       for row in rows) + "</table>")
    layout = {"height": 360, "margin": {"l": 60, "r": 20, "t": 40, "b": 50}}
    figures = []
    steps = document["steps"]
    if len(steps) > 1:
        points = [(s["achieved_rate"], s["latency"]["corrected"], s["latency"]["uncorrected"])
                  for s in steps]
        title = "throughput vs latency (one point per step)"
    else:
        points = [(p["rate"], {"p50": p["p50"], "p99": p["p99"]},
                   {"p50": p["uncorrected_p50"], "p99": p["uncorrected_p99"]})
                  for p in document["timeline"]]
        title = "throughput vs latency (one point per second)"
    curve = go.Figure(layout={**layout, "title": title,
                              "xaxis": {"title": "requests/s"}, "yaxis": {"title": "ms"}})
    for kind, index in (("corrected", 1), ("uncorrected", 2)):
        for q in ("p50", "p99"):
            xs = [p[0] for p in points if p[index] and p[index].get(q) is not None]
            ys = [p[index][q] * 1e3 for p in points if p[index] and p[index].get(q) is not None]
            if ys:
                curve.add_trace(go.Scatter(x=xs, y=ys, name=f"{q} {kind}",
                                           mode="lines+markers" if len(steps) > 1 else "markers"))
    figures.append(curve)
    over_time = go.Figure(layout={**layout, "title": "latency over time (ms)",
                                  "xaxis": {"title": "seconds since start"}})
    timeline = document["timeline"]
    for key, label in (("p50", "p50 corrected"), ("p99", "p99 corrected"),
                       ("uncorrected_p50", "p50 uncorrected"),
                       ("uncorrected_p99", "p99 uncorrected")):
        xs = [p["second"] for p in timeline if p[key] is not None]
        ys = [p[key] * 1e3 for p in timeline if p[key] is not None]
        if ys and not (key.startswith("p") and document["mode"] == "closed"):
            over_time.add_trace(go.Scatter(x=xs, y=ys, name=label, mode="lines+markers"))
    figures.append(over_time)
    rate = go.Figure(layout={**layout, "title": "requests/s and errors per second",
                             "xaxis": {"title": "seconds since start"}})
    rate.add_trace(go.Bar(x=[p["second"] for p in timeline], y=[p["rate"] for p in timeline],
                          name="requests/s"))
    rate.add_trace(go.Scatter(x=[p["second"] for p in timeline],
                              y=[p["errors"] for p in timeline], name="errors",
                              mode="lines+markers"))
    figures.append(rate)
    if document["errors"]:
        errors = go.Figure(go.Bar(x=[e["type"] for e in document["errors"]],
                                  y=[e["count"] for e in document["errors"]]),
                           layout={**layout, "title": "errors by type"})
        figures.append(errors)
    charts = "".join(
        figure.to_html(full_html=False, include_plotlyjs=index == 0, div_id=f"chart-{index}",
                       config={"displaylogo": False, "responsive": True})
        for index, figure in enumerate(figures))
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>lapse stress: {escape(document['name'])}</title><style>{STYLE}</style></head>"
        f"<body><h1>lapse stress: {escape(document['name'])}</h1>"
        f"<p class='note'>{escape(_headline(document))} Corrected latency runs from each "
        "request's intended start (coordinated omission corrected); uncorrected from when it "
        f"was sent. Hinges are Tukey's (R fivenum).</p>{table}"
        f"<div class='charts'>{charts}</div>"
        f"<pre class='note'>{escape(markdown(document))}</pre></body></html>"
    )
