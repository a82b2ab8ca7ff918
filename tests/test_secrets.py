"""Secrets in credential stores: one contract for every backend, chunking, errors, hygiene."""

from __future__ import annotations

import json
import os
import secrets as random_secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from keyring.backend import KeyringBackend

from authpool import Pool, Secret, SecretBackendLocked, SecretBackendUnavailable, SecretMissing, SecretStore, TokenSet
from authpool.storage.protocols import SecretBackend
from authpool.storage.secrets import SERVICE
from authpool.storage.vault import VaultKeyring
from tests.conftest import REPO, TEAM_KEY, assert_no_secrets, home_texts, raw_pool, run_cli
from tests.keyrings import LimitedKeyring, LockedKeyring
from tests.secret_service import SecretServiceSession, SecretServiceUnavailable, secret_service_session


def jwt_like(n: int = 3000) -> str:
    """A token longer than Windows' per-entry limit, like OpenAI's JWT access tokens."""
    return "eyJ" + random_secrets.token_urlsafe(n)[:n]


@pytest.fixture(scope="module")
def secret_service() -> Iterator[SecretServiceSession]:
    try:
        cm = secret_service_session()
        session = cm.__enter__()
    except SecretServiceUnavailable as e:
        pytest.skip(f"no Secret Service here: {e}")
    try:
        yield session
    finally:
        cm.__exit__(None, None, None)


@pytest.fixture(params=["vault", "limited", "secret-service"])
def backend(request: pytest.FixtureRequest, home: Path, monkeypatch: pytest.MonkeyPatch) -> KeyringBackend:
    """Each keyring backend authpool must work with; the Secret Service one is real (gnome-keyring)."""
    return _keyring_backend(str(request.param), request, home, monkeypatch)


OpenSecrets = Callable[[], SecretBackend]


@pytest.fixture(params=["vault", "limited", "secret-service", "team"])
def open_secrets(request: pytest.FixtureRequest, home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenSecrets]:
    """Opens handles on one fresh secret backend (each call: a new handle, as another process would hold)."""
    if request.param != "team":
        request.getfixturevalue("home")
        backend = _keyring_backend(request.param, request, home, monkeypatch)
        yield lambda: SecretStore(backend)
        return
    from authpool.storage.postgres import PostgresStore

    monkeypatch.setenv("AUTHPOOL_TEAM_KEY", TEAM_KEY)
    url = request.getfixturevalue("team_url")
    opened: list[PostgresStore] = []

    def opener() -> SecretBackend:
        store = PostgresStore(url)
        opened.append(store)
        return store.team_secrets()

    yield opener
    for store in opened:
        store.close()


class TestSecretBackendContract:
    """The SecretBackend contract (storage.protocols): every credential store, and the team store's sealed rows."""

    def test_a_secret_round_trips_and_is_overwritten_in_place(self, open_secrets: OpenSecrets) -> None:
        """save/load returns what was saved; a second save replaces it."""
        store = open_secrets()
        store.save("acct0001", Secret.from_api_key("sk-test-one"), 1)
        assert open_secrets().load_fresh("acct0001").api_key == "sk-test-one"
        store.save("acct0001", Secret.from_api_key("sk-test-two"), 2)
        assert open_secrets().load_fresh("acct0001").api_key == "sk-test-two"
        store.delete("acct0001")

    def test_a_token_larger_than_a_windows_entry_round_trips(self, open_secrets: OpenSecrets) -> None:
        """A 3,000-character JWT survives a save and a fresh load, and shrinking it again works."""
        store = open_secrets()
        big = Secret(kind="oauth", access_token=jwt_like(), refresh_token=jwt_like(2000), expires_at=1.0)
        store.save("acct0002", big, 1)
        got = open_secrets().load_fresh("acct0002")
        assert (got.access_token, got.refresh_token) == (big.access_token, big.refresh_token)
        store.save("acct0002", Secret.from_api_key("sk-small"), 2)
        assert open_secrets().load_fresh("acct0002").api_key == "sk-small"
        store.delete("acct0002")

    def test_deleting_removes_the_secret(self, open_secrets: OpenSecrets) -> None:
        """After delete, loading says the secret is missing; deleting twice is not an error."""
        store = open_secrets()
        store.save("acct0003", Secret(kind="oauth", access_token=jwt_like(), refresh_token="r"), 1)
        store.delete("acct0003")
        with pytest.raises(SecretMissing):
            store.load_fresh("acct0003")
        store.delete("acct0003")

    def test_reads_are_cached_per_generation(self, open_secrets: OpenSecrets) -> None:
        """The same generation is served from the cache; a new generation is read again."""
        writer, reader = open_secrets(), open_secrets()
        writer.save("acct0004", Secret.from_api_key("sk-one"), 1)
        assert reader.load("acct0004", 1).api_key == "sk-one"
        writer.save("acct0004", Secret.from_api_key("sk-two"), 2)
        assert reader.cached("acct0004", 1) is not None and reader.load("acct0004", 1).api_key == "sk-one"
        assert reader.cached("acct0004", 2) is None
        assert reader.load("acct0004", 2).api_key == "sk-two"
        writer.delete("acct0004")

    def test_a_swap_stores_only_over_the_secret_it_started_from(self, open_secrets: OpenSecrets) -> None:
        """swap(old, new) stores new while old is stored; once someone stored another, theirs stays and is returned."""
        a, b = open_secrets(), open_secrets()
        one = Secret(kind="oauth", access_token="at-1", refresh_token="rt-1")
        two = Secret(kind="oauth", access_token="at-2", refresh_token="rt-2")
        theirs = Secret(kind="oauth", access_token="at-3", refresh_token="rt-3")
        a.save("acct0005", one, 1)
        assert a.swap("acct0005", one, two, 2) is two
        assert b.load_fresh("acct0005").refresh_token == "rt-2"
        b.save("acct0005", theirs, 3)
        late = Secret(kind="oauth", access_token="at-x", refresh_token="rt-x")
        kept = a.swap("acct0005", two, late, 3)
        assert kept.refresh_token == "rt-3"
        assert open_secrets().load_fresh("acct0005").refresh_token == "rt-3"
        a.delete("acct0005")

    def test_many_secrets_are_saved_at_once_and_deleted_at_once(self, open_secrets: OpenSecrets) -> None:
        """save_many stores every secret (a large one too) for another handle to read; delete_many removes them."""
        store = open_secrets()
        items = [(f"bulk{i:04d}", Secret.from_api_key(f"sk-bulk-{i}"), 1) for i in range(30)]
        items.append(("bulkjwt0", Secret(kind="oauth", access_token=jwt_like(), refresh_token="r"), 1))
        store.save_many(items)
        other = open_secrets()
        assert [other.load_fresh(i).api_key for i, _, _ in items[:30]] == [f"sk-bulk-{i}" for i in range(30)]
        assert other.load_fresh("bulkjwt0").access_token == items[-1][1].access_token
        assert store.cached("bulk0007", 1) is items[7][1]
        store.save_many([])
        store.delete_many([i for i, _, _ in items] + ["never-saved"])
        for account_id, _, _ in items:
            with pytest.raises(SecretMissing):
                open_secrets().load_fresh(account_id)
        store.delete_many([])

    def test_delete_many_removes_the_secrets_it_names_and_no_other(self, open_secrets: OpenSecrets) -> None:
        """Deleting a batch leaves every other account's secret as it was, for every handle."""
        store = open_secrets()
        store.save_many([(f"keep{i:04d}", Secret.from_api_key(f"sk-keep-{i}"), 1) for i in range(3)]
                        + [(f"gone{i:04d}", Secret.from_api_key(f"sk-gone-{i}"), 1) for i in range(3)])
        store.delete_many([f"gone{i:04d}" for i in range(3)])
        other = open_secrets()
        assert [other.load_fresh(f"keep{i:04d}").api_key for i in range(3)] == [f"sk-keep-{i}" for i in range(3)]
        for i in range(3):
            with pytest.raises(SecretMissing):
                other.load_fresh(f"gone{i:04d}")
        store.delete_many([f"keep{i:04d}" for i in range(3)])

    def test_a_batch_that_cannot_be_written_whole_leaves_none_of_it(self, open_secrets: OpenSecrets) -> None:
        """save_many is all or nothing: when its last entry cannot be written (a value no store can hold),
        the entries before it are not left behind, and no cache claims them."""
        store = open_secrets()
        unwritable = Secret(kind="oauth", access_token="a", refresh_token="r", expires_at=object())  # type: ignore[arg-type]
        items = [(f"half{i:04d}", Secret.from_api_key(f"sk-half-{i}"), 1) for i in range(5)]
        with pytest.raises(Exception) as e:
            store.save_many([*items, ("half0005", unwritable, 1)])
        assert_no_secrets([str(e.value)], [f"sk-half-{i}" for i in range(5)])
        for account_id, _, _ in items:
            assert store.cached(account_id, 1) is None
            with pytest.raises(SecretMissing):
                open_secrets().load_fresh(account_id)


def _keyring_backend(kind: str, request: pytest.FixtureRequest, home: Path,
                     monkeypatch: pytest.MonkeyPatch) -> KeyringBackend:
    if kind == "vault":
        return VaultKeyring(home)
    if kind == "limited":
        return LimitedKeyring()
    session = request.getfixturevalue("secret_service")
    for k, v in session.env.items():
        monkeypatch.setenv(k, v)
    from keyring.backends.SecretService import Keyring

    return Keyring()


def test_a_token_larger_than_a_windows_entry_is_stored_in_chunks(backend: KeyringBackend) -> None:
    """In a keyring, a 3,000-character JWT is chunks under a head entry; shrinking it leaves no chunk behind."""
    store = SecretStore(backend)
    big = Secret(kind="oauth", access_token=jwt_like(), refresh_token=jwt_like(2000), expires_at=1.0)
    store.save("acct0002", big, 1)
    head = json.loads(backend.get_password(SERVICE, "acct0002") or "{}")
    chunks = [f"acct0002#{head['tag']}#{i}" for i in range(head["count"])]
    assert len(chunks) > 1 and all(backend.get_password(SERVICE, c) for c in chunks)
    store.save("acct0002", Secret.from_api_key("sk-small"), 2)
    assert [c for c in chunks if backend.get_password(SERVICE, c) is not None] == []
    store.delete("acct0002")


def test_chunks_fit_the_windows_limit_and_old_chunks_are_removed() -> None:
    """Against a store that refuses >2,560-byte entries, every entry fits and stale chunks go away."""
    backend = LimitedKeyring()
    store = SecretStore(backend)
    store.save("a1", Secret(kind="oauth", access_token=jwt_like(5000), refresh_token="r"), 1)
    first = set(backend.entries)
    assert len(first) > 3
    store.save("a1", Secret(kind="oauth", access_token=jwt_like(4000), refresh_token="r"), 2)
    second = set(backend.entries)
    assert not (first - {(SERVICE, "a1")}) & second  # every old chunk is gone
    with pytest.raises(Exception, match="too long"):
        backend.set_password(SERVICE, "x", "y" * 1281)  # the test store really enforces the limit


def test_reads_are_cached_per_generation() -> None:
    """Loading the same generation twice asks the store once; a new generation reads again."""
    backend = LimitedKeyring()
    store = SecretStore(backend)
    store.save("a1", Secret.from_api_key("sk-one"), 1)
    reader = SecretStore(backend)
    assert reader.load("a1", 1).api_key == "sk-one"
    backend.entries[(SERVICE, "a1")] = Secret.from_api_key("sk-two").to_json()  # changed behind its back
    assert reader.load("a1", 1).api_key == "sk-one"  # same generation: cached
    assert reader.load("a1", 2).api_key == "sk-two"  # generation moved: read again


def test_a_locked_keyring_is_a_clear_error_and_the_store_is_unchanged(home: Path) -> None:
    """KeyringLocked becomes 'the credential store ... is locked; unlock it'; no account is added."""
    r = run_cli("accounts", "add-key", "openai", "--label", "w", input="sk-test-locked",
                env={"PYTHON_KEYRING_BACKEND": "tests.keyrings.LockedKeyring"})
    assert r.returncode == 1
    assert "is locked; unlock it" in r.stderr and "Traceback" not in r.stderr
    assert "sk-test-locked" not in r.stderr + r.stdout
    pool = raw_pool(home)
    assert pool["accounts"] == []
    with pytest.raises(SecretBackendLocked):
        SecretStore(LockedKeyring()).load_fresh("x")


def test_a_process_that_cannot_load_the_recorded_backend_fails_instead_of_splitting_the_pool(home: Path) -> None:
    """A pool recorded on the vault refuses a process whose PYTHON_KEYRING_BACKEND says otherwise."""
    assert run_cli("accounts", "add-key", "openai", "--label", "w", input="sk-test-1").returncode == 0
    r = run_cli("accounts", "add-key", "openai", "--label", "v", input="sk-test-2",
                env={"PYTHON_KEYRING_BACKEND": "tests.keyrings.LimitedKeyring"})
    assert r.returncode == 1 and "keeps its secrets in authpool.storage.vault.VaultKeyring" in r.stderr
    with pytest.raises(SecretBackendUnavailable):
        os.environ["PYTHON_KEYRING_BACKEND"] = "tests.keyrings.LimitedKeyring"
        try:
            _ = Pool.open(home).secrets
        finally:
            os.environ["PYTHON_KEYRING_BACKEND"] = "authpool.storage.vault.VaultKeyring"


def test_the_vault_refuses_a_wrong_key_with_a_clear_message(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Secrets sealed with one AUTHPOOL_VAULT_KEY cannot be read with another, and the error says so."""
    monkeypatch.setenv("AUTHPOOL_VAULT_KEY", "correct horse battery staple")
    pool = Pool.open(home)
    acc = pool.add_api_key("openai", "w", "sk-test-vault")
    assert not (home / "vault.key").exists()  # the passphrase is the key: no key file written
    monkeypatch.setenv("AUTHPOOL_VAULT_KEY", "wrong")
    with pytest.raises(SecretBackendLocked, match="different key"):
        Pool.open(home).secret_of(acc)
    monkeypatch.setenv("AUTHPOOL_VAULT_KEY", "correct horse battery staple")
    assert Pool.open(home).secret_of(acc).api_key == "sk-test-vault"


def test_removing_an_account_removes_its_secret(home: Path) -> None:
    """accounts remove deletes the keyring entry too."""
    pool = Pool.open(home)
    acc = pool.add_api_key("openai", "w", "sk-test-remove")
    assert run_cli("accounts", "remove", acc.id).returncode == 0
    assert VaultKeyring(home).get_password(SERVICE, acc.id) is None


def test_no_secret_appears_in_the_pool_file_logs_or_cli_output(home: Path) -> None:
    """After a full CLI session, no token or key is anywhere but (encrypted) in the vault."""
    key = "sk-test-" + random_secrets.token_urlsafe(24)
    access, refresh = "lpat-" + random_secrets.token_urlsafe(24), "lprt-" + random_secrets.token_urlsafe(24)
    big = jwt_like()
    tokens = json.dumps({"access_token": access, "refresh_token": refresh, "expires_in": 60})
    outputs = []
    env = {"AUTHPOOL_LOG": "DEBUG"}
    for args, stdin in [
        (("accounts", "add-key", "openai", "--label", "k"), key),
        (("accounts", "add-oauth", "anthropic", "--label", "o"), tokens),
        (("accounts", "add-oauth", "openai", "--label", "jwt"),
         json.dumps({"access_token": big, "refresh_token": refresh + "x", "expires_in": 60})),
        (("accounts", "add-key", "openai", "--label", "k"), key),  # duplicate: an error path
        (("accounts", "add-oauth", "anthropic", "--label", "bad"), '{"access_token": 5}'),
        (("accounts", "list"), ""),
        (("accounts", "list", "--json"), ""),
        (("doctor",), ""),
        (("doctor", "--json"), ""),
        (("accounts", "reset", "anthropic/o"), ""),
    ]:
        r = run_cli(*args, input=stdin, env=env)
        outputs += [r.stdout, r.stderr]
    all_secrets = [key, access, refresh, big]
    assert_no_secrets(outputs, all_secrets)
    assert_no_secrets(home_texts(home), all_secrets)
    assert_no_secrets([p.read_bytes().decode(errors="replace") for p in home.glob("vault.db*")],
                      all_secrets)  # encrypted, not plain
    assert "Traceback" not in "".join(outputs)


def test_a_secret_never_shows_in_its_repr() -> None:
    """repr/str of secrets and token sets hide the values (they end up in logs and tracebacks)."""
    s = Secret(kind="oauth", access_token="lpat-AAA", refresh_token="lprt-BBB")
    t = TokenSet.parse({"access_token": "lpat-CCC", "refresh_token": "lprt-DDD", "expires_in": 5})
    assert_no_secrets([repr(s), str(s), repr(t), f"{s}"], ["lpat-AAA", "lprt-BBB", "lpat-CCC", "lprt-DDD"])


# -- the real OS credential store ------------------------------------------------------------


def test_the_secret_service_is_chosen_recorded_and_shared_by_every_process(
    secret_service: SecretServiceSession, tmp_path: Path
) -> None:
    """On a desktop-like session with gnome-keyring, a new pool picks the Secret Service, every
    process uses it, and removal deletes the entry there."""
    env = secret_service.child_env()
    env.update({
        "AUTHPOOL_HOME": str(tmp_path / "home"),
        "HOME": str(tmp_path),  # no user keyringrc.cfg can interfere
        "PYTHONPATH": str(REPO),
    })
    env.pop("PYTHON_KEYRING_BACKEND", None)

    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "authpool.server.cli", *args], input=stdin, capture_output=True,
                              text=True, env=env, cwd=REPO, timeout=60)

    big = jwt_like()
    r = cli("accounts", "add-oauth", "openai", "--label", "desk",
            stdin=json.dumps({"access_token": big, "refresh_token": "lprt-desk", "expires_in": 60}))
    assert r.returncode == 0, r.stderr
    pool_file = raw_pool(tmp_path / "home")
    assert pool_file["secret_backend"] == "keyring.backends.SecretService.Keyring"
    assert not (tmp_path / "home" / "vault.db").exists()
    r = cli("doctor")
    assert r.returncode == 0 and "SecretService" in r.stdout and "have their secret" in r.stdout, r.stdout
    account_id = pool_file["accounts"][0]["id"]
    check = subprocess.run(
        [sys.executable, str(REPO / "tests" / "workers.py"), "read-secret", account_id], input="lprt-desk",
        capture_output=True, text=True, env=env, cwd=REPO, timeout=60,
    )
    assert json.loads(check.stdout)["refresh_matches"] is True, check.stderr
    assert cli("accounts", "remove", account_id).returncode == 0
    with secret_service.activated():
        from keyring.backends.SecretService import Keyring

        assert Keyring().get_password(SERVICE, account_id) is None


def test_a_server_spawned_without_the_bus_address_fails_clearly(
    secret_service: SecretServiceSession, tmp_path: Path
) -> None:
    """A process that cannot reach the recorded Secret Service names the cause and the fix."""
    env = secret_service.child_env()
    env.update({"AUTHPOOL_HOME": str(tmp_path / "home"), "HOME": str(tmp_path)})
    env.pop("PYTHON_KEYRING_BACKEND", None)
    r = subprocess.run([sys.executable, "-m", "authpool.server.cli", "accounts", "add-key", "openai", "--label", "a"],
                       input="sk-test-a", capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    env.pop("DBUS_SESSION_BUS_ADDRESS")
    r = subprocess.run([sys.executable, "-m", "authpool.server.cli", "accounts", "add-key", "openai", "--label", "b"],
                       input="sk-test-b", capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    if Path(f"/run/user/{os.getuid()}/bus").exists():
        pytest.skip("this machine has a real session bus at /run/user/UID/bus, which authpool would use")
    assert r.returncode == 1
    assert "DBUS_SESSION_BUS_ADDRESS" in r.stderr and "cannot reach" in r.stderr
    assert "Traceback" not in r.stderr


def test_secrets_move_to_another_store_is_explicit_and_every_process_follows(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`authpool secrets move` copies every secret, records the new store, deletes the old copies;
    a process that opened the pool before the move reads from the new store afterwards."""
    key, big = "sk-test-move", jwt_like()
    pool = Pool.open(home)
    k = pool.add_api_key("openai", "k", key)
    o = pool.add_oauth("openai", "o", TokenSet.parse({"access_token": big, "refresh_token": "lprt-move",
                                                      "expires_in": 600}))
    assert pool.secret_of(k).api_key == key  # this process now has the vault open
    store_file = tmp_path / "limited-keyring.json"
    monkeypatch.setenv("TEST_KEYRING_FILE", str(store_file))
    r = run_cli("secrets", "move", "tests.keyrings.FileLimitedKeyring")
    assert r.returncode == 0, r.stderr
    assert "moved 2 secret(s)" in r.stdout
    assert raw_pool(home)["secret_backend"] == "tests.keyrings.FileLimitedKeyring"
    vault = VaultKeyring(home)
    assert vault.get_password(SERVICE, k.id) is None and vault.get_password(SERVICE, o.id) is None
    assert k.id in store_file.read_text()  # the entries are in the new store
    # The long-lived process follows the recorded backend (PYTHON_KEYRING_BACKEND must agree).
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "tests.keyrings.FileLimitedKeyring")
    pool.secrets.forget(k.id)
    assert pool.secrets.name == "tests.keyrings.FileLimitedKeyring"
    assert pool.secrets.load_fresh(k.id).api_key == key
    assert pool.secrets.load_fresh(o.id).access_token == big  # chunked under the 2,560-byte limit
    r = run_cli("secrets", "move", "tests.keyrings.FileLimitedKeyring")
    assert r.returncode == 0 and "already in" in r.stdout
    assert_no_secrets([r.stdout, r.stderr], [key, big])


def test_secrets_move_to_an_unusable_store_changes_nothing(home: Path) -> None:
    """A target that fails its check leaves the pool on its current store, with one clear error."""
    pool = Pool.open(home)
    pool.add_api_key("openai", "k", "sk-test-stay")
    before = raw_pool(home)
    r = run_cli("secrets", "move", "tests.keyrings.LockedKeyring")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert raw_pool(home) == before
    r = run_cli("secrets", "move", "no.such.Backend")
    assert r.returncode == 1 and "not installed" in r.stderr
