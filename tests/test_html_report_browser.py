"""`lapse report --format html` opened in a real headless Chromium with the network cut off."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import lapse
from tests.recording import lapse_cli
from tests.test_dashboard import write_store
from tests.test_dashboard_browser import ARGS, ARTIFACTS, CHROMIUM

playwright_sync = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium")
CHARTS = ("box", "histogram", "latency", "volume")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One headless Chromium for the module."""
    with playwright_sync.sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


def test_html_report_draws_every_chart_offline(browser, tmp_path):
    """Every chart of the report renders from the file alone: no request leaves the machine."""
    store = tmp_path / "store"
    write_store(store, calls=10, pause=0.02)
    report = tmp_path / "report.html"
    result = lapse_cli("report", "--format", "html", "-o", str(report), store=store)
    assert result.returncode == 0, result.stderr
    events = len(lapse.report(store).rows)
    assert events == 6

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    attempted: list[str] = []

    def offline(route):
        if route.request.url.startswith(("file://", "data:")):
            route.continue_()
        else:
            attempted.append(route.request.url)
            route.abort()

    context.route("**/*", offline)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(report.as_uri())
        for index in range(events):
            for kind in CHARTS:
                page.wait_for_selector(f"#{kind}-{index}.js-plotly-plot .main-svg")
        assert page.locator(".js-plotly-plot").count() == len(CHARTS) * events
        box_traces = page.evaluate("document.getElementById('box-0').data.map(t => t.type)")
        assert box_traces == ["box"]
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=ARTIFACTS / "html-report.png", full_page=True)
    finally:
        context.close()
    assert attempted == [], "the report asked for something off this machine"
    assert errors == []
