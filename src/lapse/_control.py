"""Process-level controls: ``configure``, ``flush``, ``shutdown`` and ``reset``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lapse._config import OPTIONS_BY_NAME, Settings, resolve
from lapse._errors import ConfigError
from lapse._recorder import RECORDER

_exported: dict[str, str | None] = {}


def configure(
    *,
    dir: str | os.PathLike[str] | None = None,  # noqa: A002 - the store directory
    level: str | None = None,
    service: str | None = None,
    version: str | None = None,
    environment: str | None = None,
    flush_interval: str | float | None = None,
    buffer_size: int | None = None,
    slow: str | float | None = None,
    max_age: str | float | None = None,
    packages: list[str] | str | None = None,
    user_key: str | None = None,
    sinks: list[Any] | tuple[Any, ...] | str | None = None,
    **unknown: object,
) -> Settings:
    """Set up lapse for this process; optional, since defaults and ``LAPSE_*`` variables work.

    Arguments win over ``LAPSE_*`` variables, which win over defaults (see
    docs/configuration.md). Bad values raise ConfigError naming the setting;
    the store directory is created (owner-only) and checked for writing now,
    so a mistake shows here rather than as dropped events later. A misspelt
    setting name is a ConfigError too, suggesting the setting meant.

    Settings given here are also exported as ``LAPSE_*`` variables, so worker
    processes started with ``spawn`` (or any subprocess) record to the same store
    (sinks by name only: a sink object stays in this process).
    """
    arguments: dict[str, Any] = {
        "dir": dir, "level": level, "service": service, "version": version,
        "environment": environment, "flush_interval": flush_interval,
        "buffer_size": buffer_size, "slow": slow, "max_age": max_age,
        "packages": packages, "user_key": user_key, "sinks": sinks,
    }
    given = {name: value for name, value in arguments.items() if value is not None}
    settings = resolve({**unknown, **given})  # a misspelt setting is a ConfigError too
    settings = _with_absolute_dir(settings)
    _check_writable(settings.dir)
    RECORDER.configure(settings)
    for name, value in given.items():
        option = OPTIONS_BY_NAME[name]
        if option.env not in _exported:
            _exported[option.env] = os.environ.get(option.env)
        if name == "sinks":  # objects cannot travel to other processes; names can
            text = ",".join(sink for sink in settings.sinks if isinstance(sink, str))
        else:
            text = ",".join(value) if isinstance(value, list | tuple) else str(value)
        os.environ[option.env] = str(settings.dir) if name == "dir" else text
    return settings


def _with_absolute_dir(settings: Settings) -> Settings:
    return settings._replace(dir=settings.dir.expanduser().absolute())


def _check_writable(folder: Path) -> None:
    from lapse.store._layout import ensure_dirs

    try:
        ensure_dirs(folder)
        probe = folder / f".write-check-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ConfigError(
            f"dir= / LAPSE_DIR: {str(folder)!r} cannot be written ({error.strerror or error}); "
            "choose a directory this user can create files in."
        ) from None


def flush() -> None:
    """Write every buffered event to the store now (blocks until written)."""
    RECORDER.flush()


def shutdown(timeout: float = 5.0) -> None:
    """Stop the background writer after writing what is buffered; marks the run ended.

    Recording resumes (same run) if an instrumented function is called again.
    """
    RECORDER.shutdown(timeout)


def reset() -> None:
    """Flush, then forget all settings and state, as in a fresh process (for tests)."""
    RECORDER.reset()
    for variable, previous in _exported.items():
        if previous is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = previous
    _exported.clear()


def status() -> dict[str, Any]:
    """The recorder's state: run id, level, store, buffered and dropped event counts."""
    return RECORDER.status()
