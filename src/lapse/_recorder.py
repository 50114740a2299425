"""The recorder: a bounded in-memory buffer drained by one background writer thread.

Modelled on OpenTelemetry's batch processor: instrumented calls append raw
tuples to a ``deque`` (atomic under the GIL, never blocks); a daemon thread
woken every ``flush_interval`` drains it, turns the tuples into an Arrow table
and writes one Parquet segment. When the buffer is full or the disk fails,
events are dropped and counted, one warning is logged, and the counts go into
the run record so reports can show them.

Process life cycle: the writer starts lazily at the first recorded call (so
``import lapse`` and decorating at import time start nothing); after ``fork``
the child gets a fresh run, an empty buffer and new locks; at interpreter
exit, and when a multiprocessing child finishes, pending events are flushed.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from collections import deque
from itertools import repeat, starmap
from typing import Any

from lapse._config import DEBUG, OFF, Settings, resolve


def _logger() -> Any:
    """The ``lapse`` logger, imported on the first warning: ``logging`` is a tenth of what
    ``import lapse`` would otherwise cost."""
    import logging

    return logging.getLogger("lapse")

UNSTARTED = -1
"""``Recorder.level`` before the writer runs in this process: the next call starts it."""

GLOBAL = DEBUG + 1
"""The index in ``Recorder.levels`` of a function with no level of its own."""

DROP_REASONS = ("buffer_full", "write_error", "internal")

FORK_WAIT_S = 5.0
"""Longest a ``fork`` waits for the writer to finish an import or a write in progress."""


class Run:
    """One process's run: its id and resource, written once to ``runs/<run_id>.parquet``."""

    __slots__ = ("ended_ns", "kind", "pid", "resource", "run_id", "segments", "settings",
                 "started_ns")

    def __init__(self, run_id: str, pid: int, started_ns: int, settings: Settings, *,
                 kind: str = "process") -> None:
        self.run_id = run_id
        self.pid = pid
        self.started_ns = started_ns
        self.settings = settings
        self.kind = kind
        self.resource: dict[str, Any] = {}
        self.segments = 0
        self.ended_ns: int | None = None

    def __repr__(self) -> str:
        return f"Run({self.run_id!r}, kind={self.kind!r}, segments={self.segments})"


def new_run_id(now_ns: int, pid: int) -> str:
    """A time-sortable, unique run id such as ``20261203T185048-4711-9f3a1c``."""
    import secrets

    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now_ns / 1e9))
    return f"{stamp}-{pid}-{secrets.token_hex(3)}"


class Recorder:
    """Process-wide buffer and writer; ``lapse`` uses the single instance ``RECORDER``."""

    def __init__(self) -> None:
        self.buffer: deque[tuple[Any, ...]] = deque()
        self.levels: tuple[int, ...] = (UNSTARTED,) * (GLOBAL + 1)
        self.level = UNSTARTED
        self.capacity = 1_000_000
        self.slow: int | None = None
        self.settings: Settings | None = None
        self.run: Run | None = None
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self.sink_dropped: dict[str, int] = {}
        self.run_kind = "process"
        self._run_dirty = True
        self._warned: set[str] = set()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stopping = False
        self._exiting = False
        self._hooks_installed = False
        self._fork_held = False
        self._start_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._count_lock = threading.Lock()

    @property
    def level(self) -> int:
        """The global level: ``UNSTARTED`` until the first call starts the writer, or ``OFF``."""
        return self.levels[GLOBAL]

    @level.setter
    def level(self, level: int) -> None:
        # What a function recording at level k (or at the global level) records at: its own
        # level while lapse runs, else OFF or UNSTARTED (a global off is a kill switch).
        self.levels = (*(k if level > 0 else level for k in range(GLOBAL)), level)

    # -- hot-path helpers (called by instrumented code; never raise) ---------

    def drop(self, reason: str = "buffer_full", count: int = 1, *, warn: bool = True) -> None:
        """Count ``count`` lost events and warn once per reason (unless already warned)."""
        with self._count_lock:
            self.dropped[reason] += count
            self._run_dirty = True
            first = warn and reason not in self._warned  # decided once among threads
            if first:
                self._warned.add(reason)
        if first:
            _logger().warning(
                "lapse dropped %d event(s) (%s); further drops are counted in the run "
                "record without more warnings", count, reason.replace("_", " "),
            )

    def activate(self) -> int:
        """Start recording in this process (settings from the environment if need be).

        Called by the first instrumented call; returns the level to record at.
        Never raises: a bad ``LAPSE_*`` value turns lapse off with one error logged.
        """
        try:
            with self._start_lock:
                if self.level != UNSTARTED:
                    return self.level
                if self.settings is None:
                    self.settings = resolve({})
                self._apply(self.settings)
                if self.settings.level == OFF or self._exiting:
                    self.level = self.settings.level if not self._exiting else OFF
                    return self.level
                if self.run is None or self.run.pid != os.getpid():
                    self.run = self._new_run(self.settings)
                elif self.run.ended_ns is not None:  # recording again after shutdown()
                    self.run.ended_ns = None
                    self._run_dirty = True
                self._install_hooks()
                self._stopping = False
                self._wake.clear()  # a shutdown() with no writer running left it set
                thread = threading.Thread(target=self._loop, name="lapse-writer", daemon=True)
                thread.start()
                self._thread = thread
                self.level = self.settings.level
                return self.level
        except Exception as error:  # noqa: BLE001 - the hot path must never raise
            _logger().error("lapse is off for this process: %s", error)
            self.level = OFF
            return OFF

    # -- configuration --------------------------------------------------------

    def configure(self, settings: Settings) -> None:
        """Use new settings; events already buffered go to the store they were made for."""
        with self._start_lock:
            if self.run is not None and self.settings is not None:
                if settings.dir != self.settings.dir:
                    self.flush()
                    self.run = self._new_run(settings)
                else:
                    self.run.settings = settings
                    self.run.resource = {}
                    self._run_dirty = True
            self.settings = settings
            self._apply(settings)
            running = self._thread is not None and self._thread.is_alive()
            self.level = settings.level if running or settings.level == OFF else UNSTARTED

    def set_run_kind(self, kind: str) -> None:
        """Mark this process's run as ``kind`` (``test``, ``stress``): its run record says so.

        Kept for runs started later in this process and in forked children, so a
        test's or a stress worker's subprocesses are marked too; the run record
        is rewritten at the next flush.
        """
        self.run_kind = kind
        if self.run is not None:
            self.run.kind = kind
        self._run_dirty = True

    def _apply(self, settings: Settings) -> None:
        self.capacity = settings.buffer_size
        self.slow = settings.slow

    def _new_run(self, settings: Settings) -> Run:
        now = time.time_ns()
        pid = os.getpid()
        self._run_dirty = True
        return Run(new_run_id(now, pid), pid, now, settings, kind=self.run_kind)

    @staticmethod
    def _resource(settings: Settings) -> dict[str, Any]:
        from lapse import _capture

        resource: dict[str, Any] = {
            "service": settings.service,
            "version": settings.version,
            "environment": settings.environment,
            "host": _capture.host_name(),
            "program": _capture.executable_name(),
            "python": _capture.python_version(),
            "lapse_version": _lapse_version(),
            "git_commit": _capture.git_commit(),
        }
        # The allow-listed environment is cheap, per run and free of secrets, so it
        # is always kept; the OS account only as a keyed pseudonym (the key is consent).
        import json

        resource.update(
            os=_capture.os_description(),
            cpu_count=_capture.cpu_count(),
            memory_bytes=_capture.memory_bytes(),
            packages=json.dumps(_capture.package_versions(settings.packages)),
            user=_capture.pseudonymise(_capture.os_account(), settings.user_key),
        )
        return resource

    # -- writing ----------------------------------------------------------------

    def flush(self) -> None:
        """Write every buffered event now (blocks the caller until written or dropped)."""
        with self._flush_lock:
            self._write_pending()

    def _loop(self) -> None:
        try:
            # Imports and resource facts are gathered here, off the caller's thread,
            # and before exit (when new imports may no longer register atexit hooks).
            # Under the flush lock, which a fork waits for: a child forked mid-import
            # would deadlock on the module's import lock at its first write.
            with self._flush_lock:
                import pyarrow.compute
                import pyarrow.fs
                import pyarrow.parquet  # noqa: F401

                from lapse.store import _segments  # noqa: F401

                run = self.run
                if run is not None:
                    if not run.resource:
                        run.resource = self._resource(run.settings)
                    self._write_run(run)  # the run is listed from its first moment
        except Exception as error:  # noqa: BLE001 - the writer must survive anything
            self._warn_once("writer", "lapse writer could not start cleanly: %s", error)
        while not self._stopping:
            settings = self.settings
            interval = settings.flush_interval / 1e9 if settings else 1.0
            self._wake.wait(interval)
            self._wake.clear()
            try:
                self.flush()
            except Exception as error:  # noqa: BLE001 - the writer must survive anything
                self._warn_once("writer", "lapse writer error (events may be lost): %s", error)

    def _write_pending(self) -> None:
        run = self.run
        if run is None or run.pid != os.getpid():
            return
        if not run.resource:
            run.resource = self._resource(run.settings)
        count = len(self.buffer)
        if count:
            # Exactly the events buffered so far (the hot path keeps appending), popped
            # by a C-level loop: a third of the time of a comprehension.
            batch = list(starmap(self.buffer.popleft, repeat((), count)))
            self._write_segment(run, batch)
        if self._run_dirty:
            self._write_run(run)

    def _write_segment(self, run: Run, batch: list[tuple[Any, ...]]) -> None:
        from lapse.store import _segments

        try:
            table = _segments.encode_events(batch, run)
        except Exception as error:  # noqa: BLE001 - a bug here must not reach user code
            self.drop("internal", len(batch))
            self._warn_once("encode", "lapse could not encode events: %r", error)
            return
        try:
            run.segments += 1
            _segments.write_segment(run, table, run.segments)
        except Exception as error:  # noqa: BLE001 - disk full, unwritable dir, ...
            self.drop("write_error", len(batch), warn=False)
            self._warn_write_error(run, error)
        if run.settings.sinks:
            self._export(run, table)

    def _export(self, run: Run, table: Any) -> None:
        """Hand a written batch to each sink (OTLP, Prometheus...), in the writer thread."""
        from lapse.integrations import _sinks

        for spec in run.settings.sinks:
            try:
                _sinks.get(spec).export(table, run)
            except Exception as error:  # noqa: BLE001 - a sink never costs the store an event
                self.drop_sink(_sinks.name_of(spec), table.num_rows, error)

    def drop_sink(self, name: str, count: int, error: object) -> None:
        """Count ``count`` events sink ``name`` lost (the store keeps them); warn once per sink."""
        with self._count_lock:
            self.sink_dropped[name] = self.sink_dropped.get(name, 0) + count
        self._warn_once(
            f"sink:{name}", "lapse could not export events to %s (%s); the local store keeps "
            "them. Further losses are counted in lapse.status()['sink_dropped'] without more "
            "warnings", name, error,
        )

    def _write_run(self, run: Run) -> None:
        from lapse.store import _segments

        with self._count_lock:
            dropped = dict(self.dropped)
            self._run_dirty = False
        try:
            _segments.write_run(run, dropped)
        except Exception as error:  # noqa: BLE001 - retried at the next flush
            self._run_dirty = True
            self._warn_write_error(run, error)

    def _warn_write_error(self, run: Run, error: Exception) -> None:
        # One warning for one cause: the run record and the segments fail together.
        self._warn_once(
            "write", "lapse could not write to %s (%s); events are dropped and counted in the "
            "run record until it can, without further warnings", run.settings.dir, error,
        )

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            _logger().warning(message, *args)

    # -- life cycle -----------------------------------------------------------------

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the writer, write what is buffered and mark the run as ended."""
        thread = self._thread
        self._stopping = True
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._thread = None
        if self.level != OFF:
            self.level = UNSTARTED
        run = self.run
        if run is not None and run.pid == os.getpid():
            run.ended_ns = time.time_ns()
            self._run_dirty = True
            self.flush()
        sinks = sys.modules.get("lapse.integrations._sinks")
        if sinks is not None:  # only if a sink was ever used: never imported for nothing
            sinks.close_all(timeout)

    def _at_exit(self) -> None:
        self._exiting = True
        try:
            self.shutdown()
        except Exception as error:  # noqa: BLE001 - never fail interpreter exit
            _logger().warning("lapse could not flush at exit: %s", error)

    def _before_fork(self) -> None:
        # The writer imports modules and runs pyarrow under the flush lock; forking
        # in the middle would leave the child an import lock (or pyarrow's) that no
        # thread of its own will ever release. Wait for the step to end.
        self._fork_held = self._flush_lock.acquire(timeout=FORK_WAIT_S)

    def _after_fork_in_parent(self) -> None:
        if self._fork_held:
            self._fork_held = False
            self._flush_lock.release()

    def _after_fork_in_child(self) -> None:
        # The parent's buffered events are the parent's to write; locks held by
        # the parent's writer thread at fork time would never be released here.
        self._fork_held = False
        self.buffer.clear()
        self._start_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = None
        self._stopping = False
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self.sink_dropped = {}
        self._warned = set()
        self.run = None
        if self.level != OFF:
            self.level = UNSTARTED
        from lapse._instrument import forget_current_span

        forget_current_span()

    def _install_hooks(self) -> None:
        if self._hooks_installed:
            return
        self._hooks_installed = True
        os.register_at_fork(
            before=self._before_fork,
            after_in_parent=self._after_fork_in_parent,
            after_in_child=self._after_fork_in_child,
        )
        # threading's exit hooks run before atexit and also when a multiprocessing
        # child finishes (it leaves through os._exit, skipping atexit).
        register = getattr(threading, "_register_atexit", None)
        if register is not None:
            register(self._at_exit)
        atexit.register(self._at_exit)

    def reset(self) -> None:
        """Forget settings, counters and the run (for tests); flushes first."""
        self.shutdown()
        self.buffer.clear()
        self.settings = None
        self.run = None
        self.level = UNSTARTED
        self._exiting = False
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self.sink_dropped = {}
        sinks = sys.modules.get("lapse.integrations._sinks")
        if sinks is not None:
            sinks.forget()
        self.run_kind = "process"
        self._warned = set()
        self._run_dirty = True

    def status(self) -> dict[str, Any]:
        """What the recorder is doing: run, level, buffered and dropped counts."""
        settings = self.settings
        return {
            "run_id": self.run.run_id if self.run else None,
            "level": self.level,
            "dir": str(settings.dir) if settings else None,
            "buffered": len(self.buffer),
            "capacity": self.capacity,
            "dropped": dict(self.dropped),
            "sink_dropped": dict(self.sink_dropped),
            "writer_alive": bool(self._thread and self._thread.is_alive()),
        }


def _lapse_version() -> str:
    from lapse import __version__

    return __version__


RECORDER = Recorder()
