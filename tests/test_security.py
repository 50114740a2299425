"""Security at debug level: what lapse must never write to the store.

Every check reads the store twice: the raw bytes of every file under it, and
every decoded value of every Parquet file (compression could hide a string
from a byte search), so "absent" means absent in both.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib
import json
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import lapse
from lapse import _capture

SECRETS = {
    "password": "pw-Zq81-hunter2",
    "api_key": "ak-Zq82-0123456789abcdef",
    "apiKey": "ak-Zq83-fedcba9876543210",
    "DB_TOKEN": "tok-Zq84-db",
    "secret": "sec-Zq85-shh",
    "credentials": "cred-Zq86-user:pass",
    "Authorization": "Bearer Zq87-eyJhbGciOi",
}


def recorded() -> list[dict[str, Any]]:
    """The events of the test's store, oldest first."""
    lapse.flush()
    return lapse.load().to_pylist()


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list | tuple):
        return [s for item in value for s in _strings(item)]
    return [] if value is None else [str(value)]


def store_contents(store: Path) -> tuple[bytes, str]:
    """Raw bytes of every file in the store, and the text of every decoded Parquet value."""
    import pyarrow.parquet as pq

    lapse.flush()
    raw: list[bytes] = []
    decoded: list[str] = []
    files = sorted(path for path in store.rglob("*") if path.is_file())
    assert files, "nothing was written to the store"
    for path in files:
        raw.append(path.name.encode())
        raw.append(path.read_bytes())
        if path.suffix == ".parquet":
            decoded.extend(_strings(pq.read_table(path).to_pylist()))
            decoded.extend(_strings(pq.read_metadata(path).metadata))
    return b"\n".join(raw), "\n".join(decoded)


def assert_nowhere(store: Path, *texts: str) -> str:
    """None of ``texts`` is in any file of the store; returns the decoded text for more checks."""
    raw, decoded = store_contents(store)
    for text in texts:
        assert text.encode() not in raw, f"{text!r} found in the store's bytes"
        assert text not in decoded, f"{text!r} found in the store's values"
    return decoded


# -- secrets ----------------------------------------------------------------------


def test_secret_looking_attributes_are_redacted_everywhere(store):
    """Secret-named attrs, captured args, span attrs and constant attrs are stored as [redacted]."""
    lapse.configure(level="debug")

    @lapse.timed("login", capture=[*SECRETS, "username"])
    def login(username, **fields):
        lapse.set(**{key: value + "-set" for key, value in fields.items()})
        return username

    @lapse.timed("constant", **{key: value + "-constant" for key, value in SECRETS.items()})
    def constant():
        with lapse.span("block", **{k: v + "-span" for k, v in SECRETS.items()}) as active:
            active.set(**{key: value + "-active" for key, value in SECRETS.items()})

    assert login("visible-user-Zq80", **SECRETS) == "visible-user-Zq80"
    constant()
    rows = recorded()
    assert {row["name"] for row in rows} == {"login", "constant", "block"}
    for row in rows:
        attrs = json.loads(row["attrs"])
        for key in SECRETS:
            assert attrs[key] == "[redacted]", (row["name"], key)
    decoded = assert_nowhere(store, *SECRETS.values())
    assert "visible-user-Zq80" in decoded  # the search does see stored values


def test_secrets_in_spans_at_standard_level_are_redacted_too(store):
    """Redaction does not depend on the level: standard events are cleaned the same way."""
    with lapse.span("connect", password=SECRETS["password"]) as active:
        active.set(DB_TOKEN=SECRETS["DB_TOKEN"], host="db.internal")
    row = recorded()[0]
    assert json.loads(row["attrs"]) == {
        "password": "[redacted]", "DB_TOKEN": "[redacted]", "host": "db.internal"}
    assert_nowhere(store, SECRETS["password"], SECRETS["DB_TOKEN"])


@pytest.mark.parametrize(
    "key",
    ["password", "PASSWORD", "db_password", "dbPassword", "DB_PASSWORD", "api_key", "apiKey",
     "APIKey", "x-api-key", "apikey", "DB_TOKEN", "access_token", "accessToken", "authToken",
     "secret", "client_secret", "AWS_SECRET_ACCESS_KEY", "credentials", "Authorization",
     "private_key", "session_cookie", "passwd", "dbpassword", "mysecret", "accesstoken",
     "githubtoken", "clientcredentials"],
)
def test_keys_that_look_like_secrets_are_recognised(key):
    """Common spellings of secret names (snake, camel, upper, run together) are redacted."""
    assert _capture.is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    ["batch_size", "rows", "monkey", "keyboard_layout", "model_version", "tokenizer",
     "max_tokens", "num_tokens", "learning_rate", "host", "path"],
)
def test_ordinary_keys_are_kept(key):
    """Everyday data-science attribute names are not mistaken for secrets."""
    assert not _capture.is_secret_key(key)


@given(
    before=st.lists(st.sampled_from(["db", "my", "client", "aws", "x"]), max_size=2),
    word=st.sampled_from(["password", "secret", "token", "credentials", "key", "auth", "apikey"]),
    after=st.lists(st.sampled_from(["value", "id", "v2", "hash"]), max_size=2),
    style=st.sampled_from(["snake", "screaming", "camel", "kebab"]),
)
def test_secret_word_in_a_compound_key_is_redacted(before, word, after, style):
    """A secret word anywhere in a snake, SCREAMING, camel or kebab key marks it as a secret."""
    words = [*before, word, *after]
    key = {
        "snake": "_".join(words),
        "screaming": "_".join(words).upper(),
        "kebab": "-".join(words),
        "camel": words[0] + "".join(w.capitalize() for w in words[1:]),
    }[style]
    assert _capture.is_secret_key(key), key


def test_only_named_arguments_are_captured(store):
    """capture=["batch_size"] stores batch_size and no other argument's value."""
    lapse.configure(level="debug")

    @lapse.timed("score", capture=["batch_size"])
    def score(batch, batch_size, note="default-note-Zq90"):
        return len(batch)

    @lapse.timed("uncaptured")
    def uncaptured(text):
        return text

    assert score(["row-Zq91-distinct"], 32, note="note-Zq92-distinct") == 1
    assert score(batch=["row-Zq91-distinct"], batch_size=64) == 1
    uncaptured("arg-Zq93-distinct")
    rows = {(row["name"], row["attrs"]) for row in recorded()}
    assert rows == {
        ("score", '{"batch_size": 32}'),
        ("score", '{"batch_size": 64}'),
        ("uncaptured", None),
    }
    assert_nowhere(store, "row-Zq91", "note-Zq92", "default-note-Zq90", "arg-Zq93")


def test_environment_is_an_allow_list(store, monkeypatch):
    """Environment variables (which hold secrets) are never stored, even at debug."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecret-Zq94")
    monkeypatch.setenv("MY_APP_SETTING", "envsetting-Zq95")
    lapse.configure(level="debug")

    @lapse.timed("job")
    def job():
        return None

    job()
    lapse.shutdown()
    assert_nowhere(store, "envsecret-Zq94", "envsetting-Zq95", "AWS_SECRET_ACCESS_KEY")


# -- users ------------------------------------------------------------------------


def expected_pseudonym(user_id: str, key: str) -> str:
    """HMAC-SHA256 of the id under the key, as lapse documents it (u_ + 128 bits in hex)."""
    return "u_" + hmac.new(key.encode(), user_id.encode(), hashlib.sha256).hexdigest()[:32]


def test_users_are_pseudonymised_with_the_key(store, monkeypatch):
    """With LAPSE_USER_KEY, lapse.user(id) stores the keyed hash; neither id nor key is stored."""
    key = "user-key-Zq96-0123456789"
    monkeypatch.setenv("LAPSE_USER_KEY", key)
    lapse.configure(level="debug")

    @lapse.timed("serve", capture=["n"])
    def serve(n):
        return n

    @lapse.timed("serve_async", capture=["n"])
    async def serve_async(n):
        with lapse.user("bob@example.com"):
            return serve(n)

    with lapse.user("alice@example.com"):
        serve(1)
        serve(2)
    asyncio.run(serve_async(3))
    rows = {json.loads(row["attrs"])["n"]: row for row in recorded()
            if row["name"] == "serve"}
    alice = expected_pseudonym("alice@example.com", key)
    assert rows[1]["user"] == rows[2]["user"] == alice
    assert rows[3]["user"] == expected_pseudonym("bob@example.com", key)
    assert_nowhere(store, "alice@example.com", "bob@example.com", "alice", key)


def test_no_key_means_no_user_at_all(store):
    """Without LAPSE_USER_KEY neither events nor the run record name a user."""
    lapse.configure(level="debug")

    @lapse.timed("serve")
    def serve():
        return None

    with lapse.user("alice@example.com"):
        serve()
    serve()
    assert [row["user"] for row in recorded()] == [None, None]
    assert lapse.sql("select user from runs").column("user").to_pylist() == [None]
    assert_nowhere(store, "alice@example.com")


def test_users_are_recorded_at_debug_level_only(store, monkeypatch):
    """At standard level no user is stored, even with a key."""
    monkeypatch.setenv("LAPSE_USER_KEY", "user-key-Zq97")

    @lapse.timed("serve")
    def serve():
        return None

    with lapse.user("alice@example.com"):
        serve()
    assert [row["user"] for row in recorded()] == [None]
    assert_nowhere(store, "alice@example.com", "user-key-Zq97")


def test_the_run_records_the_os_account_only_as_a_pseudonym(store, monkeypatch):
    """The run record's user is the keyed hash of the OS account, never the account name."""
    import getpass

    key = "user-key-Zq98"
    monkeypatch.setenv("LAPSE_USER_KEY", key)
    monkeypatch.setattr(getpass, "getuser", lambda: "os-account-Zq99")
    lapse.configure(level="debug")

    @lapse.timed("serve")
    def serve():
        return None

    serve()
    assert lapse.sql("select user from runs").column("user").to_pylist() == [
        expected_pseudonym("os-account-Zq99", key)]
    assert recorded()[0]["user"] == expected_pseudonym("os-account-Zq99", key)
    assert_nowhere(store, "os-account-Zq99", key)


# -- home directories ---------------------------------------------------------------


PROBE = '''
import lapse


@lapse.timed("home_leaf", level="debug")
def leaf(path):
    lapse.set(path=path)
    return path


@lapse.timed("home_entry", level="debug")
def entry(path):
    with lapse.span("home_block", source=path):
        return leaf(path)
'''


def test_home_directory_never_reaches_the_store(store, tmp_path, monkeypatch):
    """Stacks and attrs from code under the home directory show ``~`` instead of the path."""
    home = tmp_path / "home-of-Zq-user"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(_capture, "_HOMES", None)
    assert Path("~").expanduser() == home
    (home / "lapse_home_probe.py").write_text(PROBE)
    monkeypatch.syspath_prepend(str(home))
    monkeypatch.delitem(sys.modules, "lapse_home_probe", raising=False)
    try:
        probe = importlib.import_module("lapse_home_probe")
        data = str(home / "data" / "train.csv")
        assert probe.entry(data) == data
        rows = {row["name"]: row for row in recorded()}
        decoded = assert_nowhere(store, str(home))
    finally:
        sys.modules.pop("lapse_home_probe", None)
    assert set(rows) == {"home_leaf", "home_entry", "home_block"}
    leaf_stack = rows["home_leaf"]["stack"]
    assert leaf_stack[-1].startswith("~/lapse_home_probe.py:")
    assert leaf_stack[-1].endswith(" in entry")
    assert json.loads(rows["home_leaf"]["attrs"]) == {"path": "~/data/train.csv"}
    assert json.loads(rows["home_block"]["attrs"]) == {"source": "~/data/train.csv"}
    assert "~/lapse_home_probe.py" in decoded


def test_home_masking_respects_path_boundaries(monkeypatch):
    """Only the home directory itself is masked, not another path that starts the same way."""
    monkeypatch.setenv("HOME", "/home/al")
    monkeypatch.setattr(_capture, "_HOMES", None)
    assert _capture.mask_home("/home/al/project/x.py") == "~/project/x.py"
    assert _capture.mask_home("/home/al") == "~"
    assert _capture.mask_home("/home/alice/x.py") == "/home/alice/x.py"


# -- file permissions -----------------------------------------------------------------


def test_store_is_owner_only(store):
    """The store's directories are 0700 and its files 0600."""
    lapse.configure(level="debug")

    @lapse.timed("job")
    def job():
        return None

    job()
    lapse.flush()
    lapse.shutdown()
    paths = [store, *store.rglob("*")]
    assert any(path.is_file() for path in paths)
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
