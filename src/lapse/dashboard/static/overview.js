// Overview: every event's five-number summary, latency and volume over time, live.
"use strict";

const { params, el } = lapse;
const sinceBox = document.getElementById("since");
const byBox = document.getElementById("by");
const attrBox = document.getElementById("attr");
const percentileBox = document.getElementById("percentile");
let lastSeries = null;
let latest = 0; // only the newest update() draws: an older, slower answer is dropped

function grouping() {
  if (byBox.value === "attrs") {
    const key = attrBox.value.trim();
    if (!key) return "";
    return key.startsWith("attrs.") ? key : `attrs.${key}`;
  }
  return byBox.value;
}

function filters() {
  return { since: sinceBox.value, run: params.getAll("run") };
}

function setUpControls() {
  sinceBox.value = params.get("since") || "all";
  const by = params.get("by") || "";
  if (by.startsWith("attrs.")) {
    byBox.value = "attrs";
    attrBox.value = by;
    attrBox.hidden = false;
  } else {
    byBox.value = by;
  }
  sinceBox.addEventListener("change", () => { lapse.setParam("since", sinceBox.value); update(); });
  byBox.addEventListener("change", () => {
    attrBox.hidden = byBox.value !== "attrs";
    if (!attrBox.hidden) attrBox.focus();
    lapse.setParam("by", grouping());
    update();
  });
  attrBox.addEventListener("change", () => { lapse.setParam("by", grouping()); update(); });
  percentileBox.addEventListener("change", () => lastSeries && drawSeries(lastSeries));
  const runs = params.getAll("run");
  if (runs.length) {
    lapse.fill("run-filter", el("span", { class: "pill" }, `run ${runs.join(", ")} `,
      el("a", { href: lapse.href("/") }, "✕ show all runs")));
  }
}

function groupLabel(row, groups) {
  return groups.map((g) => `${g}=${row[g] === null ? "—" : row[g]}`).join(" ");
}

function drawBoxes(summary) {
  const groups = summary.group_by;
  const stats = (rows) => ({
    q1: rows.map((r) => r.lower_hinge), median: rows.map((r) => r.median),
    q3: rows.map((r) => r.upper_hinge), lowerfence: rows.map((r) => r.min),
    upperfence: rows.map((r) => r.max), mean: rows.map((r) => r.mean),
  });
  summary.rows.forEach((row) => lapse.colour(row.name));
  let traces;
  if (groups.length === 0) {
    traces = summary.rows.map((row) => ({
      type: "box", name: row.name, x: [row.name], boxpoints: false, ...stats([row]),
      marker: { color: lapse.colour(row.name) },
    }));
  } else {
    const byGroup = new Map();
    for (const row of summary.rows) {
      const label = groupLabel(row, groups);
      if (!byGroup.has(label)) byGroup.set(label, []);
      byGroup.get(label).push(row);
    }
    traces = [...byGroup].map(([label, rows]) => ({
      type: "box", name: label, x: rows.map((r) => r.name), boxpoints: false, ...stats(rows),
    }));
  }
  Plotly.react("box", traces, lapse.baseLayout({
    yaxis: lapse.durationAxis("duration per call (log scale)",
      summary.rows.flatMap((r) => [r.min, r.max])), boxmode: "group",
    showlegend: groups.length > 0, margin: { l: 70, r: 20, t: 10, b: 60 },
  }), lapse.plotConfig);
}

function perEvent(points) {
  const events = new Map();
  for (const point of points) {
    if (!events.has(point.name)) events.set(point.name, []);
    events.get(point.name).push(point);
  }
  return events;
}

function drawSeries(series) {
  lastSeries = series;
  const events = perEvent(series.points);
  const lines = (value) => [...events].map(([name, points]) => ({
    type: "scatter", mode: "lines+markers", name, x: points.map((p) => lapse.date(p.bucket_ns)),
    y: points.map(value), marker: { size: 5, color: lapse.colour(name) },
    line: { color: lapse.colour(name) },
  }));
  for (const node of document.querySelectorAll(".bucket")) {
    node.textContent = `per ${lapse.duration(series.bucket_ns / 1e9)}`;
  }
  const layout = (yaxis) => lapse.baseLayout({ yaxis, margin: { l: 60, r: 15, t: 10, b: 30 } });
  const key = percentileBox.value;
  Plotly.react("latency", lines((p) => p[key]),
    layout(lapse.durationAxis(key, series.points.map((p) => p[key]))),
    lapse.plotConfig);
  Plotly.react("throughput", lines((p) => p.throughput),
    layout({ title: { text: "calls/s" }, rangemode: "tozero" }), lapse.plotConfig);
  Plotly.react("errors", lines((p) => p.errors / p.count),
    layout({ title: { text: "error rate" }, tickformat: ".0%", hoverformat: ".2%",
      rangemode: "tozero" }), lapse.plotConfig);
}

function drawCards(summary) {
  const errors = summary.rows.reduce((sum, r) => sum + r.errors, 0);
  const names = new Set(summary.rows.map((r) => r.name));
  lapse.fill("cards",
    lapse.card("events", names.size),
    lapse.card("calls", lapse.count(summary.events)),
    lapse.card("errors", `${lapse.count(errors)} (${lapse.percent(errors / summary.events)})`,
      errors > 0),
    lapse.card("dropped by the recorder", lapse.count(summary.dropped), summary.dropped > 0),
    lapse.card("window", summary.window.start
      ? `${lapse.time(Date.parse(summary.window.start) * 1e6)} → ` +
        `${lapse.time(Date.parse(summary.window.end) * 1e6).slice(11)}` : "—"));
}

function drawTable(summary) {
  const groups = summary.group_by;
  const columns = [
    { label: "event", text: true,
      value: (r) => el("a", { href: lapse.eventHref(r.name), class: "event-link" }, r.name) },
    ...groups.map((g) => ({ label: g, text: true, value: (r) => (r[g] === null ? "—" : r[g]) })),
    { label: "calls", value: (r) => lapse.count(r.count) },
    { label: "errors", value: (r) => (r.errors
      ? el("span", { class: "error-text" }, `${lapse.count(r.errors)} (${lapse.percent(r.error_rate)})`)
      : "0") },
    { label: "calls/s", value: (r) => lapse.rate(r.throughput) },
    ...[["min", "min"], ["lower hinge", "lower_hinge"], ["median", "median"],
      ["upper hinge", "upper_hinge"], ["max", "max"], ["mean", "mean"], ["p95", "p95"],
      ["p99", "p99"]].map(([label, key]) => ({ label, value: (r) => lapse.duration(r[key]) })),
    { label: "outliers", value: (r) => lapse.count(r.outliers) },
    { label: "total", value: (r) => lapse.duration(r.total) },
  ];
  // Rows of one event together (events by total time, as the summary orders them).
  const order = [...new Set(summary.rows.map((r) => r.name))];
  const rows = [...summary.rows].sort((a, b) => order.indexOf(a.name) - order.indexOf(b.name));
  lapse.fill("table", lapse.table(columns, rows, "events"));
  const dropped = summary.dropped
    ? `${lapse.count(summary.dropped)} events were dropped by the recorder (buffer full or ` +
      "write errors) and are not counted."
    : "No events dropped.";
  document.getElementById("footer").textContent = `${dropped} Durations are per call; hinges ` +
    "are Tukey's (as R's fivenum); outliers lie beyond 1.5 × the hinge spread. Over-time " +
    "charts are per event.";
}

async function update() {
  const content = document.getElementById("content");
  const mine = ++latest;
  try {
    const query = { ...filters(), by: grouping() };
    const [summary, series] = await Promise.all([
      lapse.api("summary", query), lapse.api("timeseries", filters()),
    ]);
    if (mine !== latest) return;
    lapse.api("attributes", filters()).then((found) => lapse.fill("attr-keys",
      found.keys.map((key) => el("option", { value: `attrs.${key}` })))).catch(() => {});
    if (summary.events === 0) {
      content.hidden = true;
      const range = sinceBox.value === "all" ? "" : ` in the chosen time range (${sinceBox.value})`;
      lapse.notice(`No events in the store ${summary.store}${range} yet. Decorate a function ` +
        "with @lapse.timed and run it with LAPSE_DIR pointing at this store: this page " +
        "updates by itself.");
      return;
    }
    lapse.notice("");
    content.hidden = false;
    drawCards(summary);
    drawBoxes(summary);
    drawSeries(series);
    drawTable(summary);
  } catch (error) {
    if (mine !== latest) return;
    content.hidden = true;
    lapse.problem(error);
  }
}

setUpControls();
lapse.live(update);
