"""The instrumentation surface: decorated code behaves exactly as undecorated code.

Whatever the level, a decorated function returns the same values, raises the
same exception objects with their tracebacks, and looks the same to
``inspect`` (signature, name, docstring, kind of function). Sync functions,
``async def``, generators and async generators are each checked, as are
methods, classmethods and staticmethods on either side of the decorator.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lapse

LEVELS = ["off", "minimal", "standard", "debug"]

# The autouse fixture gives each test (not each example) a fresh lapse; examples
# only add events to the test's store, which these properties do not inspect.
examples = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(params=LEVELS)
def level(request: pytest.FixtureRequest) -> str:
    """Each transparency test runs at every level, set globally with configure()."""
    lapse.configure(level=request.param)
    return request.param


def recorded() -> list[dict[str, Any]]:
    """The events of the test's store, oldest first."""
    lapse.flush()
    return lapse.load().to_pylist()


def only(name: str) -> dict[str, Any]:
    """The single recorded event called ``name``."""
    rows = [row for row in recorded() if row["name"] == name]
    assert len(rows) == 1, rows
    return rows[0]


# -- functions decorated at import, before any configure() --------------------------


def collect(a, /, b, c=3, *args, d, e=5, **kwargs):
    """Return every argument as received."""
    return a, b, c, args, d, e, kwargs


timed_collect = lapse.timed(collect)


def identity(value):
    """Return the very object passed in."""
    return value


timed_identity = lapse.timed(identity)


class CustomError(Exception):
    """An exception defined outside builtins."""


class CustomBaseError(BaseException):
    """An exception that is not an Exception (like KeyboardInterrupt)."""


def fail(error):
    """Raise the given exception."""
    raise error


timed_fail = lapse.timed(fail)


async def async_echo(value, *, error=None):
    """Return ``value`` after yielding to the loop, or raise ``error``."""
    await asyncio.sleep(0)
    if error is not None:
        raise error
    return value


timed_async_echo = lapse.timed(async_echo)


def accumulate(start):
    """Yield running totals of what is sent in; ValueError resets, a negative number returns."""
    total = start
    while True:
        try:
            sent = yield total
        except ValueError:
            total = start
            continue
        if sent is None:
            total += 1
        elif sent < 0:
            return total
        else:
            total += sent


timed_accumulate = lapse.timed(accumulate)


def delegate(inner: Callable[[int], Iterator[int]], start: int):
    """Delegate to ``inner`` with ``yield from`` and return what it returned."""
    result = yield from inner(start)
    return ("delegated", result)


async def async_accumulate(start):
    """Async twin of ``accumulate`` (an async generator cannot return a value: it stops)."""
    total = start
    while True:
        try:
            sent = yield total
        except ValueError:
            total = start
            continue
        await asyncio.sleep(0)
        if sent is None:
            total += 1
        elif sent < 0:
            return
        else:
            total += sent


timed_async_accumulate = lapse.timed(async_accumulate)

values = st.one_of(
    st.none(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5),
    st.lists(st.integers(), max_size=3),
)
exception_types = st.sampled_from(
    [ValueError, KeyError, RuntimeError, CustomError, CustomBaseError, SystemExit]
)
operations = st.lists(
    st.one_of(
        st.just(("next",)),
        st.tuples(st.just("send"), st.integers(-2, 9)),
        st.tuples(st.just("throw"), st.sampled_from([ValueError, KeyError])),
        st.just(("close",)),
    ),
    max_size=12,
)


def drive(generator: Any, script: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """What a consumer sees when it runs ``script`` against a generator."""
    seen: list[tuple[Any, ...]] = []
    for step in script:
        try:
            if step[0] == "next":
                seen.append(("yield", next(generator)))
            elif step[0] == "send":
                seen.append(("yield", generator.send(step[1])))
            elif step[0] == "throw":
                seen.append(("yield", generator.throw(step[1]("boom"))))
            else:
                seen.append(("close", generator.close()))
        except StopIteration as stop:
            seen.append(("return", stop.value))
        except Exception as error:
            seen.append(("raise", type(error), error.args))
    return seen


async def adrive(generator: Any, script: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """What a consumer sees when it runs ``script`` against an async generator."""
    seen: list[tuple[Any, ...]] = []
    for step in script:
        try:
            if step[0] == "next":
                seen.append(("yield", await generator.__anext__()))
            elif step[0] == "send":
                seen.append(("yield", await generator.asend(step[1])))
            elif step[0] == "throw":
                seen.append(("yield", await generator.athrow(step[1]("boom"))))
            else:
                seen.append(("close", await generator.aclose()))
        except StopAsyncIteration:
            seen.append(("stop",))
        except Exception as error:
            seen.append(("raise", type(error), error.args))
    await generator.aclose()
    return seen


# -- return values and exceptions ---------------------------------------------------


@examples
@given(a=values, b=values, c=values, rest=st.lists(values, max_size=3), d=values,
       extra=st.dictionaries(st.sampled_from(["x", "y", "e"]), values, max_size=3))
def test_sync_arguments_and_results_pass_through(level, a, b, c, rest, d, extra):  # noqa: PLR0917
    """Positional-only, defaults, *args, keyword-only and **kwargs reach the function unchanged."""
    assert timed_collect(a, b, c, *rest, d=d, **extra) == collect(a, b, c, *rest, d=d, **extra)
    assert timed_collect(a, b=b, d=d) == collect(a, b=b, d=d)


@examples
@given(value=values)
def test_the_returned_object_is_the_same_object(level, value):
    """The decorator returns the function's result itself, not a copy."""
    marker = [value]
    assert timed_identity(marker) is marker


def test_argument_errors_are_the_functions_own(level):
    """Calling with wrong arguments raises the same TypeError as the plain function."""
    with pytest.raises(TypeError) as plain:
        collect(1, 2)  # d is missing
    with pytest.raises(TypeError) as timed:
        timed_collect(1, 2)
    assert str(timed.value) == str(plain.value)


@examples
@given(kind=exception_types, message=st.text(max_size=10))
def test_exceptions_are_reraised_unchanged(level, kind, message):
    """The very exception object propagates, with the raising line still in its traceback."""
    error = kind(message)
    with pytest.raises(kind) as caught:
        timed_fail(error)
    assert caught.value is error
    assert type(caught.value) is kind
    innermost = traceback.extract_tb(error.__traceback__)[-1]
    assert (innermost.name, innermost.line) == ("fail", "raise error")


@examples
@given(value=values, kind=exception_types)
def test_async_results_and_exceptions_pass_through(level, value, kind):
    """An ``async def`` returns the same value and raises the same exception object."""
    assert asyncio.run(timed_async_echo(value)) == value
    error = kind("async")
    with pytest.raises(kind) as caught:
        asyncio.run(timed_async_echo(value, error=error))
    assert caught.value is error
    assert traceback.extract_tb(error.__traceback__)[-1].name == "async_echo"


@examples
@given(start=st.integers(0, 5), script=operations)
def test_generator_protocol_is_transparent(level, start, script):
    """next/send/throw/close and the return value behave as without the decorator."""
    expected = drive(accumulate(start), script)
    assert drive(timed_accumulate(start), script) == expected


@examples
@given(start=st.integers(0, 5), script=operations)
def test_yield_from_a_decorated_generator_gets_its_return_value(level, start, script):
    """A delegating generator sees the decorated generator's values and return value."""
    expected = drive(delegate(accumulate, start), script)
    assert drive(delegate(timed_accumulate, start), script) == expected


@examples
@given(start=st.integers(0, 5), script=operations)
def test_async_generator_protocol_is_transparent(level, start, script):
    """__anext__/asend/athrow/aclose behave as without the decorator, at every level."""
    expected = asyncio.run(adrive(async_accumulate(start), script))
    assert asyncio.run(adrive(timed_async_accumulate(start), script)) == expected


def test_generator_exception_traceback_is_intact(level):
    """An exception raised inside a decorated generator keeps its raising frame."""

    @lapse.timed
    def broken():
        yield 1
        raise CustomError("inside")

    generator = broken()
    assert next(generator) == 1
    with pytest.raises(CustomError) as caught:
        next(generator)
    assert traceback.extract_tb(caught.value.__traceback__)[-1].name == "broken"


def test_generator_that_ignores_close_raises_as_usual(level):
    """A generator that yields on close raises RuntimeError, decorated or not."""

    def stubborn():
        while True:
            try:
                yield 1
            except GeneratorExit:
                yield 2

    plain, timed = stubborn(), lapse.timed(stubborn)()
    next(plain)
    next(timed)
    with pytest.raises(RuntimeError) as expected:
        plain.close()
    with pytest.raises(RuntimeError) as caught:
        timed.close()
    assert str(caught.value) == str(expected.value)


# -- what inspect sees ------------------------------------------------------------------


def sync_kind(a: int, /, b: str = "x", *args: Any, c: float, **kwargs: Any) -> tuple[Any, ...]:
    """A sync function."""
    return a, b, args, c, kwargs


async def async_kind(a: int, *, b: str = "y") -> int:
    """An async function."""
    return a


def generator_kind(n: int) -> Iterator[int]:
    """A generator."""
    yield from range(n)


async def async_generator_kind(n: int = 2) -> AsyncIterator[int]:
    """An async generator."""
    for i in range(n):
        yield i


KINDS = [sync_kind, async_kind, generator_kind, async_generator_kind]
# Each makes a fresh decorator per use, as written above a function.
DECORATORS: dict[str, Callable[[], Callable[[Any], Any]]] = {
    "bare": lambda: lapse.timed,
    "named": lambda: lapse.timed("a.name"),
    "empty_call": lambda: lapse.timed(),  # noqa: PLW0108 - @timed() is the form tested
    "per_level": lambda: lapse.timed(level="debug", slow="1ms"),
    "span": lambda: lapse.span("a.span"),
}


@pytest.mark.parametrize("fn", KINDS, ids=lambda fn: fn.__name__)
@pytest.mark.parametrize("decorate", DECORATORS.values(), ids=list(DECORATORS))
def test_decorated_function_looks_the_same(level, fn, decorate):
    """Signature, name, docstring, __wrapped__ and the inspect predicates are unchanged."""
    wrapped = decorate()(fn)
    assert inspect.signature(wrapped) == inspect.signature(fn)
    assert wrapped.__name__ == fn.__name__
    assert wrapped.__qualname__ == fn.__qualname__
    assert wrapped.__module__ == fn.__module__
    assert wrapped.__doc__ == fn.__doc__
    assert wrapped.__wrapped__ is fn
    for predicate in (inspect.iscoroutinefunction, inspect.isgeneratorfunction,
                      inspect.isasyncgenfunction):
        assert predicate(wrapped) == predicate(fn), predicate.__name__


# -- methods ------------------------------------------------------------------------


class Model:
    """Every way a method can be decorated."""

    def __init__(self, scale: int) -> None:
        self.scale = scale

    @lapse.timed
    def predict(self, x: int) -> int:
        """Scale x."""
        return x * self.scale

    @lapse.timed
    @classmethod
    def create_above(cls, scale: int) -> Model:
        """Build a model (decorator above @classmethod)."""
        return cls(scale)

    @classmethod
    @lapse.timed
    def create_below(cls, scale: int) -> Model:
        """Build a model (decorator below @classmethod)."""
        return cls(scale)

    @lapse.timed("model.add", level="minimal")
    @staticmethod
    def add_above(a: int, b: int) -> int:
        """Add (decorator with arguments above @staticmethod)."""
        return a + b

    @staticmethod
    @lapse.timed
    def add_below(a: int, b: int) -> int:
        """Add (decorator below @staticmethod)."""
        return a + b

    @lapse.timed
    async def apredict(self, x: int) -> int:
        """Scale x, asynchronously."""
        await asyncio.sleep(0)
        return x * self.scale

    @lapse.timed
    def stream(self, n: int) -> Iterator[int]:
        """Yield n scaled numbers."""
        for i in range(n):
            yield i * self.scale


class Subclass(Model):
    """classmethods called on a subclass get the subclass."""


def test_methods_classmethods_and_staticmethods_work(level):
    """Instance, class and static methods keep their binding on either side of the decorator."""
    model = Model(3)
    assert model.predict(2) == 6
    assert type(Subclass.create_above(2)) is Subclass
    assert type(Subclass.create_below(2)) is Subclass
    assert Model.create_above(5).scale == 5
    assert model.create_below(4).scale == 4
    assert Model.add_above(1, 2) == model.add_above(1, 2) == 3
    assert Model.add_below(1, 2) == model.add_below(1, 2) == 3
    assert asyncio.run(model.apredict(2)) == 6
    assert list(model.stream(3)) == [0, 3, 6]
    assert inspect.signature(Model.create_above) == inspect.signature(Model.create_below)
    assert Model.create_above.__doc__ == "Build a model (decorator above @classmethod)."
    assert inspect.signature(Model.add_above) == inspect.signature(Model.add_below)
    assert inspect.iscoroutinefunction(model.apredict)
    assert inspect.isgeneratorfunction(Model.stream)


def test_method_events_are_named_by_qualname():
    """Methods are named module.Class.method, whichever side of @classmethod the decorator is."""
    model = Model(1)
    model.predict(1)
    Model.create_above(1)
    Model.create_below(1)
    Model.add_above(1, 1)
    Model.add_below(1, 1)
    names = {row["name"] for row in recorded()}
    prefix = f"{__name__}.Model."
    assert names == {prefix + "predict", prefix + "create_above", prefix + "create_below",
                     "model.add", prefix + "add_below"}


# -- errors are recorded ------------------------------------------------------------


@pytest.mark.parametrize("level_name", ["minimal", "standard", "debug"])
def test_exceptions_are_recorded_as_errors(level_name):
    """A raising call is stored with status=error and its exception type, then re-raised."""
    lapse.configure(level=level_name)

    @lapse.timed("builtin")
    def builtin():
        raise ValueError("bad")

    @lapse.timed("custom")
    async def custom():
        raise CustomError("bad")

    @lapse.timed("in_generator")
    def in_generator():
        yield 1
        raise KeyError("k")

    with pytest.raises(ValueError, match="bad"):
        builtin()
    with pytest.raises(CustomError):
        asyncio.run(custom())
    with pytest.raises(KeyError):
        list(in_generator())
    with pytest.raises(RuntimeError), lapse.span("block"):
        raise RuntimeError("in a with block")
    rows = {row["name"]: row for row in recorded()}
    assert {name: (row["status"], row["error_type"]) for name, row in rows.items()} == {
        "builtin": ("error", "ValueError"),
        "custom": ("error", f"{CustomError.__module__}.CustomError"),
        "in_generator": ("error", "KeyError"),
        "block": ("error", "RuntimeError"),
    }


def test_successful_calls_are_ok():
    """A call that returns is stored with status=ok and no error type."""
    timed_identity(1)
    row = only(f"{__name__}.identity")
    assert (row["status"], row["error_type"]) == ("ok", None)


def test_closing_a_generator_early_is_not_an_error():
    """A consumer that stops early (break, close) leaves an ok event, not an error."""
    generator = timed_accumulate(0)
    next(generator)
    generator.close()
    row = only(f"{__name__}.accumulate")
    assert (row["status"], row["error_type"]) == ("ok", None)


# -- timing -----------------------------------------------------------------------


def test_async_function_is_timed_to_completion():
    """An awaited coroutine's duration covers its awaits, not just its creation."""

    @lapse.timed("nap")
    async def nap():
        await asyncio.sleep(0.05)
        return "rested"

    assert asyncio.run(nap()) == "rested"
    assert only("nap")["duration_ns"] >= 50_000_000


def test_generator_is_timed_to_exhaustion():
    """A generator's event covers producing every item and the consumer's time between them."""

    @lapse.timed("slow_items")
    def slow_items():
        for i in range(3):
            time.sleep(0.02)
            yield i

    for _ in slow_items():
        time.sleep(0.01)
    assert only("slow_items")["duration_ns"] >= 90_000_000


def test_async_generator_is_timed_to_exhaustion():
    """An async generator's event covers every item it produced."""

    @lapse.timed("async_items")
    async def async_items():
        for i in range(3):
            await asyncio.sleep(0.02)
            yield i

    async def consume():
        return [item async for item in async_items()]

    assert asyncio.run(consume()) == [0, 1, 2]
    assert only("async_items")["duration_ns"] >= 60_000_000


def test_sync_duration_covers_the_call():
    """A sync call's duration is at least the time it spent."""

    @lapse.timed("sleepy")
    def sleepy():
        time.sleep(0.03)

    before = time.time_ns()
    sleepy()
    row = only("sleepy")
    assert 30_000_000 <= row["duration_ns"] < 2_000_000_000
    assert before - 50_000_000 <= row["start_ns"] <= before + row["duration_ns"]


# -- the forms of the decorator ----------------------------------------------------


def test_name_defaults_to_module_and_qualname():
    """An unnamed decorator names events module.qualname."""

    @lapse.timed
    def bare():
        return 1

    @lapse.timed()
    def called():
        return 2

    @lapse.timed(level="debug")
    def with_level():
        return 3

    assert (bare(), called(), with_level()) == (1, 2, 3)
    names = {row["name"] for row in recorded()}
    local = f"{__name__}.test_name_defaults_to_module_and_qualname.<locals>."
    assert names == {local + "bare", local + "called", local + "with_level"}


def test_explicit_name_and_per_function_level():
    """``@timed("name", level=...)`` names the event and records it at that level."""

    @lapse.timed("scoring", level="debug")
    def score():
        return 0.5

    assert score() == 0.5
    row = only("scoring")
    assert row["level"] == "debug"
    assert row["kind"] == "function"


def test_span_as_context_manager_with_attributes():
    """``with span("x", a=1) as s: s.set(b=2)`` records one event with both attributes."""
    import json

    with lapse.span("load", a=1) as active:
        active.set(b=2)
        assert active.span_id is not None
    row = only("load")
    assert row["kind"] == "span"
    assert json.loads(row["attrs"]) == {"a": 1, "b": 2}


def test_span_returns_the_block_result_and_exceptions_propagate():
    """A with block's exception is re-raised by the span unchanged."""
    error = CustomError("inside a span")
    with pytest.raises(CustomError) as caught, lapse.span("failing"):
        raise error
    assert caught.value is error


def test_async_with_span():
    """``async with span(...)`` records the block, named and attributed like ``with``."""
    import json

    async def work():
        async with lapse.span("async_block", step="fetch") as active:
            await asyncio.sleep(0.01)
            active.set(done=True)

    asyncio.run(work())
    row = only("async_block")
    assert json.loads(row["attrs"]) == {"step": "fetch", "done": True}
    assert row["duration_ns"] >= 10_000_000


def test_span_as_decorator():
    """``@span("name", k=v)`` decorates a function: named, kind span, constant attributes."""
    import json

    @lapse.span("decorated", stage="train")
    def train(x):
        """Train."""
        return x + 1

    assert train(1) == 2
    assert train.__doc__ == "Train."
    row = only("decorated")
    assert row["kind"] == "span"
    assert json.loads(row["attrs"]) == {"stage": "train"}


def test_one_span_object_reused_and_nested():
    """A span object kept in a variable can be entered many times, even nested."""
    block = lapse.span("reused")
    with block, block:
        pass
    with block:
        pass
    rows = [row for row in recorded() if row["name"] == "reused"]
    assert len(rows) == 3
    inner = next(row for row in rows if row["parent_id"] is not None)
    assert inner["parent_id"] in {row["span_id"] for row in rows}


def test_set_adds_attributes_to_the_current_call():
    """``lapse.set(rows=3)`` inside a decorated function lands in that call's attrs."""
    import json

    @lapse.timed("predict")
    def predict(rows):
        lapse.set(rows=len(rows))
        lapse.set(model="m1")
        return rows

    @lapse.timed("outer")
    def outer():
        return predict([1, 2, 3])

    outer()
    lapse.set(ignored=True)  # outside any call: a no-op, not an error
    assert json.loads(only("predict")["attrs"]) == {"rows": 3, "model": "m1"}
    assert only("outer")["attrs"] is None


def test_set_inside_generators_and_coroutines():
    """``lapse.set`` in a generator, an async generator or a coroutine lands in its own event."""
    import json

    @lapse.timed("rows")
    def rows():
        for i in range(3):
            lapse.set(produced=i + 1)
            yield i

    @lapse.timed("async_rows")
    async def async_rows():
        lapse.set(kind="async generator")
        yield 1

    @lapse.timed("fetch")
    async def fetch():
        await asyncio.sleep(0)
        lapse.set(status_code=200)

    @lapse.timed("consumer")
    def consumer():
        total = sum(rows())
        lapse.set(total=total)

    async def main():
        await fetch()
        return [item async for item in async_rows()]

    consumer()
    asyncio.run(main())
    attrs = {row["name"]: json.loads(row["attrs"]) for row in recorded()}
    assert attrs == {
        "rows": {"produced": 3},
        "consumer": {"total": 3},
        "fetch": {"status_code": 200},
        "async_rows": {"kind": "async generator"},
    }


def test_constant_attributes_and_captured_arguments():
    """Keywords of ``timed`` are constant attrs; ``capture`` adds named argument values."""
    import json

    @lapse.timed("batch", model="v2", capture=["size", "mode"])
    def batch(data, size=8, *, mode="fast"):
        return len(data)

    batch([1, 2], 16)
    batch([1], size=4, mode="slow")
    batch([])
    rows = [json.loads(row["attrs"]) for row in recorded()]
    assert rows == [
        {"model": "v2", "size": 16, "mode": "fast"},
        {"model": "v2", "size": 4, "mode": "slow"},
        {"model": "v2", "size": 8, "mode": "fast"},
    ]


def test_decorating_something_that_is_not_callable_says_what_to_do():
    """A forgotten name argument gets a message pointing at the right spelling."""
    with pytest.raises(lapse.ConfigError, match="timed"):
        lapse.timed("name")(42)
