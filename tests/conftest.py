"""Shared fixtures: a private home per test, the CLI as a real subprocess, secret scanning."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WORKERS = Path(__file__).resolve().parent / "workers.py"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh AUTHPOOL_HOME whose secrets go to the encrypted-file vault (never the user's keyring)."""
    h = tmp_path / "home"
    monkeypatch.setenv("AUTHPOOL_HOME", str(h))
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "authpool.storage.vault.VaultKeyring")
    monkeypatch.delenv("AUTHPOOL_VAULT_KEY", raising=False)
    monkeypatch.delenv("AUTHPOOL_LOG", raising=False)
    yield h


def run_cli(*args: str, input: str | None = None, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `authpool ARGS` as a real subprocess with the current environment."""
    return subprocess.run(
        [sys.executable, "-m", "authpool.server.cli", *args],
        input=input if input is not None else "",
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def run_worker(*args: str, input: str = "", timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run tests/workers.py ARGS in a real subprocess."""
    return subprocess.run(
        [sys.executable, str(WORKERS), *args], input=input, capture_output=True, text=True, timeout=timeout,
        env=dict(os.environ), cwd=REPO,
    )


def start_worker(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKERS), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ), cwd=REPO,
    )


def assert_no_secrets(texts: list[str] | str, secrets: list[str]) -> None:
    """Fail if any secret value occurs in any of ``texts``."""
    if isinstance(texts, str):
        texts = [texts]
    for secret in secrets:
        for text in texts:
            assert secret not in text, "a secret value leaked into output"


def raw_pool(home: Path) -> dict[str, Any]:
    """The pool as pool.db holds it, read with plain sqlite3 (not through our models), as another
    program would see it: ``{"schema_version", "secret_backend", "accounts": [...], "sessions": {...}}``."""
    import sqlite3

    conn = sqlite3.connect(f"file:{home / 'pool.db'}?mode=ro", uri=True)
    try:
        fields = dict(conn.execute("SELECT key, value FROM meta"))
        doc: dict[str, Any] = {**json.loads(fields.get("pool", "{}")), "schema_version": 2}
        doc["accounts"] = [json.loads(d) for (d,) in conn.execute("SELECT doc FROM accounts ORDER BY position")]
        doc["sessions"] = {k: json.loads(d) for k, d in conn.execute("SELECT key, doc FROM sessions")}
    finally:
        conn.close()
    return doc


def home_texts(home: Path) -> list[str]:
    """Every readable file under the home, except the encrypted vault and its key."""
    out = []
    for p in home.rglob("*"):
        if p.is_file() and p.name not in {"vault.json", "vault.key"}:
            out.append(p.read_text(errors="replace"))
    return out


# -- a pool whose provider is a real loopback server (rotation, refresh and cooldown tests) ----

import json  # noqa: E402 - appended section: its imports stay with it
import time  # noqa: E402
from typing import Any  # noqa: E402

from authpool import Account, Pool, TokenSet  # noqa: E402
from authpool.server.loopback import LoopbackProvider  # noqa: E402


@pytest.fixture
def loopback() -> Iterator[LoopbackProvider]:
    """A LoopbackProvider serving on 127.0.0.1 (a free port), stopped after the test."""
    lp = LoopbackProvider().start()
    try:
        yield lp
    finally:
        lp.stop()


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for everything a test writes
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML here")


def write_config(home: Path, providers: dict[str, dict[str, Any]]) -> Path:
    """Write ``config.toml`` (mode 0600) defining ``providers``; nested dicts become sub-tables."""
    lines: list[str] = []

    def table(name: str, fields: dict[str, Any]) -> None:
        lines.append(f"[{name}]")
        subs = {k: v for k, v in fields.items() if isinstance(v, dict)}
        lines.extend(f"{k} = {_toml(v)}" for k, v in fields.items() if not isinstance(v, dict))
        lines.append("")
        for k, v in subs.items():
            table(f"{name}.{k}", v)

    for pid, fields in providers.items():
        table(f"providers.{pid}", fields)
    path = home / "config.toml"
    old_ns = path.stat().st_mtime_ns if path.exists() else 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    # A pool re-reads config.toml when its (mtime, size) changes; make the change always visible.
    stamp = max(time.time_ns(), old_ns + 1_000_000_000)
    os.utime(path, ns=(stamp, stamp))
    return path


class LoopbackPool:
    """The test home's pool, with provider ``acme`` served by a LoopbackProvider.

    Accounts are named after loopback subjects: account ``acme/a`` is subject ``a``. Tokens
    reach the pool in-process (``Pool.add_oauth``); child processes only ever read them from
    the pool's own secret store.
    """

    def __init__(self, home: Path, lp: LoopbackProvider) -> None:
        self.home = home
        self.lp = lp
        self.pool = Pool.open(home)
        self.providers: dict[str, dict[str, Any]] = {}
        self.handed_out: list[str] = []  # every secret given to the pool (also when not minted by lp)
        self.configure("acme")

    def configure(self, provider: str = "acme", *, lp: LoopbackProvider | None = None, **fields: Any) -> None:
        """(Re)define ``provider`` on a loopback (default: ours) plus ``fields``; rewrites config.toml."""
        server = lp or self.lp
        entry = self.providers.get(provider, {})
        if lp is not None or not entry:
            entry = {"base_url": server.base_url, "auth": "bearer",
                     "oauth": {"token_url": server.token_url, "client_id": "authpool-test"}}
        entry = {**entry, **fields}
        self.providers[provider] = entry
        write_config(self.home, self.providers)

    def add_oauth(self, *subjects: str, expires_in: float | None = None, provider: str = "acme",
                  lp: LoopbackProvider | None = None, issued_for: float | None = None) -> list[Account]:
        """One OAuth account per subject, from a fresh loopback login.

        ``expires_in`` overrides the stored expiry; ``issued_for`` says the token was issued for
        that many seconds (an hour-long token with ``expires_in`` left), else it counts as issued
        for ``expires_in``.
        """
        server = lp or self.lp
        out = []
        for subject in subjects:
            doc = server.add_oauth_account(subject)
            if expires_in is not None:
                doc["expires_in"] = expires_in
            self.handed_out += [doc["access_token"], doc["refresh_token"]]
            acc = self.pool.add_oauth(provider, subject, TokenSet.parse(doc))
            if issued_for is not None:

                def issued(pool: Any, account_id: str = acc.id) -> Account:
                    found: Account = pool.find(account_id)
                    found.access_lifetime = issued_for
                    return found

                acc = self.pool.store.update(issued)
            out.append(acc)
        return out

    def add_oauth_accounts(self, n: int, **kw: Any) -> list[Account]:
        """``n`` OAuth accounts: subjects a, b, c, ..."""
        return self.add_oauth(*"abcdefghijklmnopqrstuvwxyz"[:n], **kw)

    def add_api_key(self, label: str, key: str | None = None, *, provider: str = "acme") -> Account:
        """An API-key account; by default with a key the loopback knows (subject = label)."""
        key = key if key is not None else self.lp.add_api_key(label)
        self.handed_out.append(key)
        return self.pool.add_api_key(provider, label, key)

    def secrets(self, *more: LoopbackProvider) -> list[str]:
        """Every secret this test's providers minted or the test handed to the pool."""
        out = set(self.handed_out)
        for server in (self.lp, *more):
            out.update(server.issued_secrets())
        return sorted(out)

    def pool_json(self) -> dict[str, Any]:
        """pool.json as another process would read it (raw JSON, not through our models)."""
        return raw_pool(self.home)

    def account_json(self, label: str, provider: str = "acme") -> dict[str, Any]:
        for a in self.pool_json()["accounts"]:
            if a["provider"] == provider and a["label"] == label:
                return dict(a)
        raise KeyError(f"{provider}/{label}")


@pytest.fixture
def acme(home: Path, loopback: LoopbackProvider) -> Iterator[LoopbackPool]:
    """A pool in the test home with provider ``acme`` on a running loopback (no accounts yet)."""
    lp_pool = LoopbackPool(home, loopback)
    try:
        yield lp_pool
    finally:
        lp_pool.pool.close()


# -- a real PostgreSQL for the team store ---------------------------------------------------------

from tests.postgres import PostgresServer, PostgresUnavailable, postgres_server  # noqa: E402


def _no_postgres(why: str) -> None:
    if os.environ.get("AUTHPOOL_REQUIRE_POSTGRES"):
        pytest.fail(f"AUTHPOOL_REQUIRE_POSTGRES is set but PostgreSQL cannot run here: {why}")
    pytest.skip(f"no PostgreSQL here: {why}")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of our own on 127.0.0.1 for the whole run (initdb, pg_ctl)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _no_postgres("psycopg is not installed (pip install -e '.[test]')")
    try:
        cm = postgres_server()
        server = cm.__enter__()
    except (PostgresUnavailable, OSError, subprocess.SubprocessError) as e:
        _no_postgres(str(e))
    try:
        yield server
    finally:
        cm.__exit__(None, None, None)


@pytest.fixture
def team_url(postgres: PostgresServer) -> str:
    """A fresh, empty database on the test server; its URL (carrying a password the server ignores)."""
    return postgres.database()


TEAM_KEY = "Zm9yLXRlc3RzLW9ubHktbm90LWEtcmVhbC10ZWFtLWs="  # base64 of 32 bytes; scanned for like any secret


# -- following a child process's output -----------------------------------------------------------

import threading  # noqa: E402 - appended section: its imports stay with it
from typing import IO  # noqa: E402


class Follow:
    """The lines a child process writes to one pipe, read as they come, and ``seen`` set at the first
    that contains ``phrase``: a test waits for what the process says, not for a length of time."""

    def __init__(self, stream: IO[str] | None, phrase: str) -> None:
        assert stream is not None
        self.lines: list[str] = []
        self.seen = threading.Event()
        self._phrase = phrase
        self._reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line)
            if self._phrase in line:
                self.seen.set()

    def text(self) -> str:
        return "".join(self.lines)

    def finish(self, timeout: float = 60) -> str:
        """Everything written, once the pipe has closed (the process ended)."""
        self._reader.join(timeout)
        return self.text()
