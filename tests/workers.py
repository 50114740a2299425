"""Code run in other processes by the recorder and store tests.

The functions are targets for ``multiprocessing`` (importable, so ``spawn``
children find them); run as a script (``python tests/workers.py MODE ...``)
this module is a whole instrumented program for ``subprocess`` tests.
"""

from __future__ import annotations

import os
import sys
import time

import lapse


@lapse.timed
def work(i: int) -> int:
    """The instrumented function the processes call."""
    return i + 1


@lapse.timed
def inner(i: int) -> int:
    """Called by ``outer``: its events are children of outer's."""
    return i * 2


@lapse.timed
def outer(i: int) -> int:
    """A decorated function calling a decorated one (nesting)."""
    return inner(i) + 1


def record(calls: int) -> None:
    """Call ``work`` ``calls`` times and return (a multiprocessing child's normal exit)."""
    for i in range(calls):
        work(i)


def record_nested(pairs: int) -> None:
    """Call ``outer`` (and so ``inner``) ``pairs`` times."""
    for i in range(pairs):
        outer(i)


def record_in_segments(segments: int, calls: int) -> None:
    """Write ``segments`` segments of ``calls`` events each (flushing after each batch)."""
    for _ in range(segments):
        record(calls)
        lapse.flush()


def crash_loop(progress_path: str) -> None:
    """Record forever with a 200 ms flush interval, logging progress until killed.

    After every few calls a line ``<time_ns> <calls completed>`` is appended to
    ``progress_path`` with an unbuffered write, so it survives SIGKILL.
    """
    lapse.configure(flush_interval="200ms")
    descriptor = os.open(progress_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    done = 0
    while True:
        for _ in range(10):
            work(done)
            done += 1
            time.sleep(0.0002)
        os.write(descriptor, f"{time.time_ns()} {done}\n".encode())


def fork_at_start() -> int:
    """Fork while the writer, just started, is still importing its modules.

    Returns 0 if the child recorded and exited, 3 if it hung (it is then killed).
    """
    import multiprocessing

    record(1)  # starts the writer thread, which begins importing pyarrow...
    child = multiprocessing.get_context("fork").Process(target=record, args=(100,))
    child.start()  # ...so the fork lands in the middle of those imports
    child.join(timeout=30)
    if child.exitcode is None:
        child.kill()
        child.join()
        return 3
    return 0 if child.exitcode == 0 else 4


def main(argv: list[str]) -> int:
    """``exit N`` records N calls and exits without flushing; ``raise N`` then fails with an
    uncaught exception; ``fork-at-start`` see ``fork_at_start``; ``crash FILE`` records
    until killed (see ``crash_loop``)."""
    mode = argv[0]
    if mode == "exit":
        record(int(argv[1]))
        return 0
    if mode == "raise":
        record(int(argv[1]))
        raise RuntimeError("the program fails after recording")
    if mode == "fork-at-start":
        return fork_at_start()
    if mode == "crash":
        crash_loop(argv[1])
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
