"""ASGI middleware (FastAPI, Starlette and other ASGI apps): one lapse event per request.

::

    from lapse.integrations.asgi import LapseMiddleware

    app = FastAPI()
    app.add_middleware(LapseMiddleware)

Each HTTP request is an event of kind ``request`` named ``"{method} {route}"``
with the route *template* (``GET /items/{item_id}``, so ids do not make one
event per URL), timed from the request's arrival until the response is sent.
Attributes follow OpenTelemetry's HTTP conventions: ``http.request.method``,
``http.route``, ``http.response.status_code``, ``url.scheme``. A request
whose handler raised is an error with the exception's type; a 5xx response
without an exception is an error of type ``"500"`` (the status), as
OpenTelemetry's ``error.type``. Instrumented calls and ``lapse.span`` blocks
inside the handler (sync handlers included: Starlette copies the context into
its threadpool) nest under the request. Request paths and bodies are never
recorded: only the route template.

At the application's lifespan shutdown the middleware writes what is buffered
(``lapse.shutdown()``): uvicorn ends a process stopped by SIGTERM by raising
the signal again once it has shut down, so exit hooks would never run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from lapse._config import MINIMAL
from lapse.integrations._calls import begin, end, error_type, instrument_for

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def route_template(scope: Scope) -> str | None:
    """The matched route's path template (mount prefixes included), or None if none matched.

    Starlette's router (and FastAPI's) leaves the matched route in the scope.
    """
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return None
    root = scope.get("root_path", "") or ""
    app_root = scope.get("app_root_path", "") or ""
    prefix = root[len(app_root):] if root.startswith(app_root) else ""
    return prefix + path


class LapseMiddleware:
    """Records each HTTP request as a lapse event (see the module's doc); other scopes pass."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app for one connection, timing it if it is an HTTP request."""
        if scope["type"] == "lifespan":
            await self.app(scope, receive, _flush_before_shutdown_completes(send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        call = begin()
        if call is None:
            await self.app(scope, receive, send)
            return
        status: int | None = None

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        error: type[BaseException] | None = None
        try:
            await self.app(scope, receive, send_and_note)
        except BaseException as exc:
            error = type(exc)
            raise
        finally:
            method = str(scope.get("method") or "GET")
            route = route_template(scope)
            if error is not None and status is None:
                status = 500  # what the server's error handler answers
            elif error is None and status is not None and status >= 500:
                error = error_type(str(status))
            attrs: dict[str, Any] | None = None
            if call.level != MINIMAL:  # minimal events keep no attributes
                attrs = {"http.request.method": method, "url.scheme": scope.get("scheme", "http")}
                if route is not None:
                    attrs["http.route"] = route
                if status is not None:
                    attrs["http.response.status_code"] = status
            name = f"{method} {route}" if route is not None else method
            end(call, instrument_for(name, "request"), error, attrs)


def _flush_before_shutdown_completes(send: Send) -> Send:
    async def send_after_flush(message: Message) -> None:
        if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            import logging

            from lapse._control import shutdown

            try:
                shutdown()
            except Exception as error:  # noqa: BLE001 - never fail the server's shutdown
                logging.getLogger("lapse").warning("lapse could not flush at shutdown: %s",
                                                   error)
        await send(message)

    return send_after_flush
