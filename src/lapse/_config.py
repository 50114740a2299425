"""Settings: one table of options feeds ``configure()``, the ``LAPSE_*`` variables and the docs.

Precedence is ``configure()`` arguments, then ``LAPSE_*`` environment variables,
then defaults. Nothing here runs at import time: the environment is read the
first time settings are needed (an explicit ``configure()`` or the first
instrumented call), so ``import lapse`` has no side effects.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from lapse._errors import ConfigError

OFF, MINIMAL, STANDARD, DEBUG = 0, 1, 2, 3
LEVELS: dict[str, int] = {"off": OFF, "minimal": MINIMAL, "standard": STANDARD, "debug": DEBUG}
LEVEL_NAMES: dict[int, str] = {number: name for name, number in LEVELS.items()}

DEFAULT_PACKAGES = ("lapse", "numpy", "pandas", "scikit-learn", "scipy", "pyarrow", "torch")

_UNITS_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "min": 60_000_000_000,
    "h": 3_600_000_000_000,
    "d": 86_400_000_000_000,
}
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zµ]*)\s*$")


def parse_duration_ns(value: object, setting: str) -> int:
    """Turn ``"250ms"``, ``"1.5s"``, ``"7d"`` or a number of seconds into nanoseconds.

    Raises ConfigError naming ``setting`` when the value is not a non-negative duration.
    """
    if isinstance(value, bool):
        raise _bad(setting, value,
                   "a duration such as 250ms, 1.5s, 10m, 7d, or a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
        if not seconds >= 0:  # also rejects NaN
            raise _bad(setting, value, "a duration of zero or more")
        if seconds == float("inf"):
            raise _bad(setting, value, "a finite duration")
        return round(seconds * 1e9)
    match = _DURATION.match(str(value))
    if match is None or match.group(2) not in ("", *_UNITS_NS):
        raise _bad(
            setting,
            value,
            "a duration such as 250ms, 1.5s, 10m, 7d (units: ns, us, ms, s, m, h, d), "
            "or a number of seconds",
        )
    number, unit = match.groups()
    ns = float(number) * _UNITS_NS[unit or "s"]
    if ns == float("inf"):
        raise _bad(setting, value, "a finite duration")
    return round(ns)


def parse_level(value: object, setting: str = "level") -> int:
    """Turn ``"debug"`` (any case) into the level number used on the hot path."""
    level = LEVELS.get(str(value).strip().lower()) if isinstance(value, str) else None
    if level is None:
        raise _bad(setting, value, "one of " + ", ".join(LEVELS))
    return level


def _parse_positive_int(value: object, setting: str) -> int:
    try:
        number = int(str(value).replace("_", "")) if not isinstance(value, int) else value
    except ValueError:
        number = -1
    if isinstance(value, bool) or number <= 0:
        raise _bad(setting, value, "a whole number greater than zero")
    return number


def _parse_positive_duration(value: object, setting: str) -> int:
    ns = parse_duration_ns(value, setting)
    if ns <= 0:
        raise _bad(setting, value, "a duration greater than zero, such as 1s or 500ms")
    return ns


def _parse_optional_duration(value: object, setting: str) -> int | None:
    if value is None or value == "":
        return None
    return parse_duration_ns(value, setting)


def _parse_optional_positive_duration(value: object, setting: str) -> int | None:
    if value is None or value == "":
        return None
    return _parse_positive_duration(value, setting)


def _parse_text(value: object, setting: str) -> str:
    if not isinstance(value, str):
        raise _bad(setting, value, "text")
    return value


def _parse_optional_text(value: object, setting: str) -> str | None:
    if value is None or value == "":
        return None
    return _parse_text(value, setting)


def _parse_packages(value: object, setting: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(name.strip() for name in value.split(",") if name.strip())
    if isinstance(value, list | tuple) and all(isinstance(name, str) for name in value):
        return tuple(value)
    raise _bad(setting, value, "package names, as a list or a comma-separated string")


SINK_NAMES: dict[str, tuple[str, str]] = {
    "otlp": ("opentelemetry.exporter.otlp.proto.http", "otel"),
    "prometheus": ("prometheus_client", "prometheus"),
}
"""Sinks known by name: the module each needs and the extra that installs it."""


def _parse_sinks(value: object, setting: str) -> tuple[Any, ...]:
    """``"otlp,prometheus"``, or a list of those names and sink objects (``export(table, run)``)."""
    if isinstance(value, str):
        items: list[object] = [name.strip() for name in value.split(",") if name.strip()]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise _bad(setting, value, "sink names (otlp, prometheus) or sink objects, as a list")
    for item in items:
        if isinstance(item, str):
            name = item.strip().lower()
            if name not in SINK_NAMES:
                raise _bad(setting, item, "a sink name (" + ", ".join(SINK_NAMES)
                           + ") or an object with an export(table, run) method")
            _check_installed(setting, name)
        elif not callable(getattr(item, "export", None)):
            raise _bad(setting, item, "a sink name (" + ", ".join(SINK_NAMES)
                       + ") or an object with an export(table, run) method")
    unique: dict[object, object] = {}  # each sink once: a name twice would export twice
    for item in items:
        sink = item.strip().lower() if isinstance(item, str) else item
        unique.setdefault(sink if isinstance(sink, str) else id(sink), sink)
    return tuple(unique.values())


def _check_installed(setting: str, name: str) -> None:
    from importlib.util import find_spec

    module, extra = SINK_NAMES[name]
    try:
        found = find_spec(module) is not None
    except ImportError:
        found = False
    if not found:
        option = OPTIONS_BY_NAME.get(setting)
        where = f"{setting}= / {option.env}" if option else setting
        raise ConfigError(f"{where}: the {name} sink needs {module}; "
                          f"install it with: pip install 'lapse[{extra}]'")


def _parse_dir(value: object, setting: str) -> Path:
    if not isinstance(value, str | os.PathLike) or str(value) == "":
        raise _bad(setting, value, "a directory path")
    return Path(value)


def _bad(setting: str, value: object, expected: str) -> ConfigError:
    option = OPTIONS_BY_NAME.get(setting)
    where = f"{setting}= / {option.env}" if option else setting
    return ConfigError(f"{where}: {value!r} is not valid; expected {expected}.")


class Option(NamedTuple):
    """One setting: its ``configure()`` name, its variable, default, parser and doc line."""

    name: str
    env: str
    default: object
    parse: Callable[[object, str], object]
    doc: str


OPTIONS: tuple[Option, ...] = (
    Option("dir", "LAPSE_DIR", ".lapse", _parse_dir,
           "Store directory; every process writes its own segments here."),
    Option("level", "LAPSE_LEVEL", "standard", parse_level,
           "Detail recorded per call: off, minimal, standard or debug."),
    Option("service", "LAPSE_SERVICE", None, _parse_optional_text,
           "Service name stored with each run (default: the script's name)."),
    Option("version", "LAPSE_VERSION", "", _parse_text,
           "Release of the code being measured, used to compare releases."),
    Option("environment", "LAPSE_ENVIRONMENT", "", _parse_text,
           "Deployment environment, such as dev, staging or prod."),
    Option("flush_interval", "LAPSE_FLUSH_INTERVAL", "1s", _parse_positive_duration,
           "How often the background writer writes a segment; a crash loses at most this."),
    Option("buffer_size", "LAPSE_BUFFER_SIZE", 1_000_000, _parse_positive_int,
           "Events held in memory between flushes; beyond it events are dropped and counted."),
    Option("slow", "LAPSE_SLOW", None, _parse_optional_duration,
           "At debug level, keep the call stack only for calls at least this slow."),
    Option("max_age", "LAPSE_MAX_AGE", None, _parse_optional_positive_duration,
           "Retention: `lapse compact` deletes segments whose events are all older."),
    Option("packages", "LAPSE_PACKAGES", ",".join(DEFAULT_PACKAGES), _parse_packages,
           "Packages whose installed versions each run records (comma-separated)."),
    Option("user_key", "LAPSE_USER_KEY", None, _parse_optional_text,
           "Secret key for pseudonymising users at debug level; never stored. "
           "Without it no user is recorded."),
    Option("sinks", "LAPSE_SINKS", "", _parse_sinks,
           "Where events also go, beside the store: otlp, prometheus (comma-separated), "
           "or sink objects; see docs/integrations.md."),
)
OPTIONS_BY_NAME: dict[str, Option] = {option.name: option for option in OPTIONS}


class Settings(NamedTuple):
    """Validated settings; durations in nanoseconds, the level as a number.

    A NamedTuple rather than a dataclass: ``dataclasses`` imports ``inspect``,
    a third of what ``import lapse`` would cost.
    """

    dir: Path
    level: int
    service: str
    version: str
    environment: str
    flush_interval: int
    buffer_size: int
    slow: int | None
    max_age: int | None
    packages: tuple[str, ...]
    user_key: str | None
    sinks: tuple[Any, ...] = ()

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in self._asdict().items()
                          if name != "user_key")
        return f"Settings({shown})"  # the user key is a secret: never in a repr or a log


def resolve(
    arguments: Mapping[str, object], environ: Mapping[str, str] | None = None
) -> Settings:
    """Build Settings from arguments, then ``LAPSE_*`` variables, then defaults."""
    unknown = sorted(set(arguments) - set(OPTIONS_BY_NAME))
    if unknown:
        import difflib

        hints = [
            f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name)
            for name in unknown
            for close in [difflib.get_close_matches(name, OPTIONS_BY_NAME, n=1)]
        ]
        raise ConfigError(
            f"configure() got unknown setting(s) {', '.join(hints)}; "
            f"known settings are {', '.join(OPTIONS_BY_NAME)}."
        )
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for option in OPTIONS:
        if arguments.get(option.name) is not None:
            values[option.name] = option.parse(arguments[option.name], option.name)
        elif option.env in environ:
            values[option.name] = option.parse(environ[option.env], option.name)
        else:
            values[option.name] = option.parse(option.default, option.name)
    if values["service"] is None:
        values["service"] = _default_service()
    return Settings(**values)


def _default_service() -> str:
    script = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else ""
    return script if script and script not in ("-c", "-m", "__main__") else "python"


def settings_names() -> tuple[str, ...]:
    """The names ``configure()`` accepts, in documentation order."""
    return Settings._fields
