"""The hot path: what runs on every measured call, and the per-call state it keeps.

The sync wrapper is written out in full (each helper call would add ~60 ns),
and recompiled with each decorated function's own parameters instead of
``*args, **kwargs`` (``lapse._signature``); coroutines, generators, async
generators and ``with`` blocks share ``_open`` and ``_finish``.

Nesting. Each call's state is a ``ctx = [span_id, trace_id, attrs, link]``
(plus the open span for ``with`` blocks). The innermost open call is kept in
a *cell*, ``[ctx, thread_ident, thread_name, root_link]``, that a
``ContextVar`` holds, so one instrument is safe across threads, asyncio tasks
and recursion:

- A sync call cannot be suspended, so it swaps its ctx into the cell and back
  (two list stores) instead of setting and resetting the ``ContextVar``, which
  makes a token and a new context each time.
- Anything that can be suspended with a call open (a coroutine, a generator
  step, a ``with`` block) sets a fresh cell of its own and resets it after, so
  interleaved tasks never share one it changes.
- A cell belongs to one thread: a context copied into another thread (as
  ``asyncio.to_thread`` and Starlette's thread pool do) gets a cell of that
  thread on its first call, nested under the copied call.

Two consequences, both harmless to the counts: a task created inside a sync
call nests under the innermost call that could be suspended (its coroutine or
``with`` block), not under that sync call, which has ended by the time the task
runs; and where tasks run inside a sync call (``nest_asyncio``), their calls
nest under it.

An event says where it was called from through a *link*, ``(parent_span_id,
trace_id, thread_name, caller_code)``: a root call's is ``(0, 0, thread,
caller)`` (its trace is its own span id). Calls with the same parent, thread
and caller share one link, made by the first of them and kept in the parent's
``ctx[3]`` (a root's in the cell), so a call in a loop allocates nothing for
it. The standard event is the 5-slot ``(key, t0, duration, span_id, link)``:
80 bytes where the allocator rounds any tuple of 6 or 7 slots up to 96. It is
extended by ``(attrs, debug_extra)`` only when there are attributes or debug
detail; an exception replaces ``key`` by ``(key, error_class)`` (see
``lapse.store._segments`` for every shape).

Buffered tuples hold only objects the garbage collector does not track (ints,
strings, code objects, flat tuples of those, ``None``): a decorated function
refers to its instrument by its index in ``INSTRUMENTS``. A buffer of a million
tuples that pointed at tracked objects would make every collection walk all of
them, which nearly doubled the cost of a call.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import AsyncGenerator, Callable, Generator
from contextvars import ContextVar, Token
from itertools import count
from time import perf_counter_ns, thread_time_ns
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any

from lapse._config import DEBUG, MINIMAL, OFF
from lapse._recorder import GLOBAL, RECORDER
from lapse._signature import with_parameters_of

if TYPE_CHECKING:
    from lapse._instrument import Instrument

MAX_STACK_DEPTH = 64

NEVER = 1 << 62
"""The ``slow`` threshold of standard level: no call is slow enough for debug detail."""

_current: ContextVar[list[Any] | None] = ContextVar("lapse_current", default=None)
_user: ContextVar[object] = ContextVar("lapse_user", default=None)
_ids = count(1)
_getframe = sys._getframe
_get_ident = threading.get_ident
_current_thread = threading.current_thread
_threads = threading.local()


def _thread_state() -> list[Any]:
    """This thread's ``[name, root link]``, the name looked up once per thread."""
    try:
        return _threads.state  # type: ignore[no-any-return]
    except AttributeError:
        name = _current_thread().name
        state = _threads.state = [name, (0, 0, name, None)]
        return state


def _new_cell(ctx: list[Any] | None) -> list[Any]:
    """A cell of this thread with ``ctx`` as its innermost open call."""
    name, root = _thread_state()
    return [ctx, _get_ident(), name, root]


def _own_cell(cell: list[Any] | None) -> list[Any]:
    """This thread's cell for the current context, made when it has none (or another's).

    Set for good in the current context: a thread's own context, a task's, or a
    context copied into this thread, which is dropped with it.
    """
    own = _new_cell(None if cell is None else cell[0])
    _current.set(own)
    return own


def _current_call() -> list[Any] | None:
    """The ctx of the innermost open call in this context, or None."""
    cell = _current.get()
    return None if cell is None else cell[0]


def _enter(ctx: list[Any]) -> Token[list[Any] | None]:
    """Make ``ctx`` the current call for code that may be suspended while it is open."""
    return _current.set(_new_cell(ctx))


def _reset(token: Token[list[Any] | None], ctx: list[Any] | None) -> None:
    """Leave a call entered with ``_enter``, even when resumed in another context."""
    try:
        _current.reset(token)
    except (ValueError, RuntimeError):
        if _current_call() is ctx:
            _current.set(None)


def _link_of(parent: list[Any] | None, caller: CodeType | None) -> tuple[Any, ...]:
    """The link of a call on this thread made by ``caller`` under ``parent`` (a ctx, or None).

    Made once and reused while the caller stays the same: kept in the parent's
    ``ctx[3]``, or for root calls in the thread's state (the sync wrapper keeps
    its own in the cell).
    """
    state = _thread_state()
    name = state[0]
    if parent is None:
        link = state[1]
        if link[3] is not caller:
            link = state[1] = (0, 0, name, caller)
        return link  # type: ignore[no-any-return]
    link = parent[3]
    if link is None or link[3] is not caller or link[2] is not name:
        link = parent[3] = (parent[0], parent[1], name, caller)
    return link  # type: ignore[no-any-return]


def _slot_of(instrument: Instrument) -> int:
    """The instrument's entry in ``Recorder.levels``: its own level, or the global one."""
    return GLOBAL if instrument.level is None else instrument.level


def _level_of(instrument: Instrument) -> int:
    """The level to record a call at (starting the writer if need be), from the level table.

    A global ``off`` is a kill switch that wins over per-function levels.
    """
    slot = _slot_of(instrument)
    level = RECORDER.levels[slot]
    if level < OFF:  # unstarted: this call starts the writer
        RECORDER.activate()
        level = RECORDER.levels[slot]
    return level if level > OFF else OFF


def _slow_of(instrument: Instrument) -> int | None:
    return RECORDER.slow if instrument.slow is None else instrument.slow


def _open(
    instrument: Instrument, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[list[Any], list[Any] | None]:
    """A new call's ``ctx`` and its parent's (None for a root), for standard and debug levels."""
    parent = _current_call()
    sid = next(_ids)
    attrs = _captured(instrument, args, kwargs) if instrument.capture else None
    return [sid, sid if parent is None else parent[1], attrs, None], parent


def _captured(
    instrument: Instrument, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any] | None:
    try:
        return instrument.captured(args, kwargs)
    except Exception:  # noqa: BLE001 - a capture failure loses the attrs, not the call
        return None


def _finish(  # noqa: PLR0917 - positional on purpose: called on every span's exit
    instrument: Instrument,
    level: int,
    t0: int,
    t1: int,
    error: type[BaseException] | None,
    ctx: list[Any] | None,
    parent: list[Any] | None,
    cpu0: int,
    *,
    depth: int = 2,
) -> None:
    """Record one finished call (its caller is ``depth`` frames up). Never raises."""
    try:
        recorder = RECORDER
        if level == MINIMAL or ctx is None:
            event: tuple[Any, ...] = (
                (instrument.key, t0, t1 - t0) if error is None else
                (instrument.key, t0, t1 - t0, error))
        else:
            try:
                frame: FrameType | None = _getframe(depth)
            except ValueError:
                frame = None
            extra = None
            if level == DEBUG:
                slow = _slow_of(instrument)
                if slow is None or t1 - t0 >= slow:
                    extra = _debug_detail(frame, cpu0)
            head = instrument.key if error is None else (instrument.key, error)
            link = _link_of(parent, None if frame is None else frame.f_code)
            event = (head, t0, t1 - t0, ctx[0], link)
            if ctx[2] is not None or extra is not None:
                event += (ctx[2], extra)
        buffer = recorder.buffer
        if len(buffer) < recorder.capacity:
            buffer.append(event)
        else:
            recorder.drop()
    except Exception:  # noqa: BLE001 - never raise into user code
        RECORDER.drop("internal")


def _debug_detail(frame: FrameType | None, cpu0: int) -> tuple[Any, ...]:
    """Stack, user and CPU time (when ``cpu0`` was read) of a debug-level call kept as slow."""
    cpu = thread_time_ns() - cpu0 if cpu0 else None
    return (_stack(frame), _user.get(), cpu)


def _stack(frame: FrameType | None) -> tuple[CodeType | int, ...]:
    """Raw frames, innermost first, flat: ``(code, line, code, line, ...)``.

    At most MAX_STACK_DEPTH frames. A flat tuple of code objects and ints is
    one the garbage collector stops tracking; a list of pairs would be walked
    by every collection for as long as it sits in the buffer.
    """
    frames: list[CodeType | int] = []
    while frame is not None and len(frames) < 2 * MAX_STACK_DEPTH:
        frames.append(frame.f_code)
        frames.append(frame.f_lineno)
        frame = frame.f_back
    return tuple(frames)


def _wrap_function(instrument: Instrument, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a sync function, with its own parameters where it can (see ``lapse._signature``).

    An instrument that captures arguments needs them as ``args`` and ``kwargs``,
    so it keeps the ``*args, **kwargs`` wrapper.
    """
    factory = None if instrument.capture else with_parameters_of(_wrap_sync, fn)
    return (factory or _wrap_sync)(instrument, fn)


def _wrap_sync(  # noqa: PLR0915 - the hot path is written out in full, see below
    instrument: Instrument, fn: Callable[..., Any]
) -> Callable[..., Any]:
    """The sync wrapper; also the template ``lapse._signature`` recompiles, so its inner
    function must stay ``timed_function(*args, **kwargs)`` calling ``fn(*args, **kwargs)``.

    Written out in full rather than through ``_open``/``_finish``: each helper
    call would add about 60 ns to every call at standard level.
    """
    recorder = RECORDER
    buffer = recorder.buffer
    append = buffer.append
    clock = perf_counter_ns
    current = _current
    get_ident = _get_ident
    ids = _ids
    key = instrument.key
    slot = _slot_of(instrument)
    capture = bool(instrument.capture)
    # By level, the shortest call that keeps debug detail (None: the global `slow`).
    # Standard and debug share one path, so a debug call under `slow` runs exactly
    # the instructions a standard call does.
    thresholds: list[int | None] = [NEVER] * (DEBUG + 1)
    thresholds[DEBUG] = instrument.slow

    @functools.wraps(fn)
    def timed_function(*args: Any, **kwargs: Any) -> Any:  # noqa: PLR0912, PLR0915
        level = recorder.levels[slot]
        if level <= 0:
            if level == OFF or recorder.activate() == OFF:
                return fn(*args, **kwargs)
            level = recorder.levels[slot]
        if level == MINIMAL:
            t0 = clock()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                t1 = clock()
                if len(buffer) < recorder.capacity:
                    append((key, t0, t1 - t0, type(exc)))
                else:
                    recorder.drop()
                raise
            t1 = clock()
            if len(buffer) < recorder.capacity:
                append((key, t0, t1 - t0))
            else:
                recorder.drop()
            return result
        if level <= 0:  # this function is off (or lapse was reset meanwhile)
            return fn(*args, **kwargs)
        cell = current.get()
        if cell is None or cell[1] != get_ident():
            cell = _own_cell(cell)
        parent = cell[0]
        sid = next(ids)
        ctx = [sid, sid if parent is None else parent[1],
               _captured(instrument, args, kwargs) if capture else None, None]
        threshold = thresholds[level]
        if threshold is None:
            threshold = recorder.slow or 0
        cpu0 = 0 if threshold else thread_time_ns()
        cell[0] = ctx
        head: Any = key
        t0 = clock()
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:
            head = (key, type(exc))
            raise
        finally:
            t1 = clock()
            cell[0] = parent
            if len(buffer) < recorder.capacity:
                # The link, reused while the caller stays the same (_link_of, written
                # out): a root's is kept in the cell, a child's in its parent's ctx.
                frame = _getframe(1)
                caller = frame.f_code
                if parent is None:
                    link = cell[3]
                    if link[3] is not caller:
                        link = cell[3] = (0, 0, cell[2], caller)
                else:
                    link = parent[3]
                    if link is None or link[3] is not caller or link[2] is not cell[2]:
                        link = parent[3] = (parent[0], parent[1], cell[2], caller)
                if t1 - t0 < threshold and ctx[2] is None:
                    append((head, t0, t1 - t0, sid, link))
                else:
                    extra = _debug_detail(frame, cpu0) if t1 - t0 >= threshold else None
                    append((head, t0, t1 - t0, sid, link, ctx[2], extra))
            else:
                recorder.drop()

    return timed_function


def _wrap_coroutine(instrument: Instrument, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def timed_coroutine(*args: Any, **kwargs: Any) -> Any:
        level = _level_of(instrument)
        if level == OFF:
            return await fn(*args, **kwargs)
        ctx, parent = (None, None) if level == MINIMAL else _open(instrument, args, kwargs)
        token = None if ctx is None else _enter(ctx)
        error = None
        t0 = perf_counter_ns()
        try:
            return await fn(*args, **kwargs)
        except BaseException as exc:
            error = type(exc)
            raise
        finally:
            t1 = perf_counter_ns()
            if token is not None:
                _reset(token, ctx)
            _finish(instrument, level, t0, t1, error, ctx, parent, 0)

    return timed_coroutine


def _wrap_generator(instrument: Instrument, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def timed_generator(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        level = _level_of(instrument)
        if level == OFF:
            return (yield from fn(*args, **kwargs))
        inner = fn(*args, **kwargs)
        ctx, parent = (None, None) if level == MINIMAL else _open(instrument, args, kwargs)
        error = None
        t0 = perf_counter_ns()
        # What the body sees as current: a cell with its own span, or with a
        # span it left open across a `yield` (`with lapse.span(...)` around it).
        inside = None if ctx is None else _new_cell(ctx)
        try:
            sent: Any = None
            thrown: BaseException | None = None
            while True:
                # The body's span is current only while the body runs, never
                # while its consumer does (a plain `yield from` would leak it).
                token = None if inside is None else _current.set(inside)
                try:
                    item = inner.send(sent) if thrown is None else inner.throw(thrown)
                except StopIteration as stop:
                    return stop.value
                finally:
                    if token is not None:
                        inside = _current.get()
                        _reset(token, None if inside is None else inside[0])
                thrown = None
                try:
                    sent = yield item
                except GeneratorExit:
                    inner.close()
                    raise
                except BaseException as exc:  # noqa: BLE001 - passed on into the generator
                    thrown = exc
        except GeneratorExit:
            raise
        except BaseException as exc:
            error = type(exc)
            raise
        finally:
            _finish(instrument, level, t0, perf_counter_ns(), error, ctx, parent, 0)

    return timed_generator


def _wrap_async_generator(instrument: Instrument, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def timed_async_generator(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        # Unlike a sync generator (`yield from`), an async generator cannot
        # delegate, so even at level off the protocol (asend, athrow, aclose)
        # is passed on by hand: `async for` would drop sent values.
        level = _level_of(instrument)
        inner = fn(*args, **kwargs)
        ctx, parent = (None, None) if level <= MINIMAL else _open(instrument, args, kwargs)
        error = None
        t0 = perf_counter_ns()
        inside = None if ctx is None else _new_cell(ctx)
        try:
            sent: Any = None
            thrown: BaseException | None = None
            while True:
                token = None if inside is None else _current.set(inside)
                try:
                    if thrown is None:
                        item = await inner.asend(sent)
                    else:
                        item = await inner.athrow(thrown)
                except StopAsyncIteration:
                    return
                finally:
                    if token is not None:
                        inside = _current.get()
                        _reset(token, None if inside is None else inside[0])
                thrown = None
                try:
                    sent = yield item
                except GeneratorExit:
                    await inner.aclose()
                    raise
                except BaseException as exc:  # noqa: BLE001 - passed on into the generator
                    thrown = exc
        except GeneratorExit:
            raise
        except BaseException as exc:
            error = type(exc)
            raise
        finally:
            if level != OFF:
                _finish(instrument, level, t0, perf_counter_ns(), error, ctx, parent, 0)

    return timed_async_generator

