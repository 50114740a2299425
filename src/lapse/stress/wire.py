"""HTTP/1.1 as a load generator needs it: prebuilt requests, responses read to their end.

A ``Connection`` carries one request at a time on a keep-alive connection. It
writes prebuilt request bytes and parses the answer only as far as needed to
find where it ends: the status line, ``Content-Length``, chunked bodies (with
extensions and trailers), interim ``100`` responses, bodiless statuses and
``Connection: close``. The time of the last byte is taken on entry to
``data_received``, before any parsing. Finished requests go to the worker
(``HttpWorker`` in ``lapse.stress.http``).
"""

from __future__ import annotations

import asyncio
import json
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any, cast

from lapse.stress.plan import Plan
from lapse.stress.worker import error_name

if TYPE_CHECKING:
    from lapse.stress.http import HttpWorker

MAX_HEAD = 65_536


SERVER_DISCONNECTED = "ServerDisconnected"
BAD_RESPONSE = "BadResponse"
UNFINISHED = "Unfinished"
"""Error types of the store for what is not an exception of this process."""


def build_requests(plan: Plan, items: list[Any] | None) -> list[bytes]:
    """The request bytes to cycle through: one per payload item, or the one fixed request."""
    target = plan.target
    from urllib.parse import urlsplit

    parts = urlsplit(target.spec)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    default_port = 443 if target.tls else 80
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    host_header = host if target.port == default_port else f"{host}:{target.port}"
    given = {name.lower() for name, _ in target.headers}
    bodies: list[tuple[bytes | None, str | None]] = []
    if items is None:
        bodies.append((target.body, None))
    else:
        for item in items:
            if isinstance(item, bytes):
                bodies.append((item, None))
            elif isinstance(item, str):
                bodies.append((item.encode(), "text/plain; charset=utf-8"))
            else:
                bodies.append((json.dumps(item).encode(), "application/json"))
    requests = []
    for body, content_type in bodies:
        lines = [f"{target.method} {path} HTTP/1.1", f"Host: {host_header}"]
        lines += [f"{name}: {value}" for name, value in target.headers]
        if "user-agent" not in given:
            lines.append("User-Agent: lapse-stress")
        if body is not None:
            if content_type and "content-type" not in given:
                lines.append(f"Content-Type: {content_type}")
            lines.append(f"Content-Length: {len(body)}")
        requests.append(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
    return requests


class Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self, worker: HttpWorker) -> None:
        self.worker = worker
        self.transport: asyncio.Transport | None = None
        self.alive = False
        self.busy = False
        self.intended = self.sent = self.step = 0
        self.buffer = b""
        self.head_done = False
        self.status = 0
        self.remaining = 0
        self.chunked = False
        self.chunk_left = 0
        self.trailers = False
        self.until_close = False
        self.close_after = False

    # -- asyncio.Protocol ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport; the connection is ready."""
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.alive = True

    def data_received(self, data: bytes) -> None:
        """Parse as much of the response as arrived; finish the request at its last byte."""
        now = perf_counter_ns()
        if not self.busy:
            return  # bytes after a complete response (a server bug): ignored
        try:
            if self._parse(self.buffer + data if self.buffer else data):
                self._finish(now, self._code())
        except (ValueError, IndexError) as error:
            self._fail(now, BAD_RESPONSE, str(error))

    def connection_lost(self, exc: Exception | None) -> None:
        """A response read to the end of the connection is complete; any other is an error."""
        now = perf_counter_ns()
        self.alive = False
        if self.busy:
            if self.until_close and self.head_done:
                self._finish(now, self._code())
            elif exc is not None:
                self._fail(now, error_name(exc), str(exc))
            else:
                self._fail(now, SERVER_DISCONNECTED, "the server closed the connection before "
                           "the response was complete")
        self.worker.lost(self)

    # -- requests -------------------------------------------------------------

    def send(self, request: bytes, intended: int, step: int) -> None:
        """Write one request; ``intended`` is when it was due (its latency starts there)."""
        self.busy = True
        self.head_done = self.chunked = self.trailers = self.until_close = False
        self.close_after = False
        self.buffer = b""
        self.intended = intended
        self.step = step
        assert self.transport is not None
        self.sent = perf_counter_ns()
        self.transport.write(request)

    def _code(self) -> int:
        if self.status >= 400:
            return self.worker.results.code(f"HTTP {self.status}", f"status {self.status}")
        return 0

    def _finish(self, now: int, code: int) -> None:
        self.busy = False
        self.buffer = b""
        worker = self.worker
        worker.results.add(self.intended, self.sent, now, code, self.step)
        if self.close_after and self.transport is not None:
            self.alive = False
            self.transport.close()
        worker.done(self)

    def _fail(self, now: int, kind: str, message: str) -> None:
        code = self.worker.results.code(kind, message)
        self.close_after = True
        self._finish(now, code)

    def abort(self, now: int, kind: str, message: str) -> None:
        """Give up on the request in flight (timeout, or the run ends) and drop the connection."""
        if self.busy:
            self._fail(now, kind, message)
        if self.transport is not None:
            self.transport.abort()

    def _parse(self, buffer: bytes) -> bool:
        """Consume response bytes; True when the response is complete."""
        if not self.head_done:
            while True:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(buffer) > MAX_HEAD:
                        raise ValueError("response head larger than 64 KiB")
                    self.buffer = buffer
                    return False
                if buffer[:5] != b"HTTP/":
                    raise ValueError(f"not an HTTP response: {buffer[:40]!r}")
                self.status = int(buffer[9:12])
                if 100 <= self.status < 200 and self.status != 101:
                    buffer = buffer[end + 4:]  # an interim response (100 Continue)
                    continue
                break
            self._headers(buffer[:end].lower())
            self.head_done = True
            buffer = buffer[end + 4:]
        if self.chunked:
            return self._chunks(buffer)
        if self.until_close:
            self.buffer = b""
            return False
        if len(buffer) >= self.remaining:
            return True
        self.remaining -= len(buffer)
        self.buffer = b""
        return False

    def _headers(self, head: bytes) -> None:
        self.remaining = 0
        no_body = self.status in (204, 304) or self.worker.head_only
        at = head.find(b"\r\nconnection:")
        if at >= 0 and b"close" in head[at:head.find(b"\r\n", at + 2) % (len(head) + 1)]:
            self.close_after = True
        if no_body:
            return
        at = head.find(b"\r\ntransfer-encoding:")
        if at >= 0 and b"chunked" in head[at:head.find(b"\r\n", at + 2) % (len(head) + 1)]:
            self.chunked = True
            self.chunk_left = 0
            return
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            line_end = head.find(b"\r\n", at + 2)
            self.remaining = int(head[at + 17:line_end if line_end >= 0 else None])
            return
        self.until_close = True
        self.close_after = True

    def _chunks(self, buffer: bytes) -> bool:
        position = 0
        size = len(buffer)
        while True:
            if self.chunk_left:
                take = min(self.chunk_left, size - position)
                position += take
                self.chunk_left -= take
                if self.chunk_left:
                    self.buffer = b""
                    return False
            line_end = buffer.find(b"\r\n", position)
            if line_end < 0:
                self.buffer = buffer[position:]
                return False
            if self.trailers:
                if line_end == position:
                    return True
                position = line_end + 2
                continue
            length = int(buffer[position:line_end].split(b";")[0], 16)
            position = line_end + 2
            if length == 0:
                self.trailers = True
            else:
                self.chunk_left = length + 2  # the data and its CRLF


