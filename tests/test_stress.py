"""`lapse stress`: parsing, the HTTP response reader, bad input, and stress runs in the store.

End-to-end tests run the real ``lapse`` command in a subprocess against a real
HTTP server (tests/stress_targets.py) or callables, at modest rates.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lapse
from lapse._errors import ConfigError
from lapse.stress import plan
from lapse.stress.schedule import intended_times, parse_ramp, parse_rate, parse_slo
from lapse.stress.summary import FIELDS, LATENCY_FIELDS, STEP_FIELDS
from lapse.stress.wire import Connection, build_requests
from tests.recording import lapse_cli
from tests.stress_targets import serving

ROOT = Path(__file__).resolve().parent.parent


def stress(*args: str, store: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``lapse stress ARGS --dir STORE`` from the repository root (so tests.* imports)."""
    return subprocess.run(
        [sys.executable, "-m", "lapse", "stress", *args, "--dir", str(store)],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False,
        env={**os.environ, "COLUMNS": "200"})


# -- parsing ---------------------------------------------------------------------------


def test_rates_ramps_and_objectives_parse_from_user_words():
    """Rates take units; a ramp lists its steps; objectives bound percentiles and errors."""
    assert parse_rate("200") == 200
    assert parse_rate("1.5k/s") == 1500
    assert parse_rate("3000/min") == 50
    assert parse_ramp("50:200:50") == [50, 100, 150, 200]
    p99, errors = parse_slo("p99<200ms, errors<=1%")
    assert (p99.metric, p99.limit, p99.inclusive, p99.percentile) == ("p99", 0.2, False, 99.0)
    assert (errors.metric, errors.limit, errors.inclusive) == ("errors", 0.01, True)
    assert p99.met_by(0.199)
    assert not p99.met_by(0.2)
    assert not p99.met_by(None)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: parse_rate("20x"), "is not a rate; expected requests per second such as 200"),
    (lambda: parse_rate("0"), "not a usable rate"),
    (lambda: parse_ramp("50:100"), "expected START:STOP:STEP"),
    (lambda: parse_ramp("100:50:10"), "goes down"),
    (lambda: parse_slo("p99 under 2s"), "is not an objective; expected METRIC<LIMIT"),
    (lambda: parse_slo("errors<150%"), "the error limit is a percentage"),
    (lambda: plan("http://127.0.0.1:1/", rate="10", users=3), "got rate and users"),
    (lambda: plan("http://127.0.0.1:1/"), "say how much load"),
    (lambda: plan("http://127.0.0.1:1/", rate="10", duration="ten"), "duration"),
    (lambda: plan("http://127.0.0.1:1/", rate="10", duration="1s", warmup="2s"),
     "not shorter than the duration"),
    (lambda: plan("not a target", rate="10"), "is not MODULE:FUNCTION"),
    (lambda: plan("ftp://127.0.0.1/", rate="10"), "is not an http:// or https:// URL"),
])
def test_bad_input_is_refused_with_a_message_saying_what_is_expected(call, message):
    """Each mistake raises ConfigError naming the value and what would be accepted."""
    with pytest.raises(ConfigError, match=message):
        call()


def test_constant_and_poisson_arrivals_have_the_asked_rate():
    """Constant arrivals are evenly spaced; Poisson ones average the rate (exponential gaps)."""
    constant = list(intended_times(0, 1_000_000_000, 100, "constant"))
    assert len(constant) == 100
    assert {b - a for a, b in itertools.pairwise(constant)} == {10_000_000}
    staggered = list(intended_times(0, 1_000_000_000, 50, "constant", offset=0.5))
    assert staggered[0] == 10_000_000
    poisson = list(intended_times(0, 100_000_000_000, 100, "poisson", seed=3))
    assert 9_500 < len(poisson) < 10_500
    gaps = [b - a for a, b in itertools.pairwise(poisson)]
    share_short = sum(g < 10_000_000 for g in gaps) / len(gaps)
    assert abs(share_short - (1 - 2.718281828 ** -1)) < 0.02  # P(gap < mean) = 1 - 1/e


# -- the HTTP response reader ------------------------------------------------------------


class _Worker:
    head_only = False

    def __init__(self):
        self.finished = []
        self.results = self

    def code(self, name, message=""):
        self.finished.append(("error", name))
        return 1

    def add(self, intended, sent, end, code, step):
        self.finished.append(("done", code))

    def done(self, conn):
        pass

    def lost(self, conn):
        pass


class _Transport:
    def write(self, data):
        pass

    def close(self):
        pass


def _feed(response: bytes, split: int) -> list[tuple[str, object]]:
    worker = _Worker()
    conn = Connection(worker)  # type: ignore[arg-type]
    conn.connection_made(_Transport())  # type: ignore[arg-type]
    conn.send(b"GET / HTTP/1.1\r\n\r\n", 0, 0)
    conn.data_received(response[:split])
    if split < len(response):
        conn.data_received(response[split:])
    return worker.finished


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n"
    b"3\r\nabc\r\n0\r\nTrailer: t\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
])
def test_responses_end_where_http_says_however_they_are_split(response):
    """Content-Length, chunked bodies (with extensions and trailers), interim 100 responses
    and bodiless statuses end at the right byte, whatever the packet boundaries."""
    for split in range(1, len(response) + 1):
        assert _feed(response, split) == [("done", 0)], split


def test_error_statuses_and_garbage_are_errors():
    """A status of 400 or more is an error named 'HTTP <status>'; a non-HTTP answer too."""
    assert _feed(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n", 10) == [
        ("error", "HTTP 503"), ("done", 1)]
    assert _feed(b"SSH-2.0-OpenSSH\r\n\r\n", 5) == [("error", "BadResponse"), ("done", 1)]


def test_requests_carry_host_headers_and_payload_bodies():
    """Requests are built once: Host with the port, given headers, JSON payloads with length."""
    made = plan("http://localhost:8123/predict?v=2", rate="1", method="post",
                headers=(("Authorization", "Bearer x"),))
    (request,) = build_requests(made, None)
    assert request.startswith(b"POST /predict?v=2 HTTP/1.1\r\nHost: localhost:8123\r\n")
    assert b"Authorization: Bearer x\r\n" in request
    bodies = build_requests(made, [{"x": [1, 2]}, "text"])
    assert bodies[0].endswith(b'Content-Length: 13\r\n\r\n{"x": [1, 2]}')
    assert b"Content-Type: application/json" in bodies[0]
    assert bodies[1].endswith(b"\r\n\r\ntext")


# -- bad targets, end to end --------------------------------------------------------------


def test_a_remote_host_needs_allow_remote(store):
    """A URL off this machine is refused unless --allow-remote names its host."""
    result = stress("http://192.0.2.10/predict", "--rate", "10", store=store)
    assert result.returncode == 2
    assert "refusing to send load to '192.0.2.10'" in result.stderr
    assert "--allow-remote 192.0.2.10" in result.stderr
    assert not store.exists()


def test_an_unreachable_target_says_so(store):
    """Nothing listening: the message names the URL and the refused connection."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = stress(f"http://127.0.0.1:{port}/", "--rate", "10", store=store)
    assert result.returncode == 2
    assert f"cannot reach http://127.0.0.1:{port}/: connection refused" in result.stderr


def test_a_missing_callable_and_bad_strings_are_clear(store):
    """A module that does not exist, a bad rate or duration: one line each, exit status 2."""
    missing = stress("tests.no_such_module:run", "--rate", "10", "--duration", "1s",
                     store=store)
    assert missing.returncode == 2
    assert "cannot import 'tests.no_such_module'" in missing.stderr
    bad_rate = stress("tests.stress_targets:sleep_5ms", "--rate", "20x", store=store)
    assert bad_rate.returncode == 2
    assert "argument --rate: '20x' is not a rate" in bad_rate.stderr
    bad_duration = stress("tests.stress_targets:sleep_5ms", "--rate", "20", "--duration",
                          "ten", store=store)
    assert bad_duration.returncode == 2
    assert "argument --duration: 'ten' is not valid" in bad_duration.stderr


def test_a_target_that_raises_is_reported_with_its_traceback(store):
    """Every call failing: exit status 1, the error type counted, its first traceback shown,
    and the failed requests are still stored."""
    result = stress("tests.stress_targets:always_fails", "--rate", "40", "--duration", "1s",
                    "--workers", "1", store=store)
    assert result.returncode == 1
    assert "every request failed (40)" in result.stderr
    assert "ValueError: the model is not loaded" in result.stderr
    assert 'stress_targets.py", line' in result.stderr
    assert "│ ValueError │    40 │" in result.stdout
    errors = lapse.sql("SELECT error_type, count(*) AS n FROM events WHERE kind = 'request' "
                       "GROUP BY 1", store).to_pylist()
    assert errors == [{"error_type": "ValueError", "n": 40}]


# -- stress runs in the store --------------------------------------------------------------


def test_every_request_is_an_event_of_a_stress_run(store, tmp_path):
    """Each request is a stored event of the stress run (kind request, started at its
    intended time); the run is marked stress; report, compare and the HTML report read it."""
    with serving() as fast:
        first = stress(fast.url, "--rate", "100", "--duration", "1.5s", "--format", "json",
                       "--report", str(tmp_path / "stress.html"), store=store)
    assert first.returncode == 0, first.stderr
    doc = json.loads(first.stdout)
    assert doc["schema"] == "lapse.stress/1"
    assert list(doc) == [name for name, _ in FIELDS]
    assert set(doc["steps"][0]) <= {name for name, _ in STEP_FIELDS}
    assert list(doc["latency"]["corrected"]) == list(LATENCY_FIELDS)
    assert doc["requests"]["total"] == doc["requests"]["ok"] == 150
    assert abs(doc["achieved_rate"] - 100) < 2
    run_id = doc["run_id"]
    events = lapse.sql(f"SELECT count(*) AS n, min(name) AS name, min(kind) AS kind "
                       f"FROM events WHERE run_id = '{run_id}' AND kind = 'request'", store)
    assert events.to_pylist() == [{"n": 150, "name": "GET /predict", "kind": "request"}]
    assert lapse.sql("SELECT kind FROM runs", store).column("kind").to_pylist() == ["stress"]
    summary = lapse.sql("SELECT attrs FROM events WHERE kind = 'stress'", store)
    attrs = json.loads(summary.column("attrs")[0].as_py())
    assert attrs["requests"] == 150
    assert attrs["target_rate"] == 100
    html = (tmp_path / "stress.html").read_text()
    assert "throughput vs latency" in html
    assert "plotly" in html
    report = lapse_cli("report", "--run", run_id, "--format", "json", store=store)
    rows = {r["name"]: r for r in json.loads(report.stdout)["rows"]}
    assert rows["GET /predict"]["count"] == 150
    with serving(service_s=0.008) as slow:
        second = stress(slow.url, "--rate", "100", "--duration", "1.5s", "--format", "json",
                        store=store)
    slower_run = json.loads(second.stdout)["run_id"]
    compared = lapse_cli("compare", "--baseline", f"run_id={run_id}", "--candidate",
                         f"run_id={slower_run}", "--format", "json", store=store)
    assert compared.returncode == 1
    verdicts = {e["name"]: e for e in json.loads(compared.stdout)["events"]}
    assert verdicts["GET /predict"]["verdict"] == "slower"
    assert 1.4 < verdicts["GET /predict"]["ratio"] < 1.8


def test_ctrl_c_stops_cleanly_and_keeps_what_was_measured(store):
    """SIGINT in the middle of a 30 s run: the summary is printed (interrupted), exit status
    130, and every request measured is in the store."""
    with serving() as server:
        process = subprocess.Popen(
            [sys.executable, "-m", "lapse", "stress", server.url, "--rate", "100", "--duration",
             "30s", "--format", "json", "--dir", str(store)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        deadline = time.monotonic() + 20
        while len(server.durations_ns) < 100 and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    doc = json.loads(out)
    assert doc["interrupted"] is True
    assert 100 <= doc["requests"]["total"] < 1000
    stored = lapse.sql("SELECT count(*) FROM events WHERE kind = 'request'", store)
    assert stored.column(0)[0].as_py() == doc["requests"]["total"]


def test_closed_loop_users_with_think_time(store):
    """4 users, 5 ms service and 20 ms think time: about 4 / 25 ms = 160 requests/s."""
    with serving() as server:
        result = stress(server.url, "--users", "4", "--think", "20ms", "--duration", "2s",
                        "--format", "json", store=store)
    doc = json.loads(result.stdout)
    assert doc["mode"] == "closed"
    assert doc["latency"]["corrected"] is None
    assert 130 < doc["throughput"] < 175
    assert doc["latency"]["uncorrected"]["median"] < 0.008


def test_payload_items_are_the_callables_arguments(store):
    """--payload gives the inputs in turn: sleeps of 2 and 8 ms make a two-humped latency."""
    result = stress("tests.stress_targets:sleep_ms", "--payload", "tests.stress_targets:delays",
                    "--users", "1", "--workers", "1", "--requests", "40", "--duration", "5s",
                    "--format", "json", store=store)
    doc = json.loads(result.stdout)
    assert doc["requests"]["total"] == 40
    stats = doc["latency"]["uncorrected"]
    assert 0.002 <= stats["min"] < 0.004
    assert stats["max"] >= 0.008  # no upper bound: one late wake-up of the OS sets a max
    assert 0.002 <= stats["lower_hinge"] < 0.004
    assert 0.008 <= stats["upper_hinge"] < 0.012


def test_docs_describe_every_json_field():
    """docs/testing.md has a row for every field of the JSON summary and of its steps."""
    doc = (ROOT / "docs" / "testing.md").read_text()
    assert "lapse.stress/1" in doc
    for name, meaning in (*FIELDS, *STEP_FIELDS):
        assert f"| `{name}` | {meaning} |" in doc, name
    for name in LATENCY_FIELDS:
        assert f"`{name}`" in doc


def test_a_process_can_mark_its_run_as_a_test_or_stress_run(store):
    """RECORDER.set_run_kind rewrites the run record's kind at the next flush, holds for runs
    started later in the process, and lapse.reset() forgets it."""
    from lapse._recorder import RECORDER

    @lapse.timed
    def work():
        return 1

    lapse.configure(dir=store)
    work()
    lapse.flush()
    assert lapse.sql("SELECT kind FROM runs", store).column(0).to_pylist() == ["process"]
    RECORDER.set_run_kind("stress")
    lapse.flush()
    assert lapse.sql("SELECT kind FROM runs", store).column(0).to_pylist() == ["stress"]
    lapse.configure(dir=store / "other")  # a new run, still marked
    work()
    lapse.flush()
    assert lapse.sql("SELECT kind FROM runs", store / "other").column(0).to_pylist() == [
        "stress"]
    lapse.reset()
    assert RECORDER.run_kind == "process"
