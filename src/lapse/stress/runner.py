"""The coordinator: starts the generator processes, runs the steps, stores every request.

The coordinator sends no load itself. It starts ``workers`` processes
(``spawn``: each imports only what it needs), tells them when each step
starts, receives their results every 0.2 s, shows progress, and records one
event per request (kind ``request``, start at the intended time, duration the
corrected latency) into this process's run, marked ``stress``: the stress run
id. Requests sent at least ``LATE_NS`` after their intended time also carry
``attrs.late_ns`` (their uncorrected latency is the duration minus it).

Ctrl-C (or SIGTERM) stops the step at once: workers abandon what is due,
report what finished, and everything measured is summarised and stored. A
second Ctrl-C stops without waiting.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from time import perf_counter_ns
from types import FrameType
from typing import TYPE_CHECKING, Any

from lapse._errors import TargetError
from lapse.stress import worker as worker_module
from lapse.stress.plan import Plan, Step, probe
from lapse.stress.worker import FIELDS

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

LATE_NS = 1_000_000
"""A request sent this long after its intended time counts as late (and keeps ``late_ns``)."""
READY_TIMEOUT_S = 60.0
START_LEAD_NS = 150_000_000
"""Steps start this long after the coordinator says so, so every worker starts together."""
GOODBYE_TIMEOUT_S = 5.0


@dataclass
class StepData:
    """What one step produced."""

    step: Step
    start_ns: int
    rows: list[npt.NDArray[np.int64]] = field(default_factory=list)
    dropped: int = 0
    stopped_ns: int | None = None
    """When sending stopped early (Ctrl-C), else None."""
    finished_ns: int = 0

    def table(self) -> npt.NDArray[np.int64]:
        """All rows of the step: (intended, sent, end, error, step) per request."""
        import numpy as np

        if not self.rows:
            return np.empty((0, FIELDS), dtype=np.int64)
        return np.concatenate(self.rows)


@dataclass
class Outcome:
    """The whole run as measured, before summarising."""

    plan: Plan
    steps: list[StepData]
    errors: dict[int, tuple[str, str]]
    """Global error code -> (type, first message)."""
    run_id: str | None
    stored: bool
    interrupted: bool
    notes: list[str]
    started_wall_ns: int
    recording: _Recording | None = None


class _Recording:
    """Turns result rows into stored events, through this process's recorder."""

    def __init__(self, plan: Plan) -> None:
        from lapse._config import OFF
        from lapse._instrument import INSTRUMENTS, Instrument
        from lapse._recorder import RECORDER

        self.recorder = RECORDER
        RECORDER.set_run_kind("stress")
        self.enabled = RECORDER.activate() != OFF
        if self.enabled:
            # Wait for the writer's start-up (it imports pyarrow: a CPU burst that would
            # otherwise land in the first second of the load, on the generators' machine).
            RECORDER.flush()
        self.run_id = RECORDER.run.run_id if self.enabled and RECORDER.run else None
        request = Instrument(plan.target.name, kind="request")
        summary = Instrument(f"stress {plan.target.name}", kind="stress")
        for instrument in (request, summary):
            instrument.key = len(INSTRUMENTS)
            INSTRUMENTS.append(instrument)
        self.request_key = request.key
        self.summary_key = summary.key
        self.classes: dict[int, type[BaseException]] = {}

    def error_class(self, code: int, name: str) -> type[BaseException]:
        """A class standing for error type ``name`` (the store writes its module.qualname)."""
        kind = self.classes.get(code)
        if kind is None:
            module, _, qualname = name.rpartition(".")
            if " " in name or not module:
                module, qualname = "builtins", name
            kind = type(qualname.rpartition(".")[2] or "Error", (Exception,), {})
            kind.__module__ = module
            kind.__qualname__ = qualname
            self.classes[code] = kind
        return kind

    def add(self, rows: npt.NDArray[np.int64], errors: dict[int, tuple[str, str]]) -> None:
        """Buffer one event per measured (not warm-up) request."""
        if not self.enabled:
            return
        measured = rows[rows[:, 4] >= 0]
        if not measured.size:
            return
        key = self.request_key
        starts = measured[:, 0].tolist()
        durations = (measured[:, 2] - measured[:, 0]).tolist()
        late = (measured[:, 1] - measured[:, 0]).tolist()
        codes = measured[:, 3].tolist()
        events: list[tuple[Any, ...]] = []
        append = events.append
        for start, duration, lateness, code in zip(starts, durations, late, codes, strict=True):
            error = None if code == 0 else self.error_class(code, errors[code][0])
            if lateness >= LATE_NS:  # the standard shape, with no span
                append((key if error is None else (key, error), start, duration, None, None,
                        {"late_ns": lateness}, None))
            else:
                append((key, start, duration, error))
        self._buffer(events)

    def add_summary(self, start_ns: int, duration_ns: int, attrs: dict[str, Any]) -> None:
        """One ``stress`` event for a step: its window and its figures in ``attrs``."""
        if self.enabled:
            self._buffer([(self.summary_key, start_ns, duration_ns, None, None, attrs, None)])

    def _buffer(self, events: list[tuple[Any, ...]]) -> None:
        recorder = self.recorder
        room = max(0, recorder.capacity - len(recorder.buffer))
        recorder.buffer.extend(events[:room])
        if len(events) > room:
            recorder.drop(count=len(events) - room)

    def flush(self) -> None:
        """Write everything buffered to the store."""
        if self.enabled:
            self.recorder.flush()


class _Child:
    """A worker started as a plain subprocess, with the ``Process`` methods used here."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen

    @property
    def exitcode(self) -> int | None:
        return self.popen.poll()

    def is_alive(self) -> bool:
        return self.popen.poll() is None

    def join(self, timeout: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)

    def terminate(self) -> None:
        self.popen.terminate()


def _launch(plan: Plan, index: int) -> _Worker:
    """Start generator process ``index``.

    On POSIX a fresh interpreter (``python -c``) connected by a socket pair, in
    its own session: Ctrl-C reaches only the coordinator, which stops the
    workers by message, and the caller's main script is never re-imported
    (``multiprocessing``'s spawn would run an unguarded script again).
    Elsewhere, a ``multiprocessing`` spawn child.
    """
    if os.name != "posix":
        context = multiprocessing.get_context("spawn")
        parent_conn, child_conn = context.Pipe()
        process = context.Process(target=worker_module.main, args=(plan, index, child_conn),
                                  name=f"lapse-stress-{index}", daemon=True)
        process.start()
        child_conn.close()
        return _Worker(index, process, parent_conn)
    ours, theirs = socket.socketpair()
    package_root = str(Path(worker_module.__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": package_root + (os.pathsep + path if path else "")}
    popen = subprocess.Popen(
        [sys.executable, "-c", f"from lapse.stress.worker import child; child({theirs.fileno()})"],
        pass_fds=(theirs.fileno(),), env=env, start_new_session=True, stdin=subprocess.DEVNULL,
    )
    theirs.close()
    conn = Connection(ours.detach())
    conn.send((plan, index))
    return _Worker(index, _Child(popen), conn)


class _Worker:
    """The coordinator's handle on one generator process."""

    def __init__(self, index: int, process: Any, conn: Connection) -> None:
        self.index = index
        self.process = process
        self.conn = conn
        self.codes: dict[int, int] = {}
        """This worker's error codes -> global codes."""
        self.alive = True
        self.ready = False

    def send(self, message: tuple[Any, ...]) -> None:
        if not self.alive:
            return
        try:
            self.conn.send(message)
        except (OSError, EOFError, ValueError):
            self.alive = False


ProgressCallback = Callable[[dict[str, Any]], None]


class Coordinator:
    """Runs a plan: workers, steps, progress, interruption, recording."""

    def __init__(self, plan: Plan, *, progress: ProgressCallback | None = None,
                 stop_when: Callable[[StepData, dict[int, tuple[str, str]]], bool] | None = None,
                 ) -> None:
        self.plan = plan
        self.progress = progress
        self.stop_when = stop_when
        self.workers: list[_Worker] = []
        self.errors: dict[int, tuple[str, str]] = {}
        self.interrupts = 0
        self.notes: list[str] = []
        self.recent: list[npt.NDArray[np.int64]] = []
        self.totals = {"requests": 0, "errors": 0, "late": 0, "dropped": 0}
        self.recording: _Recording | None = None
        self.fatal: str | None = None

    # -- signals ----------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.interrupts += 1
        if self.interrupts > 1:
            raise KeyboardInterrupt

    def _install_signals(self) -> dict[int, Any]:
        previous: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return previous
        for signum in (signal.SIGINT, getattr(signal, "SIGTERM", None)):
            if signum is not None:
                previous[signum] = signal.signal(signum, self._on_signal)
        return previous

    # -- running ------------------------------------------------------------------

    def run(self) -> Outcome:
        """Run every step (stopping early when ``stop_when`` says so); returns what was measured."""
        probe(self.plan.target)
        import numpy  # noqa: F401 - imported now, not in the middle of the first step

        wall = time.time_ns()
        previous = self._install_signals()
        steps: list[StepData] = []
        try:
            self._start_workers()
            self.recording = _Recording(self.plan)
            for step in self.plan.steps:
                if self.interrupts:
                    break
                data = self._run_step(step)
                steps.append(data)
                if self.stop_when is not None and not self.interrupts and \
                        self.stop_when(data, self.errors):
                    break
        except KeyboardInterrupt:
            self.interrupts = max(self.interrupts, 2)
        finally:
            self._stop_workers()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if self.fatal is not None and not any(d.rows for d in steps):
            raise TargetError(self.fatal)
        if self.fatal is not None:
            self.notes.append(self.fatal)
        recording = self.recording
        assert recording is not None
        recording.flush()
        return Outcome(self.plan, steps, self.errors, recording.run_id, recording.enabled,
                       self.interrupts > 0, self.notes, wall, recording)

    def _start_workers(self) -> None:
        for index in range(self.plan.workers):
            self.workers.append(_launch(self.plan, index))
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not all(w.ready for w in self.workers):
            if self.interrupts:
                raise KeyboardInterrupt
            if time.monotonic() > deadline:
                raise TargetError(f"the generator processes did not start within "
                                  f"{READY_TIMEOUT_S:g} s.")
            self._receive(0.1, None)
            if self.fatal is not None:
                raise TargetError(self.fatal)
            if any(not w.alive and not w.ready for w in self.workers):
                raise TargetError("a generator process ended while starting (see above).")

    def _run_step(self, step: Step) -> StepData:
        start_ns = perf_counter_ns() + START_LEAD_NS
        data = StepData(step, start_ns)
        pending = {w.index for w in self.workers if w.alive}
        for w in self.workers:
            w.send(("step", step.index, start_ns))
        aborted = False
        hard_end = start_ns + step.duration_ns + 2 * self.plan.timeout_ns + 10_000_000_000
        last_progress = 0
        while pending:
            finished = self._receive(0.1, data)
            pending -= finished
            pending &= {w.index for w in self.workers if w.alive}
            now = perf_counter_ns()
            if (self.interrupts or now > hard_end) and not aborted:
                aborted = True
                data.stopped_ns = now
                for w in self.workers:
                    w.send(("abort",))
            if self.progress is not None and now - last_progress > 250_000_000:
                last_progress = now
                self.progress(self._snapshot(step, data, now))
        data.finished_ns = perf_counter_ns()
        if self.progress is not None:
            self.progress(self._snapshot(step, data, data.finished_ns, final=True))
        return data

    def _receive(self, timeout: float, data: StepData | None) -> set[int]:
        """Handle messages for up to ``timeout`` s; returns the workers that finished the step."""
        finished: set[int] = set()
        conns = {w.conn: w for w in self.workers if w.alive}
        if not conns:
            time.sleep(timeout)
            return finished
        for ready in wait(list(conns), timeout):
            w = conns[ready]  # type: ignore[index]
            while w.alive and w.conn.poll():
                self._handle(w, data, finished)
        return finished

    def _handle(self, w: _Worker, data: StepData | None, finished: set[int]) -> None:
        try:
            message = w.conn.recv()
        except (OSError, EOFError):  # the process ended (after "bye", or it crashed)
            if w.alive and not w.ready and self.fatal is None:
                w.process.join(1.0)
                self.fatal = (f"generator process {w.index} exited with status "
                              f"{w.process.exitcode} before it was ready (see the messages "
                              "above).")
            w.alive = False
            return
        kind = message[0]
        if kind == "batch":
            self._batch(w, message[1], data)
        elif kind == "errors":
            for code, (name, text) in message[1].items():
                known = next((c for c, (n, _) in self.errors.items() if n == name), None)
                if known is None:
                    known = len(self.errors) + 1
                    self.errors[known] = (name, text)
                w.codes[code] = known
        elif kind == "step_done":
            if data is not None:
                data.dropped += int(message[2].get("dropped", 0))
                self.totals["dropped"] += int(message[2].get("dropped", 0))
            finished.add(w.index)
        elif kind == "ready":
            w.ready = True
        elif kind == "fatal":
            if self.fatal is None:
                self.fatal = message[1]
            self.notes.append(message[1])
        elif kind == "bye":
            w.alive = False

    def _batch(self, w: _Worker, payload: bytes, data: StepData | None) -> None:
        import numpy as np

        rows = np.frombuffer(payload, dtype=np.int64).reshape(-1, FIELDS).copy()
        if w.codes and rows[:, 3].any():
            mapping = np.zeros(max(w.codes) + 1, dtype=np.int64)
            for local, known in w.codes.items():
                mapping[local] = known
            rows[:, 3] = mapping[rows[:, 3]]
        if data is not None:
            data.rows.append(rows)
        measured = rows[rows[:, 4] >= 0]
        self.totals["requests"] += len(measured)
        self.totals["errors"] += int(np.count_nonzero(measured[:, 3]))
        self.totals["late"] += int(np.count_nonzero(measured[:, 1] - measured[:, 0] >= LATE_NS))
        self.recent.append(measured)
        if self.recording is not None:
            self.recording.add(rows, self.errors)

    def _snapshot(self, step: Step, data: StepData, now: int,
                  final: bool = False) -> dict[str, Any]:
        """Figures for the progress display: the last second's rate and latencies."""
        import numpy as np

        recent = np.concatenate(self.recent) if self.recent else np.empty((0, FIELDS), np.int64)
        recent = recent[recent[:, 2] >= now - 2_000_000_000]
        self.recent = [recent]
        last = recent[recent[:, 2] >= now - 1_000_000_000]
        ok = last[last[:, 3] == 0]
        latencies = (ok[:, 2] - ok[:, 0]) / 1e9
        return {
            "step": step.index, "steps": len(self.plan.steps), "rate": step.rate,
            "users": step.users, "elapsed": max(0.0, (now - data.start_ns) / 1e9),
            "duration": step.duration_ns / 1e9, "achieved": float(len(last)),
            "p50": float(np.percentile(latencies, 50)) if latencies.size else None,
            "p99": float(np.percentile(latencies, 99)) if latencies.size else None,
            "stopping": bool(data.stopped_ns), "final": final, **self.totals,
        }

    def _stop_workers(self) -> None:
        for w in self.workers:
            w.send(("stop",))
        deadline = time.monotonic() + GOODBYE_TIMEOUT_S
        while any(w.alive for w in self.workers) and time.monotonic() < deadline:
            try:
                self._receive(0.1, None)
            except KeyboardInterrupt:
                break
        for w in self.workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.terminate()
                w.process.join(1.0)
            w.conn.close()
