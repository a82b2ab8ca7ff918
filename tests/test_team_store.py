"""A pool shared by a team's machines on PostgreSQL: several homes, one database, a real server.

Each "machine" is an ``AUTHPOOL_HOME`` of its own pointed at one database (``AUTHPOOL_STORE``),
with the team key in ``AUTHPOOL_TEAM_KEY``. The database is a real PostgreSQL started by the
fixtures (tests/postgres.py); the provider is the rotating, reuse-revoking loopback provider.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from authpool import Pool, SharingRefused, TeamKeyError, TokenSet
from authpool.accounts.model import Rows
from authpool.server.loopback import LoopbackProvider
from authpool.storage.postgres import PostgresStore
from tests.conftest import REPO, TEAM_KEY, assert_no_secrets, run_cli, write_config
from tests.postgres import PASSWORD, PostgresServer

CHAT = "/v1/chat/completions"


class Team:
    """``n`` machines (homes) on one team store, their provider ``acme`` on a loopback."""

    def __init__(self, tmp_path: Path, url: str, lp: LoopbackProvider, n: int = 3) -> None:
        self.url = url
        self.lp = lp
        self.homes = [tmp_path / f"machine{i}" for i in range(n)]
        self.pools: list[Pool] = []
        self.handed_out: list[str] = []
        for h in self.homes:
            h.mkdir(mode=0o700)
            write_config(h, {"acme": {"base_url": lp.base_url, "auth": "bearer",
                                      "oauth": {"token_url": lp.token_url, "client_id": "authpool-test"}}})

    def env(self, i: int, **more: str) -> dict[str, str]:
        return {"AUTHPOOL_HOME": str(self.homes[i]), "AUTHPOOL_STORE": self.url, "AUTHPOOL_TEAM_KEY": TEAM_KEY,
                "PYTHON_KEYRING_BACKEND": "authpool.storage.vault.VaultKeyring", **more}

    def pool(self, i: int) -> Pool:
        pool = Pool.open(self.homes[i])
        self.pools.append(pool)
        return pool

    def cli(self, i: int, *args: str, input: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, input=input, env=self.env(i, **env))

    def add_oauth(self, pool: Pool, subject: str) -> None:
        doc = self.lp.add_oauth_account(subject)
        self.handed_out += [doc["access_token"], doc["refresh_token"]]
        pool.add_oauth("acme", subject, TokenSet.parse(doc))

    def secrets(self) -> list[str]:
        return sorted({*self.handed_out, *self.lp.issued_secrets(), TEAM_KEY, PASSWORD})

    def close(self) -> None:
        for pool in self.pools:
            pool.close()


@pytest.fixture
def team(tmp_path: Path, team_url: str, loopback: LoopbackProvider, monkeypatch: pytest.MonkeyPatch) -> Iterator[Team]:
    monkeypatch.setenv("AUTHPOOL_STORE", team_url)
    monkeypatch.setenv("AUTHPOOL_TEAM_KEY", TEAM_KEY)
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "authpool.storage.vault.VaultKeyring")
    monkeypatch.delenv("AUTHPOOL_VAULT_KEY", raising=False)
    t = Team(tmp_path, team_url, loopback)
    monkeypatch.setenv("AUTHPOOL_HOME", str(t.homes[0]))
    try:
        yield t
    finally:
        t.close()


def _wait(condition: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


# -- sharing -----------------------------------------------------------------------------------


def test_accounts_added_on_one_machine_are_listed_on_the_others(team: Team) -> None:
    """An API key added by the CLI on machine 0 is listed by the CLI on machines 1 and 2; no secret is shown."""
    key = team.lp.add_api_key("k1")
    team.handed_out.append(key)
    added = team.cli(0, "accounts", "add-key", "acme", "--label", "k1", input=key)
    assert added.returncode == 0, added.stderr
    outs = [added.stdout, added.stderr]
    for i in (1, 2):
        listed = team.cli(i, "accounts", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert [a["name"] for a in json.loads(listed.stdout)["accounts"]] == ["acme/k1"]
        outs += [listed.stdout, listed.stderr]
    served = team.cli(2, "request", "acme", "POST", CHAT, "--json", '{"model": "m"}')
    assert served.returncode == 0, served.stderr
    assert '"subject": "k1"' in served.stdout
    assert_no_secrets(outs + [served.stdout, served.stderr], team.secrets())


def test_a_cooldown_recorded_on_one_machine_keeps_the_others_off_it_without_a_provider_call(team: Team) -> None:
    """Machine 0 gets a 429 on key a; machine 1's next requests go to b and never reach the provider as a."""
    a_pool, b_pool = team.pool(0), team.pool(1)
    for label in "ab":
        key = team.lp.add_api_key(label)
        team.handed_out.append(key)
        a_pool.add_api_key("acme", label, key)
    assert isinstance(b_pool.store, PostgresStore)
    assert b_pool.store.wait_live()
    with b_pool.sync_client("acme") as warm:  # machine 1 is warm: its cached view says a is ready
        assert warm.post(CHAT, json={"model": "m"}).json()["subject"] == "a"
    team.lp.set_rate_limit("a", 0, retry_after=600)
    team.lp.reset_stats()
    with a_pool.sync_client("acme") as client:
        assert client.post(CHAT, json={"model": "m"}).json()["subject"] == "b"
    assert team.lp.snapshot()["api_calls_by_subject"] == {"a": 1, "b": 1}  # the 429, then b

    def heard() -> bool:  # the change feed reached machine 1 (a NOTIFY, or the poll)
        view = b_pool.store.peek()
        return view is None or bool(view.find("acme/a").cooldowns)

    _wait(heard, what="machine 1 to hear of the cooldown")
    with b_pool.sync_client("acme") as client:
        subjects = [client.post(CHAT, json={"model": "m"}).json()["subject"] for _ in range(5)]
    assert subjects == ["b"] * 5
    assert team.lp.snapshot()["api_calls_by_subject"] == {"a": 1, "b": 6}  # machine 1 never asked as a
    assert b_pool.get("acme/a").state(b_pool.store.now()) == "cooling"


# -- the terms guardrail -------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["anthropic", "openai", "chatgpt", "gemini", "github-copilot"])
def test_a_subscription_login_is_refused_in_a_team_store_naming_the_provider_s_terms(
        team: Team, provider: str) -> None:
    """OAuth logins of the consumer subscription providers are refused; an API key of the same provider is added."""
    r = team.cli(0, "accounts", "add-oauth", provider, "--label", "me",
                 input=json.dumps({"access_token": "at-never-stored", "refresh_token": "rt-never-stored",
                                   "expires_in": 3600}))
    assert r.returncode == 1
    assert "shared_logins = true" in r.stderr and "terms" in r.stderr.lower() and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    added = team.cli(0, "accounts", "add-key", provider, "--label", "key", input="sk-test-key-of-" + provider)
    assert added.returncode == 0, added.stderr
    assert_no_secrets([r.stdout, r.stderr, added.stdout, added.stderr], ["rt-never-stored", "at-never-stored"])


def test_an_organisation_may_allow_sharing_and_user_defined_providers_allow_it(team: Team) -> None:
    """``shared_logins = true`` lets an anthropic login in; a provider the user defines allows logins by default."""
    pool = team.pool(0)
    with pytest.raises(SharingRefused, match="Anthropic"):
        pool.add_oauth("anthropic", "me", TokenSet.parse({"access_token": "x", "refresh_token": "y",
                                                           "expires_in": 60}))
    team.add_oauth(pool, "a")  # acme: defined in config.toml
    write_config(team.homes[0], {"anthropic": {"shared_logins": True},
                                 "acme": {"base_url": team.lp.base_url}})
    pool.add_oauth("anthropic", "org", TokenSet.parse({"access_token": "x1", "refresh_token": "y1",
                                                        "expires_in": 60}))
    assert sorted(a.name for a in pool.accounts()) == ["acme/a", "anthropic/org"]


# -- refresh across machines -----------------------------------------------------------------------


def test_a_refresh_on_a_team_store_keeps_other_machines_off_for_as_long_as_its_store_is_retried(team: Team) -> None:
    """The refresh lock is a lease another machine can take while this one, cut off from the database,
    still tries to store the rotation (for up to 5 minutes): the journal's deadline covers that, so
    the other machine waits instead of presenting the spent token."""
    from authpool.auth.refresh import _LAND_FOR

    pool = team.pool(0)
    team.add_oauth(pool, "a")
    account = pool.get("acme/a")
    team.lp.expire_access_tokens("a")
    team.lp.set_token_delay(120)  # held while the record is read
    limit = pool.provider("acme").token_call_limit
    worker = threading.Thread(target=lambda: pool.refresher.renew(pool.provider("acme"), account.id,
                                                                  account.secret_generation, "force", wait=120))
    worker.start()
    try:
        assert team.lp.wait_for_token_calls(1, 60)
        record = pool.store.read().find(account.id).refresh_journal
        assert record is not None and record.deadline is not None
        assert record.deadline - record.started_at >= limit + _LAND_FOR
    finally:
        team.lp.set_token_delay(0)
        worker.join(120)
    assert pool.store.read().find(account.id).refresh_journal is None
    assert team.lp.snapshot()["reuse_detected_count"] == 0


def test_serve_and_clis_on_three_machines_across_a_hundred_rotations_never_reuse_a_refresh_token(
        team: Team) -> None:
    """`authpool serve` and `authpool request` on three homes while tokens keep expiring: 100+ rotations, 0 reuse."""
    from tests.mcp_support import RawServer

    # Tokens live a second and are renewed from 0.6 s before expiry: every process keeps meeting
    # tokens another machine must renew, or has just renewed.
    team.lp.access_ttl = 1.0
    for h in team.homes:
        write_config(h, {"acme": {"base_url": team.lp.base_url, "auth": "bearer", "strategy": "round-robin",
                                  "refresh_advisory": 0.6, "refresh_mandatory": 0.3,
                                  "oauth": {"token_url": team.lp.token_url, "client_id": "authpool-test"}}})
    pool = team.pool(0)
    team.add_oauth(pool, "a")
    team.add_oauth(pool, "b")
    servers = [RawServer(h, AUTHPOOL_STORE=team.url, AUTHPOOL_TEAM_KEY=TEAM_KEY) for h in team.homes]
    stop = threading.Event()
    failures: list[str] = []
    served = [0]
    outputs: list[str] = []

    def drive(server: RawServer, n: int) -> None:
        server.initialize()
        rid = 10
        while not stop.is_set():
            rid += 1
            doc = server.call(rid, "tools/call", {"name": "proxy_request", "arguments": {
                "provider": "acme", "method": "POST", "path": CHAT, "json": {"model": "m"}}})
            text = json.dumps(doc)
            outputs.append(text)
            if doc.get("result", {}).get("isError") or '"status": 200' not in text.replace('\\"', '"'):
                failures.append(f"serve {n}: {text[:300]}")
            else:
                served[0] += 1

    def clis(n: int) -> None:
        while not stop.is_set():
            r = team.cli(n, "request", "acme", "POST", CHAT, "--json", '{"model": "m"}')
            outputs.extend([r.stdout, r.stderr])
            if r.returncode != 0:
                failures.append(f"cli {n}: {r.stderr[-300:]}")
            else:
                served[0] += 1

    threads = [threading.Thread(target=drive, args=(s, n)) for n, s in enumerate(servers)]
    threads += [threading.Thread(target=clis, args=(n,)) for n in range(3)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 400
        while team.lp.snapshot()["refresh_calls"] < 110 and time.monotonic() < deadline and not failures:
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
        for s in servers:
            s.proc.stdin.close()  # type: ignore[union-attr]
            s.wait(60)
    stats = team.lp.snapshot()
    assert failures == []
    assert stats["refresh_calls"] >= 100, stats
    assert stats["reuse_detected_count"] == 0, stats
    assert stats["invalid_grant_count"] == 0, stats
    accounts = {a.label: a for a in team.pool(1).accounts()}
    assert not any(a.needs_reauth for a in accounts.values()), [a.last_error for a in accounts.values()]
    assert sum(a.counters.refreshes for a in accounts.values()) == stats["refresh_calls"]
    assert_no_secrets(outputs + [s.stderr() for s in servers], team.secrets())


def test_a_killed_lease_holder_s_lease_expires_and_another_machine_takes_it(team_url: str) -> None:
    """A process SIGKILLed while holding account-x's lease: another takes it once the lease's time to live passed."""
    code = ("import sys, time\nfrom authpool.storage.postgres import PostgresStore\n"
            f"store = PostgresStore({team_url!r}, lease_ttl=2.0)\n"
            "store.named_lock('account-x', 5.0).acquire()\nprint('held', flush=True)\ntime.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    store = PostgresStore(team_url, lease_ttl=2.0)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        from authpool.errors import LockTimeout

        with pytest.raises(LockTimeout, match="pid"):
            store.named_lock("account-x", 0.0).acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
        lock = store.named_lock("account-x", 60.0)  # waits for the expiry, whatever the machine's speed
        lock.acquire()
        lock.release()
    finally:
        if holder.poll() is None:
            holder.kill()
        store.close()


def test_a_lease_held_longer_than_its_time_to_live_is_kept_while_its_holder_lives(team_url: str) -> None:
    """The holder's keeper extends the lease: held past three lifetimes, nobody else gets it."""
    a, b = PostgresStore(team_url, lease_ttl=1.0), PostgresStore(team_url, lease_ttl=1.0)
    try:
        lock = a.named_lock("account-y", 5.0)
        lock.acquire()
        from authpool.errors import LockTimeout

        for _ in range(4):
            with pytest.raises(LockTimeout):
                b.named_lock("account-y", 0.8).acquire()
        lock.release()
        b.named_lock("account-y", 5.0).acquire()
    finally:
        a.close()
        b.close()


# -- nothing lost -------------------------------------------------------------------------------


_INCREMENT = """
import sys
from authpool.storage.postgres import PostgresStore
store = PostgresStore(sys.argv[1], lock_timeout=120)
def bump(rows):
    for acc in rows.accounts.values():
        acc.counters.requests += 1
for _ in range(int(sys.argv[2])):
    store.update_accounts(["acct0001", "acct0002"], bump)
print("done", flush=True)
"""


def _seed(url: str) -> PostgresStore:
    from authpool.accounts.model import Account

    store = PostgresStore(url)
    store.update(lambda pool: pool.accounts.extend(
        Account(id=f"acct000{i}", provider="acme", label=f"l{i}", kind="api_key") for i in (1, 2)))
    return store


def _counts(store: PostgresStore) -> list[int]:
    store.read()
    return [a.counters.requests for a in store.run(store_fetch).accounts]


def store_fetch(cur: Any) -> Any:
    row = cur.execute("SELECT json_agg(doc ORDER BY id) FROM authpool_accounts").fetchone()
    from authpool.accounts.model import PoolFile

    return PoolFile.model_validate({"accounts": row[0]})


def test_three_machines_making_two_hundred_concurrent_updates_each_lose_none(team_url: str) -> None:
    """3 processes x 200 updates of the same two accounts: both counters end at exactly 600."""
    store = _seed(team_url)
    try:
        procs = [subprocess.Popen([sys.executable, "-c", _INCREMENT, team_url, "200"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, cwd=REPO) for _ in range(3)]
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0 and out.strip() == "done", err
        assert _counts(store) == [600, 600]
    finally:
        store.close()


def test_a_database_restarted_mid_run_loses_no_update(team_url: str, postgres: PostgresServer) -> None:
    """Three writers keep updating while the server restarts (every connection dropped): nothing lost, none doubled."""
    store = _seed(team_url)
    try:
        procs = [subprocess.Popen([sys.executable, "-c", _INCREMENT, team_url, "150"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, cwd=REPO) for _ in range(3)]
        _wait(lambda: sum(_counts(store)) >= 60, what="the writers to be under way")
        postgres.restart()
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0 and out.strip() == "done", err
            assert "Traceback" not in err
        assert _counts(store) == [450, 450]
    finally:
        store.close()


def test_a_connection_dropped_mid_transaction_writes_nothing_half(team_url: str) -> None:
    """The server ends the session in the middle of an update of two accounts: no half is written, and the
    update is applied once, to a fresh read, on a new connection."""
    import psycopg

    store = _seed(team_url)
    killed = [False]

    def change(rows: Rows) -> None:
        first = rows.get("acct0001")
        first.counters.requests += 1
        if not killed[0]:
            killed[0] = True
            with psycopg.connect(team_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                              "current_database() AND pid <> pg_backend_pid() AND state = 'idle in transaction'")
        rows.get("acct0002").counters.requests += 1

    try:
        store.update_accounts(["acct0001", "acct0002"], change)
        assert killed[0]
        assert _counts(store) == [1, 1]
    finally:
        store.close()


# -- secrets --------------------------------------------------------------------------------------


def test_pg_dump_holds_no_secret_in_plain_text(team: Team, postgres: PostgresServer) -> None:
    """After logins, refreshes and keys, a dump of the database contains no token, key or the team key."""
    pool = team.pool(0)
    team.add_oauth(pool, "a")
    key = team.lp.add_api_key("k")
    team.handed_out.append(key)
    pool.add_api_key("acme", "k", key)
    team.lp.expire_access_tokens()
    with pool.sync_client("acme", account="acme/a") as client:
        assert client.post(CHAT, json={"model": "m"}).status_code == 200
    assert team.lp.snapshot()["refresh_calls"] == 1
    dump = postgres.pg_dump(team.url)
    assert "authpool_secrets" in dump and "acme" in dump
    assert_no_secrets(dump, team.secrets())


def test_a_wrong_team_key_is_one_clear_line_naming_both_fingerprints(team: Team) -> None:
    """Another key (base64 or a passphrase) is refused with its fingerprint and the store's; never garbage."""
    from authpool.storage.sealing import decode_key, fingerprint

    key = team.lp.add_api_key("k")
    team.handed_out.append(key)
    assert team.cli(0, "accounts", "add-key", "acme", "--label", "k", input=key).returncode == 0
    for wrong in ("V3JvbmdXcm9uZ1dyb25nV3JvbmdXcm9uZ1dyb25nISE=", "a passphrase that is not the key"):
        r = team.cli(1, "doctor", AUTHPOOL_TEAM_KEY=wrong)
        assert r.returncode == 1
        line = next(x for x in r.stdout.splitlines() if "team key" in x)
        assert fingerprint(decode_key(TEAM_KEY) or b"") in line and "is not the key of the team store" in line
        served = team.cli(1, "request", "acme", "POST", CHAT, "--json", "{}", AUTHPOOL_TEAM_KEY=wrong)
        assert served.returncode == 1 and "is not the key of the team store" in served.stderr
        assert "Traceback" not in served.stderr + r.stderr
        assert_no_secrets([r.stdout, r.stderr, served.stdout, served.stderr], [*team.secrets(), wrong])
    with pytest.raises(TeamKeyError, match="no team key"):
        os.environ.pop("AUTHPOOL_TEAM_KEY")
        Pool.open(team.homes[2]).secrets.load_fresh("x")


def test_team_key_create_export_and_import_between_members(tmp_path: Path, team_url: str) -> None:
    """The first member creates the key; another imports what the first exported; both read the same secrets."""
    env = {"AUTHPOOL_STORE": team_url, "PYTHON_KEYRING_BACKEND": "authpool.storage.vault.VaultKeyring"}
    one, two = ({**env, "AUTHPOOL_HOME": str(tmp_path / name)} for name in ("one", "two"))
    os.environ.pop("AUTHPOOL_TEAM_KEY", None)
    created = run_cli("team", "key", "create", env=one)
    assert created.returncode == 0, created.stderr
    again = run_cli("team", "key", "create", env=two)
    assert again.returncode == 1 and "has a key already" in again.stderr
    exported = run_cli("team", "key", "export", env=one)
    assert exported.returncode == 0, exported.stderr
    key = exported.stdout.strip()
    assert len(key) == 44 and key not in exported.stderr
    imported = run_cli("team", "key", "import", input=key + "\n", env=two)
    assert imported.returncode == 0, imported.stderr
    assert run_cli("accounts", "add-key", "openai", "--label", "w", input="sk-team-member-one", env=one).returncode == 0
    r = run_cli("doctor", env=two)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "team: postgresql://authpool@127.0.0.1" in r.stdout and "schema 1" in r.stdout
    assert "round trip" in r.stdout and "PostgreSQL 1" in r.stdout and "all 1 accounts have their secret" in r.stdout
    texts = [created.stdout, created.stderr, imported.stdout, imported.stderr, r.stdout, r.stderr]
    assert_no_secrets(texts, [key, "sk-team-member-one", PASSWORD])


def test_vault_key_init_export_and_import(home: Path) -> None:
    """`vault key init` makes the key, `export` prints it, `import` of another key that does not open the vault is refused."""
    assert run_cli("accounts", "add-key", "openai", "--label", "w", input="sk-vault-test").returncode == 0
    init = run_cli("vault", "key", "init")
    assert init.returncode == 0 and "already has" in init.stdout
    exported = run_cli("vault", "key", "export")
    key = exported.stdout.strip()
    assert exported.returncode == 0 and len(key) == 44
    wrong = run_cli("vault", "key", "import", input="V3JvbmdXcm9uZ1dyb25nV3JvbmdXcm9uZ1dyb25nISE=")
    assert wrong.returncode == 1 and "fingerprint" in wrong.stderr and "Traceback" not in wrong.stderr
    same = run_cli("vault", "key", "import", input=key)
    assert same.returncode == 0, same.stderr
    assert run_cli("request", "openai", "GET", "/v1/models", "--account", "openai/w").returncode in (0, 1, 4, 5)
    assert_no_secrets([init.stdout, init.stderr, exported.stderr, wrong.stdout, wrong.stderr, same.stdout],
                      [key, "sk-vault-test"])


# -- selecting, schema, faults --------------------------------------------------------------------


def test_the_store_is_chosen_by_config_toml_and_the_environment_wins(tmp_path: Path, team_url: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``[store] url`` selects the team store; AUTHPOOL_STORE overrides it; neither: the local pool file."""
    from authpool.storage.localstore import Store

    home = tmp_path / "h"
    home.mkdir(mode=0o700)
    monkeypatch.delenv("AUTHPOOL_STORE", raising=False)
    assert isinstance(Pool.open(home).store, Store)
    (home / "config.toml").write_text(f'[store]\nurl = "{team_url}"\n')
    pool = Pool.open(home)
    assert isinstance(pool.store, PostgresStore) and pool.team
    pool.close()
    monkeypatch.setenv("AUTHPOOL_STORE", "postgresql://nobody@127.0.0.1:1/elsewhere")
    assert Pool.open(home).store.location == "postgresql://nobody@127.0.0.1:1/elsewhere"


def test_a_database_that_is_down_is_one_line_naming_host_and_port(home: Path) -> None:
    """No server on the port: the CLI says so in one line, within the lock timeout, no traceback, no password."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://authpool:{PASSWORD}@127.0.0.1:{port}/team"
    r = run_cli("accounts", "list", env={"AUTHPOOL_STORE": url, "AUTHPOOL_LOCK_TIMEOUT": "3"})
    assert r.returncode == 1
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert f"127.0.0.1:{port}" in line and "cannot reach the team store" in line
    assert PASSWORD not in r.stdout + r.stderr


def test_a_database_from_a_newer_authpool_is_refused_with_a_clear_message(team_url: str) -> None:
    """A schema version above ours: refused, naming both versions, nothing changed."""
    import psycopg

    PostgresStore(team_url).read()
    with psycopg.connect(team_url, autocommit=True) as conn:
        conn.execute("UPDATE authpool_schema SET version = 99")
    r = run_cli("accounts", "list", env={"AUTHPOOL_STORE": team_url})
    assert r.returncode == 1 and "schema version 99" in r.stderr and "upgrade authpool" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# -- moving a pool --------------------------------------------------------------------------------


def test_store_copy_moves_a_local_pool_into_a_team_store_and_back(home: Path, team_url: str, tmp_path: Path,
                                                                  loopback: LoopbackProvider) -> None:
    """--to copies accounts and secrets (OAuth logins disabled at the source); --from brings them to another home."""
    home.mkdir(mode=0o700, exist_ok=True)
    write_config(home, {"acme": {"base_url": loopback.base_url, "auth": "bearer",
                                 "oauth": {"token_url": loopback.token_url, "client_id": "authpool-test"}}})
    local = Pool.open(home)
    doc = loopback.add_oauth_account("a")
    local.add_oauth("acme", "a", TokenSet.parse(doc))
    key = loopback.add_api_key("k")
    local.add_api_key("acme", "k", key)
    local.close()
    exposed = run_cli("store", "copy", "--to", team_url)
    assert exposed.returncode == 2 and "PGPASSWORD" in exposed.stderr  # no password in argv
    env = {"AUTHPOOL_TEAM_KEY": TEAM_KEY}
    r = run_cli("store", "copy", "--to", env={**env, "AUTHPOOL_STORE": team_url})
    assert r.returncode == 0, r.stderr
    assert "copied 2 account(s)" in r.stdout and "disabled 1 OAuth login" in r.stdout
    assert not Pool.open(home).get("acme/a").enabled
    twice = run_cli("store", "copy", "--to", env={**env, "AUTHPOOL_STORE": team_url})
    assert twice.returncode == 1 and "has these accounts already" in twice.stderr and "nothing was copied" in twice.stderr

    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    write_config(other, {"acme": {"base_url": loopback.base_url}})
    back = run_cli("store", "copy", "--from", team_url.replace(f":{PASSWORD}", ""),
                   env={**env, "AUTHPOOL_HOME": str(other)})
    assert back.returncode == 0, back.stderr
    copied = Pool.open(other)
    assert sorted(a.name for a in copied.accounts()) == ["acme/a", "acme/k"]
    assert copied.secret_of(copied.get("acme/k")).api_key == key
    assert_no_secrets([r.stdout, r.stderr, back.stdout, back.stderr, twice.stderr, exposed.stderr],
                      [key, doc["refresh_token"], doc["access_token"], TEAM_KEY, PASSWORD])


def test_store_copy_into_a_team_store_refuses_a_subscription_login_and_copies_nothing(
        home: Path, team_url: str) -> None:
    """An anthropic OAuth login in the local pool: the copy is refused before anything is written."""
    local = Pool.open(home)
    local.add_api_key("openai", "k", "sk-copy-test")
    local.add_oauth("anthropic", "me", TokenSet.parse({"access_token": "at-copy", "refresh_token": "rt-copy",
                                                        "expires_in": 600}))
    local.close()
    r = run_cli("store", "copy", "--to", env={"AUTHPOOL_TEAM_KEY": TEAM_KEY, "AUTHPOOL_STORE": team_url})
    assert r.returncode == 1 and "shared_logins" in r.stderr
    listed = run_cli("accounts", "list", "--json", env={"AUTHPOOL_STORE": team_url, "AUTHPOOL_TEAM_KEY": TEAM_KEY})
    assert listed.returncode == 0 and json.loads(listed.stdout)["accounts"] == []
    assert all(a.enabled for a in Pool.open(home).accounts())


def test_a_slow_database_never_stalls_the_event_loop(team: Team, team_url: str) -> None:
    """While another session holds the accounts table locked (every read waits), an async request on a stale
    cache waits in a worker thread: the event loop keeps running other tasks, and the request completes once
    the database answers."""
    import anyio
    import psycopg

    pool = team.pool(0)
    key = team.lp.add_api_key("k")
    team.handed_out.append(key)
    pool.add_api_key("acme", "k", key)
    store = pool.store
    assert isinstance(store, PostgresStore)
    blocker = psycopg.connect(team_url)

    async def main() -> int:
        ticks = 0
        result: list[int] = []

        async def request() -> None:
            async with pool.client("acme") as client:
                r = await client.post(CHAT, json={"model": "m"})
                result.append(r.status_code)

        blocker.execute("LOCK TABLE authpool_accounts IN ACCESS EXCLUSIVE MODE")  # reads now wait
        store._invalidate()  # the cache is stale: the request must read the database
        async with anyio.create_task_group() as tg:
            tg.start_soon(request)
            while ticks < 50:  # the loop runs other tasks while the read waits
                await anyio.sleep(0.001)
                ticks += 1
                assert not result, "the read should still be waiting for the lock"
            blocker.rollback()  # the database answers again
        return result[0]

    try:
        with ThreadPoolExecutor(1) as ex:
            assert ex.submit(anyio.run, main).result(timeout=120) == 200
    finally:
        blocker.close()


def test_a_passphrase_team_key_is_stretched_with_the_store_s_salt_and_works_for_every_member(
        team_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """AUTHPOOL_TEAM_KEY as a passphrase: sealed by one member, opened by another with the same passphrase;
    the dump holds neither the passphrase nor the secret."""
    from authpool import Secret

    passphrase = "correct horse battery staple, team edition"
    monkeypatch.setenv("AUTHPOOL_TEAM_KEY", passphrase)
    one, two = PostgresStore(team_url), PostgresStore(team_url)
    try:
        one.team_secrets().save("acct0001", Secret.from_api_key("sk-sealed-by-passphrase"), 1)
        assert two.team_secrets().load_fresh("acct0001").api_key == "sk-sealed-by-passphrase"
        assert one.team_secrets().sealer().fingerprint == two.team_secrets().sealer().fingerprint
    finally:
        one.close()
        two.close()
