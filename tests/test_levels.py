"""The levels, column by column, as in DESIGN.md's level table.

- ``off``: nothing is recorded;
- ``minimal``: name, start, duration, status / error type, and nothing else;
- ``standard``: minimal + caller, thread, span / parent / trace ids, attributes;
- ``debug``: standard + call stack (outermost first) and CPU time of sync calls.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import lapse

DETAIL = ("caller", "thread", "span_id", "parent_id", "trace_id", "attrs")
DEBUG_ONLY = ("stack", "cpu_ns", "user")


def recorded() -> list[dict[str, Any]]:
    """The events of the test's store, oldest first."""
    lapse.flush()
    return lapse.load().to_pylist()


def by_name() -> dict[str, dict[str, Any]]:
    """The recorded events by name (each name recorded once)."""
    rows = recorded()
    named = {row["name"]: row for row in rows}
    assert len(named) == len(rows), [row["name"] for row in rows]
    return named


def segments(store: Path) -> list[Path]:
    """Event segments written to the store so far."""
    return sorted((store / "events").glob("*.parquet"))


def exercise() -> None:
    """One call of every kind of instrumented code."""

    @lapse.timed("sync")
    def sync():
        lapse.set(rows=1)

    @lapse.timed("coroutine")
    async def coroutine():
        await asyncio.sleep(0)

    @lapse.timed("generator")
    def generator():
        yield 1

    @lapse.timed("async_generator")
    async def async_generator():
        yield 1

    async def consume():
        await coroutine()
        return [item async for item in async_generator()]

    sync()
    asyncio.run(consume())
    list(generator())
    with lapse.span("block", a=1):
        pass


# -- off --------------------------------------------------------------------------


def test_off_records_nothing(store):
    """At level off no event is written, whatever kind of code runs."""
    lapse.configure(level="off")
    exercise()
    lapse.flush()
    assert segments(store) == []
    assert lapse.status()["writer_alive"] is False


def test_off_from_the_environment_records_nothing(store, monkeypatch):
    """LAPSE_LEVEL=off turns a deployed service's instrumentation off without code changes."""
    monkeypatch.setenv("LAPSE_LEVEL", "off")
    exercise()
    lapse.flush()
    assert segments(store) == []


def test_global_off_is_a_kill_switch(store):
    """A global off wins over per-function levels and spans with their own level."""
    lapse.configure(level="off")

    @lapse.timed(level="debug")
    def chatty():
        return "still works"

    @lapse.timed(level="debug")
    async def chatty_async():
        return "async still works"

    assert chatty() == "still works"
    assert asyncio.run(chatty_async()) == "async still works"
    with lapse.span("block", level="debug") as active:
        active.set(x=1)
    lapse.flush()
    assert segments(store) == []


# -- minimal ----------------------------------------------------------------------


def test_minimal_holds_name_time_duration_and_status_only():
    """At minimal an event has name, start, duration and status; every other detail is null."""
    lapse.configure(level="minimal")
    before = time.time_ns()
    exercise()

    @lapse.timed("failing")
    def failing():
        raise KeyError("x")

    with pytest.raises(KeyError):
        failing()
    after = time.time_ns()
    rows = by_name()
    assert set(rows) == {"sync", "coroutine", "generator", "async_generator", "block", "failing"}
    for name, row in rows.items():
        assert row["level"] == "minimal", name
        assert before <= row["start_ns"] <= after, name
        assert 0 <= row["duration_ns"] <= after - before, name
        assert row["run_id"], name
        for column in DETAIL + DEBUG_ONLY:
            assert row[column] is None, (name, column)
    assert (rows["sync"]["status"], rows["sync"]["error_type"]) == ("ok", None)
    assert (rows["failing"]["status"], rows["failing"]["error_type"]) == ("error", "KeyError")


# -- standard ---------------------------------------------------------------------


def test_standard_is_the_default_and_adds_context_but_no_stack():
    """Without settings the level is standard: ids, caller, thread and attrs, no stack or CPU."""
    exercise()
    rows = by_name()
    for name, row in rows.items():
        assert row["level"] == "standard", name
        assert row["span_id"] is not None, name
        assert row["trace_id"] is not None, name
        assert row["thread"] == "MainThread", name
        assert row["caller"] is not None, name
        for column in DEBUG_ONLY:
            assert row[column] is None, (name, column)
    assert json.loads(rows["sync"]["attrs"]) == {"rows": 1}
    assert json.loads(rows["block"]["attrs"]) == {"a": 1}
    assert rows["generator"]["attrs"] is None


def test_caller_is_the_calling_function():
    """``caller`` is module:qualname of the function that made the call."""

    @lapse.timed("leaf")
    def leaf():
        return 1

    @lapse.timed("leaf_async")
    async def leaf_async():
        return 2

    class Service:
        def handle(self):
            return leaf()

        async def handle_async(self):
            await leaf_async()
            async with lapse.span("async_block"):
                pass

    def plain_caller():
        with lapse.span("sync_block"):
            return Service().handle()

    plain_caller()
    asyncio.run(Service().handle_async())
    rows = by_name()
    here = f"{__name__}:test_caller_is_the_calling_function.<locals>"
    assert rows["leaf"]["caller"] == f"{here}.Service.handle"
    assert rows["sync_block"]["caller"] == f"{here}.plain_caller"
    assert rows["leaf_async"]["caller"] == f"{here}.Service.handle_async"
    assert rows["async_block"]["caller"] == f"{here}.Service.handle_async"


def test_caller_names_the_module_of_a_package(tmp_path, monkeypatch):
    """A caller inside a package is named by its dotted module, not its file name."""
    package = tmp_path / "lapse_probe_pkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import lapse\n\n"
        "@lapse.timed('probe')\n"
        "def probe():\n    return 1\n\n"
        "def from_init():\n    return probe()\n"
    )
    (package / "jobs.py").write_text(
        "from lapse_probe_pkg import probe\n\n"
        "def run():\n    return probe()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        import lapse_probe_pkg
        import lapse_probe_pkg.jobs

        lapse_probe_pkg.from_init()
        lapse_probe_pkg.jobs.run()
        callers = [row["caller"] for row in recorded()]
    finally:
        sys.modules.pop("lapse_probe_pkg", None)
        sys.modules.pop("lapse_probe_pkg.jobs", None)
    assert callers == ["lapse_probe_pkg:from_init", "lapse_probe_pkg.jobs:run"]


def test_thread_is_the_calling_threads_name():
    """``thread`` names the thread each call ran in."""

    @lapse.timed("work")
    def work(i):
        lapse.set(i=i)

    threads = [threading.Thread(target=work, args=(i,), name=f"worker-{i}") for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    work(9)
    threads_by_i = {json.loads(row["attrs"])["i"]: row["thread"] for row in recorded()}
    assert threads_by_i == {0: "worker-0", 1: "worker-1", 2: "worker-2", 9: "MainThread"}


def test_nested_calls_share_a_trace_and_point_at_their_parent():
    """A call made inside another gets its span_id as parent_id and its trace_id."""

    @lapse.timed("inner")
    def inner(i):
        lapse.set(i=i)

    @lapse.timed("outer")
    def outer():
        inner(1)
        with lapse.span("block"):
            inner(2)
        inner(3)

    outer()
    outer()
    rows = recorded()
    outers = [row for row in rows if row["name"] == "outer"]
    assert len(outers) == 2
    assert outers[0]["trace_id"] != outers[1]["trace_id"]
    for top in outers:
        assert top["parent_id"] is None
        assert top["trace_id"] == top["span_id"]
        tree = [row for row in rows if row["trace_id"] == top["span_id"]]
        block = next(row for row in tree if row["name"] == "block")
        parents = {json.loads(row["attrs"])["i"]: row["parent_id"]
                   for row in tree if row["name"] == "inner"}
        assert block["parent_id"] == top["span_id"]
        assert parents == {1: top["span_id"], 2: block["span_id"], 3: top["span_id"]}
    assert len({row["span_id"] for row in rows}) == len(rows)


def test_a_span_inside_a_decorated_function_nests_under_it():
    """``with lapse.span`` in a decorated function records a child of that call."""

    @lapse.timed("load")
    def load():
        with lapse.span("read") as active:
            active.set(size=3)

    load()
    rows = by_name()
    assert rows["read"]["parent_id"] == rows["load"]["span_id"]
    assert rows["read"]["trace_id"] == rows["load"]["span_id"]


def test_parallel_asyncio_tasks_nest_under_their_own_parent():
    """Concurrent tasks keep separate trees: each child points at the call that started it."""

    @lapse.timed("child", capture=["owner"])
    async def child(owner, delay):
        await asyncio.sleep(delay)

    @lapse.timed("parent", capture=["owner"])
    async def parent(owner):
        await asyncio.gather(child(owner, 0.002 * owner), child(owner, 0.01 - 0.002 * owner))
        await child(owner, 0)

    async def main():
        await asyncio.gather(*(parent(owner) for owner in range(4)))

    asyncio.run(main())
    rows = recorded()
    parents = {json.loads(row["attrs"])["owner"]: row for row in rows if row["name"] == "parent"}
    children = [row for row in rows if row["name"] == "child"]
    assert len(parents) == 4
    assert len(children) == 12
    for row in children:
        owner = parents[json.loads(row["attrs"])["owner"]]
        assert row["parent_id"] == owner["span_id"]
        assert row["trace_id"] == owner["span_id"]
    for row in parents.values():
        assert row["parent_id"] is None


def test_sync_calls_in_interleaved_tasks_nest_under_their_own_call():
    """Tasks that share a context's current call still keep their own trees.

    A call before ``asyncio.run`` gives the main context lapse's state, which every
    task then inherits; spans held open across ``await`` in plain coroutines and
    the sync calls inside them must not see one another's.
    """

    @lapse.timed("warm_up")
    def warm_up():
        pass

    @lapse.timed("step", capture=["owner"])
    def step(owner):
        pass

    @lapse.timed("handler", capture=["owner"])
    async def handler(owner):
        for _ in range(3):
            step(owner)
            await asyncio.sleep(0)

    async def plain(owner):
        with lapse.span("request") as request:
            request.set(owner=owner)
            for _ in range(3):
                step(owner)
                await asyncio.sleep(0.001 * (owner % 3))
        await handler(owner)

    async def main():
        await asyncio.gather(*(plain(owner) for owner in range(6)))

    warm_up()
    asyncio.run(main())
    rows = recorded()
    requests = {json.loads(row["attrs"])["owner"]: row for row in rows
                if row["name"] == "request"}
    handlers = {json.loads(row["attrs"])["owner"]: row for row in rows
                if row["name"] == "handler"}
    steps = [row for row in rows if row["name"] == "step"]
    assert len(requests) == len(handlers) == 6
    assert len(steps) == 36
    for owner, request in requests.items():
        assert request["parent_id"] is None
        mine = [row for row in steps if json.loads(row["attrs"])["owner"] == owner]
        assert sorted(row["parent_id"] for row in mine) == (
            [request["span_id"]] * 3 + [handlers[owner]["span_id"]] * 3)


def test_threads_given_copies_of_one_context_nest_under_the_copied_call():
    """A context copied into other threads (``asyncio.to_thread``, thread pools) nests their
    calls under the call that copied it, each thread's tree its own, with its thread name."""
    import contextvars

    @lapse.timed("inner", capture=["i"])
    def inner(i):
        pass

    @lapse.timed("outer", capture=["i"])
    def outer(i):
        for _ in range(300):
            inner(i)

    @lapse.timed("root")
    def root():
        copies = [contextvars.copy_context() for _ in range(4)]
        threads = [threading.Thread(target=copy.run, args=(outer, i), name=f"copy-{i}")
                   for i, copy in enumerate(copies)]
        for thread in threads:
            thread.start()
        outer(9)  # the copying thread at the same time
        for thread in threads:
            thread.join()

    root()
    rows = recorded()
    top = next(row for row in rows if row["name"] == "root")
    outers = {json.loads(row["attrs"])["i"]: row for row in rows if row["name"] == "outer"}
    assert sorted(outers) == [0, 1, 2, 3, 9]
    for i, row in outers.items():
        assert row["parent_id"] == top["span_id"]
        assert row["trace_id"] == top["span_id"]
        assert row["thread"] == ("MainThread" if i == 9 else f"copy-{i}")
    inners = [row for row in rows if row["name"] == "inner"]
    assert len(inners) == 5 * 300
    for row in inners:
        parent = outers[json.loads(row["attrs"])["i"]]
        assert (row["parent_id"], row["trace_id"], row["thread"]) == (
            parent["span_id"], top["span_id"], parent["thread"])


def test_to_thread_calls_nest_under_the_awaiting_coroutine():
    """``asyncio.to_thread`` (how frameworks run sync handlers) keeps the nesting."""

    @lapse.timed("blocking")
    def blocking():
        time.sleep(0.001)

    @lapse.timed("endpoint", capture=["owner"])
    async def endpoint(owner):
        await asyncio.to_thread(blocking)

    async def main():
        await asyncio.gather(*(endpoint(owner) for owner in range(4)))

    asyncio.run(main())
    rows = recorded()
    endpoints = {row["span_id"] for row in rows if row["name"] == "endpoint"}
    blocking_rows = [row for row in rows if row["name"] == "blocking"]
    assert len(endpoints) == len(blocking_rows) == 4
    assert {row["parent_id"] for row in blocking_rows} == endpoints
    assert all(row["thread"] != "MainThread" for row in blocking_rows)


def test_a_generators_consumer_is_not_nested_under_the_generator():
    """Calls the consumer makes between items belong to the consumer, not the generator."""

    @lapse.timed("helper")
    def helper(role):
        lapse.set(role=role)

    @lapse.timed("produce")
    def produce():
        for i in range(2):
            helper("producer")
            yield i

    @lapse.timed("handle")
    def handle(item):
        helper("consumer")

    @lapse.timed("pipeline")
    def pipeline():
        for item in produce():
            handle(item)

    pipeline()
    rows = recorded()
    ids = {row["name"]: row["span_id"] for row in rows if row["name"] != "helper"
           and row["name"] != "handle"}
    assert next(r for r in rows if r["name"] == "produce")["parent_id"] == ids["pipeline"]
    for row in rows:
        if row["name"] == "handle":
            assert row["parent_id"] == ids["pipeline"]
        if row["name"] == "helper":
            role = json.loads(row["attrs"])["role"]
            if role == "producer":
                assert row["parent_id"] == ids["produce"]
            else:
                assert row["parent_id"] != ids["produce"]


def test_a_span_held_open_across_a_yield_is_recorded():
    """``with lapse.span`` around ``yield`` in a decorated generator nests and is not lost."""

    @lapse.timed("produce")
    def produce():
        with lapse.span("batch"):
            yield 1
            yield 2

    @lapse.timed("consume")
    def consume(item):
        return item

    @lapse.timed("pipeline")
    def pipeline():
        return [consume(item) for item in produce()]

    assert pipeline() == [1, 2]
    rows = recorded()
    ids = {row["name"]: row["span_id"] for row in rows if row["name"] != "consume"}
    assert set(ids) == {"produce", "batch", "pipeline"}
    assert next(r for r in rows if r["name"] == "batch")["parent_id"] == ids["produce"]
    for row in rows:
        if row["name"] == "consume":
            assert row["parent_id"] == ids["pipeline"]


def test_an_async_generators_consumer_is_not_nested_under_it():
    """The consumer of a decorated async generator stays in its own tree."""

    @lapse.timed("produce")
    async def produce():
        for i in range(2):
            yield i

    @lapse.timed("handle")
    async def handle(item):
        return item

    @lapse.timed("pipeline")
    async def pipeline():
        return [await handle(item) async for item in produce()]

    assert asyncio.run(pipeline()) == [0, 1]
    rows = recorded()
    ids = {row["name"]: row["span_id"] for row in rows if row["name"] != "handle"}
    for row in rows:
        if row["name"] in ("handle", "produce"):
            assert row["parent_id"] == ids["pipeline"], row["name"]


# -- debug ------------------------------------------------------------------------


def test_debug_adds_the_stack_outermost_first_and_cpu_time():
    """At debug a sync call has the stack to its call site, outermost first, and its CPU time."""
    lapse.configure(level="debug")

    @lapse.timed("spin")
    def spin():
        end = time.thread_time_ns() + 5_000_000
        while time.thread_time_ns() < end:
            pass

    def call_site():
        line = sys._getframe().f_lineno + 1
        spin()
        return line

    line = call_site()
    row = by_name()["spin"]
    assert row["level"] == "debug"
    stack = row["stack"]
    test = "test_debug_adds_the_stack_outermost_first_and_cpu_time"
    assert stack[-1] == f"{__file__}:{line} in {test}.<locals>.call_site"
    assert stack[-2].startswith(f"{__file__}:")
    assert stack[-2].endswith(f" in {test}")
    assert len(stack) > 2
    for entry in stack:
        path, _, rest = entry.partition(":")
        number, _, function = rest.partition(" in ")
        assert path, entry
        assert number.isdigit(), entry
        assert function, entry
    assert 5_000_000 <= row["cpu_ns"] <= row["duration_ns"] + 1_000_000
    assert row["caller"] is not None
    assert row["span_id"] is not None


def test_debug_keeps_standard_detail_for_every_kind():
    """Debug events of every kind keep ids, caller, thread and attrs and carry a stack."""
    lapse.configure(level="debug")
    exercise()
    for name, row in by_name().items():
        assert row["level"] == "debug", name
        assert row["stack"], name
        assert row["span_id"] is not None, name
        assert row["thread"] == "MainThread", name
    rows = by_name()
    assert json.loads(rows["sync"]["attrs"]) == {"rows": 1}
    assert rows["sync"]["cpu_ns"] is not None
    assert rows["block"]["cpu_ns"] is not None


# -- where the level comes from -------------------------------------------------


@pytest.mark.parametrize("level", ["minimal", "standard", "debug"])
def test_level_from_the_environment(monkeypatch, level):
    """LAPSE_LEVEL sets the level when configure() is not called."""
    monkeypatch.setenv("LAPSE_LEVEL", level.upper())
    exercise()
    assert {row["level"] for row in recorded()} == {level}


def test_configure_level_wins_over_the_environment(monkeypatch):
    """configure(level=) overrides LAPSE_LEVEL."""
    monkeypatch.setenv("LAPSE_LEVEL", "minimal")
    lapse.configure(level="debug")
    exercise()
    assert {row["level"] for row in recorded()} == {"debug"}


def test_changing_the_level_while_running():
    """configure(level=) takes effect for the next calls of an already running process."""

    @lapse.timed("call")
    def call():
        return None

    for level in ("minimal", "debug", "off", "standard"):
        lapse.configure(level=level)
        call()
    assert [row["level"] for row in recorded()] == ["minimal", "debug", "standard"]


@pytest.mark.parametrize(
    ("global_level", "own_level", "stored"),
    [
        ("minimal", "debug", "debug"),
        ("debug", "minimal", "minimal"),
        ("standard", "off", None),
        ("off", "debug", None),
    ],
)
def test_per_function_level_overrides_global(store, global_level, own_level, stored):
    """A function's own level beats the global one, except a global off."""
    lapse.configure(level=global_level)

    @lapse.timed("own", level=own_level)
    def own():
        return 1

    @lapse.timed("own_async", level=own_level)
    async def own_async():
        return 2

    @lapse.timed("own_generator", level=own_level)
    def own_generator():
        yield 3

    assert own() == 1
    assert asyncio.run(own_async()) == 2
    assert list(own_generator()) == [3]
    with lapse.span("own_span", level=own_level):
        pass
    lapse.flush()
    if stored is None:
        assert not segments(store) or lapse.load().num_rows == 0
    else:
        assert {row["level"] for row in recorded()} == {stored}
        assert lapse.load().num_rows == 4


# -- slow ----------------------------------------------------------------------------


def test_slow_threshold_keeps_stacks_of_slow_calls_only():
    """With slow="50ms" at debug, fast calls have no stack and slow calls have one."""

    @lapse.timed("maybe_slow", level="debug", slow="50ms")
    def maybe_slow(seconds):
        lapse.set(seconds=seconds)
        time.sleep(seconds)

    maybe_slow(0)
    maybe_slow(0.06)
    rows = {json.loads(row["attrs"])["seconds"]: row for row in recorded()}
    assert rows[0]["stack"] is None
    assert rows[0]["span_id"] is not None
    assert rows[0.06]["stack"]
    assert rows[0.06]["stack"][-1].endswith(
        " in test_slow_threshold_keeps_stacks_of_slow_calls_only")
    assert rows[0.06]["duration_ns"] >= 50_000_000


def test_global_slow_threshold_applies_to_every_kind():
    """configure(slow=) applies to functions, coroutines and spans at debug level."""
    lapse.configure(level="debug", slow="50ms")

    @lapse.timed("fast")
    def fast():
        return None

    @lapse.timed("slow_async")
    async def slow_async():
        await asyncio.sleep(0.06)

    fast()
    asyncio.run(slow_async())
    with lapse.span("slow_block"):
        time.sleep(0.06)
    with lapse.span("fast_block"):
        pass
    rows = by_name()
    assert rows["fast"]["stack"] is None
    assert rows["fast_block"]["stack"] is None
    assert rows["slow_async"]["stack"]
    assert rows["slow_block"]["stack"]
