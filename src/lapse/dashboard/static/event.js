// Event page: one event's distribution, latency over time, breakdown and slowest calls.
"use strict";

const { params, el } = lapse;
const name = decodeURIComponent(location.pathname.slice("/event/".length));
const sinceBox = document.getElementById("since");
const byBox = document.getElementById("by");
let latest = 0; // only the newest update() draws: an older, slower answer is dropped

function setUp() {
  document.title = `lapse · ${name}`;
  document.getElementById("title").textContent = name;
  document.getElementById("overview-link").href = lapse.href("/", ["since", "by", "run"]);
  sinceBox.value = params.get("since") || "all";
  sinceBox.addEventListener("change", () => { lapse.setParam("since", sinceBox.value); update(); });
  byBox.addEventListener("change", () => { lapse.setParam("breakdown", byBox.value); update(); });
}

const filters = () => ({ name, since: sinceBox.value, run: params.getAll("run") });

async function addAttributeOptions() {
  const { keys } = await lapse.api("attributes", filters());
  const known = new Set([...byBox.options].map((o) => o.value));
  for (const key of keys) {
    if (!known.has(`attrs.${key}`)) {
      byBox.append(el("option", { value: `attrs.${key}` }, `by attribute ${key}`));
    }
  }
  const wanted = params.get("breakdown");
  if (wanted && [...byBox.options].some((o) => o.value === wanted)) byBox.value = wanted;
}

function drawCards(row, dropped) {
  lapse.fill("cards",
    lapse.card("calls", lapse.count(row.count)),
    lapse.card("errors", `${lapse.count(row.errors)} (${lapse.percent(row.error_rate)})`,
      row.errors > 0),
    lapse.card("calls/s", lapse.rate(row.throughput)),
    lapse.card("median", lapse.duration(row.median)),
    lapse.card("p95", lapse.duration(row.p95)),
    lapse.card("p99", lapse.duration(row.p99)),
    lapse.card("max", lapse.duration(row.max)),
    lapse.card("dropped (its runs)", lapse.count(dropped), dropped > 0));
}

function drawHistogram(bins) {
  Plotly.react("histogram", [{
    type: "bar", x: bins.map((b) => (b.low + b.high) / 2), width: bins.map((b) => b.high - b.low),
    y: bins.map((b) => b.count), marker: { color: "#3b82f6", line: { color: "#1d4ed8", width: 1 } },
    customdata: bins.map((b) => `${lapse.duration(b.low)} – ${lapse.duration(b.high)}`),
    hovertemplate: "%{customdata}<br>%{y} calls<extra></extra>",
  }], lapse.baseLayout({
    xaxis: lapse.durationAxis("duration per call", bins.flatMap((b) => [b.low, b.high])),
    yaxis: { title: { text: "calls" } },
    bargap: 0, showlegend: false, margin: { l: 60, r: 15, t: 10, b: 45 },
  }), lapse.plotConfig);
}

function drawOverTime(series) {
  const points = series.points;
  document.querySelector(".bucket").textContent = `per ${lapse.duration(series.bucket_ns / 1e9)}`;
  const x = points.map((p) => lapse.date(p.bucket_ns));
  const traces = ["p50", "p95", "p99"].map((key) => ({
    type: "scatter", mode: "lines+markers", name: key, x, y: points.map((p) => p[key]),
    marker: { size: 5 },
  }));
  traces.push({ type: "bar", name: "calls/s", x, y: points.map((p) => p.throughput), yaxis: "y2",
    marker: { color: "rgba(148, 163, 184, 0.35)" } });
  Plotly.react("over-time", traces, lapse.baseLayout({
    yaxis: lapse.durationAxis("latency", points.flatMap((p) => [p.p50, p.p99])),
    yaxis2: { title: { text: "calls/s" }, overlaying: "y", side: "right", rangemode: "tozero",
      tickmode: "auto",
      showgrid: false },
    margin: { l: 60, r: 60, t: 10, b: 30 },
  }), lapse.plotConfig);
}

function drawBreakdown(summary) {
  const by = summary.group_by[0];
  const label = (r) => (r[by] === null ? "—" : String(r[by]));
  const rows = [...summary.rows].sort((a, b) =>
    label(a).localeCompare(label(b), "en", { numeric: true }));
  Plotly.react("breakdown", rows.map((r) => ({
    type: "box", name: label(r), x: [label(r)], q1: [r.lower_hinge], median: [r.median],
    q3: [r.upper_hinge], lowerfence: [r.min], upperfence: [r.max], mean: [r.mean],
    boxpoints: false,
  })), lapse.baseLayout({
    yaxis: lapse.durationAxis("duration per call", summary.rows.flatMap((r) => [r.min, r.max])),
    showlegend: false,
    xaxis: { type: "category", title: { text: by } }, margin: { l: 60, r: 15, t: 10, b: 45 },
    boxgap: rows.length < 3 ? 0.6 : 0.3,
  }), lapse.plotConfig);
  lapse.fill("breakdown-table", lapse.table([
    { label: by, text: true, value: label },
    { label: "calls", value: (r) => lapse.count(r.count) },
    { label: "errors", value: (r) => lapse.count(r.errors) },
    { label: "calls/s", value: (r) => lapse.rate(r.throughput) },
    ...["min", "lower_hinge", "median", "upper_hinge", "max", "mean", "p95", "p99"].map(
      (key) => ({ label: key.replace("_", " "), value: (r) => lapse.duration(r[key]) })),
  ], rows, "breakdown-rows"));
}

function drawSlowest(calls) {
  const attrs = (a) => (a ? Object.entries(a).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(" ") : "");
  lapse.fill("slowest", lapse.table([
    { label: "started", text: true, value: (c) => lapse.time(c.start_ns) },
    { label: "duration", value: (c) => lapse.duration(c.duration) },
    { label: "status", text: true, value: (c) => (c.status === "error"
      ? el("span", { class: "pill error" }, c.error_type || "error")
      : el("span", { class: "pill ok" }, c.status || "ok")) },
    { label: "caller", text: true, value: (c) => el("span", { class: "mono" }, c.caller || "—") },
    { label: "thread", text: true, value: (c) => c.thread || "—" },
    { label: "version", text: true, value: (c) => c.version || "—" },
    { label: "host", text: true, value: (c) => c.host || "—" },
    { label: "attributes", text: true, wrap: true, value: (c) => el("span", { class: "mono" }, attrs(c.attrs)) },
    { label: "stack", text: true, wrap: true, value: (c) => (c.stack && c.stack.length
      ? el("details", {}, el("summary", {}, c.stack.length === 1 ? "1 frame" : `${c.stack.length} frames`),
        el("pre", {}, c.stack.join("\n")))
      : el("span", { class: "muted" }, "debug level only")) },
    { label: "trace", text: true, value: (c) => (c.trace_id === null ? "—"
      : el("a", { href: lapse.traceHref(c.run_id, c.trace_id), class: "trace-link" }, "trace →")) },
  ], calls, "slowest-calls"));
}

async function update() {
  const content = document.getElementById("content");
  const mine = ++latest;
  try {
    await addAttributeOptions();
    const [summary, breakdown, series, bins, calls] = await Promise.all([
      lapse.api("summary", filters()),
      lapse.api("summary", { ...filters(), by: byBox.value }),
      lapse.api("timeseries", filters()),
      lapse.api("histogram", filters()),
      lapse.api("slowest", { ...filters(), limit: 20 }),
    ]);
    if (mine !== latest) return;
    if (summary.rows.length === 0) {
      content.hidden = true;
      lapse.notice(`No calls of ${name} in ${summary.store} in this time range.`);
      return;
    }
    lapse.notice("");
    content.hidden = false;
    drawCards(summary.rows[0], summary.dropped);
    drawHistogram(bins);
    drawOverTime(series);
    drawBreakdown(breakdown);
    drawSlowest(calls);
  } catch (error) {
    if (mine !== latest) return;
    content.hidden = true;
    lapse.problem(error);
  }
}

setUp();
lapse.live(update);
