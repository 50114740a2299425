"""Configuration: arguments > LAPSE_* variables > defaults, and errors that say how to fix them.

Bad values fail fast at ``configure()`` (and at decoration for decorator
arguments) with a ConfigError naming the setting, the value and what is
accepted; a bad variable met by instrumented code with no ``configure()``
turns lapse off with one logged error instead of raising into user code.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import lapse
from lapse import _config

MS = 1_000_000
S = 1_000_000_000


def segments(store: Path) -> list[Path]:
    """Event segments written to the store so far."""
    return sorted((store / "events").glob("*.parquet"))


# -- precedence ---------------------------------------------------------------------


def test_defaults(tmp_path, monkeypatch):
    """With no arguments and no variables: ./.lapse, standard level, 1s flushes, 1e6 buffer."""
    monkeypatch.delenv("LAPSE_DIR")
    monkeypatch.chdir(tmp_path)
    settings = lapse.configure()
    assert settings.dir == tmp_path / ".lapse"
    assert settings.dir.is_dir()
    assert settings.level == _config.STANDARD
    assert settings.flush_interval == 1 * S
    assert settings.buffer_size == 1_000_000
    assert settings.slow is None
    assert settings.max_age is None
    assert settings.user_key is None
    assert settings.version == settings.environment == ""
    assert "numpy" in settings.packages


def test_environment_beats_defaults(store, monkeypatch):
    """Every LAPSE_* variable sets its setting when configure() does not."""
    for name, value in {
        "LAPSE_LEVEL": "Debug", "LAPSE_SERVICE": "churn", "LAPSE_VERSION": "1.3.0",
        "LAPSE_ENVIRONMENT": "staging", "LAPSE_FLUSH_INTERVAL": "250ms",
        "LAPSE_BUFFER_SIZE": "10_000", "LAPSE_SLOW": "2s", "LAPSE_MAX_AGE": "7d",
        "LAPSE_PACKAGES": "numpy, pandas", "LAPSE_USER_KEY": "k",
    }.items():
        monkeypatch.setenv(name, value)
    settings = lapse.configure()
    assert settings.dir == store
    assert settings.level == _config.DEBUG
    assert (settings.service, settings.version, settings.environment) == (
        "churn", "1.3.0", "staging")
    assert settings.flush_interval == 250 * MS
    assert settings.buffer_size == 10_000
    assert settings.slow == 2 * S
    assert settings.max_age == 7 * 86_400 * S
    assert settings.packages == ("numpy", "pandas")
    assert settings.user_key == "k"


def test_arguments_beat_the_environment(tmp_path, monkeypatch):
    """configure() arguments override LAPSE_* variables."""
    monkeypatch.setenv("LAPSE_LEVEL", "minimal")
    monkeypatch.setenv("LAPSE_FLUSH_INTERVAL", "5s")
    monkeypatch.setenv("LAPSE_SERVICE", "from-env")
    settings = lapse.configure(dir=tmp_path / "other", level="debug", flush_interval=0.5,
                               service="from-code", packages=["scipy"])
    assert settings.dir == tmp_path / "other"
    assert settings.level == _config.DEBUG
    assert settings.flush_interval == 500 * MS
    assert settings.service == "from-code"
    assert settings.packages == ("scipy",)


def test_settings_reach_recording(store, monkeypatch):
    """The resolved level and store are the ones instrumented code records with."""
    monkeypatch.setenv("LAPSE_LEVEL", "debug")
    lapse.configure(level="minimal")

    @lapse.timed("job")
    def job():
        return None

    job()
    lapse.flush()
    assert segments(store)
    assert lapse.load().column("level").to_pylist() == ["minimal"]


OPTION_VALUES = {
    "level": (["off", "minimal", "standard", "debug"], lambda v: _config.LEVELS[v]),
    "flush_interval": (["1s", "250ms", "2m"], lambda v: _config.parse_duration_ns(v, "x")),
    "buffer_size": (["1", "500", "10_000"], lambda v: int(v.replace("_", ""))),
    "service": (["a", "b"], lambda v: v),
}


@given(
    choices=st.fixed_dictionaries({
        name: st.tuples(st.none() | st.sampled_from(values), st.none() | st.sampled_from(values))
        for name, (values, _) in OPTION_VALUES.items()
    })
)
def test_precedence_property(choices):
    """For any mix of arguments and variables, each setting comes from the first one given."""
    arguments = {name: arg for name, (arg, _) in choices.items() if arg is not None}
    environ = {_config.OPTIONS_BY_NAME[name].env: env
               for name, (_, env) in choices.items() if env is not None}
    settings = _config.resolve(arguments, environ)
    for name, (arg, env) in choices.items():
        convert = OPTION_VALUES[name][1]
        chosen = arg if arg is not None else env
        default = _config.OPTIONS_BY_NAME[name].default
        expected = convert(chosen) if chosen is not None else (
            _config.resolve({}, {}).__getattribute__(name) if default is None
            else _config.OPTIONS_BY_NAME[name].parse(default, name))
        assert getattr(settings, name) == expected, name


def test_configure_exports_settings_for_worker_processes(tmp_path):
    """Settings given to configure() become LAPSE_* variables; reset() puts them back."""
    before = os.environ.get("LAPSE_LEVEL")
    lapse.configure(level="debug", dir=tmp_path / "exported")
    assert os.environ["LAPSE_LEVEL"] == "debug"
    assert os.environ["LAPSE_DIR"] == str(tmp_path / "exported")
    lapse.reset()
    assert os.environ.get("LAPSE_LEVEL") == before


@pytest.mark.parametrize(
    ("text", "nanoseconds"),
    [("250ms", 250 * MS), ("1.5s", 1500 * MS), ("10m", 600 * S), ("2h", 7200 * S),
     ("7d", 7 * 86_400 * S), ("3", 3 * S), ("40us", 40_000), (" 5 ms ", 5 * MS), (0.25, 250 * MS)],
)
def test_duration_spellings(text, nanoseconds):
    """Durations take units ns, us, ms, s, m, h, d, or a number of seconds."""
    assert lapse.configure(slow=text).slow == nanoseconds


@given(number=st.integers(0, 10**6), unit=st.sampled_from(["ns", "us", "ms", "s", "m", "h", "d"]))
def test_duration_parsing_property(number, unit):
    """``<n><unit>`` is n times the unit, with or without a space between."""
    factor = {"ns": 1, "us": 1_000, "ms": MS, "s": S, "m": 60 * S, "h": 3600 * S,
              "d": 86_400 * S}[unit]
    assert _config.parse_duration_ns(f"{number}{unit}", "slow") == number * factor
    assert _config.parse_duration_ns(f"{number} {unit}", "slow") == number * factor


# -- bad values -----------------------------------------------------------------------

BAD_VALUES = [
    ("level", "verbose", "LAPSE_LEVEL", "off, minimal, standard, debug"),
    ("level", 3, "LAPSE_LEVEL", "off, minimal, standard, debug"),
    ("flush_interval", 0, "LAPSE_FLUSH_INTERVAL", "greater than zero"),
    ("flush_interval", "0s", "LAPSE_FLUSH_INTERVAL", "greater than zero"),
    ("flush_interval", -1, "LAPSE_FLUSH_INTERVAL", "zero or more"),
    ("flush_interval", "-1s", "LAPSE_FLUSH_INTERVAL", "250ms"),
    ("flush_interval", float("inf"), "LAPSE_FLUSH_INTERVAL", "duration"),
    ("slow", "fast", "LAPSE_SLOW", "250ms"),
    ("slow", "10 parsecs", "LAPSE_SLOW", "units"),
    ("slow", "-1s", "LAPSE_SLOW", "250ms"),
    ("slow", "1e400s", "LAPSE_SLOW", "duration"),
    ("slow", float("nan"), "LAPSE_SLOW", "duration"),
    ("slow", True, "LAPSE_SLOW", "duration"),
    ("max_age", "forever", "LAPSE_MAX_AGE", "duration"),
    ("max_age", 0, "LAPSE_MAX_AGE", "greater than zero"),
    ("buffer_size", 0, "LAPSE_BUFFER_SIZE", "whole number greater than zero"),
    ("buffer_size", -5, "LAPSE_BUFFER_SIZE", "whole number greater than zero"),
    ("buffer_size", "abc", "LAPSE_BUFFER_SIZE", "whole number greater than zero"),
    ("buffer_size", 2.5, "LAPSE_BUFFER_SIZE", "whole number greater than zero"),
    ("packages", 5, "LAPSE_PACKAGES", "package names"),
    ("dir", "", "LAPSE_DIR", "directory"),
]


@pytest.mark.parametrize(("setting", "value", "variable", "fix"), BAD_VALUES)
def test_bad_argument_names_setting_value_and_fix(setting, value, variable, fix):
    """configure(setting=bad) raises ConfigError naming the setting, the value and the fix."""
    with pytest.raises(lapse.ConfigError) as caught:
        lapse.configure(**{setting: value})
    message = str(caught.value)
    assert setting in message
    assert variable in message
    assert repr(value) in message
    assert fix in message
    assert lapse.status()["level"] != _config.OFF or setting == "level"


@pytest.mark.parametrize(
    ("setting", "value", "variable", "fix"),
    [case for case in BAD_VALUES if isinstance(case[1], str) and case[1]],
)
def test_bad_variable_names_variable_value_and_fix(monkeypatch, setting, value, variable, fix):
    """A bad LAPSE_* variable makes configure() raise, naming the variable, value and fix."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(lapse.ConfigError) as caught:
        lapse.configure()
    message = str(caught.value)
    assert variable in message
    assert repr(value) in message
    assert fix in message


def test_config_error_is_a_lapse_error_and_a_value_error():
    """ConfigError can be caught as lapse.LapseError or as ValueError."""
    with pytest.raises(lapse.LapseError):
        lapse.configure(level="verbose")
    with pytest.raises(ValueError, match="verbose"):
        lapse.configure(level="verbose")


def test_unknown_setting_is_a_config_error():
    """A misspelt setting raises ConfigError naming it and suggesting the right one."""
    with pytest.raises(lapse.ConfigError) as caught:
        lapse.configure(levle="debug")  # type: ignore[call-arg]
    message = str(caught.value)
    assert "levle" in message
    assert "level" in message.replace("levle", "")


def test_unwritable_directory_fails_at_configure(tmp_path):
    """A store path that cannot be created raises ConfigError naming dir and the path."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    for target in (blocker / "store", blocker):
        with pytest.raises(lapse.ConfigError) as caught:
            lapse.configure(dir=target)
        message = str(caught.value)
        assert "dir" in message
        assert "LAPSE_DIR" in message
        assert str(target) in message
        assert "choose a directory" in message


def test_a_failed_configure_changes_nothing(store):
    """After a ConfigError the previous settings stay in force."""
    lapse.configure(level="minimal")
    with pytest.raises(lapse.ConfigError):
        lapse.configure(level="debug", buffer_size=0)
    assert os.environ["LAPSE_LEVEL"] == "minimal"

    @lapse.timed("job")
    def job():
        return None

    job()
    assert lapse.load().column("level").to_pylist() == ["minimal"]


# -- decorator arguments --------------------------------------------------------------


def test_capture_of_a_missing_parameter_fails_at_decoration():
    """capture naming a parameter the function does not have raises when decorating."""
    decorator = lapse.timed(capture=["batch_size", "nope"])
    with pytest.raises(lapse.ConfigError) as caught:

        @decorator
        def score(batch, batch_size):
            return batch

    message = str(caught.value)
    assert "capture" in message
    assert "'nope'" in message
    assert "batch_size" in message  # the signature shows what could be named


def test_capture_as_a_string_fails():
    """capture="x" (a string, not a list) raises, showing the list spelling."""
    with pytest.raises(lapse.ConfigError, match=r"capture=\['batch_size'\]"):
        lapse.timed(capture="batch_size")


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: lapse.timed(level="verbose"), ["level", "'verbose'", "debug"]),
        (lambda: lapse.timed("x", slow="fast"), ["slow", "'fast'", "250ms"]),
        (lambda: lapse.span("x", level="loud"), ["level", "'loud'"]),
        (lambda: lapse.timed(""), ["name", "''"]),
        (lambda: lapse.span(42), ["span", "42", "lapse.timed"]),  # type: ignore[arg-type]
    ],
)
def test_bad_decorator_arguments_fail_when_decorating(make, words):
    """A bad level, slow, name or span name raises ConfigError before any call."""
    with pytest.raises(lapse.ConfigError) as caught:
        make()
    for word in words:
        assert word in str(caught.value)


def test_capture_is_accepted_through_kwargs():
    """A function taking **kwargs may capture any keyword it is given."""

    @lapse.timed("flexible", capture=["model"])
    def flexible(**options):
        return options

    assert flexible(model="m1") == {"model": "m1"}
    lapse.flush()
    assert lapse.load().column("attrs").to_pylist() == ['{"model": "m1"}']


# -- a bad environment never breaks user code ------------------------------------


def test_bad_level_variable_turns_lapse_off_with_one_error(store, monkeypatch, caplog):
    """With LAPSE_LEVEL bad and no configure(), code runs, lapse is off, one error is logged."""
    monkeypatch.setenv("LAPSE_LEVEL", "verbose")

    @lapse.timed
    def add(a, b):
        return a + b

    @lapse.timed
    async def double(x):
        return 2 * x

    @lapse.timed
    def count(n):
        yield from range(n)

    with caplog.at_level(logging.ERROR, logger="lapse"):
        assert add(1, 2) == 3
        assert add(2, 2) == 4
        assert asyncio.run(double(4)) == 8
        assert list(count(3)) == [0, 1, 2]
        with lapse.span("block") as active:
            active.set(x=1)
        lapse.set(y=2)
    errors = [r for r in caplog.records if r.name == "lapse" and r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "LAPSE_LEVEL" in errors[0].getMessage()
    assert "'verbose'" in errors[0].getMessage()
    assert lapse.status()["level"] == _config.OFF
    assert lapse.status()["writer_alive"] is False
    lapse.flush()
    assert segments(store) == []


def test_bad_variable_then_configure_recovers(store, monkeypatch, caplog):
    """After the logged error, a valid configure() turns recording on."""
    monkeypatch.setenv("LAPSE_BUFFER_SIZE", "lots")

    @lapse.timed("job")
    def job():
        return 1

    with caplog.at_level(logging.ERROR, logger="lapse"):
        assert job() == 1
    assert segments(store) == []
    lapse.configure(buffer_size=100)
    assert job() == 1
    assert lapse.load().num_rows == 1


def test_unwritable_store_from_the_environment_never_raises(tmp_path, monkeypatch, caplog):
    """If LAPSE_DIR cannot be written, calls still work and the lost events are counted."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("LAPSE_DIR", str(blocker / "store"))

    @lapse.timed("job")
    def job():
        return 1

    with caplog.at_level(logging.WARNING, logger="lapse"):
        assert [job() for _ in range(3)] == [1, 1, 1]
        lapse.flush()
    assert lapse.status()["dropped"]["write_error"] == 3
    assert any(r.name == "lapse" for r in caplog.records)
