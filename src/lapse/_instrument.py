"""The instrumentation surface: ``timed``, ``span``, ``set`` and ``user``.

One ``Instrument`` object is a decorator (``@timed``, ``@timed(...)``,
``@span(...)``) and a context manager (``with span(...) as s``); the code that
runs on each call lives in ``lapse._hotpath``.

Cost rules: at ``minimal`` level a call costs two clock reads and one tuple
append; at ``standard`` it adds an id, a swap of the current call (see
``lapse._hotpath``) and the calling frame's code object. Names, JSON,
wall-clock conversion and redaction happen later in the writer. Nothing here raises into
user code: an internal failure drops the event and counts it.

Timing semantics: a sync function is timed from call to return; an ``async
def`` from the first ``await`` of its coroutine to its completion; a generator
(sync or async) from the first item requested to its exhaustion or close, so
the time a consumer spends between items is included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from time import perf_counter_ns, thread_time_ns
from types import TracebackType
from typing import Any, TypeVar, overload

from lapse._config import DEBUG, OFF, parse_duration_ns, parse_level
from lapse._errors import ConfigError
from lapse._hotpath import (
    _current,
    _current_call,
    _enter,
    _finish,
    _ids,
    _level_of,
    _reset,
    _slow_of,
    _user,
    _wrap_async_generator,
    _wrap_coroutine,
    _wrap_function,
    _wrap_generator,
)
from lapse._recorder import RECORDER

F = TypeVar("F", bound=Callable[..., Any])

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
            parent = _current_call()
            sid = next(_ids)
            active.ctx = [sid, sid if parent is None else parent[1], None, None, active]
            active.parent = parent
            active.token = _enter(active.ctx)
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
        current = _current_call()
        if current is None or len(current) < 5 or current[4].instrument is not self:
            return  # off, or the enter failed: nothing to record
        active: ActiveSpan = current[4]
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
        self.parent: list[Any] | None = None
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
    ctx = _current_call()
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
