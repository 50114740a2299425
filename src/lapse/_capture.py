"""What an event may say about its context, gathered securely.

Everything here runs in the background writer (or once per run), never on the
caller's hot path: the hot path keeps raw references (code objects, frames'
code and line numbers, the raw user id) and this module turns them into the
stored strings, with secrets redacted, home directories masked and users
pseudonymised with a keyed hash whose key is never written anywhere.
"""

from __future__ import annotations

import functools
import getpass
import hashlib
import hmac
import os
import platform
import re
import socket
import sys
from pathlib import Path
from types import CodeType
from typing import Any

REDACTED = "[redacted]"

# Words that mark an attribute key as a secret, matched against the key's words
# (split on punctuation and camelCase), so "api_key", "apiKey" and "DB_PASSWORD"
# are redacted while "monkey" or "keyboard_layout" are not.
_SECRET_WORDS = frozenset(
    {
        "password", "passwd", "pwd", "pass", "passphrase", "secret", "token", "key", "apikey",
        "credential", "credentials", "auth", "authorization", "cookie", "session", "private",
        "signature", "bearer", "jwt", "otp", "pin", "ssn",
    }
)
# Run-together spellings ("dbpassword", "clientSecrets", "accesstoken") are
# caught by these parts anywhere in the key, and by a final "token"; shorter
# words ("key", "pin", "auth") only count as whole words.
_SECRET_PARTS = ("password", "passwd", "passphrase", "secret", "credential", "apikey")
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


@functools.lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    """Whether an attribute named ``key`` must have its value redacted (cached: the writer
    asks for the same few keys on every event)."""
    words = [word.lower() for word in _WORD.findall(key)]
    if any(word in _SECRET_WORDS for word in words):
        return True
    joined = "".join(words)
    return any(part in joined for part in _SECRET_PARTS) or joined.endswith("token")


def _home_dirs() -> tuple[str, ...]:
    homes = {str(Path.home())}
    for variable in ("HOME", "USERPROFILE"):
        value = os.environ.get(variable)
        if value:
            homes.add(value)
    return tuple(sorted((h.rstrip("/\\") for h in homes if len(h) > 1), key=len, reverse=True))


_HOMES: tuple[str, ...] | None = None


def mask_home(text: str) -> str:
    """Replace the user's home directory in a path or message with ``~``."""
    global _HOMES
    if _HOMES is None:
        _HOMES = _home_dirs()
    for home in _HOMES:
        if home in text:
            # Only the directory itself: /home/al must not turn /home/alice into ~ice.
            text = re.sub(re.escape(home) + r"(?![\w.-])", "~", text)
    return text


def code_name(code: CodeType) -> str:
    """``module:qualname`` of a code object, the stored form of a caller."""
    qualname = getattr(code, "co_qualname", code.co_name)
    return f"{module_name(code.co_filename)}:{qualname}"


_MODULE_NAMES: dict[str, str] = {}


def module_name(filename: str) -> str:
    """The dotted name of the module loaded from ``filename`` (``pkg.jobs``).

    Found through ``sys.modules`` (each module's ``__file__`` is the
    ``co_filename`` of its code); a script run as ``__main__`` and code from no
    module (``<string>``) are named by their file's stem. Cached per file, so
    ``sys.modules`` is scanned at most once per new file.
    """
    try:
        return _MODULE_NAMES[filename]
    except KeyError:
        pass
    for loaded, module in sys.modules.copy().items():
        try:
            namespace = vars(module)
            file = namespace.get("__file__")
            if not isinstance(file, str) or file in _MODULE_NAMES:
                continue
            if loaded == "__main__":
                spec = namespace.get("__spec__")
                loaded = getattr(spec, "name", None) or Path(file).stem  # noqa: PLW2901
            _MODULE_NAMES[file] = loaded
        except Exception:  # noqa: BLE001,S112 - sys.modules may hold any object
            continue
    return _MODULE_NAMES.setdefault(filename, Path(filename).stem)


def format_frame(code: CodeType, lineno: int) -> str:
    """One stack line, ``path:line in qualname``, with the home directory masked."""
    qualname = getattr(code, "co_qualname", code.co_name)
    return f"{mask_home(code.co_filename)}:{lineno} in {qualname}"


def summarize_value(value: Any) -> Any:
    """A captured argument as a small JSON-friendly value, without holding the object.

    Numbers, booleans, short strings and None are kept; arrays and frames become
    their type and shape (``ndarray[1000x20]``); sized objects their type and length.
    """
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return value if len(value) <= 200 else value[:200] + "…"
    kind = type(value).__name__
    shape = getattr(value, "shape", None)
    if isinstance(shape, tuple):
        return f"{kind}[{'x'.join(str(n) for n in shape)}]"
    try:
        return f"{kind}[{len(value)}]"
    except Exception:  # noqa: BLE001 - any object may be captured; its len() may fail
        return kind


def clean_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """Attributes as stored: secrets redacted, values JSON-friendly, paths home-masked."""
    cleaned: dict[str, Any] = {}
    for key, value in attrs.items():
        name = str(key)
        if is_secret_key(name):
            cleaned[name] = REDACTED
            continue
        small = summarize_value(value)
        cleaned[name] = mask_home(small) if isinstance(small, str) else small
    return cleaned


def pseudonymise(user_id: object, key: str | None) -> str | None:
    """A keyed hash (HMAC-SHA256) of a user id, or None without a key.

    The same id and key always give the same pseudonym, so one user's events
    can be found and erased, while the id cannot be recovered without the key.
    """
    if key is None or user_id is None:
        return None
    digest = hmac.new(key.encode(), str(user_id).encode(), hashlib.sha256).hexdigest()
    return "u_" + digest[:32]


def os_account() -> str | None:
    """The operating-system account running the process, if it can be told."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no account name in some containers
        return None


def git_commit(start: Path | None = None) -> str | None:
    """The commit checked out in the repository holding ``start`` (default: cwd).

    Read from ``.git`` files rather than by running git, so it is cheap and
    works where git is not installed; CI variables are used when set.
    """
    for variable in ("LAPSE_GIT_COMMIT", "GITHUB_SHA", "CI_COMMIT_SHA", "BUILD_SOURCEVERSION"):
        if os.environ.get(variable):
            return os.environ[variable]
    try:
        here = (start or Path.cwd()).resolve()
        for folder in (here, *here.parents):
            dot_git = folder / ".git"
            if dot_git.is_file():  # a worktree or submodule: "gitdir: PATH"
                dot_git = (folder / dot_git.read_text().split(":", 1)[1].strip()).resolve()
            if dot_git.is_dir():
                return _read_head(dot_git)
    except OSError:
        return None
    return None


def _read_head(git_dir: Path) -> str | None:
    head = (git_dir / "HEAD").read_text().strip()
    if not head.startswith("ref:"):
        return head or None
    ref = head.split(":", 1)[1].strip()
    common = git_dir
    if (git_dir / "commondir").is_file():
        common = (git_dir / (git_dir / "commondir").read_text().strip()).resolve()
    for folder in (git_dir, common):
        loose = folder / ref
        if loose.is_file():
            return loose.read_text().strip()
        packed = folder / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split(" ", 1)[0]
    return None


def package_versions(names: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of the named distributions; missing ones are left out."""
    from importlib import metadata

    versions: dict[str, str] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def memory_bytes() -> int | None:
    """Total physical memory, where the platform tells it."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def host_name() -> str:
    """The machine's host name (the resource attribute ``host``)."""
    return socket.gethostname()


def python_version() -> str:
    """``CPython 3.11.7`` and the like."""
    return f"{platform.python_implementation()} {platform.python_version()}"


def os_description() -> str:
    """``Linux-6.1.0-x86_64`` and the like: the allow-listed OS fact."""
    return f"{platform.system()}-{platform.release()}-{platform.machine()}"


def cpu_count() -> int | None:
    """Logical CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def executable_name() -> str:
    """The program's name with no directories, so no path leaks a user name."""
    return Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
