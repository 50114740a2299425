"""lapse beside the tools teams already run: OpenTelemetry, Prometheus, web servers, scikit-learn.

- ``lapse.integrations.otlp``: the OTLP sink (events out as spans and histograms);
- ``lapse.integrations.otel``: a span processor (OpenTelemetry spans in, as events);
- ``lapse.integrations.prometheus``: the Prometheus sink and ``/metrics``;
- ``lapse.integrations.asgi`` / ``wsgi``: request middleware (FastAPI, Starlette, Flask);
- ``lapse.integrations.sklearn``: ``lapse.instrument("sklearn")``;
- ``lapse.integrations.pytest_plugin``: the pytest plugin.

Nothing here is imported by ``import lapse``; each module imports its library when used.
"""

from __future__ import annotations

from lapse._errors import ConfigError

LIBRARIES: dict[str, tuple[str, str]] = {"sklearn": ("sklearn", "stats")}
"""Libraries ``lapse.instrument()`` knows: the module each needs and the extra that has it."""


def _library(name: str) -> str:
    key = name.strip().lower() if isinstance(name, str) else name
    if key == "scikit-learn":
        key = "sklearn"
    if key not in LIBRARIES:
        raise ConfigError(f"instrument: {name!r} is not a library lapse instruments; "
                          f"expected one of {', '.join(LIBRARIES)}.")
    module, extra = LIBRARIES[key]
    from importlib.util import find_spec

    if find_spec(module) is None:
        raise ConfigError(f"instrument: {name!r} is not installed; "
                          f"install it with: pip install 'lapse[{extra}]'")
    return str(key)


def instrument(name: str) -> int:
    """Auto-instrument library ``name``; returns how many methods were wrapped (0 if done)."""
    _library(name)
    from lapse.integrations import sklearn

    return sklearn.instrument()


def uninstrument(name: str) -> int:
    """Undo ``instrument(name)``; returns how many methods were restored."""
    _library(name)
    from lapse.integrations import sklearn

    return sklearn.uninstrument()
