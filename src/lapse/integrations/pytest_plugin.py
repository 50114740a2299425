"""The pytest plugin: test durations and lapse events into the store, benchmarks, a release gate.

Registered through the ``pytest11`` entry point; without ``--lapse`` (or
``--lapse-baseline``) it only adds its options and the ``lapse_bench``
fixture, which then measures without storing. With it:

- each test's setup, call and teardown is an event of kind ``test`` named by
  the node id, with ``attrs`` ``test_run`` (one id per pytest session, shared
  by xdist workers), ``phase``, ``outcome`` (and ``worker`` under xdist); the
  process's run is marked ``test`` and carries the git commit. Each phase is
  the parent span of the lapse events made inside it, so a test's events are
  the ones in its trace;
- ``lapse_bench(fn, *args)`` warms ``fn`` up, calibrates how many calls make
  a round of at least 1 ms, and stores each round's time per call as an event
  of kind ``bench`` named ``<node id>::<function>``;
- ``--lapse-baseline SELECTOR`` compares this test run with a baseline test
  run through ``lapse compare``'s statistics (median ratio with bootstrap
  interval, Brunner-Munzel, Holm across events) and fails the session when
  anything is significantly slower beyond ``--lapse-threshold``.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any

import pytest

from lapse.integrations.pytest_gate import gate, summary_lines, write_report

if TYPE_CHECKING:
    from lapse.analysis.compare import Comparison

PLUGIN_NAME = "lapse-recorder"
PHASES = ("setup", "call", "teardown")


def _fraction(text: str) -> float:
    """``0.1`` or ``10%``."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 10:
        import argparse

        raise argparse.ArgumentTypeError(f"{text!r} is not a threshold; expected a fraction "
                                         "such as 0.1 or a percentage such as 10%")
    return value


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add lapse's options to pytest."""
    group = parser.getgroup("lapse", "lapse performance recording")
    group.addoption("--lapse", action="store_true", default=False,
                    help="record test durations and lapse events into the lapse store")
    group.addoption("--lapse-dir", metavar="PATH",
                    help="store to record into (default: $LAPSE_DIR, else ./.lapse)")
    group.addoption("--lapse-baseline", metavar="SELECTOR",
                    help="compare with a baseline and fail when slower: a test run id, a run "
                    "id, a git commit, 'last' (the previous test run) or a store directory "
                    "(its last test run); implies --lapse")
    group.addoption("--lapse-threshold", type=_fraction, default=0.05, metavar="FRACTION",
                    help="smallest slowdown that fails the gate, e.g. 0.1 or 10%% (default 5%%)")
    group.addoption("--lapse-alpha", type=float, default=0.05, metavar="ALPHA",
                    help="significance level after Holm correction (default 0.05)")
    group.addoption("--lapse-min-calls", type=int, default=20, metavar="N",
                    help="samples needed on each side to judge an event (default 20)")
    group.addoption("--lapse-report", metavar="FILE",
                    help="write the comparison to FILE: .html, else Markdown")


def pytest_configure(config: pytest.Config) -> None:
    """Start recording when asked (--lapse or --lapse-baseline); otherwise do nothing."""
    if config.getoption("lapse") or config.getoption("lapse_baseline"):
        config.pluginmanager.register(LapsePlugin(config), PLUGIN_NAME)


def _new_test_run() -> str:
    import time

    from lapse._recorder import new_run_id

    return "t" + new_run_id(time.time_ns(), os.getpid())


class LapsePlugin:
    """Records one pytest session (one process of it under xdist) and runs the gate."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
        self.worker = None if workerinput is None else str(workerinput.get("workerid", ""))
        self.controller = workerinput is None and (
            getattr(config.option, "dist", "no") != "no" and bool(getattr(config.option, "tx",
                                                                            None)))
        given = config.getoption("lapse_dir")
        if workerinput is not None and workerinput.get("lapse_dir"):
            given = workerinput["lapse_dir"]
        self.store = _store(given)
        self.test_run = (str(workerinput["lapse_test_run"]) if workerinput is not None
                         and "lapse_test_run" in workerinput else _new_test_run())
        self.instruments: dict[str, Any] = {}
        self.phases: dict[tuple[str, str], tuple[int, int, int]] = {}
        self.phases_attrs: dict[tuple[str, str], dict[str, Any]] = {}
        self.recorded = 0
        self.comparison: Comparison | None = None
        self.problem: str | None = None
        self.note: str | None = None
        if not self.controller:
            self._start()

    def _start(self) -> None:
        from lapse._control import configure
        from lapse._recorder import RECORDER

        configure(dir=self.store)  # also exported as LAPSE_DIR, for the tests' subprocesses
        RECORDER.set_run_kind("test")
        RECORDER.activate()

    # -- xdist ----------------------------------------------------------------------

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        """Give every xdist worker this session's test-run id and store."""
        node.workerinput["lapse_test_run"] = self.test_run
        node.workerinput["lapse_dir"] = str(self.store)

    # -- recording --------------------------------------------------------------------

    def _phase(self, item: pytest.Item, when: str) -> Generator[None, Any, Any]:
        """Time one phase; lapse events made inside it are its children."""
        from lapse._hotpath import _enter, _ids, _reset
        from lapse._recorder import RECORDER

        if RECORDER.run_kind != "test":  # the tests called lapse.reset()
            RECORDER.set_run_kind("test")
        sid = next(_ids)
        ctx: list[Any] = [sid, sid, None, None]
        token = _enter(ctx)
        t0 = perf_counter_ns()
        try:
            return (yield)
        finally:
            t1 = perf_counter_ns()
            _reset(token, ctx)  # even in another context (a test switched contexts)
            self.phases[(item.nodeid, when)] = (sid, t0, t1)
            if ctx[2]:
                self.phases_attrs[(item.nodeid, when)] = dict(ctx[2])

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, Any, Any]:
        """Time the setup phase (fixtures)."""
        return (yield from self._phase(item, "setup"))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, Any, Any]:
        """Time the test itself."""
        return (yield from self._phase(item, "call"))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, Any, Any]:
        """Time the teardown phase."""
        return (yield from self._phase(item, "teardown"))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        """Store the phase just reported, with its outcome."""
        report = yield
        timing = self.phases.pop((item.nodeid, call.when), None)
        if timing is not None:
            sid, t0, t1 = timing
            attrs: dict[str, Any] = {**self.phases_attrs.pop((item.nodeid, call.when), {}),
                                     "test_run": self.test_run, "phase": call.when,
                                     "outcome": report.outcome}
            if self.worker:
                attrs["worker"] = self.worker
            error = call.excinfo.type if report.failed and call.excinfo is not None else None
            from lapse._hotpath import _link_of

            instrument = self._instrument(item.nodeid, "test")
            head = instrument if error is None else (instrument, error)
            self.append((head, t0, t1 - t0, sid, _link_of(None, None), attrs, None))
        return report

    def _instrument(self, name: str, kind: str) -> Any:
        instrument = self.instruments.get(f"{kind}:{name}")
        if instrument is None:
            from lapse._instrument import Instrument

            instrument = self.instruments[f"{kind}:{name}"] = Instrument(name, kind=kind)
        return instrument

    def append(self, event: tuple[Any, ...]) -> None:
        """Buffer one event for the writer (starting it again after a lapse.reset())."""
        from lapse._config import OFF
        from lapse._recorder import RECORDER

        if RECORDER.level <= 0 and (RECORDER.level == OFF or RECORDER.activate() == OFF):
            return
        if len(RECORDER.buffer) < RECORDER.capacity:
            RECORDER.buffer.append(event)
            self.recorded += 1
        else:
            RECORDER.drop()

    # -- the end ----------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Write what was recorded; then (not in xdist workers) run the gate."""
        from lapse._errors import LapseError
        from lapse._recorder import RECORDER

        if not self.controller:
            RECORDER.flush()
        if self.worker is not None:
            return
        selector = self.config.getoption("lapse_baseline")
        if not selector:
            return
        try:
            self.comparison, self.note = gate(
                selector, self.store, self.test_run,
                threshold=self.config.getoption("lapse_threshold"),
                alpha=self.config.getoption("lapse_alpha"),
                min_calls=self.config.getoption("lapse_min_calls"))
        except LapseError as error:
            self.problem = str(error)
            session.exitstatus = pytest.ExitCode.USAGE_ERROR
            return
        report = self.config.getoption("lapse_report")
        if report and self.comparison is not None:
            write_report(self.comparison, Path(report))
        if self.comparison is not None and self.comparison.regressed and \
                session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        """What was recorded, and the gate's table of what changed."""
        if self.worker is not None:
            return
        tr = terminalreporter
        tr.section("lapse")
        tr.write_line(f"test run {self.test_run} recorded in {self.store}")
        if self.problem is not None:
            tr.write_line(f"lapse: error: {self.problem}", red=True, bold=True)
            return
        if self.note:
            tr.write_line(f"lapse: {self.note}", yellow=True)
        if self.comparison is not None:
            for line, style in summary_lines(self.comparison):
                tr.write_line(line, **style)
            report = self.config.getoption("lapse_report")
            if report:
                tr.write_line(f"wrote {report}")


def _store(given: str | None) -> Path:
    if given:
        return Path(given).expanduser().absolute()
    return Path(os.environ.get("LAPSE_DIR") or ".lapse").expanduser().absolute()


# -- the benchmark fixture -----------------------------------------------------------


@dataclass
class BenchResult:
    """One ``lapse_bench`` measurement: seconds per call, one sample per round."""

    name: str
    loops: int
    """Calls per round (calibrated so that a round lasts at least ``min_round_time``)."""
    samples: list[float] = field(repr=False)

    @property
    def rounds(self) -> int:
        """How many rounds were timed."""
        return len(self.samples)

    @property
    def median(self) -> float:
        """Median seconds per call."""
        return statistics.median(self.samples)

    @property
    def mean(self) -> float:
        """Mean seconds per call."""
        return statistics.fmean(self.samples)

    @property
    def fivenum(self) -> tuple[float, float, float, float, float]:
        """Tukey's five numbers of the samples (R's fivenum)."""
        from lapse.analysis.fivenum import fivenum

        return fivenum(self.samples)


class Bench:
    """The ``lapse_bench`` fixture: ``lapse_bench(fn, *args, **kwargs)`` returns ``fn``'s result.

    ``lapse_bench.measure(fn, args, kwargs, name=..., warmup=..., ...)`` takes
    the options; ``lapse_bench.results`` holds every measurement of the test.
    """

    def __init__(self, nodeid: str, plugin: LapsePlugin | None) -> None:
        self.nodeid = nodeid
        self.plugin = plugin
        self.results: list[BenchResult] = []

    def __call__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Measure ``fn(*args, **kwargs)`` with the default options; returns its result."""
        return self.measure(fn, args, kwargs)

    @property
    def result(self) -> BenchResult:
        """The latest measurement."""
        if not self.results:
            raise LookupError("lapse_bench has not measured anything yet in this test")
        return self.results[-1]

    def measure(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        name: str | None = None,
        warmup: float = 0.1,
        max_time: float = 1.0,
        min_rounds: int = 25,
        max_rounds: int = 10_000,
        min_round_time: float = 0.001,
    ) -> Any:
        """Warm up for ``warmup`` s, then time rounds for ``max_time`` s (at least ``min_rounds``).

        Each round calls ``fn`` ``loops`` times, ``loops`` being the smallest
        count that makes a round last ``min_round_time``; a sample is the
        round's time divided by ``loops``.
        """
        if min_rounds < 1 or max_rounds < min_rounds:
            raise ValueError(f"lapse_bench: min_rounds={min_rounds}, max_rounds={max_rounds}: "
                             "expected 1 <= min_rounds <= max_rounds")
        kwargs = kwargs or {}
        label = name or getattr(fn, "__qualname__", None) or type(fn).__name__
        event_name = f"{self.nodeid}::{label}"
        calls = []
        started = perf_counter_ns()
        while True:
            t0 = perf_counter_ns()
            result = fn(*args, **kwargs)
            t1 = perf_counter_ns()
            calls.append(t1 - t0)
            if t1 - started >= warmup * 1e9:
                break
        per_call = max(1, statistics.median(calls[-10:]))
        loops = max(1, math.ceil(min_round_time * 1e9 / per_call))
        rounds: list[tuple[int, int]] = []
        begin = perf_counter_ns()
        while len(rounds) < max_rounds:
            t0 = perf_counter_ns()
            for _ in range(loops):
                result = fn(*args, **kwargs)
            t1 = perf_counter_ns()
            rounds.append((t0, t1 - t0))
            if len(rounds) >= min_rounds and t1 - begin >= max_time * 1e9:
                break
        measured = BenchResult(event_name, loops, [total / loops / 1e9 for _, total in rounds])
        self.results.append(measured)
        if self.plugin is not None:
            self._store(event_name, loops, rounds)
        return result

    def _store(self, name: str, loops: int, rounds: list[tuple[int, int]]) -> None:
        from lapse._hotpath import _current_call, _ids, _link_of

        plugin = self.plugin
        assert plugin is not None
        instrument = plugin._instrument(name, "bench")
        link = _link_of(_current_call(), None)
        for t0, total in rounds:
            plugin.append((instrument, t0, round(total / loops), next(_ids), link,
                           {"test_run": plugin.test_run, "loops": loops}, None))


@pytest.fixture
def lapse_bench(request: pytest.FixtureRequest) -> Bench:
    """Benchmark a callable: ``result = lapse_bench(fn, *args)`` (stored with --lapse)."""
    plugin = request.config.pluginmanager.get_plugin(PLUGIN_NAME)
    return Bench(request.node.nodeid, plugin if isinstance(plugin, LapsePlugin) else None)


# -- the gate -------------------------------------------------------------------------
