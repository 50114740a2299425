"""What a stress run does: the target, the load steps and the limits, checked before anything runs.

A ``Plan`` is built once from the command line (or Python), validated with
clear messages (a non-loopback host without ``--allow-remote``, a bad
``module:function``), and sent as is to every generator process.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from lapse._errors import ConfigError, TargetError

HTTP, CALLABLE = "http", "callable"
OPEN, CLOSED = "open", "closed"

DEFAULT_DURATION_NS = 10_000_000_000
DEFAULT_STEP_NS = 5_000_000_000
DEFAULT_REQUESTS = 1_000_000
DEFAULT_CONNECTIONS = 64
DEFAULT_TIMEOUT_NS = 10_000_000_000
MAX_WORKERS = 64


@dataclass(frozen=True)
class Target:
    """What receives the load: an HTTP endpoint or a Python callable."""

    kind: str
    spec: str
    """The URL, or ``module:function``."""
    name: str
    """The stored event name: ``GET /predict`` or ``module:function``."""
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    payload: str | None = None
    """``module:factory`` whose result gives the inputs (bodies, or call arguments)."""
    cwd: str = field(default_factory=os.getcwd)
    """Where ``module`` is looked for first (the directory lapse stress ran in)."""

    @property
    def host(self) -> str:
        """The URL's host name (HTTP targets)."""
        return urlsplit(self.spec).hostname or ""

    @property
    def port(self) -> int:
        """The URL's port, or the scheme's default."""
        parts = urlsplit(self.spec)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def tls(self) -> bool:
        """Whether the URL is https."""
        return urlsplit(self.spec).scheme == "https"


@dataclass(frozen=True)
class Step:
    """One load level: a rate (open loop) or a number of users (closed loop), for a time."""

    index: int
    duration_ns: int
    rate: float | None = None
    users: int | None = None
    warmup_ns: int = 0

    @property
    def mode(self) -> str:
        """``open`` (a rate) or ``closed`` (users)."""
        return OPEN if self.rate is not None else CLOSED


@dataclass(frozen=True)
class Plan:
    """Everything a stress run needs; picklable, sent to each generator process."""

    target: Target
    steps: tuple[Step, ...]
    arrivals: str = "constant"
    requests: int = DEFAULT_REQUESTS
    """Most requests per step (a safety bound as much as a stopping rule)."""
    workers: int = 1
    connections: int = DEFAULT_CONNECTIONS
    """HTTP open loop: most connections open at once, over all workers."""
    threads: int = 1
    """Callables, open loop: calls each worker process runs at once."""
    think_ns: int = 0
    timeout_ns: int = DEFAULT_TIMEOUT_NS
    seed: int | None = None

    @property
    def mode(self) -> str:
        """``open`` or ``closed``."""
        return self.steps[0].mode

    def share(self, value: int, worker: int) -> int:
        """Worker ``worker``'s part of ``value`` split over all workers (differing by 1 at most)."""
        return value // self.workers + (1 if worker < value % self.workers else 0)


def http_target(
    url: str,
    *,
    method: str = "GET",
    headers: tuple[tuple[str, str], ...] = (),
    body: bytes | None = None,
    payload: str | None = None,
    allow_remote: tuple[str, ...] = (),
    name: str | None = None,
) -> Target:
    """An HTTP target, checked: a URL with a host, and loopback unless allowed by name."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"target: {url!r} is not an http:// or https:// URL with a host, "
                          "such as http://127.0.0.1:8000/predict.")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ConfigError(f"target: {url!r} has a bad port; expected 1 to 65535.") from None
    check_host(parts.hostname, allow_remote)
    method = method.upper()
    if not method.isalpha():
        raise ConfigError(f"method: {method!r} is not an HTTP method such as GET or POST.")
    path = parts.path or "/"
    return Target(HTTP, url, name or f"{method} {path}", method, headers, body, payload)


def callable_target(spec: str, *, payload: str | None = None, name: str | None = None) -> Target:
    """A Python callable target ``package.module:function`` (imported by each worker)."""
    check_object_spec(spec, "target")
    if payload is not None:
        check_object_spec(payload, "payload")
    return Target(CALLABLE, spec, name or spec, payload=payload)


def check_object_spec(spec: str, setting: str) -> None:
    """``module:attribute`` syntax (the import itself happens in the workers)."""
    module, _, attribute = spec.partition(":")
    if not module or not attribute or not all(
        part.isidentifier() for part in [*module.split("."), *attribute.split(".")]
    ):
        raise ConfigError(
            f"{setting}: {spec!r} is not MODULE:FUNCTION; expected an importable module and a "
            "name in it, such as mypackage.serving:predict (or an http:// URL for the target)."
        )


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is on this machine (127.0.0.0/8, ::1)."""
    text = host.strip("[]")
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(text, None)
    except OSError:
        raise TargetError(f"cannot resolve host {host!r}; check the URL.") from None
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(
        ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addresses
    )


def check_host(host: str, allow_remote: tuple[str, ...]) -> None:
    """Refuse a host off this machine unless ``--allow-remote`` names it."""
    if host.lower() in (h.lower() for h in allow_remote):
        return
    if not is_loopback(host):
        raise TargetError(
            f"refusing to send load to {host!r}: lapse stress only targets this machine "
            f"(127.0.0.1, ::1, localhost) unless you name the host with --allow-remote {host} "
            "(only load-test systems you own or may test)."
        )


def probe(target: Target, timeout_s: float = 3.0) -> None:
    """Fail fast, with the reason, when the endpoint does not accept connections."""
    if target.kind != HTTP:
        return
    try:
        with socket.create_connection((target.host.strip("[]"), target.port), timeout=timeout_s):
            pass
    except ConnectionRefusedError:
        raise TargetError(
            f"cannot reach {target.spec}: connection refused (is a server listening on "
            f"{target.host} port {target.port}?)."
        ) from None
    except TimeoutError:
        raise TargetError(f"cannot reach {target.spec}: no answer within {timeout_s:g} s."
                          ) from None
    except OSError as error:
        raise TargetError(f"cannot reach {target.spec}: {error.strerror or error}.") from None
