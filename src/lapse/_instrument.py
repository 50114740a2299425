"""The instrumentation surface and its hot path: ``timed``, ``span``, ``set`` and ``user``.

One ``Instrument`` object is a decorator (``@timed``, ``@timed(...)``,
``@span(...)``) and a context manager (``with span(...) as s``). Per-call state
lives in local variables and, for nesting, in a ``ContextVar`` holding the
current call's ``ctx = [span_id, trace_id, attrs]`` (plus the open span for
``with`` blocks), so one instrument is safe across threads, asyncio tasks and
recursion.

Cost rules: at ``minimal`` level a call costs two clock reads and one tuple
append; at ``standard`` it adds an id, the ``ContextVar`` set/reset, the
calling frame's code object and the thread's name. Names, JSON, wall-clock
conversion and redaction happen later in the writer. Nothing here raises into
user code: an internal failure drops the event and counts it.

Buffered tuples hold only objects the garbage collector does not track (ints,
strings, code objects, ``None``): a decorated function refers to its
instrument by its index in ``INSTRUMENTS``. A buffer of a million tuples that
pointed at tracked objects would make every collection walk all of them,
which nearly doubled the cost of a call.

Timing semantics: a sync function is timed from call to return; an ``async
def`` from the first ``await`` of its coroutine to its completion; a generator
(sync or async) from the first item requested to its exhaustion or close, so
the time a consumer spends between items is included.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import AsyncGenerator, Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from itertools import count
from time import perf_counter_ns, thread_time_ns
from types import CodeType, FrameType, TracebackType
from typing import Any, TypeVar, overload

from lapse._config import DEBUG, MINIMAL, OFF, parse_duration_ns, parse_level
from lapse._errors import ConfigError
from lapse._recorder import RECORDER

F = TypeVar("F", bound=Callable[..., Any])

MAX_STACK_DEPTH = 64

_current: ContextVar[list[Any] | None] = ContextVar("lapse_current", default=None)
_user: ContextVar[object] = ContextVar("lapse_user", default=None)
_ids = count(1)
_getframe = sys._getframe
_current_thread = threading.current_thread
_thread_names = threading.local()

_NO_DEFAULT = object()

INSTRUMENTS: list[Instrument] = []
"""Every instrument bound to a decorated function; events refer to them by index."""


class Instrument:
    """Measures calls of one kind: a decorator and a context manager in one object."""

    __slots__ = ("_capture_positions", "attrs", "capture", "key", "kind", "level", "name", "slow")

    def __init__(
        self,
        name: str | None = None,
        *,
        kind: str = "function",
        level: str | None = None,
        slow: str | float | None = None,
        capture: Sequence[str] = (),
        attrs: dict[str, Any] | None = None,
    ) -> None:
        if name is not None and (not isinstance(name, str) or not name):
            raise ConfigError(f"name: {name!r} is not valid; expected non-empty text.")
        if isinstance(capture, str):
            raise ConfigError(
                f"capture: {capture!r} is not valid; expected a list of argument names, "
                f"such as capture=[{capture!r}]."
            )
        self.name = name
        self.kind = kind
        self.level = None if level is None else parse_level(level, "level")
        self.slow = None if slow is None else parse_duration_ns(slow, "slow")
        self.capture = tuple(capture)
        self.attrs = dict(attrs) if attrs else None
        self._capture_positions: tuple[tuple[str, int | None, object], ...] = ()
        self.key: int | Instrument = self

    def __repr__(self) -> str:
        return f"<lapse instrument {self.name or '(unnamed)'} kind={self.kind}>"

    # -- decorator --------------------------------------------------------------

    def __call__(self, fn: F) -> F:
        """Wrap ``fn``; returns a function with the same metadata and signature."""
        if isinstance(fn, classmethod | staticmethod):
            return type(fn)(self(fn.__func__))
        if not callable(fn):
            raise ConfigError(
                f"lapse can only decorate functions, not {type(fn).__name__} {fn!r}. "
                "Did you mean @lapse.timed(\"name\") or with lapse.span(\"name\")?"
            )
        bound = self._bind(fn)
        import inspect

        if inspect.isasyncgenfunction(fn):
            return _wrap_async_generator(bound, fn)  # type: ignore[return-value]
        if inspect.iscoroutinefunction(fn):
            return _wrap_coroutine(bound, fn)  # type: ignore[return-value]
        if inspect.isgeneratorfunction(fn):
            return _wrap_generator(bound, fn)  # type: ignore[return-value]
        return _wrap_function(bound, fn)  # type: ignore[return-value]

    def _bind(self, fn: Callable[..., Any]) -> Instrument:
        """A copy of this instrument for one function: its own name and argument positions."""
        bound = Instrument.__new__(Instrument)
        bound.name = self.name or _qualified_name(fn)
        bound.kind, bound.level, bound.slow = self.kind, self.level, self.slow
        bound.capture, bound.attrs = self.capture, self.attrs
        bound._capture_positions = _positions(fn, self.capture) if self.capture else ()
        bound.key = len(INSTRUMENTS)
        INSTRUMENTS.append(bound)
        return bound

    def captured(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
        """The named arguments' values of one call (only those named in ``capture``)."""
        from lapse._capture import summarize_value

        values: dict[str, Any] = {}
        for name, position, default in self._capture_positions:
            if name in kwargs:
                values[name] = summarize_value(kwargs[name])
            elif position is not None and position < len(args):
                values[name] = summarize_value(args[position])
            elif default is not _NO_DEFAULT:
                values[name] = summarize_value(default)
        return values or None

    # -- context manager ------------------------------------------------------------

    def __enter__(self) -> ActiveSpan:
        active = ActiveSpan(self)
        try:
            level = _level_of(self)
            active.level = level
            if level == OFF:
                return active
            parent = _current.get()
            sid = next(_ids)
            active.ctx = [sid, sid if parent is None else parent[1], None, active]
            active.parent = None if parent is None else parent[0]
            active.token = _current.set(active.ctx)
            if level == DEBUG and _slow_of(self) is None:
                active.cpu0 = thread_time_ns()
        except Exception:  # noqa: BLE001 - never raise into user code
            RECORDER.drop("internal")
            active.level = OFF
        active.t0 = perf_counter_ns()
        return active

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._close(perf_counter_ns(), exc_type)

    async def __aenter__(self) -> ActiveSpan:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._close(perf_counter_ns(), exc_type)

    def _close(self, t1: int, exc_type: type[BaseException] | None) -> None:
        """Record the innermost open block of this instrument (the caller is 3 frames up)."""
        current = _current.get()
        if current is None or len(current) < 4 or current[3].instrument is not self:
            return  # off, or the enter failed: nothing to record
        active: ActiveSpan = current[3]
        _reset(active.token, current)
        _finish(self, active.level, active.t0, t1, exc_type, active.ctx, active.parent,
                active.cpu0, depth=3)


class ActiveSpan:
    """One open ``with lapse.span(...)`` block; ``set()`` adds attributes to it."""

    __slots__ = ("cpu0", "ctx", "instrument", "level", "parent", "t0", "token")

    def __init__(self, instrument: Instrument) -> None:
        self.instrument = instrument
        self.level = OFF
        self.ctx: list[Any] | None = None
        self.parent: int | None = None
        self.token: Any = None
        self.t0 = 0
        self.cpu0 = 0

    @property
    def span_id(self) -> int | None:
        """This span's id in its run (None when not recording)."""
        return None if self.ctx is None else self.ctx[0]

    def set(self, **attrs: Any) -> None:
        """Add attributes to this span (kept at standard and debug levels)."""
        ctx = self.ctx
        if ctx is not None:
            ctx[2] = {**ctx[2], **attrs} if ctx[2] else attrs


# -- the hot path -------------------------------------------------------------


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
) -> tuple[list[Any], int | None]:
    """A new call's ``ctx`` and its parent's span id, for standard and debug levels."""
    parent = _current.get()
    sid = next(_ids)
    attrs = _captured(instrument, args, kwargs) if instrument.capture else None
    if parent is None:
        return [sid, sid, attrs], None
    return [sid, parent[1], attrs], parent[0]


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
    parent: int | None,
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
            event = (instrument.key, t0, t1 - t0, error, ctx[0], ctx[1], parent, _thread_name(),
                     None if frame is None else frame.f_code, ctx[2], extra)
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

    @functools.wraps(fn)
    def timed_function(*args: Any, **kwargs: Any) -> Any:  # noqa: PLR0912, PLR0915
        level = recorder.level
        if level <= 0 and (level == OFF or recorder.activate() == OFF):
            return fn(*args, **kwargs)
        if override is not None:
            level = override
        elif level <= 0:
            level = recorder.level
        error = None
        if level == MINIMAL:
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
            trace = sid
            parent_id = None
        else:
            trace = parent[1]
            parent_id = parent[0]
        ctx = [sid, trace, _captured(instrument, args, kwargs) if capture else None]
        token = current.set(ctx)
        # Debug detail is kept for calls lasting at least `threshold` ns (-1: never,
        # at standard), so a debug call under `slow` costs what a standard one does.
        threshold = -1
        cpu0 = 0
        if level == DEBUG:
            slow = recorder.slow if own_slow is None else own_slow
            if slow is None:
                threshold = 0
                cpu0 = thread_time_ns()
            else:
                threshold = slow
        t0 = clock()
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:
            error = type(exc)
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
            if duration >= threshold >= 0:
                extra = _debug_detail(instrument, frame, duration, cpu0)
            if len(buffer) < recorder.capacity:
                append((key, t0, duration, error, sid, trace, parent_id, thread, frame.f_code,
                        ctx[2], extra))
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
                _finish(instrument, level, t0, perf_counter_ns(), error, ctx, parent, 0)

    return timed_async_generator


def _reset(token: Any, ctx: list[Any] | None) -> None:
    """Leave a span, even when resumed in another context than the one it opened in."""
    try:
        _current.reset(token)
    except (ValueError, RuntimeError):
        if _current.get() is ctx:
            _current.set(None)


def _qualified_name(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None) or "?"
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return f"{module}.{qualname or type(fn).__qualname__}"


def _positions(
    fn: Callable[..., Any], names: tuple[str, ...]
) -> tuple[tuple[str, int | None, object], ...]:
    """Where each captured argument sits among ``fn``'s positional parameters, and its default.

    A call that leaves a captured argument out records its default value.
    """
    import inspect

    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return tuple((name, None, _NO_DEFAULT) for name in names)
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in parameters)
    known = {p.name for p in parameters}
    unknown = [n for n in names if n not in known]
    if unknown and not accepts_any:
        raise ConfigError(
            f"capture: {', '.join(map(repr, unknown))} not among the parameters of "
            f"{_qualified_name(fn)}{inspect.signature(fn)}; name parameters of the function."
        )
    positional = [
        p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    defaults = {p.name: p.default for p in parameters if p.default is not p.empty}
    return tuple(
        (name, positional.index(name) if name in positional else None,
         defaults.get(name, _NO_DEFAULT))
        for name in names
    )


# -- public helpers -------------------------------------------------------------


@overload
def timed(fn: F, /) -> F: ...
@overload
def timed(
    name: str | None = None,
    /,
    *,
    level: str | None = None,
    slow: str | float | None = None,
    capture: Sequence[str] = (),
    **attrs: Any,
) -> Instrument: ...
def timed(
    fn_or_name: Any = None,
    /,
    *,
    level: str | None = None,
    slow: str | float | None = None,
    capture: Sequence[str] = (),
    **attrs: Any,
) -> Any:
    """Measure every call of a function: ``@timed``, ``@timed("name", level=..., slow=...)``.

    ``name`` defaults to ``module.qualname``; ``level`` overrides the global
    level for this function; ``slow`` (such as ``"250ms"``) keeps debug-level
    stacks only for calls at least that slow; ``capture`` names arguments whose
    values become attributes (no argument is ever captured otherwise); other
    keywords are constant attributes of every call.
    """
    if callable(fn_or_name) or isinstance(fn_or_name, classmethod | staticmethod):
        return Instrument()(fn_or_name)
    return Instrument(fn_or_name, level=level, slow=slow, capture=capture, attrs=attrs)


def span(
    name: str,
    /,
    *,
    level: str | None = None,
    slow: str | float | None = None,
    **attrs: Any,
) -> Instrument:
    """Measure a block: ``with lapse.span("load_model", path=p) as s: ... s.set(size=n)``.

    Also works as a decorator. Attributes given here, and set on the span
    inside the block, are stored at standard and debug levels.
    """
    if not isinstance(name, str):
        raise ConfigError(
            f"span: the first argument must be the span's name (text), not {name!r}; "
            "to decorate a function without naming it use @lapse.timed."
        )
    return Instrument(name, kind="span", level=level, slow=slow, attrs=attrs)


def set(**attrs: Any) -> None:  # noqa: A001 - `lapse.set(rows=n)` reads as intended
    """Add attributes to the innermost call being measured (no-op outside one)."""
    ctx = _current.get()
    if ctx is not None:
        ctx[2] = {**ctx[2], **attrs} if ctx[2] else attrs


@contextmanager
def user(user_id: object) -> Iterator[None]:
    """Attribute the calls inside the block to ``user_id`` (pseudonymised at debug level).

    The raw id is never stored: with ``LAPSE_USER_KEY`` set it is replaced by a
    keyed hash in the writer; without a key no user is recorded at all.
    """
    token = _user.set(user_id)
    try:
        yield
    finally:
        _user.reset(token)


def forget_current_span() -> None:
    """In a forked child, calls start new trees (the parent's span is in another run)."""
    _current.set(None)
