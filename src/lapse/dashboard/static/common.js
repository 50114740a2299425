// Shared by every page: API calls, human units, DOM building, the live refresh.
"use strict";

const lapse = (() => {
  const params = new URLSearchParams(location.search);

  /** GET /api/PATH with query parameters (arrays repeat); throws Error(detail) on failure. */
  async function api(path, query = {}) {
    const search = new URLSearchParams();
    for (const [key, value] of Object.entries(query)) {
      for (const item of [].concat(value)) {
        if (item !== null && item !== undefined && item !== "") search.append(key, item);
      }
    }
    const response = await fetch(`/api/${path}?${search}`, { credentials: "same-origin" });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = new Error(detail(body.detail) || `${response.status} ${response.statusText}`);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  /** lapse's message, or FastAPI's list of invalid parameters (HTTP 422) as one line. */
  function detail(value) {
    if (!Array.isArray(value)) return value;
    return value.map((d) => `${(d.loc || []).slice(-1)[0] || "input"}: ${d.msg}`).join("; ");
  }

  /** Seconds in the unit a person reads best: 812 ns, 3.2 µs, 45.1 ms, 1.25 s. */
  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    const ns = seconds * 1e9;
    if (Math.abs(ns) < 1e3) return `${ns.toFixed(0)} ns`;
    const short = (x) => Number(x.toPrecision(3));
    if (Math.abs(ns) < 1e6) return `${short(ns / 1e3)} µs`;
    if (Math.abs(ns) < 1e9) return `${short(ns / 1e6)} ms`;
    return seconds < 600 ? `${short(seconds)} s` : `${(seconds / 60).toFixed(1)} min`;
  }

  /** Epoch nanoseconds as local date and time with milliseconds. */
  function time(ns) {
    if (ns === null || ns === undefined) return "—";
    const d = new Date(ns / 1e6);
    const pad = (n, w = 2) => String(n).padStart(w, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.` +
      `${pad(d.getMilliseconds(), 3)}`;
  }

  const count = (n) => (n === null || n === undefined ? "—" : n.toLocaleString("en-US"));
  const rate = (r) => (r === null || r === undefined ? "—"
    : r.toLocaleString("en-US", { maximumSignificantDigits: 3 }));
  const percent = (r) => `${(100 * r).toFixed(r < 0.001 && r > 0 ? 2 : 1)}%`;

  /** An element with properties and children (strings become text: never parsed as HTML). */
  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key === "style") Object.assign(node.style, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value);
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined && child !== false) {
        node.append(child instanceof Node ? child : String(child));
      }
    }
    return node;
  }

  /** A table from column specs {label, value(row) -> text or Node, text: left-aligned}. */
  function table(columns, rows, id) {
    const head = el("tr", {}, columns.map((c) => el("th", { class: c.text ? "text" : "" }, c.label)));
    const body = rows.map((row) => el("tr", {}, columns.map((c) =>
      el("td", { class: [c.text ? "text" : "", c.wrap ? "wrap" : ""].join(" ") }, c.value(row)))));
    return el("div", { class: "scroll" }, el("table", { class: "data", id: id || "" },
      el("thead", {}, head), el("tbody", {}, body)));
  }

  function card(label, value, bad = false) {
    return el("div", { class: bad ? "card bad" : "card" },
      el("div", { class: "label" }, label), el("div", { class: "value" }, value));
  }

  /** Show a message in the page's notice box (empty text hides it). */
  function notice(text, kind = "") {
    const box = document.getElementById("notice");
    box.className = `notice ${kind}`;
    box.textContent = text || "";
  }

  /** Show an API error; a store that does not exist yet is a note, not an error. */
  function problem(error) {
    if (error.status === 404) {
      notice(`${error.message} This page updates by itself once a program writes there.`);
    } else {
      notice(error.message, "error");
    }
  }

  /** Replace the children of the element with this id. */
  function fill(id, ...children) {
    document.getElementById(id).replaceChildren(...children.flat());
  }

  /** Links keep the time range, and the token-free URL (the cookie carries the token). */
  function href(path, keep = ["since"]) {
    const search = new URLSearchParams();
    for (const key of keep) if (params.get(key)) search.set(key, params.get(key));
    const text = search.toString();
    return text ? `${path}?${text}` : path;
  }

  const eventHref = (name) => href(`/event/${encodeURIComponent(name)}`);
  const traceHref = (run, trace) =>
    `/trace/${encodeURIComponent(run)}/${encodeURIComponent(trace)}`;

  /** Set a page parameter in the address bar (no reload). */
  function setParam(key, value) {
    if (value) params.set(key, value); else params.delete(key);
    const text = params.toString();
    history.replaceState(null, "", text ? `${location.pathname}?${text}` : location.pathname);
    keepInLinks();
  }

  /** Navigation links marked data-keep="since ..." carry those page parameters along, so the
   * time range chosen on one page is the one the next page opens with. */
  function keepInLinks() {
    for (const link of document.querySelectorAll("a[data-keep]")) {
      link.href = href(link.getAttribute("href").split("?")[0], link.dataset.keep.split(" "));
    }
  }
  keepInLinks();

  /** Call refresh() now, then again whenever the store's files change (?refresh=SECONDS). */
  async function live(refresh) {
    const seconds = Math.max(0.5, Number(params.get("refresh")) || 5);
    const status = document.getElementById("live");
    let last = null;
    async function tick() {
      try {
        const now = await api("status");
        document.getElementById("store").textContent = now.store;
        if (now.fingerprint !== last) {
          await refresh(now);
          last = now.fingerprint;
        }
        status.className = "on";
        status.textContent = `live, every ${seconds} s`;
      } catch (error) {
        status.className = "";
        status.textContent = "not updating";
        notice(error.message, "error");
      }
      setTimeout(tick, seconds * 1000);
    }
    await tick();
  }

  /** Run refresh(); show its error in the notice box instead of failing. */
  async function guarded(refresh) {
    try {
      await refresh();
    } catch (error) {
      notice(error.message, "error");
    }
  }

  const plotConfig = { displaylogo: false, responsive: true };
  // A log axis of durations in seconds, its ticks at 1, 2, 5 x 10^k (or only powers of ten over
  // a wide range) labelled in human units; hover values get SI prefixes (20ms, 500µs).
  function durationAxis(title, values = []) {
    const positive = values.filter((v) => v > 0);
    const low = positive.reduce((a, b) => Math.min(a, b), Infinity) / 1.5;
    const high = positive.reduce((a, b) => Math.max(a, b), 0) * 1.5;
    const axis = { title: { text: title }, type: "log", hoverformat: ".3~s", ticksuffix: "s",
      automargin: true };
    if (!(high > low)) return axis;
    const spread = high / low;
    const steps = spread > 300 ? [1] : spread > 12 ? [1, 2, 5] : [1, 1.5, 2, 3, 4, 5, 6, 8];
    const ticks = [];
    for (let power = Math.floor(Math.log10(low)); power <= Math.ceil(Math.log10(high)); power++) {
      for (const step of steps) {
        const value = step * 10 ** power;
        if (value >= low && value <= high) ticks.push(value);
      }
    }
    return { ...axis, tickvals: ticks, ticktext: ticks.map(duration) };
  }
  // One colour per event name, the same in every chart of a page.
  const palette = ["#2563eb", "#ea580c", "#16a34a", "#dc2626", "#9333ea", "#0891b2", "#ca8a04",
    "#db2777", "#4b5563", "#65a30d"];
  const colours = new Map();
  function colour(name) {
    if (!colours.has(name)) colours.set(name, palette[colours.size % palette.length]);
    return colours.get(name);
  }
  const baseLayout = (extra = {}) => Object.assign({
    margin: { l: 60, r: 20, t: 40, b: 50 }, uirevision: "keep", font: { size: 12 },
    legend: { orientation: "h", y: -0.2 }, paper_bgcolor: "#fff", plot_bgcolor: "#fff",
  }, extra);
  const date = (ns) => new Date(ns / 1e6);

  return { params, api, duration, time, count, rate, percent, el, table, card, notice, problem, fill, colour,
    href, eventHref, traceHref, setParam, live, guarded, plotConfig, durationAxis, baseLayout,
    date };
})();
