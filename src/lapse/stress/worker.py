"""What every generator process shares: the results it sends, its error names, its commands.

A worker records five integers per request, ``(intended, sent, end, error,
step)``: perf_counter_ns times (one clock for all processes of a machine),
an error code (0: success) and the step index (``-1 - step`` for a warm-up
request). Every ``BATCH_S`` it sends what it has to the coordinator as raw
bytes; error codes are announced (name and first message) before first use.

Messages, worker to coordinator::

    ("ready", info) | ("fatal", message) | ("errors", {code: (name, message)})
    ("batch", bytes) | ("step_done", step, counters) | ("bye",)

and coordinator to worker::

    ("step", index, start_ns) | ("abort",) | ("stop",)
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
from array import array
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection
from typing import Any

from lapse.stress.plan import CALLABLE, Plan, Target

FIELDS = 5
BATCH_S = 0.2
PAYLOAD_ITEMS = 100_000
"""Most payload items a worker takes from a factory (it then cycles through them)."""


class Results:
    """One worker's requests not yet sent to the coordinator, and its error names."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.rows = array("q")
        self.codes: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, intended: int, sent: int, end: int, code: int, step: int) -> None:
        """Record one finished request (from the worker's single thread, or under ``locked``)."""
        self.rows.extend((intended, sent, end, code, step))

    def locked_add(self, intended: int, sent: int, end: int, code: int, step: int) -> None:
        """``add`` for workers whose requests finish in several threads."""
        with self._lock:
            self.rows.extend((intended, sent, end, code, step))

    def code(self, name: str, message: str = "") -> int:
        """The code of an error type, announcing it to the coordinator the first time."""
        code = self.codes.get(name)
        if code is None:
            with self._lock:
                code = self.codes.setdefault(name, len(self.codes) + 1)
            self.channel.send(("errors", {code: (name, message[:500])}))
        return code

    def flush(self) -> None:
        """Send the rows gathered so far."""
        with self._lock:
            rows, self.rows = self.rows, array("q")
        if rows:
            self.channel.send(("batch", rows.tobytes()))


class Channel:
    """The pipe to the coordinator; sends from several threads, never raises when it is gone."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._lock = threading.Lock()
        self.closed = False

    def send(self, message: tuple[Any, ...]) -> None:
        """Send one message (dropped silently once the coordinator has gone)."""
        if self.closed:
            return
        try:
            with self._lock:
                self.conn.send(message)
        except (OSError, EOFError, ValueError):
            self.closed = True

    def receive(self) -> tuple[Any, ...]:
        """The next command; the coordinator gone reads as ``("stop",)``."""
        try:
            message: tuple[Any, ...] = self.conn.recv()
        except (OSError, EOFError):
            return ("stop",)
        return message


def error_name(error: BaseException | type[BaseException]) -> str:
    """``module.QualName`` of an exception class (builtins bare), as the store writes it."""
    kind = error if isinstance(error, type) else type(error)
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def load_object(spec: str, cwd: str) -> Any:
    """The object named ``module:attr.attr`` (the run's directory first on the import path)."""
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    module_name, _, attributes = spec.partition(":")
    try:
        value: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise LookupError(f"cannot import {module_name!r} for {spec!r}: {error}") from None
    for attribute in attributes.split("."):
        try:
            value = getattr(value, attribute)
        except AttributeError:
            raise LookupError(f"{spec!r}: {module_name} has no {attributes!r}") from None
    return value


def payload_items(target: Target) -> list[Any] | None:
    """The items of the payload factory (called once per worker), or None without one."""
    if target.payload is None:
        return None
    factory = load_object(target.payload, target.cwd)
    if not callable(factory):
        raise LookupError(f"payload {target.payload!r} is not callable (a factory function)")
    made = factory()
    items: Iterable[Any] = made
    if isinstance(made, bytes | str | dict) or not hasattr(made, "__iter__"):
        raise LookupError(f"payload {target.payload!r} returned {type(made).__name__}; "
                          "expected a list or other iterable of inputs")
    taken = []
    for item in items:
        taken.append(item)
        if len(taken) >= PAYLOAD_ITEMS:
            break
    if not taken:
        raise LookupError(f"payload {target.payload!r} returned no items")
    return taken


def child(fd: int) -> None:
    """Entry of a worker started as ``python -c``: the plan arrives on socket ``fd``."""
    conn = Connection(fd)
    plan, index = conn.recv()
    main(plan, index, conn)


def main(plan: Plan, index: int, conn: Connection) -> None:
    """A generator process: Ctrl-C is the coordinator's to handle; it stops us by message."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    channel = Channel(conn)
    runner: Callable[[Plan, int, Channel], None]
    if plan.target.kind == CALLABLE:
        from lapse.stress import callables

        runner = callables.run_worker
    else:
        from lapse.stress import http

        runner = http.run_worker
    try:
        runner(plan, index, channel)
    except Exception as error:  # noqa: BLE001 - reported to the coordinator, which explains
        channel.send(("fatal", f"generator process {os.getpid()} failed: {error!r}"))
    channel.send(("bye",))
