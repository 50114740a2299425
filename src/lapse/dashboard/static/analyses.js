// Analyses page: lapse compare and lapse analyze, run on the server, the result shown here.
"use strict";

const { params, el } = lapse;
const analysisBox = document.getElementById("analysis");
const sinceBox = document.getElementById("since");
const eventBox = document.getElementById("event");
const versionBox = document.getElementById("version");
const sloBox = document.getElementById("slo");
const form = document.getElementById("form");
const runButton = document.getElementById("run");
const result = document.getElementById("result");
let latest = 0; // only the newest run is shown: switching analysis drops an older answer

// Text inputs kept in the address (the selects, filled from the store, are restored apart).
const KEPT = ["baseline", "candidate", "threshold", "slo", "rate", "where", "until", "predict"];

// Per analysis: the inputs it cannot do without, the SLO it expects, and what it tells.
const ANALYSES = {
  compare: { required: ["baseline", "candidate"], about: "Per event, is the candidate " +
    "slower than the baseline? A rank test per event, corrected across events, and the " +
    "ratio of medians with its interval. Each selector picks its own calls, time included " +
    "(2h..1h), so the time range does not apply." },
  changes: { required: [], about: "When did an event's latency, throughput or error rate " +
    "shift, and by how much? Change points ranked by confidence and size." },
  drivers: { required: ["event"], about: "What drives the event's duration: a model from " +
    "its attributes and context, its held-out accuracy, and each feature's effect in words." },
  slow: { required: ["event", "slo"], slo: "100ms", about: "Which calls are slower than " +
    "the SLO: IF ... THEN slow rules with held-out precision and recall, and example calls." },
  outliers: { required: [], about: "Calls outside Tukey's fences, per event, with their " +
    "attributes." },
  capacity: { required: ["event", "slo"], slo: "p99<200ms", about: "Calls/s one worker " +
    "sustains within the SLO, workers needed for a rate, and an auto-scale rule." },
};

/** Whether an element marked data-for="ANALYSIS ..." belongs to this analysis. */
const usedBy = (node, analysis) => node.dataset.for.split(" ").includes(analysis);

/** Show the inputs of the chosen analysis, mark the ones it needs, and say what it does. */
function choose() {
  const analysis = analysisBox.value;
  const spec = ANALYSES[analysis];
  for (const label of document.querySelectorAll("label[data-for]")) {
    label.hidden = !usedBy(label, analysis);
  }
  for (const field of form.elements) {
    if (field.name) field.required = spec.required.includes(field.name);
  }
  const every = eventBox.options[0];
  every.hidden = every.disabled = spec.required.includes("event");
  if (every.disabled && eventBox.value === "" && eventBox.options.length > 1) {
    eventBox.selectedIndex = 1;
  }
  sloBox.placeholder = spec.slo || "";
  document.getElementById("about").textContent = spec.about;
}

/** The query of a run: the visible inputs with a value, and the time range if it applies. */
function query() {
  const analysis = analysisBox.value;
  const values = {};
  for (const field of form.elements) {
    const label = field.closest("label[data-for]");
    if (field.name && label && usedBy(label, analysis) && field.value.trim()) {
      values[field.name] = field.value.trim();
    }
  }
  if (usedBy(sinceBox.closest("label"), analysis)) values.since = sinceBox.value;
  return values;
}

function setRunning(running) {
  runButton.disabled = running;
  document.getElementById("running").hidden = !running;
}

/** Verdicts stand out: the server's HTML is plain tables. */
function markVerdicts() {
  const marks = { slower: "error-text", faster: "good-text" };
  for (const cell of result.querySelectorAll("td")) {
    const mark = marks[cell.textContent.trim()];
    if (mark) cell.classList.add(mark, "verdict");
  }
}

async function run(submitted) {
  submitted.preventDefault();
  const mine = ++latest;
  const analysis = analysisBox.value;
  const values = query();
  for (const name of [...KEPT, "event", "version"]) lapse.setParam(name, values[name]);
  setRunning(true);
  lapse.notice("");
  try {
    const answer = await lapse.api(`analyze/${analysis}`, values);
    if (mine !== latest) return;
    // lapse renders the result server-side and escapes every value in it.
    result.innerHTML = answer.html;
    markVerdicts();
    result.hidden = false;
  } catch (error) {
    if (mine !== latest) return;
    result.hidden = true;
    lapse.notice(error.message, "error");
  } finally {
    if (mine === latest) setRunning(false);
  }
}

/** The event and release choices: every event in the store, most called first, and every
 * version, keeping the choices made. */
async function fillChoices() {
  try {
    await fillVersions();
    const summary = await lapse.api("summary", { since: "all" });
    const wanted = eventBox.value || params.get("event") || "";
    const rows = [...summary.rows].sort((a, b) => b.count - a.count);
    eventBox.replaceChildren(eventBox.options[0], ...rows.map((row) =>
      el("option", { value: row.name }, `${row.name} (${lapse.count(row.count)} calls)`)));
    if (rows.some((row) => row.name === wanted)) eventBox.value = wanted;
    choose();
  } catch (error) {
    lapse.problem(error);
  }
}

/** The release choices: the store's versions, newest first, keeping the choice made. */
async function fillVersions() {
  const { versions } = await lapse.api("versions");
  const wanted = versionBox.value || params.get("version") || "";
  versionBox.replaceChildren(versionBox.options[0],
    ...versions.map((version) => el("option", { value: version }, version)));
  if (versions.includes(wanted)) versionBox.value = wanted;
}

function setUp() {
  if (params.get("analysis") in ANALYSES) analysisBox.value = params.get("analysis");
  sinceBox.value = params.get("since") || "all";
  for (const name of KEPT) {
    if (params.get(name)) form.elements[name].value = params.get(name);
  }
  analysisBox.addEventListener("change", () => {
    lapse.setParam("analysis", analysisBox.value);
    ++latest;
    setRunning(false);
    result.hidden = true;
    lapse.notice("");
    choose();
  });
  sinceBox.addEventListener("change", () => lapse.setParam("since", sinceBox.value));
  form.addEventListener("submit", run);
  choose();
}

setUp();
lapse.live(fillChoices);
