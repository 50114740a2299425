"""The dashboard web app: static pages, the JSON API, token checks and security headers.

Pages are plain HTML and JavaScript files in ``static/`` that fetch ``/api/``;
plotly.js is served from the installed plotly package, so nothing is loaded
from the internet. With a token every request must carry it: an
``Authorization: Bearer`` header, or the HttpOnly cookie set when a page is
opened once as ``/?token=TOKEN``. Without one, only requests addressed to a
loopback name (127.0.0.1, localhost, [::1]) are answered, which stops other
web sites from reaching the dashboard through DNS rebinding.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from lapse._errors import ConfigError, StoreError

STATIC = Path(__file__).with_name("static")
COOKIE = "lapse_dashboard"
SECURITY_HEADERS = {
    # Plotly sets inline styles; every script is a file of this app.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
UNAUTHORIZED_PAGE = """<!doctype html><html><head><meta charset="utf-8">
<title>lapse dashboard: token needed</title>
<style>body {{ font: 15px/1.5 system-ui, sans-serif; margin: 3rem auto; max-width: 44rem;
color: #1f2430; }} code {{ background: #f3f4f6; padding: 0 0.2rem; }}</style></head>
<body><main><h1>This lapse dashboard needs a token</h1>
<p>{message}</p><p>Open the dashboard once as <code>/?token=TOKEN</code> (the token given to
<code>lapse dashboard --token</code> or in <code>LAPSE_DASHBOARD_TOKEN</code>); API clients send
<code>Authorization: Bearer TOKEN</code>.</p></main></body></html>"""

Handler = Callable[[Request], Awaitable[Response]]


def plotly_js() -> Path:
    """plotly.min.js of the installed plotly package."""
    try:
        import plotly
    except ImportError:
        raise ConfigError("the dashboard draws its charts with plotly, which is not installed: "
                          "pip install 'lapse[dashboard]'") from None
    return Path(plotly.__file__).with_name("package_data") / "plotly.min.js"


def create_app(store: Path, token: str | None = None) -> FastAPI:
    """The dashboard of ``store`` as an ASGI app; with ``token``, every request must carry it."""
    from lapse import __version__
    from lapse.dashboard import analyses
    from lapse.dashboard.api import router

    app = FastAPI(
        title="lapse dashboard", version=__version__,
        description="The numbers and charts of a lapse store: per-event summaries "
        "(five-number summary, percentiles), latency and volume over time, duration "
        "histograms, slowest calls, traces and runs; and the analyses of `lapse analyze` "
        "and `lapse compare` under /api/analyze/. Durations are in seconds, times in "
        "nanoseconds since the Unix epoch.",
        docs_url=None, redoc_url=None,  # their pages load scripts from a CDN
    )
    app.state.store = store
    app.include_router(router)
    app.include_router(analyses.router)
    _add_pages(app, plotly_js())
    _add_errors(app)
    app.middleware("http")(_guard(token))
    return app


def _add_pages(app: FastAPI, plotly: Path) -> None:
    def page(file: str) -> Callable[[], FileResponse]:
        def serve_page() -> FileResponse:
            return FileResponse(STATIC / file, headers={"Cache-Control": "no-cache"})
        return serve_page

    for path, file in (("/", "overview.html"), ("/runs", "runs.html"),
                       ("/analyses", "analyses.html"),
                       ("/event/{name:path}", "event.html"),
                       ("/trace/{run_id}/{trace_id}", "trace.html")):
        app.get(path, include_in_schema=False, response_class=FileResponse)(page(file))

    @app.get("/vendor/plotly.min.js", include_in_schema=False)
    def plotly_script() -> FileResponse:
        return FileResponse(plotly, media_type="text/javascript",
                            headers={"Cache-Control": "public, max-age=86400"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")


def _add_errors(app: FastAPI) -> None:
    @app.exception_handler(ConfigError)
    async def bad_input(request: Request, error: ConfigError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=400)

    @app.exception_handler(StoreError)
    async def store_error(request: Request, error: StoreError) -> JSONResponse:
        missing = not Path(request.app.state.store).is_dir()
        return JSONResponse({"detail": str(error)}, status_code=404 if missing else 500)


def _guard(token: str | None) -> Callable[[Request, Handler], Awaitable[Response]]:
    """Middleware: the token (or a loopback Host without one), then security headers."""
    cookie = None if token is None else hmac.new(
        token.encode(), b"lapse dashboard cookie", hashlib.sha256).hexdigest()

    async def guard(request: Request, call_next: Handler) -> Response:
        if token is None or cookie is None:
            response = (await call_next(request) if _loopback(request.headers.get("host", ""))
                        else _refuse(request, 403, "without a token this dashboard only "
                                     "answers requests addressed to 127.0.0.1 or localhost; "
                                     "start it with --token to serve it under other names"))
        else:
            response = await _checked(request, call_next, token, cookie)
        response.headers.update(SECURITY_HEADERS)
        return response

    return guard


async def _checked(request: Request, call_next: Handler, token: str, cookie: str) -> Response:
    offered = request.query_params.get("token")
    api = request.url.path.startswith("/api/")
    if offered is not None and not api:
        if not hmac.compare_digest(offered.encode(), token.encode()):
            return _refuse(request, 403, "the token in the address is not this dashboard's")
        rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
        target = request.url.path + (f"?{rest}" if rest else "")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, cookie, httponly=True, samesite="lax", path="/")
        return response
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        if hmac.compare_digest(header[7:].strip().encode(), token.encode()):
            return await call_next(request)
        return _refuse(request, 403, "the bearer token is not this dashboard's")
    session = request.cookies.get(COOKIE)
    if session is not None and hmac.compare_digest(session.encode(), cookie.encode()):
        return await call_next(request)
    return _refuse(request, 401, "no token was sent with this request")


def _refuse(request: Request, status: int, message: str) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    if request.url.path.startswith("/api/") or request.url.path == "/openapi.json":
        return JSONResponse({"detail": message}, status_code=status, headers=headers)
    from html import escape

    return HTMLResponse(UNAUTHORIZED_PAGE.format(message=escape(message.capitalize() + ".")),
                        status_code=status, headers=headers)


def _loopback(host_header: str) -> bool:
    """Whether a Host header names this machine (any port)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1:host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":")[0]
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
