"""WSGI middleware (Flask and other WSGI apps): one lapse event per request.

::

    from lapse.integrations.wsgi import LapseWSGIMiddleware

    app = Flask(__name__)
    app.wsgi_app = LapseWSGIMiddleware(app.wsgi_app)

The same events as the ASGI middleware (``lapse.integrations.asgi``): kind
``request``, named ``"{method} {route}"`` with the route template (Flask's
``request.url_rule``, such as ``/items/<int:item_id>``), timed from the call
until the server closes the response (so a streamed body is included), with
the HTTP attributes of OpenTelemetry's conventions. Flask forgets the
request (and its rule) before a WSGI middleware sees the response, and turns
exceptions into 500 responses; wrapping ``app.wsgi_app`` lets lapse hear both
through Flask's signals (``request_started``, ``got_request_exception``), so
the event has the route and the exception's type. Calls inside the view nest
under the request.

Other WSGI frameworks: pass ``route=lambda environ: ...`` to name the route,
or set ``environ["lapse.route"]`` in the app.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from lapse._config import MINIMAL
from lapse.integrations._calls import Call, begin, end, error_type, instrument_for

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

ERROR_KEY = "lapse.error"
ROUTE_KEY = "lapse.route"


class LapseWSGIMiddleware:
    """Records each request through a WSGI app as a lapse event (see the module's doc)."""

    def __init__(
        self, app: WSGIApp, *, route: Callable[[dict[str, Any]], str | None] | None = None
    ) -> None:
        self.app = app
        self.route = route
        self._listeners: list[Callable[..., None]] = []
        owner = getattr(app, "__self__", app)  # app.wsgi_app is a method of the Flask app
        if hasattr(owner, "url_map") and hasattr(owner, "handle_exception"):
            self._listen_to_flask(owner)

    def _listen_to_flask(self, flask_app: Any) -> None:
        try:
            from flask import got_request_exception, request, request_started
        except ImportError:  # pragma: no cover - a Flask app without Flask
            return

        def note_route(sender: Any, **extra: Any) -> None:
            rule = getattr(request.url_rule, "rule", None)
            if isinstance(rule, str):
                request.environ.setdefault(ROUTE_KEY, rule)

        def note_error(sender: Any, exception: BaseException, **extra: Any) -> None:
            request.environ[ERROR_KEY] = type(exception)

        self._listeners = [note_route, note_error]  # blinker holds receivers weakly
        request_started.connect(note_route, flask_app)
        got_request_exception.connect(note_error, flask_app)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Serve one request, timing it until the response is closed."""
        call = begin()
        if call is None:
            return self.app(environ, start_response)
        status: list[int] = []

        def start_and_note(status_line: str, headers: Any, exc_info: Any = None) -> Any:
            with contextlib.suppress(ValueError):
                status[:] = [int(status_line.split(" ", 1)[0])]
            return start_response(status_line, headers, exc_info)

        try:
            body = self.app(environ, start_and_note)
        except BaseException as exc:
            self._record(call, environ, status, type(exc))
            raise
        call.leave()  # the server's own work from here on is not inside the request
        return _Closing(body, lambda: self._record(call, environ, status, None))

    def _record(self, call: Call, environ: dict[str, Any], status: list[int],
                error: type[BaseException] | None) -> None:
        method = str(environ.get("REQUEST_METHOD") or "GET")
        route = environ.get(ROUTE_KEY)
        if route is None and self.route is not None:
            route = self.route(environ)
        code = status[0] if status else (500 if error is not None else None)
        error = error or environ.get(ERROR_KEY)
        if error is None and code is not None and code >= 500:
            error = error_type(str(code))
        attrs: dict[str, Any] | None = None
        if call.level != MINIMAL:  # minimal events keep no attributes
            attrs = {"http.request.method": method,
                     "url.scheme": environ.get("wsgi.url_scheme", "http")}
            if route is not None:
                attrs["http.route"] = route
            if code is not None:
                attrs["http.response.status_code"] = code
        name = f"{method} {route}" if route is not None else method
        end(call, instrument_for(name, "request"), error, attrs)


class _Closing:
    """The app's response body, calling ``done`` once when the server closes it."""

    def __init__(self, body: Iterable[bytes], done: Callable[[], None]) -> None:
        self.body = body
        self.done: Callable[[], None] | None = done

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.body)

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            done, self.done = self.done, None
            if done is not None:
                done()
