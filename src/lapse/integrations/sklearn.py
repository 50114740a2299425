"""scikit-learn auto-instrumentation: ``lapse.instrument("sklearn")``.

Every scikit-learn estimator's (and pipeline's) ``fit``, ``predict``,
``predict_proba``, ``predict_log_proba``, ``decision_function``,
``transform``, ``fit_transform``, ``fit_predict`` and ``score`` becomes a lapse
event named ``sklearn.<Class>.<method>`` (the estimator's own class, such as
``sklearn.LogisticRegression.fit``), with the attributes ``rows`` and
``features`` (the shape of ``X``) and ``estimator`` (the class's full name).
A Pipeline's steps nest under the pipeline's call, and a method that calls
another (``fit_transform`` calling ``fit`` then ``transform``, ``score``
calling ``predict``) nests it, so the tree shows where the time goes.

The methods are wrapped where scikit-learn defines them (estimator classes and
their mixins), found with ``sklearn.utils.all_estimators()`` plus the
subclasses of ``BaseEstimator`` already imported (your own estimators
included); ``lapse.uninstrument("sklearn")`` puts every original back. An
estimator method calling the same method of its base class
(``super().fit(...)``) is one event, not two.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from lapse.integrations._calls import begin, end, instrument_for

METHODS = ("fit", "predict", "predict_proba", "predict_log_proba",
           "decision_function", "transform", "fit_transform", "fit_predict", "score")

_patched: list[tuple[type, str, Any]] = []
_lock = threading.Lock()
_inside: ContextVar[tuple[int, str] | None] = ContextVar("lapse_sklearn_inside", default=None)


def _shape(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    data = args[0] if args else kwargs.get("X")
    attrs: dict[str, Any] = {}
    shape = getattr(data, "shape", None)
    if isinstance(shape, tuple) and shape:
        attrs["rows"] = int(shape[0])
        if len(shape) > 1:
            attrs["features"] = int(shape[1])
    elif data is not None and hasattr(data, "__len__"):
        with contextlib.suppress(TypeError):
            attrs["rows"] = len(data)
    return attrs


def _timed_call(method: str, bound: Callable[..., Any], estimator: Any,
                args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    key = (id(estimator), method)
    if _inside.get() == key:  # super().fit() inside fit: one event
        return bound(*args, **kwargs)
    call = begin()
    if call is None:
        return bound(*args, **kwargs)
    marker = _inside.set(key)
    error: type[BaseException] | None = None
    try:
        return bound(*args, **kwargs)
    except BaseException as exc:
        error = type(exc)
        raise
    finally:
        _inside.reset(marker)
        cls = type(estimator)
        attrs = _shape(args, kwargs)
        attrs["estimator"] = f"{cls.__module__}.{cls.__qualname__}"
        caller = sys._getframe(2).f_code  # the code that called the estimator's method
        end(call, instrument_for(f"sklearn.{cls.__name__}.{method}", "function"), error,
            attrs, caller=caller)


def _wrap_function(method: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def lapse_sklearn_method(self: Any, *args: Any, **kwargs: Any) -> Any:
        return _timed_call(method, functools.partial(function, self), self, args, kwargs)

    lapse_sklearn_method.__lapse_original__ = function  # type: ignore[attr-defined]
    return lapse_sklearn_method


class _WrappedDescriptor:
    """Wraps a descriptor such as scikit-learn's ``available_if`` (keeps its hasattr checks)."""

    def __init__(self, method: str, inner: Any) -> None:
        self.method = method
        self.inner = inner
        self.__doc__ = getattr(inner, "__doc__", None)

    def __set_name__(self, owner: type, name: str) -> None:
        setter = getattr(self.inner, "__set_name__", None)
        if setter is not None:
            setter(owner, name)

    def __get__(self, estimator: Any, owner: type | None = None) -> Any:
        bound = self.inner.__get__(estimator, owner)  # AttributeError when not available
        if estimator is None:
            return bound
        method = self.method

        @functools.wraps(bound)
        def lapse_sklearn_method(*args: Any, **kwargs: Any) -> Any:
            return _timed_call(method, bound, estimator, args, kwargs)

        return lapse_sklearn_method


def _estimator_classes() -> list[type]:
    from sklearn.base import BaseEstimator
    from sklearn.utils import all_estimators

    found: dict[type, None] = dict.fromkeys(cls for _, cls in all_estimators())
    pending = [BaseEstimator]
    while pending:  # estimators imported so far, including the user's own
        cls = pending.pop()
        found.setdefault(cls, None)
        pending.extend(cls.__subclasses__())
    return list(found)


def instrument() -> int:
    """Wrap the estimators' methods (once); returns how many methods were wrapped."""
    with _lock:
        if _patched:
            return 0
        done: set[tuple[type, str]] = set()
        for cls in _estimator_classes():
            for klass in cls.__mro__:
                if klass is object:
                    continue
                for method in METHODS:
                    original = klass.__dict__.get(method)
                    if original is None or (klass, method) in done:
                        continue
                    done.add((klass, method))
                    if callable(original) and not isinstance(original, staticmethod
                                                             | classmethod):
                        wrapped: Any = _wrap_function(method, original)
                    elif hasattr(original, "__get__"):
                        wrapped = _WrappedDescriptor(method, original)
                    else:
                        continue
                    setattr(klass, method, wrapped)
                    _patched.append((klass, method, original))
        return len(_patched)


def uninstrument() -> int:
    """Put every original method back; returns how many were restored."""
    with _lock:
        count = len(_patched)
        for klass, method, original in reversed(_patched):
            setattr(klass, method, original)
        _patched.clear()
        return count


def instrumented() -> bool:
    """Whether scikit-learn is instrumented now."""
    return bool(_patched)
