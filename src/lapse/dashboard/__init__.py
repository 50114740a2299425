"""``lapse dashboard``: a local web app over a store (pages, charts and a JSON API).

::

    lapse dashboard --dir .lapse                  # http://127.0.0.1:8765/
    lapse dashboard --host 0.0.0.0 --token T     # other machines: token required

It binds 127.0.0.1 unless told otherwise, and refuses any other address
without a token. Needs FastAPI, uvicorn and plotly: ``pip install 'lapse[dashboard]'``.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import TYPE_CHECKING

from lapse._errors import ConfigError

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["check_bind", "create_app", "serve"]


def check_bind(host: str, token: str | None) -> None:
    """Refuse (ConfigError) to bind an address other machines can reach without a token."""
    if token is not None and not token.strip():
        raise ConfigError("token: an empty token protects nothing; pass a long random one, "
                          "such as the output of: python -c 'import secrets; "
                          "print(secrets.token_urlsafe())'")
    if token is None and not is_loopback(host):
        raise ConfigError(
            f"host: {host!r} is not a loopback address, so the dashboard would be open to "
            "other machines; pass --token TOKEN (or set LAPSE_DASHBOARD_TOKEN) to require a "
            "token on every request, or bind 127.0.0.1. A good token: python -c 'import "
            "secrets; print(secrets.token_urlsafe())'"
        )


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or name to bind) is reachable from this machine only."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def create_app(store: str | os.PathLike[str], token: str | None = None) -> FastAPI:
    """The dashboard of ``store`` as an ASGI app (for uvicorn, or any ASGI server)."""
    try:
        from lapse.dashboard.app import create_app as _create_app
    except ImportError as error:
        raise ConfigError(
            f"the dashboard needs FastAPI and uvicorn ({error.name} is not installed): "
            "pip install 'lapse[dashboard]'"
        ) from None
    return _create_app(Path(store).expanduser(), token)


def serve(
    store: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
) -> None:
    """Serve the dashboard of ``store`` until interrupted (Ctrl-C)."""
    import logging

    check_bind(host, token)
    app = create_app(store, token)
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="info", access_log=False)
    where = f"[{host}]" if ":" in host else host
    logging.getLogger("uvicorn.error").info(
        "lapse dashboard of %s on http://%s:%d/%s", Path(store).expanduser(), where, port,
        " (open /?token=TOKEN once in a browser, or send Authorization: Bearer TOKEN)"
        if token else "")
    uvicorn.Server(config).run()
