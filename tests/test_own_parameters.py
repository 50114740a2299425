"""Sync wrappers take the function's own parameters (``lapse._signature``).

The wrapper is recompiled from the hot path's source with the function's
parameter list, so these tests check what a user could notice: any parameter
list, including names the hot path itself uses, passes every argument through
unchanged and records the call; defaults are the function's own objects; and
whatever cannot be rebuilt keeps the ``*args, **kwargs`` wrapper and still works.
"""

from __future__ import annotations

import functools
import inspect
import keyword
from types import CodeType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lapse
from lapse import _hotpath, _signature

LEVELS = ["off", "minimal", "standard", "debug"]

examples = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _names_in(code: CodeType) -> set[str]:
    """Every name a code object and those nested in it bind or read (and attribute names)."""
    names = {*code.co_names, *code.co_varnames, *code.co_cellvars, *code.co_freevars}
    for const in code.co_consts:
        if isinstance(const, CodeType):
            names |= _names_in(const)
    return names


# Names the hot path's template binds or reads (locals, cells, globals, builtins):
# a parameter named like one of them must not change what the wrapper does.
TEMPLATE_NAMES = sorted(_names_in(_hotpath._wrap_sync.__code__))


def events(name: str) -> list[dict[str, Any]]:
    lapse.flush()
    return [row for row in lapse.load().to_pylist() if row["name"] == name]


def is_generic(wrapper: Any) -> bool:
    """Whether ``wrapper`` is the ``(*args, **kwargs)`` wrapper, not a rebuilt one."""
    code = wrapper.__code__
    return (code.co_argcount, code.co_kwonlyargcount) == (0, 0) and code.co_varnames[:2] == (
        "args", "kwargs") and bool(
        code.co_flags & inspect.CO_VARARGS and code.co_flags & inspect.CO_VARKEYWORDS)


@pytest.mark.parametrize("level", LEVELS)
def test_the_wrapper_declares_the_functions_parameters(level):
    """``predict(self, X, *, proba=False)`` is wrapped by a function with those parameters,
    so calling it takes CPython's fast path and no tuple or dict is built."""
    lapse.configure(level=level)

    class Model:
        @lapse.timed("predict")
        def predict(self, X, *, proba=False):  # noqa: N803 - as scikit-learn names it
            return X, proba

    code = Model.predict.__code__
    assert code.co_varnames[:3] == ("self", "X", "proba")
    assert (code.co_argcount, code.co_kwonlyargcount) == (2, 1)
    assert Model.predict.__kwdefaults__ == {"proba": False}
    assert Model().predict(3, proba=True) == (3, True)
    assert str(inspect.signature(Model.predict)) == "(self, X, *, proba=False)"
    assert len(events("predict")) == (0 if level == "off" else 1)


@pytest.mark.parametrize("level", LEVELS)
def test_parameters_named_like_the_wrappers_own_names(level):
    """A function whose parameters are called ``key``, ``fn``, ``level``, ``type``, ``len``...
    (names the wrapper uses) gets exactly its arguments, and nests and records as any other."""
    lapse.configure(level=level)
    names = [name for name in TEMPLATE_NAMES if not keyword.iskeyword(name)]
    as_dict = ", ".join(f"{name!r}: {name}" for name in names)
    plain = _with_parameters(names, f"return {{{as_dict}}}")
    timed = lapse.timed("clash")(plain)
    outer = lapse.timed("outer")(lambda: timed(*range(len(names))))
    assert not is_generic(timed)
    assert outer() == plain(*range(len(names))) == dict(zip(names, range(len(names)), strict=True))
    assert timed(**{name: name for name in names}) == {name: name for name in names}
    failing = lapse.timed("clash_raises")(_with_parameters(names, "raise LookupError(len)"))
    with pytest.raises(LookupError) as caught:
        failing(*range(len(names)))
    assert caught.value.args == (names.index("len"),)
    if level == "off":
        assert events("clash") == events("clash_raises") == []
        return
    first, second = events("clash")
    assert first["status"] == second["status"] == "ok"
    (failed,) = events("clash_raises")
    assert (failed["status"], failed["error_type"]) == ("error", "LookupError")
    if level != "minimal":
        (parent,) = events("outer")
        assert first["parent_id"] == parent["span_id"]
        assert second["parent_id"] is None


def _with_parameters(names: list[str], body: str) -> Any:
    """A function of parameters ``names`` whose body is ``body``."""
    namespace: dict[str, Any] = {}
    exec(f"def clash({', '.join(names)}):\n    {body}\n", namespace)
    return namespace["clash"]


def test_defaults_are_the_functions_own_objects():
    """An omitted argument reaches the function as the very default object it declares."""

    def remember(item, seen=[], *, index={}):  # noqa: B006 - the identity is what is tested
        seen.append(item)
        index[item] = len(seen)
        return seen, index

    timed = lapse.timed(remember)
    seen, index = timed(1)
    assert seen is remember.__defaults__[0]
    assert index is remember.__kwdefaults__["index"]
    assert timed(2) == ([1, 2], {1: 1, 2: 2})


def test_arguments_that_do_not_fit_raise_the_functions_error_before_timing():
    """A call with arguments the function does not take raises its own TypeError, from the
    wrapper (which carries its name), and records no call: the function never ran."""

    def predict(X, *, proba=False):  # noqa: N803 - as scikit-learn names it
        return X

    timed = lapse.timed("predict")(predict)
    for bad in ((lambda f: f()), (lambda f: f(1, 2)), (lambda f: f(1, proba=1, other=2))):
        with pytest.raises(TypeError) as plain:
            bad(predict)
        with pytest.raises(TypeError) as wrapped:
            bad(timed)
        assert str(wrapped.value) == str(plain.value)
    assert timed(5) == 5
    assert len(events("predict")) == 1


class Scorer:
    def __call__(self, x, scale=2):
        return x * scale


def _lapse_named(_lapse_x):
    return _lapse_x


@pytest.mark.parametrize(("target", "args", "expected"), [
    (Scorer(), (3,), 6),
    (functools.partial(pow, 2), (10,), 1024),
    (len, ("abc",), 3),
    (_lapse_named, (7,), 7),
])
def test_callables_without_a_parameter_list_keep_the_generic_wrapper(target, args, expected):
    """Callable objects, partials, builtins and parameters named with the ``_lapse_`` prefix
    keep the ``*args, **kwargs`` wrapper, which records them the same way."""
    timed = lapse.timed("target")(target)
    assert is_generic(timed)
    assert timed(*args) == expected
    assert len(events("target")) == 1


def test_capturing_instruments_keep_the_generic_wrapper():
    """``capture=`` reads the call's ``args`` and ``kwargs``, so it keeps the wrapper that
    has them; the captured value is recorded."""
    lapse.configure(level="debug")
    timed = lapse.timed("score", capture=["batch_size"])(lambda rows, batch_size=8: rows)
    assert is_generic(timed)
    assert timed([1], batch_size=16) == [1]
    assert '"batch_size": 16' in events("score")[0]["attrs"]


def test_a_template_without_readable_source_is_not_rebuilt():
    """Where the hot path's source cannot be read (a frozen application), the generic
    wrapper is used."""
    namespace: dict[str, Any] = {}
    exec("def template(instrument, fn):\n"
         "    def timed_function(*args, **kwargs):\n"
         "        return fn(*args, **kwargs)\n"
         "    return timed_function\n", namespace)
    assert _signature.with_parameters_of(namespace["template"], lambda x: x) is None


TEMPLATE = """
def template(instrument, fn):
    \"\"\"A minimal template.\"\"\"
    def timed_function(*args, **kwargs):
        return instrument, fn(*args, **kwargs)
    return timed_function
"""


def test_a_template_changed_on_disk_since_import_is_not_rebuilt(tmp_path, monkeypatch):
    """If the template's file changed after import (an upgrade under a running process),
    its source no longer describes the running code: the generic wrapper is used."""
    import importlib
    import linecache

    (tmp_path / "fresh_template.py").write_text(TEMPLATE)
    (tmp_path / "stale_template.py").write_text(TEMPLATE)
    monkeypatch.syspath_prepend(str(tmp_path))
    fresh = importlib.import_module("fresh_template").template
    stale = importlib.import_module("stale_template").template
    (tmp_path / "stale_template.py").write_text(
        TEMPLATE.replace("return instrument, fn", "print(instrument)\n        return fn"))
    linecache.clearcache()
    make = _signature.with_parameters_of(fresh, lambda x: x)
    assert make is not None
    assert make("i", lambda x: x * 2)(x=4) == ("i", 8)
    assert _signature.with_parameters_of(stale, lambda x: x) is None


# -- any parameter list ---------------------------------------------------------------

names = st.sampled_from([*TEMPLATE_NAMES, "X", "y", "batch", "self", "model", "a", "b"])


@st.composite
def parameter_lists(draw: st.DrawFn) -> tuple[str, list[Any], dict[str, Any]]:
    """A ``def`` with a random parameter list, and a call that fits it."""
    chosen = draw(st.lists(names, unique=True, max_size=7))
    cut = sorted(draw(st.lists(st.integers(0, len(chosen)), min_size=2, max_size=2)))
    posonly, plain, kw_only = chosen[:cut[0]], chosen[cut[0]:cut[1]], chosen[cut[1]:]
    positional = posonly + plain
    defaults = draw(st.integers(0, len(positional)))
    star, double_star = draw(st.booleans()), draw(st.booleans())
    kw_defaults = {name for name in kw_only if draw(st.booleans())}
    parts = [name + (f"={i!r}" if i >= len(positional) - defaults else "")
             for i, name in enumerate(positional)]
    if posonly:
        parts.insert(len(posonly), "/")
    if star:
        parts.append("*rest_")
    elif kw_only:
        parts.append("*")
    parts += [name + ("=-1" if name in kw_defaults else "") for name in kw_only]
    if double_star:
        parts.append("**extra_")
    returned = [*positional, *kw_only, *(["rest_"] if star else []),
                *(["extra_"] if double_star else [])]
    source = (f"def target({', '.join(parts)}):\n"
              f"    return {{{', '.join(f'{name!r}: {name}' for name in returned)}}}\n")
    given_positional = draw(st.integers(len(positional) - defaults, len(positional)))
    args: list[Any] = [f"v{i}" for i in range(given_positional)]
    if star and given_positional == len(positional):
        args += draw(st.lists(st.integers(), max_size=2))
    kwargs: dict[str, Any] = {name: f"k_{name}" for name in kw_only
                              if name not in kw_defaults or draw(st.booleans())}
    by_keyword = [name for name in plain[given_positional - len(posonly):] if draw(st.booleans())]
    kwargs.update({name: f"n_{name}" for name in by_keyword})
    if double_star:
        kwargs.update(draw(st.dictionaries(st.sampled_from(["p", "q"]), st.integers(),
                                           max_size=2)))
    return source, args, kwargs


@pytest.mark.parametrize("level", LEVELS)
@examples
@given(case=parameter_lists())
def test_any_parameter_list_passes_arguments_through(level, case):
    """Positional-only, defaults, ``*args``, keyword-only and ``**kwargs`` in any mix, with
    names the wrapper itself uses: the rebuilt wrapper hands over exactly the arguments given."""
    lapse.configure(level=level)
    source, args, kwargs = case
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    plain = namespace["target"]
    timed = lapse.timed("target")(plain)
    assert not is_generic(timed)
    assert inspect.signature(timed) == inspect.signature(plain)
    assert timed(*args, **kwargs) == plain(*args, **kwargs)
