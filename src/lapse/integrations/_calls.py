"""Recording calls for integrations: a request or an estimator call as one lapse event.

The decorator and ``lapse.span`` know an event's name when it starts. A web
request learns its name (the route template) only once routing is done, and
an OpenTelemetry span may be renamed until it ends, so integrations open a
call with ``begin()`` (it becomes the current span: calls made inside nest
under it) and close it with ``end()`` naming the event then. Both never raise.
"""

from __future__ import annotations

import threading
from time import perf_counter_ns
from types import CodeType
from typing import Any

from lapse._config import DEBUG, MINIMAL, OFF
from lapse._hotpath import _current_call, _enter, _ids, _level_of, _link_of, _reset, _user
from lapse._instrument import INSTRUMENTS, Instrument
from lapse._recorder import RECORDER

_instruments: dict[tuple[str, str], Instrument] = {}
_lock = threading.Lock()
_PROBE = Instrument("lapse.integration")
_error_types: dict[str, type[BaseException]] = {}


def instrument_for(name: str, kind: str) -> Instrument:
    """The instrument events called ``name`` of ``kind`` are recorded under (one per pair)."""
    found = _instruments.get((name, kind))
    if found is None:
        with _lock:
            found = _instruments.get((name, kind))
            if found is None:
                found = Instrument(name, kind=kind)
                found.key = len(INSTRUMENTS)  # buffered events refer to it by index
                INSTRUMENTS.append(found)
                _instruments[(name, kind)] = found
    return found


def error_type(name: str) -> type[BaseException]:
    """An exception class whose stored name is ``name`` (``module.Class`` or a bare name).

    For errors known only by name: an HTTP status (``"500"``) or the
    ``exception.type`` of an OpenTelemetry span.
    """
    found = _error_types.get(name)
    if found is None:
        module, _, qualname = name.rpartition(".")
        found = type(qualname or name, (Exception,), {"__module__": module or "builtins"})
        _error_types[name] = found
    return found


class Call:
    """One open call: its level, ``ctx`` (span id, trace id, attributes, link), parent and start."""

    __slots__ = ("ctx", "level", "parent", "t0", "token")

    def __init__(self, level: int) -> None:
        self.level = level
        self.ctx: list[Any] | None = None
        self.parent: list[Any] | None = None
        self.token: Any = None
        self.t0 = 0

    @property
    def span_id(self) -> int | None:
        """This call's span id (None at minimal level)."""
        return None if self.ctx is None else self.ctx[0]

    def leave(self) -> None:
        """Stop being the current span (calls made from now on do not nest under it)."""
        token, self.token = self.token, None
        if token is not None:
            _reset(token, self.ctx)


def begin(*, parent: list[Any] | None = None, current: bool = True) -> Call | None:
    """Open a call at the global level (None when lapse is off): it becomes the current span.

    ``parent`` is the ctx to nest under (default: the current span);
    ``current=False`` opens it without making it current.
    """
    try:
        level = _level_of(_PROBE)
        if level == OFF:
            return None
        call = Call(level)
        if level != MINIMAL:
            outer = _current_call() if parent is None else parent
            sid = next(_ids)
            call.ctx = [sid, sid if outer is None else outer[1], None, None]
            call.parent = outer
            if current:
                call.token = _enter(call.ctx)
        call.t0 = perf_counter_ns()
        return call
    except Exception:  # noqa: BLE001 - never raise into the application
        RECORDER.drop("internal")
        return None


def end(
    call: Call,
    instrument: Instrument,
    error: type[BaseException] | None,
    attrs: dict[str, Any] | None = None,
    *,
    caller: CodeType | None = None,
    t0: int | None = None,
    t1: int | None = None,
) -> None:
    """Record a call opened by ``begin()`` as an event of ``instrument``; never raises.

    ``attrs`` are added to what code inside set with ``lapse.set()`` on this
    call; ``t0``/``t1`` (``perf_counter_ns``) override the measured start and end.
    """
    try:
        t1 = perf_counter_ns() if t1 is None else t1
        call.leave()
        start = call.t0 if t0 is None else t0
        ctx = call.ctx
        if call.level == MINIMAL or ctx is None:
            event: tuple[Any, ...] = (instrument.key, start, t1 - start, error)
        else:
            merged = {**ctx[2], **attrs} if ctx[2] and attrs else (attrs or ctx[2])
            extra = (None, _user.get(), None) if call.level == DEBUG else None
            head = instrument.key if error is None else (instrument.key, error)
            event = (head, start, t1 - start, ctx[0], _link_of(call.parent, caller))
            if merged is not None or extra is not None:
                event += (merged, extra)
        if len(RECORDER.buffer) < RECORDER.capacity:
            RECORDER.buffer.append(event)
        else:
            RECORDER.drop()
    except Exception:  # noqa: BLE001 - never raise into the application
        RECORDER.drop("internal")
