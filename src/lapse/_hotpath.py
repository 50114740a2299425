"""The hot path: what runs on every measured call, and the per-call state it keeps.

The sync wrapper is written out in full (each helper call would add ~60 ns);
coroutines, generators, async generators and ``with`` blocks share ``_open``
and ``_finish``. Nesting lives in a ``ContextVar`` holding the current call's
``ctx = [span_id, trace_id, attrs, link]`` (plus the open span for ``with``
blocks), so one instrument is safe across threads, asyncio tasks and recursion.

An event refers to its parent through a *link*, ``(parent_span_id, trace_id)``:
a root call stores the shared ``ROOT`` (its trace is its own span id); a child
stores its parent's link, made once by the parent's first child and kept in
the parent's ``ctx[3]``, so children of one call share one tuple and a child
allocates nothing for it. The standard event is the 7-slot
``(key, t0, duration, span_id, link, thread_name, caller_code)``, extended by
``(attrs, debug_extra)`` only when there are attributes or debug detail; an
exception replaces ``key`` by ``(key, error_class)`` (see
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
from contextvars import ContextVar
from itertools import count
from time import perf_counter_ns, thread_time_ns
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any

from lapse._config import DEBUG, MINIMAL, OFF
from lapse._recorder import RECORDER

if TYPE_CHECKING:
    from lapse._instrument import Instrument

MAX_STACK_DEPTH = 64

_current: ContextVar[list[Any] | None] = ContextVar("lapse_current", default=None)
_user: ContextVar[object] = ContextVar("lapse_user", default=None)
_ids = count(1)
_getframe = sys._getframe
_current_thread = threading.current_thread
_thread_names = threading.local()

ROOT = (0, 0)
"""The link of a root call: no parent (span ids start at 1), its trace is its own span id."""


def _link_of(parent: list[Any] | None) -> tuple[int, int]:
    """The link a child of ``parent`` (a ctx, or None for a root call) buffers."""
    if parent is None:
        return ROOT
    link = parent[3]
    if link is None:
        link = parent[3] = (parent[0], parent[1])
    return link  # type: ignore[no-any-return]


def _level_of(instrument: Instrument) -> int:
    """The level to record a call at: the global level (started if need be), then the override.

    A global ``off`` is a kill switch that wins over per-function levels.
    """
    level = RECORDER.level
    if level <= 0:
        if level == OFF:
            return OFF
        level = RECORDER.activate()
        if level == OFF:
            return OFF
    return level if instrument.level is None else instrument.level


def _slow_of(instrument: Instrument) -> int | None:
    return RECORDER.slow if instrument.slow is None else instrument.slow


def _open(
    instrument: Instrument, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[list[Any], tuple[int, int]]:
    """A new call's ``ctx`` and its link to its parent, for standard and debug levels."""
    parent = _current.get()
    sid = next(_ids)
    attrs = _captured(instrument, args, kwargs) if instrument.capture else None
    if parent is None:
        return [sid, sid, attrs, None], ROOT
    return [sid, parent[1], attrs, None], _link_of(parent)


def _captured(
    instrument: Instrument, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any] | None:
    try:
        return instrument.captured(args, kwargs)
    except Exception:  # noqa: BLE001 - a capture failure loses the attrs, not the call
        return None


def _thread_name() -> str:
    try:
        return _thread_names.name  # type: ignore[no-any-return]
    except AttributeError:
        name = _thread_names.name = _current_thread().name
        return name


def _finish(  # noqa: PLR0917 - positional on purpose: called on every span's exit
    instrument: Instrument,
    level: int,
    t0: int,
    t1: int,
    error: type[BaseException] | None,
    ctx: list[Any] | None,
    link: tuple[int, int] | None,
    cpu0: int,
    *,
    depth: int = 2,
) -> None:
    """Record one finished call (its caller is ``depth`` frames up). Never raises."""
    try:
        recorder = RECORDER
        if level == MINIMAL or ctx is None:
            event: tuple[Any, ...] = (instrument.key, t0, t1 - t0, error)
        else:
            try:
                frame: FrameType | None = _getframe(depth)
            except ValueError:
                frame = None
            extra = None if level != DEBUG else _debug_detail(instrument, frame, t1 - t0, cpu0)
            head = instrument.key if error is None else (instrument.key, error)
            attrs = ctx[2]
            event = (head, t0, t1 - t0, ctx[0], link, _thread_name(),
                     None if frame is None else frame.f_code)
            if attrs is not None or extra is not None:
                event += (attrs, extra)
        buffer = recorder.buffer
        if len(buffer) < recorder.capacity:
            buffer.append(event)
        else:
            recorder.drop()
    except Exception:  # noqa: BLE001 - never raise into user code
        RECORDER.drop("internal")


def _debug_detail(
    instrument: Instrument, frame: FrameType | None, duration: int, cpu0: int
) -> tuple[Any, ...] | None:
    """Stack, user and CPU time of a debug-level call; None (standard detail) if under ``slow``."""
    slow = _slow_of(instrument)
    if slow is not None and duration < slow:
        return None
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


def _wrap_function(  # noqa: PLR0915 - the hot path is written out in full, see below
    instrument: Instrument, fn: Callable[..., Any]
) -> Callable[..., Any]:
    # The hot path, written out in full rather than through _open/_finish: each
    # helper call would add about 60 ns to every call at standard level.
    recorder = RECORDER
    buffer = recorder.buffer
    append = buffer.append
    clock = perf_counter_ns
    current = _current
    ids = _ids
    names = _thread_names
    key = instrument.key
    override = instrument.level
    own_slow = instrument.slow
    capture = bool(instrument.capture)
    root = ROOT

    @functools.wraps(fn)
    def timed_function(*args: Any, **kwargs: Any) -> Any:  # noqa: PLR0912, PLR0915
        level = recorder.level
        if level <= 0 and (level == OFF or recorder.activate() == OFF):
            return fn(*args, **kwargs)
        if override is not None:
            level = override
        elif level <= 0:
            level = recorder.level
        if level == MINIMAL:
            error = None
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            except BaseException as exc:
                error = type(exc)
                raise
            finally:
                t1 = clock()
                if len(buffer) < recorder.capacity:
                    append((key, t0, t1 - t0, error))
                else:
                    recorder.drop()
        if level == OFF:
            return fn(*args, **kwargs)
        parent = current.get()
        sid = next(ids)
        if parent is None:
            link = root
            ctx = [sid, sid, _captured(instrument, args, kwargs) if capture else None, None]
        else:
            # The parent's link, made by its first child and shared by the others
            # (_link_of, written out: a helper call would cost every nested call).
            link = parent[3]
            if link is None:
                link = parent[3] = (parent[0], parent[1])
            ctx = [sid, parent[1], _captured(instrument, args, kwargs) if capture else None,
                   None]
        token = current.set(ctx)
        head: Any = key
        if level != DEBUG:
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            except BaseException as exc:
                head = (key, type(exc))
                raise
            finally:
                t1 = clock()
                current.reset(token)
                try:
                    thread = names.name
                except AttributeError:
                    thread = _thread_name()
                if len(buffer) < recorder.capacity:
                    if ctx[2] is None:
                        append((head, t0, t1 - t0, sid, link, thread, _getframe(1).f_code))
                    else:
                        append((head, t0, t1 - t0, sid, link, thread, _getframe(1).f_code,
                                ctx[2], None))
                else:
                    recorder.drop()
        # Debug: the detail is kept for calls lasting at least `threshold` ns, so a
        # debug call under `slow` costs what a standard one does.
        slow = recorder.slow if own_slow is None else own_slow
        if slow is None:
            threshold = 0
            cpu0 = thread_time_ns()
        else:
            threshold = slow
            cpu0 = 0
        t0 = clock()
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:
            head = (key, type(exc))
            raise
        finally:
            t1 = clock()
            current.reset(token)
            try:
                thread = names.name
            except AttributeError:
                thread = _thread_name()
            frame = _getframe(1)
            duration = t1 - t0
            extra = None
            if duration >= threshold:
                extra = _debug_detail(instrument, frame, duration, cpu0)
            if len(buffer) < recorder.capacity:
                if ctx[2] is None and extra is None:
                    append((head, t0, duration, sid, link, thread, frame.f_code))
                else:
                    append((head, t0, duration, sid, link, thread, frame.f_code, ctx[2], extra))
            else:
                recorder.drop()

    return timed_function


def _wrap_coroutine(instrument: Instrument, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def timed_coroutine(*args: Any, **kwargs: Any) -> Any:
        level = _level_of(instrument)
        if level == OFF:
            return await fn(*args, **kwargs)
        ctx, link = (None, None) if level == MINIMAL else _open(instrument, args, kwargs)
        token = None if ctx is None else _current.set(ctx)
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
            _finish(instrument, level, t0, t1, error, ctx, link, 0)

    return timed_coroutine


def _wrap_generator(instrument: Instrument, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def timed_generator(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        level = _level_of(instrument)
        if level == OFF:
            return (yield from fn(*args, **kwargs))
        inner = fn(*args, **kwargs)
        ctx, link = (None, None) if level == MINIMAL else _open(instrument, args, kwargs)
        error = None
        t0 = perf_counter_ns()
        # What the body sees as current: its own span, or a span it left open
        # across a `yield` (`with lapse.span(...)` around a `yield`).
        inside = ctx
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
                        _reset(token, inside)
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
            _finish(instrument, level, t0, perf_counter_ns(), error, ctx, link, 0)

    return timed_generator


def _wrap_async_generator(instrument: Instrument, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def timed_async_generator(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        # Unlike a sync generator (`yield from`), an async generator cannot
        # delegate, so even at level off the protocol (asend, athrow, aclose)
        # is passed on by hand: `async for` would drop sent values.
        level = _level_of(instrument)
        inner = fn(*args, **kwargs)
        ctx, link = (None, None) if level <= MINIMAL else _open(instrument, args, kwargs)
        error = None
        t0 = perf_counter_ns()
        inside = ctx
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
                        _reset(token, inside)
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
                _finish(instrument, level, t0, perf_counter_ns(), error, ctx, link, 0)

    return timed_async_generator


def _reset(token: Any, ctx: list[Any] | None) -> None:
    """Leave a span, even when resumed in another context than the one it opened in."""
    try:
        _current.reset(token)
    except (ValueError, RuntimeError):
        if _current.get() is ctx:
            _current.set(None)
