"""Targets with known behaviour for the ``lapse stress`` tests.

``ServiceServer`` is a real HTTP/1.1 keep-alive server (a thread per
connection) whose every response takes a known service time, that can stall
once for a known time (every request in progress or arriving waits for the
stall to end, as in a garbage-collection pause), and that records how long it
spent on each request: the truth the generator's figures are checked against.
The functions are callable targets (``tests.stress_targets:sleep_5ms``).
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from time import perf_counter_ns

SERVICE_S = 0.005


class ServiceServer(ThreadingHTTPServer):
    """Answers every request after ``service_s``; stalls once ``stall_after_s`` after the first."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # the default backlog (5) drops connection bursts for seconds

    def __init__(self, service_s: float = SERVICE_S, stall_after_s: float | None = None,
                 stall_s: float = 1.0) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.service_s = service_s
        self.stall_after_s = stall_after_s
        self.stall_s = stall_s
        self.lock = threading.Lock()
        self.first_ns: int | None = None
        self.stall_until_ns: int | None = None
        self.stall_started_ns: int | None = None
        self.durations_ns: list[int] = []
        self.arrivals_ns: list[int] = []

    @property
    def url(self) -> str:
        """The URL of the default endpoint."""
        return f"http://127.0.0.1:{self.server_address[1]}/predict"

    def wait_time(self, now: int) -> int:
        """How long a request arriving at ``now`` must wait for a stall to end (ns)."""
        with self.lock:
            if self.first_ns is None:
                self.first_ns = now
            if (self.stall_after_s is not None and self.stall_until_ns is None
                    and now - self.first_ns >= self.stall_after_s * 1e9):
                self.stall_started_ns = now
                self.stall_until_ns = now + round(self.stall_s * 1e9)
            until = self.stall_until_ns
        return max(0, until - now) if until is not None else 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else headers and body wait on the client's delayed ACK
    server: ServiceServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib's name
        """Quiet."""

    def _answer(self) -> None:
        t0 = perf_counter_ns()
        server = self.server
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        wait = server.wait_time(t0)
        if wait:
            time.sleep(wait / 1e9)
        if self.path.startswith("/error"):
            status, body = 503, b"unavailable"
        else:
            time.sleep(server.service_s)
            status, body = 200, b'{"prediction": 1}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        t1 = perf_counter_ns()
        with server.lock:
            server.durations_ns.append(t1 - t0)
            server.arrivals_ns.append(t0)

    do_GET = _answer  # noqa: N815 - the name http.server calls
    do_POST = _answer  # noqa: N815 - the name http.server calls


@contextmanager
def serving(**options: float | None) -> Iterator[ServiceServer]:
    """A ServiceServer running in a background thread for the block."""
    server = ServiceServer(**options)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="stress-target", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def sleep_5ms() -> None:
    """A callable target that takes 5 ms."""
    time.sleep(SERVICE_S)


_truth: list[int] = []


def _write_truth() -> None:
    folder = os.environ.get("STRESS_TRUTH_DIR")
    if folder and _truth:
        Path(folder, f"{os.getpid()}.txt").write_text("\n".join(map(str, _truth)))


def measured_sleep_5ms() -> None:
    """Sleeps 5 ms and remembers how long that really took (ns), written at exit to
    ``$STRESS_TRUTH_DIR/<pid>.txt``: the truth the generator's figures are checked against."""
    if not _truth:
        atexit.register(_write_truth)
    t0 = perf_counter_ns()
    time.sleep(SERVICE_S)
    _truth.append(perf_counter_ns() - t0)


def sleep_ms(ms: float) -> float:
    """A callable target that takes ``ms`` milliseconds (its payload)."""
    time.sleep(ms / 1000)
    return ms


def delays() -> list[float]:
    """Payload factory for ``sleep_ms``: 2 ms and 8 ms in turn."""
    return [2.0, 8.0]


def always_fails() -> None:
    """A callable target that raises on every call."""
    raise ValueError("the model is not loaded")


_calls = iter(range(1_000_000_000))


def fails_every_tenth() -> None:
    """A callable target whose every tenth call (per worker) raises KeyError."""
    if next(_calls) % 10 == 9:
        raise KeyError("missing feature")
    time.sleep(0.001)


def not_callable_thing() -> int:
    """Used as a payload factory returning something that is not a list of inputs."""
    return 42


NOT_CALLABLE = 42


class CpuPressure:
    """How much of a block's time some task waited for a CPU: Linux's pressure stall
    information (``/proc/pressure/cpu``), else the load average per CPU as a rough stand-in.

    Tests run beside other work; on a saturated machine every process wakes late, target
    and generator alike, and a 1 ms claim about tail latency cannot be checked there.
    """

    QUIET = 0.05
    """Below this share of time with a task waiting for a CPU, the machine counts as quiet."""

    def __enter__(self) -> CpuPressure:
        self.start = self._total()
        self.started = time.monotonic()
        self.share = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._total()
        if self.start is not None and end is not None:
            wall_us = (time.monotonic() - self.started) * 1e6
            self.share = (end - self.start) / wall_us if wall_us > 0 else 0.0
        else:
            self.share = max(0.0, os.getloadavg()[0] / (os.cpu_count() or 1) - 0.5)

    SATURATED = 0.3
    """Above this share, tasks queue for a CPU so often that milliseconds mean nothing."""

    @property
    def quiet(self) -> bool:
        """Whether the machine had CPU to spare during the block."""
        return self.share < self.QUIET

    @property
    def saturated(self) -> bool:
        """Whether tasks waited for a CPU a large part of the block."""
        return self.share >= self.SATURATED

    @staticmethod
    def _total() -> int | None:
        try:
            line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        except (OSError, IndexError):
            return None
        return int(line.rsplit("total=", 1)[1])
