"""The HTTP generator: one event loop per process, keep-alive connections, callbacks only.

A general client (aiohttp, httpx) spends most of a request's CPU on features
a load generator does not use: its cost is what limits a generator core.
This one writes prebuilt request bytes on ``asyncio`` transports (uvloop's
when installed) and parses responses just enough to find their end
(``lapse.stress.wire``), from protocol callbacks, so one core sends several
times what a general client does. Times are taken with ``perf_counter_ns``
when the request is written and when the last byte of its response arrives.

Open loop: requests are sent at their intended times on a free connection,
opening another up to the worker's share of ``connections``; when all are
busy, due requests wait, and that wait counts in the corrected latency
(measured from the intended time). The event loop's timers have millisecond
granularity, which would add up to a millisecond to every corrected latency
(and spinning instead would take the CPU from the server under test), so an
alarm thread sleeps until just before each intended time and wakes the loop.

Closed loop: each user owns a connection and sends its next request when the
previous response has arrived (after the think time).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections import deque
from time import perf_counter_ns
from typing import Any

from lapse.stress.plan import Plan, Step
from lapse.stress.schedule import intended_times
from lapse.stress.wire import UNFINISHED, Connection, build_requests
from lapse.stress.worker import BATCH_S, Channel, Results, error_name, payload_items

EARLY_NS = 100_000
"""The alarm wakes the loop this early (at most a tenth of the mean gap), then it yields
until the intended time: the thread's wake-up latency is not added to every request."""
PREOPEN = 16
"""Open loop: connections each worker opens before the run (more open when needed)."""
CHECK_S = 0.05


class HttpWorker:
    """One generator process's loop: connections, schedule, timeouts and reports."""

    def __init__(self, plan: Plan, index: int, channel: Channel) -> None:
        self.plan = plan
        self.index = index
        self.channel = channel
        self.results = Results(channel)
        self.requests = build_requests(plan, payload_items(plan.target))
        self.next_request = 0
        self.head_only = plan.target.method == "HEAD"
        self.connections: set[Connection] = set()
        self.idle: list[Connection] = []
        self.waiters: deque[asyncio.Future[Connection | BaseException | None]] = deque()
        self.opening = 0
        self.cap = max(1, plan.share(plan.connections, index))
        self.aborted = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if plan.target.tls else None
        self.users: _Users | None = None
        self.running: asyncio.Task[dict[str, int]] | None = None
        self.running_step = -1
        self.alarm: _Alarm | None = None

    # -- connections ------------------------------------------------------------

    async def connect(self) -> Connection:
        """Open one more keep-alive connection."""
        assert self.loop is not None
        target = self.plan.target
        self.opening += 1
        try:
            _, protocol = await asyncio.wait_for(self.loop.create_connection(
                lambda: Connection(self), target.host.strip("[]"), target.port, ssl=self.ssl,
                server_hostname=target.host if self.ssl else None), 10.0)
        finally:
            self.opening -= 1
        self.connections.add(protocol)
        return protocol

    def lost(self, conn: Connection) -> None:
        """A connection closed: forget it (a new one is opened when one is needed)."""
        self.connections.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)

    def done(self, conn: Connection) -> None:
        """A request finished: its connection goes to the next request, or back to the pool."""
        if self.users is not None:
            self.users.after_response(conn)
            return
        if not conn.alive:
            self.connections.discard(conn)
            if self.waiters:  # replace the closed connection for the request waiting
                assert self.loop is not None
                self.loop.create_task(self._reopen_for_waiter())
            return
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self.idle.append(conn)

    async def _reopen_for_waiter(self) -> None:
        try:
            conn: Connection | BaseException = await self.connect()
        except (OSError, asyncio.TimeoutError) as error:
            conn = error
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if isinstance(conn, Connection):
            self.idle.append(conn)

    async def acquire(self) -> Connection | BaseException | None:
        """A free connection (idle, new under the cap, or the next freed), an error, or None.

        None: the step was aborted while the request waited for a connection.
        """
        if self.idle:
            return self.idle.pop()
        if len(self.connections) + self.opening < self.cap:
            try:
                return await self.connect()
            except (OSError, asyncio.TimeoutError) as error:
                return error
        assert self.loop is not None
        waiter: asyncio.Future[Connection | BaseException | None] = self.loop.create_future()
        self.waiters.append(waiter)
        return await waiter

    def request_bytes(self) -> bytes:
        """The next request to send (cycling through the payload's requests)."""
        requests = self.requests
        if len(requests) == 1:
            return requests[0]
        index = self.next_request
        self.next_request = (index + 1) % len(requests)
        return requests[index]

    def error(self, at: int, error: BaseException, step: int) -> None:
        """Record a request that failed before it could be sent (no connection)."""
        now = perf_counter_ns()
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        self.results.add(at, now, now, self.results.code(error_name(error), reason), step)

    # -- steps --------------------------------------------------------------------

    async def open_step(self, step: Step, start_ns: int) -> dict[str, int]:
        """Send this worker's share of an open-loop step; returns its counters."""
        plan = self.plan
        assert step.rate is not None
        seed = None if plan.seed is None else plan.seed * 1000 + self.index * 7 + step.index
        times = intended_times(start_ns, step.duration_ns, step.rate / plan.workers,
                               plan.arrivals, offset=self.index / plan.workers, seed=seed,
                               limit=plan.share(plan.requests, self.index))
        warm_end = start_ns + step.warmup_ns
        deadline = start_ns + step.duration_ns + plan.timeout_ns
        early = min(EARLY_NS, round(1e8 / (step.rate / plan.workers)))
        dropped = 0
        for intended in times:
            if self.aborted:  # those already due were dropped; the rest never came due
                now = perf_counter_ns()
                dropped += (intended <= now) + sum(1 for t in times if t <= now)
                break
            if intended > perf_counter_ns():
                await self._sleep_until(intended, early)
            code = step.index if intended >= warm_end else -1 - step.index
            conn = await self.acquire()
            if conn is None or (isinstance(conn, Connection) and perf_counter_ns() > deadline):
                if conn is not None:
                    self.done(conn)
                dropped += 1
            elif isinstance(conn, Connection):
                conn.send(self.request_bytes(), intended, code)
            else:
                self.error(intended, conn, code)
        await self._drain(deadline)
        return {"dropped": dropped}

    async def _sleep_until(self, at: int, early: int) -> None:
        if at - perf_counter_ns() > early + 20_000:
            assert self.alarm is not None
            await self.alarm.at(at - early)
        while perf_counter_ns() < at and not self.aborted:
            await asyncio.sleep(0)

    async def closed_step(self, step: Step, start_ns: int) -> dict[str, int]:
        """Run this worker's users for a closed-loop step; returns its counters."""
        plan = self.plan
        assert step.users is not None
        count = plan.share(step.users, self.index)
        delta = start_ns - perf_counter_ns()
        if delta > 0:
            await asyncio.sleep(delta / 1e9)
        if count == 0:
            return {"dropped": 0}
        users = self.users = _Users(self, step, start_ns)
        for _ in range(count):
            users.start(self.idle.pop() if self.idle else None)
        deadline = start_ns + step.duration_ns + plan.timeout_ns
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(users.finished),
                                   max(0.0, (deadline - perf_counter_ns()) / 1e9))
        self.users = None
        await self._drain(perf_counter_ns())
        for conn in self.connections:
            if conn.alive and not conn.busy and conn not in self.idle:
                self.idle.append(conn)
        return {"dropped": 0}

    async def _drain(self, deadline: int) -> None:
        """Wait for the requests in flight, until ``deadline`` plus the timeout at most."""
        limit = max(deadline, perf_counter_ns()) + self.plan.timeout_ns
        while any(c.busy for c in self.connections):
            if self.aborted or perf_counter_ns() > limit:
                now = perf_counter_ns()
                for conn in list(self.connections):
                    if conn.busy:
                        conn.abort(now, UNFINISHED, "the run ended before the response arrived")
                break
            await asyncio.sleep(0.005)

    # -- the process ------------------------------------------------------------------

    async def _watch(self) -> None:
        """Every CHECK_S: time out slow requests; every BATCH_S: report what finished."""
        timeout = self.plan.timeout_ns
        last_flush = perf_counter_ns()
        while True:
            await asyncio.sleep(CHECK_S)
            now = perf_counter_ns()
            for conn in list(self.connections):
                if conn.busy and now - conn.sent > timeout:
                    conn.abort(now, "TimeoutError", f"no response within {timeout / 1e9:g} s")
            if now - last_flush >= BATCH_S * 1e9:
                last_flush = now
                self.results.flush()

    async def run(self) -> None:
        """Connect, report ready, then run steps as the coordinator says."""
        loop = self.loop = asyncio.get_running_loop()
        if not await self._open_first():
            return
        self.alarm = _Alarm(loop)
        self.channel.send(("ready", {"connections": len(self.idle)}))
        commands: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

        def read() -> None:
            while True:
                message = self.channel.receive()
                loop.call_soon_threadsafe(commands.put_nowait, message)
                if message[0] == "stop":
                    return

        threading.Thread(target=read, name="lapse-stress-commands", daemon=True).start()
        watcher = loop.create_task(self._watch())
        get: asyncio.Task[tuple[Any, ...]] | None = None
        while True:
            get = get or loop.create_task(commands.get())
            waiting: set[asyncio.Future[Any]] = {get}
            if self.running is not None:
                waiting.add(self.running)
            finished, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if self.running is not None and self.running in finished:
                self._step_done(self.running.result())
            if get in finished:
                message, get = get.result(), None
                if not await self._command(message):
                    break
        watcher.cancel()
        self.alarm.close()
        self.results.flush()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()

    async def _open_first(self) -> bool:
        """Open the first connections (a user's each, or PREOPEN); False if the target refuses."""
        plan = self.plan
        first = plan.steps[0]
        want = (plan.share(first.users, self.index) if first.users is not None
                else min(self.cap, PREOPEN))
        try:
            for _ in range(min(want, 256)):
                self.idle.append(await self.connect())
        except (OSError, asyncio.TimeoutError) as error:
            reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
            self.channel.send(("fatal", f"cannot connect to {plan.target.spec}: {reason}"))
            return False
        return True

    def _step_done(self, counters: dict[str, int]) -> None:
        self.results.flush()
        self.channel.send(("step_done", self.running_step, counters))
        self.running = None

    async def _command(self, message: tuple[Any, ...]) -> bool:
        """Act on one command; False when told to stop."""
        assert self.loop is not None
        if message[0] == "step":
            _, self.running_step, start_ns = message
            self.aborted = False
            step = self.plan.steps[self.running_step]
            runner = self.open_step if step.rate is not None else self.closed_step
            self.running = self.loop.create_task(runner(step, start_ns))
            return True
        self.aborted = True  # abort or stop
        if self.alarm is not None:
            self.alarm.cancel()
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)
        if self.users is not None:
            self.users.abort()
        if message[0] == "stop":
            if self.running is not None:
                self._step_done(await self.running)
            return False
        return True


class _Alarm:
    """A thread that wakes the event loop at a precise time (its own timers have 1 ms steps)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.cond = threading.Condition()
        self.due: tuple[int, asyncio.Future[None]] | None = None
        self.closed = False
        threading.Thread(target=self._run, name="lapse-stress-alarm", daemon=True).start()

    def at(self, when_ns: int) -> asyncio.Future[None]:
        """A future done at ``when_ns`` (perf_counter_ns), give or take the OS timer slack."""
        future: asyncio.Future[None] = self.loop.create_future()
        with self.cond:
            self.due = (when_ns, future)
            self.cond.notify()
        return future

    def cancel(self) -> None:
        """Wake whoever waits now (the step is aborted)."""
        with self.cond:
            if self.due is not None:
                self.loop.call_soon_threadsafe(_wake, self.due[1])
                self.due = None
            self.cond.notify()

    def close(self) -> None:
        """End the thread."""
        with self.cond:
            self.closed = True
            self.cond.notify()

    def _run(self) -> None:
        with self.cond:
            while not self.closed:
                if self.due is None:
                    self.cond.wait()
                    continue
                when, future = self.due
                remaining = when - perf_counter_ns()
                if remaining > 0:
                    self.cond.wait(remaining / 1e9)
                    continue
                self.due = None
                self.loop.call_soon_threadsafe(_wake, future)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Users:
    """The closed-loop users of one step in one worker: each sends, waits, thinks, repeats."""

    def __init__(self, worker: HttpWorker, step: Step, start_ns: int) -> None:
        assert worker.loop is not None
        self.worker = worker
        self.step = step
        self.end = start_ns + step.duration_ns
        self.warm_end = start_ns + step.warmup_ns
        self.left = worker.plan.share(worker.plan.requests, worker.index)
        self.active = 0
        self.think_s = worker.plan.think_ns / 1e9
        self.finished: asyncio.Future[None] = worker.loop.create_future()

    def start(self, conn: Connection | None) -> None:
        """Start one user, on ``conn`` or a new connection."""
        self.active += 1
        if conn is None:
            assert self.worker.loop is not None
            self.worker.loop.create_task(self._reconnect())
        else:
            self.send(conn)

    def over(self) -> bool:
        """Whether users stop sending (time, request count, or abort)."""
        return self.worker.aborted or self.left <= 0 or perf_counter_ns() >= self.end

    def after_response(self, conn: Connection) -> None:
        """A user's response arrived: think, then send the next request."""
        if self.think_s and not self.over():
            assert self.worker.loop is not None
            self.worker.loop.call_later(self.think_s, self.send, conn)
        else:
            self.send(conn)

    def send(self, conn: Connection) -> None:
        """Send a user's next request, or end the user."""
        worker = self.worker
        if self.over():
            if conn.alive:
                worker.idle.append(conn)
            else:
                worker.connections.discard(conn)
            self._leave()
        elif not conn.alive:
            worker.connections.discard(conn)
            assert worker.loop is not None
            worker.loop.create_task(self._reconnect())
        else:
            self.left -= 1
            now = perf_counter_ns()
            conn.send(worker.request_bytes(), now,
                      self.step.index if now >= self.warm_end else -1 - self.step.index)

    async def _reconnect(self) -> None:
        try:
            conn = await self.worker.connect()
        except (OSError, asyncio.TimeoutError) as error:
            now = perf_counter_ns()
            self.worker.error(now, error, self.step.index)
            self._leave()
            return
        self.send(conn)

    def _leave(self) -> None:
        self.active -= 1
        if self.active <= 0 and not self.finished.done():
            self.finished.set_result(None)

    def abort(self) -> None:
        """Stop at once: the requests in flight are ended by the drain."""
        if not self.finished.done():
            self.finished.set_result(None)


def run_worker(plan: Plan, index: int, channel: Channel) -> None:
    """The body of an HTTP generator process (uvloop's event loop when installed)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(HttpWorker(plan, index, channel).run())
        return
    uvloop.run(HttpWorker(plan, index, channel).run())
