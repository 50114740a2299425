"""The exceptions lapse raises into user code.

Instrumentation never raises; these come from explicit calls (``configure``,
``load``, ``sql``, the CLI) where failing fast with a clear message is the
kind thing to do::

    LapseError
     ├── ConfigError          a setting has a bad value; the message names it, the value and the fix
     ├── StoreError           the store cannot be read or changed as asked
     ├── NotEnoughDataError   an analysis has too little data; the message says how much it needs
     └── TargetError          a stress target cannot be used (unreachable, not importable, remote)
"""

from __future__ import annotations


class LapseError(Exception):
    """Base class of every error lapse raises on purpose."""


class ConfigError(LapseError, ValueError):
    """A setting has a value lapse cannot use.

    The message names the setting (argument and ``LAPSE_*`` variable), the bad
    value and what would be accepted, so it can be fixed without reading code.
    """


class StoreError(LapseError):
    """The store cannot be read or changed as asked (missing directory, bad query)."""


class NotEnoughDataError(LapseError):
    """The selection has too little data for an analysis; the message says how much it needs."""


class TargetError(LapseError):
    """A stress target cannot be used: unreachable, not importable, or not allowed."""
