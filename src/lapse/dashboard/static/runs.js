// Runs page: the processes that wrote to the store, with their resource.
"use strict";

const { el } = lapse;

function ended(run) {
  if (run.ended_ns) {
    return el("span", { title: `ended ${lapse.time(run.ended_ns)}` },
      `after ${lapse.duration((run.ended_ns - run.started_ns) / 1e9)}`);
  }
  return el("span", { class: "muted", title: `last written ${lapse.time(run.updated_ns)}` },
    "no end recorded");
}

async function update() {
  try {
    const runs = await lapse.api("runs");
    if (runs.length === 0) {
      lapse.fill("runs");
      lapse.notice("No runs in this store yet: run a program instrumented with lapse, with " +
        "LAPSE_DIR pointing here. This page updates by itself.");
      return;
    }
    lapse.notice("");
    const text = (key) => (r) => (r[key] === null || r[key] === undefined || r[key] === ""
      ? "—" : String(r[key]));
    lapse.fill("runs", lapse.table([
      { label: "run", text: true, value: (r) => el("a", { class: "mono run-id",
        href: `/?run=${encodeURIComponent(r.run_id)}`, title: "this run's events" }, r.run_id) },
      { label: "service", text: true, value: text("service") },
      { label: "version", text: true, value: text("version") },
      { label: "level", text: true, value: text("level") },
      { label: "started", text: true, value: (r) => lapse.time(r.started_ns) },
      { label: "ended", text: true, value: ended },
      { label: "events", value: (r) => lapse.count(r.events) },
      { label: "errors", value: (r) => (r.errors
        ? el("span", { class: "error-text" }, lapse.count(r.errors)) : "0") },
      { label: "dropped", value: (r) => (r.dropped
        ? el("span", { class: "error-text" }, lapse.count(r.dropped)) : "0") },
      { label: "environment", text: true, value: text("environment") },
      { label: "host", text: true, value: text("host") },
      { label: "pid", value: text("pid") },
      { label: "program", text: true, value: text("program") },
      { label: "python", text: true, value: text("python") },
      { label: "git commit", text: true, value: (r) => (r.git_commit
        ? el("span", { class: "mono", title: r.git_commit }, r.git_commit.slice(0, 10)) : "—") },
      { label: "kind", text: true, value: text("kind") },
    ], runs, "run-table"));
  } catch (error) {
    lapse.problem(error);
  }
}

lapse.live(update);
