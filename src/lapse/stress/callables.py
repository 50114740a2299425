"""The callable generator: worker processes calling a Python function, like a pool of servers.

Each worker process imports the target (and the payload factory) itself, then
runs ``threads`` callers (open loop) or its share of the users (closed loop).
Open loop: callers take the next intended time from one schedule per
process; a caller still busy with an earlier call takes its next slot late,
so time spent waiting for a free caller is in the corrected latency, as a
request queued at a busy server would be. A call is timed from just before
to just after it (``perf_counter_ns``); an exception is an error of its
class. The target's own lapse events (if it is instrumented) are recorded by
the worker's recorder in a run marked ``stress``.
"""

from __future__ import annotations

import itertools
import threading
import traceback
from collections.abc import Callable, Iterator
from time import perf_counter_ns
from typing import Any

from lapse.stress.plan import Plan, Step
from lapse.stress.schedule import intended_times
from lapse.stress.worker import BATCH_S, Channel, Results, error_name, load_object, payload_items


class _Inputs:
    """The arguments of successive calls: none, or the payload's items in turn."""

    def __init__(self, items: list[Any] | None) -> None:
        self.items = items
        self._next: Iterator[Any] | None = None if items is None else itertools.cycle(items)
        self._lock = threading.Lock()

    def args(self) -> tuple[Any, ...]:
        """The positional arguments of the next call."""
        if self._next is None:
            return ()
        with self._lock:
            return (next(self._next),)


class CallableWorker:
    """One worker process: the target, its inputs, and the threads calling it."""

    def __init__(self, plan: Plan, index: int, channel: Channel) -> None:
        self.plan = plan
        self.index = index
        self.channel = channel
        self.results = Results(channel)
        target = load_object(plan.target.spec, plan.target.cwd)
        if not callable(target):
            raise LookupError(f"{plan.target.spec!r} is {type(target).__name__}, not callable")
        self.target: Callable[..., Any] = target
        self.inputs = _Inputs(payload_items(plan.target))
        self.aborted = threading.Event()
        self.reported: set[str] = set()

    def _call(self, intended: int, step: int) -> None:
        args = self.inputs.args()
        sent = perf_counter_ns()
        try:
            self.target(*args)
        except Exception as error:  # noqa: BLE001 - the target's errors are what we count
            end = perf_counter_ns()
            name = error_name(error)
            message = f"{error!s}"
            if name not in self.reported:  # the first traceback of each error type
                self.reported.add(name)
                message = "".join(traceback.format_exception(error)).strip()
            self.results.locked_add(intended, sent, end, self.results.code(name, message), step)
            return
        self.results.locked_add(intended, sent, perf_counter_ns(), 0, step)

    def open_step(self, step: Step, start_ns: int) -> dict[str, int]:
        """This worker's share of an open-loop step, over ``threads`` callers."""
        plan = self.plan
        assert step.rate is not None
        seed = None if plan.seed is None else plan.seed * 1000 + self.index * 7 + step.index
        times = intended_times(start_ns, step.duration_ns, step.rate / plan.workers,
                               plan.arrivals, offset=self.index / plan.workers, seed=seed,
                               limit=plan.share(plan.requests, self.index))
        lock = threading.Lock()
        warm_end = start_ns + step.warmup_ns
        deadline = start_ns + step.duration_ns + plan.timeout_ns
        dropped = [0]

        def caller() -> None:
            while True:
                with lock:
                    intended = next(times, None)
                if intended is None:
                    return
                now = perf_counter_ns()
                if self.aborted.is_set() or now > deadline:
                    if intended <= now:  # due, never called; later ones never came due
                        with lock:
                            dropped[0] += 1
                    continue
                if intended > now and self.aborted.wait((intended - now) / 1e9):
                    continue  # stopped before it came due
                self._call(intended, step.index if intended >= warm_end else -1 - step.index)

        self._run_threads(caller, plan.threads)
        return {"dropped": dropped[0]}

    def closed_step(self, step: Step, start_ns: int) -> dict[str, int]:
        """This worker's users of a closed-loop step, one thread each."""
        plan = self.plan
        assert step.users is not None
        end = start_ns + step.duration_ns
        warm_end = start_ns + step.warmup_ns
        left = [plan.share(plan.requests, self.index)]
        lock = threading.Lock()
        think = plan.think_ns / 1e9

        def user() -> None:
            delay = start_ns - perf_counter_ns()
            if delay > 0 and self.aborted.wait(delay / 1e9):
                return
            while not self.aborted.is_set() and perf_counter_ns() < end:
                with lock:
                    if left[0] <= 0:
                        return
                    left[0] -= 1
                now = perf_counter_ns()
                self._call(now, step.index if now >= warm_end else -1 - step.index)
                if think and self.aborted.wait(think):
                    return

        self._run_threads(user, plan.share(step.users, self.index))
        return {"dropped": 0}

    def _run_threads(self, body: Callable[[], None], count: int) -> None:
        threads = [threading.Thread(target=body, name=f"lapse-stress-caller-{i}", daemon=True)
                   for i in range(count)]
        for thread in threads:
            thread.start()
        while True:
            alive = [t for t in threads if t.is_alive()]
            if not alive:
                break
            alive[0].join(BATCH_S)
            self.results.flush()
        self.results.flush()

    def run(self) -> None:
        """Report ready, then run steps until told to stop."""
        self.channel.send(("ready", {"threads": self.plan.threads}))
        step_thread: threading.Thread | None = None

        def run_step(index: int, start_ns: int) -> None:
            step = self.plan.steps[index]
            runner = self.open_step if step.rate is not None else self.closed_step
            counters = runner(step, start_ns)
            self.results.flush()
            self.channel.send(("step_done", index, counters))

        while True:
            message = self.channel.receive()
            if message[0] == "step":
                if step_thread is not None:
                    step_thread.join()
                self.aborted.clear()
                step_thread = threading.Thread(target=run_step, args=message[1:], daemon=True,
                                               name="lapse-stress-step")
                step_thread.start()
            elif message[0] in ("abort", "stop"):
                self.aborted.set()
                if message[0] == "stop":
                    break
        if step_thread is not None:
            step_thread.join(self.plan.timeout_ns / 1e9 + 1)
        self.results.flush()


def run_worker(plan: Plan, index: int, channel: Channel) -> None:
    """The body of a callable generator process."""
    from lapse._recorder import RECORDER

    RECORDER.set_run_kind("stress")  # the target's own events are part of a stress run
    try:
        worker = CallableWorker(plan, index, channel)
    except LookupError as error:
        channel.send(("fatal", str(error)))
        return
    except Exception as error:  # noqa: BLE001 - importing user code can raise anything
        channel.send(("fatal", f"{plan.target.spec}: importing failed: {error!r}"))
        return
    worker.run()
    RECORDER.flush()
