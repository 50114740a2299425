// Trace page: one call and the calls nested in it, as a waterfall.
"use strict";

const { el } = lapse;
const [runId, traceId] = location.pathname.split("/").slice(2).map(decodeURIComponent);

function drawWaterfall(trace) {
  const total = trace.duration || 1e-9;
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((f) => lapse.duration(f * trace.duration));
  const head = el("div", { class: "row head" }, el("div", { class: "name" }, "call"),
    el("div", { class: "lane scale", style: { display: "flex", justifyContent: "space-between",
      background: "none" } }, ticks.map((t) => el("span", {}, t))),
    el("div", { class: "dur" }, "duration"));
  const rows = trace.spans.map((span) => {
    const left = (100 * span.offset) / total;
    const width = Math.max((100 * span.duration) / total, 0.2);
    const tip = `${span.name}: ${lapse.duration(span.duration)}, starts at +` +
      `${lapse.duration(span.offset)}${span.error_type ? `, raised ${span.error_type}` : ""}`;
    return el("div", { class: "row span", title: tip },
      el("div", { class: "name", style: { paddingLeft: `${0.5 + 1.2 * span.depth}rem` } },
        span.depth ? "└ " : "", span.name),
      el("div", { class: "lane" }, el("div", {
        class: span.status === "error" ? "bar error" : "bar",
        style: { left: `${Math.min(left, 99.8)}%`, width: `${Math.min(width, 100 - left)}%` },
      })),
      el("div", { class: "dur" }, lapse.duration(span.duration)));
  });
  lapse.fill("waterfall", head, rows);
}

function drawTable(trace) {
  const attrs = (a) => (a ? Object.entries(a).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(" ") : "");
  lapse.fill("spans", lapse.table([
    { label: "call", text: true, value: (s) => el("span", { class: "mono" },
      "  ".repeat(s.depth) + s.name) },
    { label: "starts at", value: (s) => `+${lapse.duration(s.offset)}` },
    { label: "duration", value: (s) => lapse.duration(s.duration) },
    { label: "status", text: true, value: (s) => (s.status === "error"
      ? el("span", { class: "pill error" }, s.error_type || "error")
      : el("span", { class: "pill ok" }, s.status || "ok")) },
    { label: "caller", text: true, value: (s) => el("span", { class: "mono" }, s.caller || "—") },
    { label: "thread", text: true, value: (s) => s.thread || "—" },
    { label: "attributes", text: true, wrap: true,
      value: (s) => el("span", { class: "mono" }, attrs(s.attrs)) },
  ], trace.spans, "span-table"));
}

async function update() {
  try {
    const trace = await lapse.api(`trace/${encodeURIComponent(runId)}/${encodeURIComponent(traceId)}`);
    const root = trace.spans[0];
    const errors = trace.spans.filter((s) => s.status === "error").length;
    document.title = `lapse · trace of ${root.name}`;
    lapse.fill("title", "Trace of ", el("a", { href: lapse.eventHref(root.name) }, root.name));
    lapse.fill("cards",
      lapse.card("duration", lapse.duration(trace.duration)),
      lapse.card("calls", trace.spans.length),
      lapse.card("errors", errors, errors > 0),
      lapse.card("started", lapse.time(trace.start_ns)),
      lapse.card("run", el("a", { href: `/?run=${encodeURIComponent(trace.run_id)}`,
        class: "mono" }, trace.run_id)));
    drawWaterfall(trace);
    drawTable(trace);
    lapse.notice("");
    document.getElementById("content").hidden = false;
  } catch (error) {
    lapse.notice(error.message, error.status === 404 ? "" : "error");
  }
}

lapse.live(update);
