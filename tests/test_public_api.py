"""The public API: exactly what ``__all__`` lists, and an ``import lapse`` with no side effects."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import types

import lapse


def test_all_is_sorted():
    """``lapse.__all__`` is kept sorted, so additions are easy to review."""
    assert lapse.__all__ == sorted(lapse.__all__)


def test_all_matches_the_public_names():
    """Every public name of the module is in ``__all__`` and every name there exists.

    Submodules (``lapse.store``, ``lapse.cli``) become attributes once imported;
    they are not part of the star-import API. Names in ``__all__`` that are
    loaded lazily (``__version__``, heavy classes) must resolve and be listed by dir().
    """
    public = {
        name for name, value in vars(lapse).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public <= set(lapse.__all__), sorted(public - set(lapse.__all__))
    lazy = set(lapse.__all__) - set(vars(lapse))
    for name in lapse.__all__:
        assert getattr(lapse, name) is not None, name
    assert lazy <= set(dir(lapse))
    assert "__version__" in lapse.__all__
    namespace: dict[str, object] = {}
    exec("from lapse import *", namespace)  # the star import users may write
    assert set(namespace) - {"__builtins__"} == set(lapse.__all__)


def test_exported_objects_say_they_belong_to_lapse():
    """Functions and classes of the API are documented (a docstring each)."""
    for name in lapse.__all__:
        value = getattr(lapse, name)
        if callable(value):
            assert value.__doc__, name


def test_version_is_a_string():
    """``lapse.__version__`` is the installed version as text."""
    assert isinstance(lapse.__version__, str)
    assert lapse.__version__
    assert "__version__" in dir(lapse)
    assert set(lapse.__all__) <= set(dir(lapse))


def test_unknown_attribute_is_an_attribute_error():
    """A missing name raises AttributeError (so hasattr() and getattr defaults work)."""
    assert not hasattr(lapse, "no_such_thing")


IMPORT_PROBE = textwrap.dedent(
    """
    import json, os, sys, threading

    read = []
    Environ = type(os.environ)

    class Spy(Environ):
        def __getitem__(self, key):
            read.append(key)
            return super().__getitem__(key)

        def __iter__(self):
            read.append("*iterated*")
            return super().__iter__()

    os.environ.__class__ = Spy
    before = set(sys.modules)
    import lapse

    @lapse.timed
    def decorated_at_import():
        return 1

    heavy = ["pyarrow", "duckdb", "pandas", "numpy", "rich", "opentelemetry", "polars",
             "sklearn", "prometheus_client", "hypothesis",
             "dataclasses", "logging"]  # standard, but a third of what import lapse cost
    print(json.dumps({
        "heavy": [m for m in heavy if m in sys.modules],
        "threads": threading.active_count(),
        "env_read": [k for k in read if k.startswith("LAPSE_") or k == "*iterated*"],
        "version": lapse.__version__,
        "settings": lapse._recorder.RECORDER.settings is None,
        "new_modules": sorted(m for m in set(sys.modules) - before if m.startswith("lapse")),
    }))
    """
)


def test_import_is_light_and_has_no_side_effects(tmp_path):
    """``import lapse`` (and decorating) imports nothing heavy, starts no thread, reads no env."""
    env = {"PATH": "/usr/bin:/bin", "LAPSE_LEVEL": "not-a-level", "LAPSE_DIR": str(tmp_path),
           "LAPSE_BUFFER_SIZE": "bogus"}
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True, env=env,
        timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    facts = json.loads(result.stdout)
    assert facts["heavy"] == []
    assert facts["threads"] == 1
    assert facts["env_read"] == []
    assert isinstance(facts["version"], str)
    assert facts["settings"] is True
    assert "lapse.store" not in facts["new_modules"]
    assert list(tmp_path.iterdir()) == []
