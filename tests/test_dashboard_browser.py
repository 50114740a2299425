"""The dashboard's pages in a real headless Chromium, against the real server and store.

Screenshots of each page land in test-artifacts/ (repository root) for review.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import lapse
from lapse import synthetic
from tests.test_dashboard import PLANTED, clean_env, dashboard, write_store

playwright_sync = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
HOSTILE = "<img src=x onerror=window.pwned=1> a/b?c#d"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One headless Chromium for the whole module."""
    with playwright_sync.sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three real processes: versions 1.0 and 2.0, nested spans and errors."""
    store = tmp_path_factory.mktemp("dashboard-browser") / "store"
    write_store(store)
    return store


@pytest.fixture(scope="module")
def server(recorded: Path) -> Iterator[str]:
    with dashboard(recorded) as url:
        yield url


@pytest.fixture(scope="module")
def analyses(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The dashboard of a synthetic store where predict is 20% slower in release 1.1."""
    store = tmp_path_factory.mktemp("dashboard-analyses") / "store"
    synthetic.write(store, PLANTED)
    with dashboard(store) as url:
        yield url


class Tab:
    """A fresh browser context and page that records console errors and off-machine requests."""

    def __init__(self, browser: object) -> None:
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.errors: list[str] = []
        self.expected: list[str] = []  # parts of console errors a test provokes on purpose
        self.outside: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def _route(self, route: object) -> None:
        if route.request.url.startswith(("http://127.0.0.1:", "data:")):
            route.continue_()
        else:
            self.outside.append(route.request.url)
            route.abort()

    def plot(self, element_id: str) -> list[dict]:
        """The Plotly traces drawn in a chart div, once it has rendered."""
        self.page.wait_for_selector(f"#{element_id}.js-plotly-plot .main-svg")
        return self.page.evaluate(
            "id => document.getElementById(id).data.map(t => ({type: t.type, name: t.name, "
            "x: Array.from(t.x || []).map(String), y: Array.from(t.y || []), q1: t.q1, "
            "median: t.median, q3: t.q3, lowerfence: t.lowerfence, upperfence: t.upperfence}))",
            element_id)

    def unexpected_errors(self) -> list[str]:
        return [e for e in self.errors if not any(part in e for part in self.expected)]

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=ARTIFACTS / name, full_page=True)


@pytest.fixture
def tab(browser) -> Iterator[Tab]:
    """A page for one test; afterwards, no script error and no request left the machine."""
    opened = Tab(browser)
    yield opened
    opened.context.close()
    assert opened.unexpected_errors() == [], "errors in the browser console"
    assert opened.outside == [], "requests to other machines"


def names_in(store: Path) -> set[str]:
    return {r["name"] for r in lapse.sql("select distinct name from events", store).to_pylist()}


def test_overview_lists_events_and_draws_their_box_plots(tab, server, recorded):
    """Every event is listed with its exact five-number summary drawn as a box."""
    tab.page.goto(f"{server}/")
    tab.page.wait_for_selector("#events a.event-link")
    shown = tab.page.locator("#events a.event-link").all_inner_texts()
    assert set(shown) == names_in(recorded)
    boxes = tab.plot("box")
    assert [t["type"] for t in boxes] == ["box"] * len(shown)
    rows = {r["name"]: r for r in lapse.report(recorded).rows}
    assert {t["name"] for t in boxes} == set(rows)
    for trace in boxes:
        row = rows[trace["name"]]
        assert (trace["lowerfence"][0], trace["q1"][0], trace["median"][0], trace["q3"][0],
                trace["upperfence"][0]) == (row["min"], row["lower_hinge"], row["median"],
                                            row["upper_hinge"], row["max"])
    cards = tab.page.locator("#cards").inner_text()
    assert "DROPPED BY THE RECORDER\n0" in cards.upper()
    tab.screenshot("dashboard-overview.png")


def test_time_series_have_a_point_per_bucket(tab, server):
    """Latency, throughput and error-rate charts draw one point per bucket of /api/timeseries."""
    tab.page.goto(f"{server}/")
    points = httpx.get(f"{server}/api/timeseries", params={"since": "all"}).json()["points"]
    buckets: dict[str, int] = {}
    for point in points:
        buckets[point["name"]] = buckets.get(point["name"], 0) + 1
    assert max(buckets.values()) >= 2
    for chart in ("latency", "throughput", "errors"):
        drawn = {t["name"]: len(t["x"]) for t in tab.plot(chart)}
        assert drawn == buckets, chart


def test_grouping_and_bad_input(tab, server):
    """Grouping by version draws a box per version; a bad attribute name shows lapse's message."""
    tab.page.goto(f"{server}/")
    tab.plot("box")
    tab.page.select_option("#by", "version")
    tab.page.wait_for_function(
        "() => document.getElementById('box').data.some(t => t.name === 'version=1.0')")
    assert {t["name"] for t in tab.plot("box")} == {"version=1.0", "version=2.0"}
    assert "by=version" in tab.page.url, "the grouping is kept in the address"
    tab.page.select_option("#by", "attrs")
    tab.expected.append("status of 400 (Bad Request)")  # the browser logs the failed fetch
    tab.page.fill("#attr", "attrs.no such key")
    tab.page.press("#attr", "Enter")
    tab.page.wait_for_selector("#notice.error")
    assert "is not a column" in tab.page.inner_text("#notice")


def test_an_event_page_shows_distribution_breakdown_and_slowest_calls(tab, server):
    """Clicking an event opens its page: histogram, over time, breakdown, slowest calls."""
    tab.page.goto(f"{server}/?since=all")
    tab.page.click("#events a.event-link:text-is('score')")
    tab.page.wait_for_url(lambda url: url.endswith("/event/score?since=all"))
    bins = httpx.get(f"{server}/api/histogram", params={"name": "score"}).json()
    histogram = tab.plot("histogram")
    assert len(histogram[0]["y"]) == len(bins)
    assert sum(histogram[0]["y"]) == 25
    over_time = tab.plot("over-time")
    assert [t["name"] for t in over_time] == ["p50", "p95", "p99", "calls/s"]
    assert {t["name"] for t in tab.plot("breakdown")} == {"2.0"}
    rows = tab.page.locator("#slowest-calls tbody tr")
    assert rows.count() == 20
    assert "ValueError" in tab.page.inner_text("#slowest-calls")
    assert tab.page.locator("#slowest-calls details").count() == 20, "debug stacks"
    tab.page.select_option("#by", "attrs.rows")
    tab.page.wait_for_function(
        "() => document.getElementById('breakdown').data.length === 10")
    tab.screenshot("dashboard-event.png")


def test_a_trace_shows_its_waterfall(tab, server, recorded):
    """From a slow call, its trace link opens a waterfall with one bar per span of the trace."""
    tab.page.goto(f"{server}/event/score")
    tab.page.wait_for_selector("#slowest-calls a.trace-link")
    tab.page.locator("#slowest-calls a.trace-link").first.click()
    tab.page.wait_for_url(lambda url: "/trace/" in url)
    run_id, trace_id = tab.page.url.split("/trace/")[1].split("/")
    tab.page.wait_for_selector("#waterfall .bar")
    spans = lapse.sql(f"select count(*) as n from events where run_id = '{run_id}' "
                      f"and trace_id = {int(trace_id)}", recorded).to_pylist()[0]["n"]
    assert spans == 4
    assert tab.page.locator("#waterfall .bar").count() == spans
    names = tab.page.locator("#waterfall .row.span .name").all_inner_texts()
    assert [n.lstrip("└ ") for n in names] == ["score", "features", "features.load", "inference"]
    tab.screenshot("dashboard-trace.png")


def test_an_error_trace_marks_the_failed_call(tab, server):
    """A call that raised is drawn in the error colour and names its exception."""
    failed = httpx.get(f"{server}/api/slowest", params={"where": "status=error",
                                                        "name": "score"}).json()[0]
    tab.page.goto(f"{server}/trace/{failed['run_id']}/{failed['trace_id']}")
    tab.page.wait_for_selector("#waterfall .bar.error")
    assert tab.page.locator("#waterfall .bar.error").count() == 1
    assert "ValueError" in tab.page.inner_text("#span-table")


def test_runs_page_lists_every_run(tab, server, recorded):
    """The runs page has a row per run_id in the store, with its resource."""
    tab.page.goto(f"{server}/runs")
    tab.page.wait_for_selector("#run-table a.run-id")
    shown = set(tab.page.locator("#run-table a.run-id").all_inner_texts())
    expected = {r["run_id"] for r in lapse.sql("select run_id from runs", recorded).to_pylist()}
    assert shown == expected
    text = tab.page.inner_text("#run-table")
    assert "CPython" in text
    assert "shop" in text
    tab.screenshot("dashboard-runs.png")


def test_an_empty_store_says_so_then_fills_in_live(tab, tmp_path):
    """Before any program ran the page says so; when one writes, the page updates by itself.

    An event name is shown as text, never run as HTML, and still links to its page.
    """
    store = tmp_path / "live"
    with dashboard(store) as url:
        tab.expected.append("status of 404 (Not Found)")  # the API, while there is no store
        tab.page.goto(f"{url}/?refresh=0.5")
        tab.page.wait_for_selector("#notice:has-text('no lapse store')")
        assert tab.page.locator("#content").is_hidden()
        tab.screenshot("dashboard-empty.png")
        code = ("import lapse\n"
                f"lapse.timed({HOSTILE!r})(lambda: None)()\n"
                "lapse.timed('plain')(lambda: None)()\n")
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                       env=clean_env(LAPSE_DIR=str(store)))
        tab.page.wait_for_selector("#events a.event-link", timeout=15_000)
        links = tab.page.locator("#events a.event-link")
        assert set(links.all_inner_texts()) == {HOSTILE, "plain"}
        assert len(tab.plot("box")) == 2
        assert tab.page.evaluate("window.pwned") is None
        links.filter(has_text="onerror").click()
        tab.page.wait_for_selector("#histogram .main-svg")
        assert tab.page.inner_text("h1") == HOSTILE
        assert tab.page.evaluate("window.pwned") is None


def test_a_token_protected_dashboard(tab, recorded):
    """Without the token the page is refused (401); opened once with ?token= it works."""
    token = "browser-test-token"
    with dashboard(recorded, "--token", token) as url:
        tab.expected.append("status of 401 (Unauthorized)")
        refused = tab.page.goto(f"{url}/")
        assert refused.status == 401
        assert "needs a token" in tab.page.inner_text("h1")
        opened = tab.page.goto(f"{url}/?token={token}")
        assert opened.status == 200
        assert "token" not in tab.page.url
        tab.page.wait_for_selector("#events a.event-link")
        assert set(tab.page.locator("#events a.event-link").all_inner_texts()) == names_in(
            recorded)


def verdicts(tab: Tab) -> dict[str, str]:
    """Event -> verdict, read from the result table the page shows."""
    rows = tab.page.locator("#result table tbody tr")
    return {row.locator("td").nth(0).inner_text(): row.locator("td").nth(1).inner_text()
            for row in rows.all()}


def test_compare_releases_from_the_analyses_page(tab, analyses):
    """From the navigation, the analyses page compares two releases: the result table marks
    predict, and only predict, slower; the time range follows the pages."""
    tab.page.goto(f"{analyses}/?since=7d")
    tab.page.click("nav a:text-is('Analyses')")
    tab.page.wait_for_url(lambda url: url.endswith("/analyses?since=7d"))
    assert tab.page.input_value("#since") == "7d"
    assert tab.page.get_attribute("nav a:text-is('Overview')", "href") == "/?since=7d"
    assert tab.page.input_value("#analysis") == "compare"
    tab.page.fill("#baseline", "version=1.0")
    tab.page.fill("#candidate", "version=1.1")
    tab.page.click("#run")
    tab.page.wait_for_selector("#result table")
    assert tab.page.locator("#running").is_hidden()
    assert verdicts(tab) == {"predict": "slower", "preprocess": "unchanged",
                             "load_features": "unchanged", "postprocess": "unchanged"}
    assert tab.page.locator("#result td.verdict.error-text").all_inner_texts() == ["slower"]
    assert "Brunner-Munzel" in tab.page.inner_text("#result")
    assert "baseline=version%3D1.0" in tab.page.url, "the inputs are kept in the address"
    tab.screenshot("dashboard-analyses.png")


def test_analyses_page_runs_drivers_and_shows_errors(tab, analyses):
    """The event and release lists come from the store; drivers of release 1.1 names
    attrs.rows and predicts; a bad selector shows lapse's message in the page instead of a
    result."""
    tab.page.goto(f"{analyses}/analyses")
    assert tab.page.locator("#version").is_hidden(), "compare takes no filters"
    tab.page.select_option("#analysis", "drivers")
    assert tab.page.locator("#baseline").is_hidden()
    tab.page.wait_for_selector("#event option[value='predict']", state="attached")
    tab.page.select_option("#event", "predict")
    tab.page.wait_for_selector("#version option[value='1.1']", state="attached")
    tab.page.select_option("#version", "1.1")
    tab.page.fill("#predict", "rows=5000")
    tab.page.click("#run")
    tab.page.wait_for_selector("#result table")
    assert "attrs.rows" in tab.page.inner_text("#result table")
    assert "Prediction: predict with attrs.rows=5000" in tab.page.inner_text("#result")
    assert "version=1.1" in tab.page.url, "the filters are kept in the address"
    tab.page.select_option("#analysis", "compare")
    assert tab.page.locator("#result").is_hidden()
    assert tab.page.locator("#version").is_hidden()
    tab.expected.append("status of 400 (Bad Request)")  # the browser logs the failed fetch
    tab.page.fill("#baseline", "versoin 1.0")
    tab.page.fill("#candidate", "version=1.1")
    tab.page.click("#run")
    tab.page.wait_for_selector("#notice.error")
    assert "versoin 1.0" in tab.page.inner_text("#notice")
    assert tab.page.locator("#result").is_hidden()
