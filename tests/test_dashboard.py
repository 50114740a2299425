"""`lapse dashboard`: the real server, run as a subprocess, over stores written by real processes.

The helpers here (``write_store``, ``dashboard``) are also used by the browser
tests in test_dashboard_browser.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

import lapse
from lapse import synthetic
from lapse.analysis.selection import Selection
from lapse.dashboard import check_bind, serve
from tests.recording import lapse_cli, record

NESTED = """
import sys, time
import lapse

lapse.configure(service="shop", version="2.0", level="debug")

@lapse.timed("score")
def score(batch):
    lapse.set(rows=len(batch), model="gbm")
    with lapse.span("features"):
        time.sleep(0.001)
        with lapse.span("features.load"):
            time.sleep(0.0005)
    with lapse.span("inference"):
        time.sleep(0.002 * (1 + len(batch) % 3))
    if len(batch) == 7:
        raise ValueError("bad batch")
    return sum(batch)

for i in range(int(sys.argv[1])):
    try:
        score(list(range(i % 10)))
    except ValueError:
        pass
    time.sleep(float(sys.argv[2]))
"""
API = ("/api/summary", "/api/timeseries", "/api/histogram", "/api/slowest",
       "/api/trace/{run_id}/{trace_id}", "/api/runs", "/api/versions", "/api/attributes",
       "/api/status",
       "/api/analyze/compare", "/api/analyze/changes", "/api/analyze/drivers",
       "/api/analyze/slow", "/api/analyze/outliers", "/api/analyze/capacity")
PLANTED = synthetic.Workload(events=8_000, runs=4, sigma=0.3, seed=5, rate_per_s=200,
                             rows_effect_ms_per_1000=0.8, slowdowns={("1.1", "predict"): 1.2})
"""Four events over releases 1.0 and 1.1, small enough to analyse in about a second: predict
is 20% slower in 1.1, and every call's median grows by 0.8 ms per 1,000 attrs.rows."""


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child process: no LAPSE_* settings leaking in from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAPSE_")}
    return {**env, **extra}


def write_store(store: Path, calls: int = 25, pause: float = 0.1) -> None:
    """Two versions from tests/recording.record, and a debug-level process with nested spans
    and errors spread over a few seconds (so time series have several buckets)."""
    nested = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(NESTED), str(calls), str(pause)],
        env=clean_env(LAPSE_DIR=str(store)))
    record(store, calls=20, version="1.0")
    record(store, calls=20, version="2.0")
    assert nested.wait(timeout=120) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def dashboard(store: Path, *args: str, env: dict[str, str] | None = None,
              log: Path | None = None) -> Iterator[str]:
    """Run `python -m lapse dashboard --dir STORE --port P ARGS` until the block ends; yields
    its base URL (always on 127.0.0.1, whatever address it binds)."""
    port = free_port()
    log = log or store.parent / f"dashboard-{port}.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "lapse", "dashboard", "--dir", str(store), "--port", str(port),
             *args], stdout=output, stderr=subprocess.STDOUT, env=env or clean_env())
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"the dashboard exited ({process.returncode}):\n{log.read_text()}")
            try:
                httpx.get(f"{url}/api/status", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the dashboard did not answer:\n{log.read_text()}")
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of three real processes: versions 1.0 and 2.0, nested spans and errors."""
    store = tmp_path_factory.mktemp("dashboard") / "store"
    write_store(store)
    return store


@pytest.fixture(scope="module")
def server(recorded: Path) -> Iterator[str]:
    """The dashboard of that store, on loopback without a token."""
    with dashboard(recorded) as url:
        yield url


def get(url: str, **params: object) -> httpx.Response:
    return httpx.get(url, params=params, timeout=30)


def test_summary_is_lapse_report(server, recorded):
    """/api/summary is the document of `lapse report --format json`: the very same numbers."""
    for by in ((), ("version",), ("version", "attrs.model")):
        response = get(f"{server}/api/summary", by=list(by))
        assert response.status_code == 200, response.text
        document = response.json()
        expected = lapse.report(recorded, by=list(by)).to_dict()
        assert document == expected
    names = {r["name"] for r in document["rows"]}
    assert names == {"predict", "preprocess", "score", "features", "features.load", "inference"}
    assert document["events"] == 20 * 2 * 2 + 25 * 4
    assert document["dropped"] == 0


def test_filters_select_what_report_selects(server, recorded):
    """Time range, name, run and where filters give what lapse.report gives for them."""
    run = lapse.sql("select run_id from runs where service = 'shop'", recorded).to_pylist()
    for params, kwargs in (
        ({"since": "1h"}, {"since": "1h"}),
        ({"since": "all", "name": "feat*"}, {"name": "feat*"}),
        ({"run": run[0]["run_id"], "where": "status=error"},
         {"run": run[0]["run_id"], "where": "status=error"}),
    ):
        rows = get(f"{server}/api/summary", **params).json()["rows"]
        expected = lapse.report(recorded, **kwargs).rows
        # "1h ago" moves between the two calls, and with it the window throughput divides by
        assert [r.pop("throughput") for r in rows] == pytest.approx(
            [r.pop("throughput") for r in expected], rel=1e-3)
        assert rows == expected, params
    errors = get(f"{server}/api/summary", where="status=error").json()
    assert [(r["name"], r["count"]) for r in errors["rows"]] == [("score", 2)]


def test_openapi_documents_every_endpoint(server):
    """/openapi.json lists each API endpoint with a summary, a description and typed parameters."""
    schema = get(f"{server}/openapi.json").json()
    for path in API:
        operation = schema["paths"][path]["get"]
        assert operation["summary"], path
        assert operation["description"], path
    parameters = {p["name"]: p for p in schema["paths"]["/api/summary"]["get"]["parameters"]}
    assert {"since", "until", "name", "run", "where", "by"} <= set(parameters)
    assert parameters["since"]["description"]
    assert "array" in str(parameters["by"]["schema"])
    limit = {p["name"]: p for p in schema["paths"]["/api/slowest"]["get"]["parameters"]}["limit"]
    assert limit["schema"]["type"] == "integer"
    assert not any(path.startswith(("/event", "/trace/", "/static")) for path in schema["paths"])


def test_bad_input_is_400_with_the_config_error(server):
    """A typo in the grouping, a bad time or condition is HTTP 400 with lapse's own message."""
    with pytest.raises(lapse.ConfigError) as expected:
        Selection(by=["versoin"])
    response = get(f"{server}/api/summary", by="versoin")
    assert response.status_code == 400
    assert response.json()["detail"] == str(expected.value)
    response = get(f"{server}/api/timeseries", since="yesterday-ish")
    assert response.status_code == 400
    assert "is not a time" in response.json()["detail"]
    response = get(f"{server}/api/slowest", where="rows is big")
    assert response.status_code == 400
    assert "COLUMN OP VALUE" in response.json()["detail"]
    assert get(f"{server}/api/slowest", limit=0).status_code == 422


def test_charts_add_up_to_the_summary(server):
    """Time buckets and histogram bins count every call; slowest calls come slowest first."""
    rows = {r["name"]: r for r in get(f"{server}/api/summary").json()["rows"]}
    series = get(f"{server}/api/timeseries").json()
    assert series["bucket_ns"] == 1_000_000_000  # a few seconds of events: 1 s buckets
    bins = get(f"{server}/api/histogram").json()
    for name, row in rows.items():
        points = [p for p in series["points"] if p["name"] == name]
        assert sum(p["count"] for p in points) == row["count"]
        assert sum(p["errors"] for p in points) == row["errors"]
        assert sum(b["count"] for b in bins if b["name"] == name) == row["count"]
    assert len({p["bucket_ns"] for p in series["points"] if p["name"] == "score"}) >= 2
    slowest = get(f"{server}/api/slowest", name="score", limit=5).json()
    durations = [c["duration"] for c in slowest]
    assert durations == sorted(durations, reverse=True)
    assert durations[0] == rows["score"]["max"]
    assert slowest[0]["attrs"]["model"] == "gbm"
    assert slowest[0]["stack"], "debug level records the stack"


def test_trace_nests_the_spans_of_one_call(server, recorded):
    """/api/trace gives one call's spans in start order with their depth and offset."""
    failed = get(f"{server}/api/slowest", name="score", where="status=error", limit=1).json()[0]
    trace = get(f"{server}/api/trace/{failed['run_id']}/{failed['trace_id']}").json()
    assert [(s["name"], s["depth"]) for s in trace["spans"]] == [
        ("score", 0), ("features", 1), ("features.load", 2), ("inference", 1)]
    assert trace["spans"][0]["error_type"] == "ValueError"
    assert trace["spans"][0]["offset"] == 0
    assert trace["duration"] == pytest.approx(failed["duration"])
    assert all(0 <= s["offset"] <= trace["duration"] for s in trace["spans"])
    missing = get(f"{server}/api/trace/{failed['run_id']}/999999")
    assert missing.status_code == 404


def test_runs_lists_every_process(server, recorded):
    """/api/runs has each run with its resource and exact event and error counts."""
    runs = get(f"{server}/api/runs").json()
    expected = {r["run_id"] for r in lapse.sql("select run_id from runs", recorded).to_pylist()}
    assert {r["run_id"] for r in runs} == expected
    assert sorted((r["service"], r["version"], r["level"], r["events"], r["errors"])
                  for r in runs) == [("shop", "2.0", "debug", 100, 2),
                                     ("svc", "1.0", "standard", 40, 0),
                                     ("svc", "2.0", "standard", 40, 0)]
    assert all(r["ended_ns"] and r["python"] and r["pid"] for r in runs)
    keys = get(f"{server}/api/attributes", name="score").json()["keys"]
    assert keys == ["model", "rows"]


def test_pages_and_plotly_are_served_locally(server):
    """Every page is a small static file; plotly.js comes from the plotly package, no CDN."""
    import plotly

    for path in ("/", "/runs", "/analyses", "/event/score", "/trace/some-run/1"):
        page = get(f"{server}{path}")
        assert page.status_code == 200
        assert 'href="/analyses"' in page.text, "every page links to the analyses"
        assert page.headers["content-type"].startswith("text/html")
        assert "http://" not in page.text
        assert "https://" not in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
    script = get(f"{server}/vendor/plotly.min.js")
    assert script.status_code == 200
    assert script.content == (Path(plotly.__file__).parent / "package_data/plotly.min.js"
                              ).read_bytes()
    assert get(f"{server}/docs").status_code == 404, "Swagger UI would load a CDN script"


def test_without_a_token_only_loopback_names_are_answered(server):
    """A page on another site cannot reach the dashboard by rebinding its own name to 127.0.0.1."""
    assert get(f"{server}/api/status").status_code == 200
    localhost = httpx.get(f"{server}/api/status", headers={"Host": "localhost:1"})
    assert localhost.status_code == 200
    rebound = httpx.get(f"{server}/api/status", headers={"Host": "attacker.example"})
    assert rebound.status_code == 403


def test_empty_and_missing_stores_say_so(tmp_path):
    """Before anything was recorded the API explains instead of failing; it follows the store
    as it appears."""
    store = tmp_path / "not-yet"
    with dashboard(store) as url:
        status = get(f"{url}/api/status").json()
        assert status["exists"] is False
        missing = get(f"{url}/api/summary")
        assert missing.status_code == 404
        assert "no lapse store" in missing.json()["detail"]
        (store / "events").mkdir(parents=True)
        (store / "runs").mkdir()
        empty = get(f"{url}/api/summary").json()
        assert (empty["events"], empty["rows"]) == (0, [])
        assert get(f"{url}/api/runs").json() == []
        assert get(f"{url}/api/timeseries").json()["points"] == []
        before = get(f"{url}/api/status").json()["fingerprint"]
        record(store, calls=3)
        assert get(f"{url}/api/status").json()["fingerprint"] != before
        assert get(f"{url}/api/summary").json()["events"] == 6


def test_token_is_required_on_every_request(recorded):
    """With --token: 401 without it, 403 with a wrong one, 200 with the header or the cookie
    set by opening a page as /?token=..."""
    token = "s3cret-token-for-tests"
    with dashboard(recorded, "--token", token) as url:
        for path in ("/api/summary", "/api/analyze/compare", "/", "/runs", "/analyses",
                     "/openapi.json", "/vendor/plotly.min.js"):
            assert get(f"{url}{path}").status_code == 401, path
        refused = get(f"{url}/api/summary")
        assert refused.headers["www-authenticate"] == "Bearer"
        wrong = httpx.get(f"{url}/api/summary", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403
        good = httpx.get(f"{url}/api/summary", headers={"Authorization": f"Bearer {token}"})
        assert good.status_code == 200
        assert good.json()["events"] == 180
        assert get(f"{url}/api/summary", token=token).status_code == 401, "API: header only"
        assert get(f"{url}/", token="nope").status_code == 403
        opened = get(f"{url}/runs", token=token, since="1h")
        assert opened.status_code == 303
        assert opened.headers["location"] == "/runs?since=1h", "the token leaves the address"
        cookie = opened.headers["set-cookie"]
        assert "httponly" in cookie.lower()
        assert token not in cookie
        with httpx.Client(base_url=url, cookies=opened.cookies) as browser:
            assert browser.get("/runs").status_code == 200
            assert browser.get("/api/runs").status_code == 200


def test_token_from_the_environment_allows_another_address(recorded):
    """LAPSE_DASHBOARD_TOKEN lets it bind 0.0.0.0, and the token is then enforced."""
    env = clean_env(LAPSE_DASHBOARD_TOKEN="from-the-environment")
    with dashboard(recorded, "--host", "0.0.0.0", env=env) as url:
        assert get(f"{url}/api/status").status_code == 401
        answer = httpx.get(f"{url}/api/status",
                           headers={"Authorization": "Bearer from-the-environment"})
        assert answer.status_code == 200


def test_other_addresses_need_a_token(tmp_path):
    """Binding 0.0.0.0 without a token is refused with a message saying what to do; exit 2."""
    result = lapse_cli("dashboard", "--host", "0.0.0.0", "--port", str(free_port()),
                       store=tmp_path, env={"LAPSE_DASHBOARD_TOKEN": ""})
    assert result.returncode == 2
    assert "not a loopback address" in result.stderr
    assert "--token" in result.stderr
    assert "LAPSE_DASHBOARD_TOKEN" in result.stderr
    for host in ("0.0.0.0", "192.168.1.10", "::", "example.org", ""):
        with pytest.raises(lapse.LapseError, match="loopback"):
            serve(tmp_path, host=host)
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(host, None)
    check_bind("0.0.0.0", "a-token")
    with pytest.raises(lapse.ConfigError, match="empty token"):
        check_bind("0.0.0.0", " ")


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic store with known truth (PLANTED)."""
    store = tmp_path_factory.mktemp("analyses") / "store"
    synthetic.write(store, PLANTED)
    return store


@pytest.fixture(scope="module")
def analyses(planted: Path) -> Iterator[str]:
    """The dashboard of the planted store."""
    with dashboard(planted) as url:
        yield url


def analyse(url: str, analysis: str, **params: object) -> httpx.Response:
    return get(f"{url}/api/analyze/{analysis}", **params)


def test_compare_finds_the_planted_slowdown(analyses, planted):
    """/api/analyze/compare: only predict is slower in 1.1, as lapse.analyze.compare says, with
    the explanation and the HTML table of the result."""
    answer = analyse(analyses, "compare", baseline="version=1.0", candidate="version=1.1")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["analysis"] == "compare"
    verdicts = {e["name"]: e["verdict"] for e in body["result"]["events"]}
    assert verdicts == {"predict": "slower", "preprocess": "unchanged",
                        "load_features": "unchanged", "postprocess": "unchanged"}
    assert body["result"]["regressed"] is True
    expected = lapse.analyze.compare("version=1.0", "version=1.1", planted)
    assert body["explain"] == expected.explain()
    assert body["html"] == expected.render("html")
    assert "<table>" in body["html"]
    assert "Brunner-Munzel" in body["explain"]


def test_drivers_name_the_planted_driver(analyses):
    """/api/analyze/drivers ranks attrs.rows, the attribute latency was made to grow with, as a
    driver; version (predict is slower in 1.1) is one too."""
    body = analyse(analyses, "drivers", event="predict", since="all").json()
    drivers = [d["feature"] for d in body["result"]["drivers"] if d["noticeable"]]
    assert drivers[0] == "attrs.rows"
    assert "version" in drivers
    assert "attrs.rows" in body["html"]


def test_every_analysis_answers_in_the_same_shape(analyses):
    """changes, slow, outliers and capacity answer with their result, explanation and HTML;
    optional parameters may be left out or empty, as the page sends them."""
    for analysis, params in (("changes", {"since": "all"}), ("changes", {"event": ""}),
                             ("slow", {"event": "predict", "slo": "12ms"}),
                             ("outliers", {"event": "predict", "since": "all"}),
                             ("outliers", {}),
                             ("capacity", {"event": "predict", "slo": "p99<200ms"}),
                             ("capacity", {"event": "predict", "slo": "p99<200ms",
                                           "rate": 500})):
        answer = analyse(analyses, analysis, **params)
        assert answer.status_code == 200, (analysis, answer.text)
        body = answer.json()
        assert body["analysis"] == analysis
        assert body["result"]["schema"].startswith("lapse.")
        assert body["html"].startswith("<div class='lapse-analysis'>")
        assert body["explain"]
    capacity = analyse(analyses, "capacity", event="predict", slo="p99<200ms", rate=500).json()
    assert capacity["result"]["target_rate"] == 500


def test_bad_analysis_input_is_400_with_lapse_message(analyses, planted):
    """A bad selector, event, SLO or time is HTTP 400 with lapse's own message; a missing or
    mistyped parameter is 422; an analysis that does not exist is 404."""
    with pytest.raises(lapse.ConfigError) as expected:
        lapse.analyze.compare("versoin 1.0", "version=1.1", planted)
    answer = analyse(analyses, "compare", baseline="versoin 1.0", candidate="version=1.1")
    assert answer.status_code == 400
    assert answer.json() == {"detail": str(expected.value)}
    unknown = analyse(analyses, "drivers", event="predcit")
    assert unknown.status_code == 400
    assert "Did you mean 'predict'?" in unknown.json()["detail"]
    assert analyse(analyses, "slow", event="predict", slo="soon").status_code == 400
    assert "is not a time" in analyse(analyses, "outliers", since="whenever").json()["detail"]
    assert analyse(analyses, "slow", event="predict").status_code == 422
    assert analyse(analyses, "capacity", event="predict", slo="p99<1s", rate=0
                   ).status_code == 422
    missing = analyse(analyses, "forecast")
    assert missing.status_code == 404
    assert "compare, changes, drivers" in missing.json()["detail"]


def test_not_enough_data_is_400_saying_how_much(server):
    """On a store of a few dozen calls, an analysis that needs more says how many (HTTP 400)."""
    answer = analyse(server, "drivers", event="score")
    assert answer.status_code == 400
    assert "at least" in answer.json()["detail"]


def test_the_app_answers_while_an_analysis_runs(analyses):
    """An analysis runs in a worker thread: other requests are answered meanwhile."""
    finished: dict[str, float] = {}

    def compare() -> None:
        analyse(analyses, "compare", baseline="version=1.0", candidate="version=1.1",
                threshold=0.1)
        finished["compare"] = time.monotonic()

    worker = threading.Thread(target=compare)
    worker.start()
    time.sleep(0.05)
    assert get(f"{analyses}/api/status").status_code == 200
    finished["status"] = time.monotonic()
    worker.join(timeout=60)
    assert finished["status"] < finished["compare"]


def test_openapi_documents_the_analyses(analyses):
    """Each analysis is in /openapi.json with its own described parameters and error answers."""
    paths = get(f"{analyses}/openapi.json").json()["paths"]
    parameters = {path.rsplit("/", 1)[1]: {p["name"]: p for p in paths[path]["get"]["parameters"]}
                  for path in paths if path.startswith("/api/analyze/")}
    assert set(parameters) == {"compare", "changes", "drivers", "slow", "outliers", "capacity"}
    assert {name for name, p in parameters["compare"].items() if p["required"]} == {
        "baseline", "candidate"}
    assert {name for name, p in parameters["capacity"].items() if p["required"]} == {
        "event", "slo"}
    assert all(p["description"] for each in parameters.values() for p in each.values())
    assert "400" in paths["/api/analyze/slow"]["get"]["responses"]


def count(store: Path, condition: str) -> int:
    """Calls meeting an SQL condition, counted independently of the analyses."""
    query = f"select count(*) as n from events where {condition}"
    return int(lapse.sql(query, store).to_pylist()[0]["n"])


def test_versions_lists_the_releases(analyses):
    """/api/versions: the releases the page offers as a filter."""
    assert sorted(get(f"{analyses}/api/versions").json()["versions"]) == ["1.0", "1.1"]


def examined(answer: httpx.Response) -> int:
    """Calls an outliers answer looked at, over its events."""
    assert answer.status_code == 200, answer.text
    return sum(event["calls"] for event in answer.json()["result"]["events"])


def test_version_until_and_where_narrow_the_analyses(analyses, planted):
    """version, where and until select the calls as lapse.analyze does: the counts are those of
    the store's own SQL; conditions may be joined by commas or repeated."""
    assert examined(analyse(analyses, "outliers")) == count(planted, "true")
    release = analyse(analyses, "outliers", version="1.1")
    assert examined(release) == count(planted, "version = '1.1'") < count(planted, "true")
    assert release.json()["explain"] == lapse.analyze.outliers(planted, version="1.1").explain()
    drivers = analyse(analyses, "drivers", event="predict", version="1.1").json()
    assert drivers["result"]["calls"] == count(planted, "name = 'predict' and version = '1.1'")
    joined = analyse(analyses, "outliers", where="attrs.rows>=5000, host=host-0")
    repeated = get(f"{analyses}/api/analyze/outliers",
                   where=["attrs.rows>=5000", "host=host-0"])
    assert joined.json()["result"] == repeated.json()["result"]
    big = "TRY_CAST(json_extract_string(attrs, '$.rows') AS DOUBLE) >= 5000"
    assert examined(joined) == count(planted, f"{big} and host = 'host-0'") > 0
    middle = lapse.sql("select quantile_disc(start_ns, 0.5) // 1000000000 * 1000000000 as t "
                       "from events", planted).to_pylist()[0]["t"]  # a whole second
    early = analyse(analyses, "outliers", since="all", until=_iso(middle))
    assert examined(early) == count(planted, f"start_ns < {middle}") > 0


def _iso(ns: int) -> str:
    """An epoch-ns time as the ISO text `until` takes."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat()


def test_bad_condition_or_version_is_400_with_lapse_message(analyses, planted):
    """A condition lapse cannot read, or a release the store never recorded, is HTTP 400 with
    lapse's own message, naming what was typed."""
    with pytest.raises(lapse.ConfigError) as expected:
        lapse.analyze.outliers(planted, where="attrs.rows>>5")
    answer = analyse(analyses, "outliers", where="attrs.rows>>5")
    assert answer.status_code == 400
    assert answer.json() == {"detail": str(expected.value)}
    unknown = analyse(analyses, "slow", event="predict", slo="12ms", version="9.9")
    assert unknown.status_code == 400
    assert "version '9.9' is not in the store" in unknown.json()["detail"]
    assert "1.1" in unknown.json()["detail"]
    assert analyse(analyses, "drivers", event="predict", predict="rows").status_code == 400


def test_drivers_predicts_with_an_interval(analyses):
    """predict=rows=5000 adds the model's estimate, inside its interval, to the answer."""
    body = analyse(analyses, "drivers", event="predict", predict="rows=5000").json()
    prediction = body["result"]["prediction"]
    assert prediction["inputs"] == {"attrs.rows": 5000}
    assert 0 < prediction["low"] <= prediction["estimate"] <= prediction["high"]
    assert "Prediction: predict with attrs.rows=5000" in body["explain"]
    assert "class='prediction'" in body["html"]
