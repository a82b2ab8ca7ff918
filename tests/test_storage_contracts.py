"""The MetadataStore contract (authpool.storage.protocols), run against every implementation.

Each implementation gets a fixture that makes a fresh, empty store and a second handle on the
same store (another process's view); every test below runs against each. The SecretBackend
contract is ``TestSecretBackendContract`` in tests/test_secrets.py.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from authpool.accounts.model import Account, PoolFile, Rows, SessionBinding
from authpool.errors import AccountNotFound, InvalidInput, LockTimeout
from authpool.home import Home
from authpool.storage.localstore import Store
from authpool.storage.protocols import MetadataStore
from tests.conftest import REPO

Opener = Callable[[], MetadataStore]
_URLS: dict[int, str] = {}  # a team store handle -> its URL (another process opens the same store)


@pytest.fixture(params=["pool-file", "postgres"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens handles on one fresh store (each call: a new handle, as another process would hold)."""
    if request.param == "pool-file":
        home = tmp_path / "home"
        yield lambda: Store(Home.open(home))
        return
    from authpool.storage.postgres import PostgresStore

    url = request.getfixturevalue("team_url")
    opened: list[PostgresStore] = []

    def opener() -> MetadataStore:
        store = PostgresStore(url, lease_ttl=5.0)
        _URLS[id(store)] = url
        opened.append(store)
        return store

    yield opener
    for store in opened:
        store.close()


def _account(account_id: str, label: str) -> Account:
    return Account(id=account_id, provider="acme", label=label, kind="api_key", secret_generation=1)


def _add(account_id: str, label: str) -> Callable[[PoolFile], Account]:
    def add(pool: PoolFile) -> Account:
        acc = _account(account_id, label)
        pool.accounts.append(acc)
        return acc

    return add


class TestMetadataStoreContract:
    """What rotation, refresh and the pool rely on, whatever holds the metadata."""

    def test_an_empty_store_reads_as_an_empty_pool(self, open_store: Opener) -> None:
        """Nothing written yet: no accounts, no sessions."""
        pool = open_store().read()
        assert (pool.accounts, pool.sessions) == ([], {})

    def test_an_update_is_seen_by_every_handle_and_returns_what_the_change_returned(self, open_store: Opener) -> None:
        """A change applied through one handle is read through another, as another process would."""
        a, b = open_store(), open_store()
        added = a.update(_add("acct0001", "one"))
        assert added.id == "acct0001"
        assert [x.id for x in b.read().accounts] == ["acct0001"]

    def test_each_change_is_applied_to_a_fresh_read_so_no_update_is_lost(self, open_store: Opener) -> None:
        """Two handles, each updating what it did not read itself: both changes survive."""
        a, b = open_store(), open_store()
        a.update(_add("acct0001", "one"))
        b.read()  # b's cached view: one account
        a.update(_add("acct0002", "two"))
        b.update(_add("acct0003", "three"))
        assert sorted(x.id for x in a.read().accounts) == ["acct0001", "acct0002", "acct0003"]

    def test_a_change_that_raises_writes_nothing(self, open_store: Opener) -> None:
        """An exception in the change function leaves the store as it was."""
        store = open_store()
        store.update(_add("acct0001", "one"))
        version = store.version()

        def broken(pool: PoolFile) -> None:
            pool.accounts.clear()
            raise RuntimeError("changed my mind")

        with pytest.raises(RuntimeError):
            store.update(broken)
        assert [x.id for x in open_store().read().accounts] == ["acct0001"]
        assert store.version() == version

    def test_an_invalid_result_is_refused_with_a_clear_error_and_writes_nothing(self, open_store: Opener) -> None:
        """A change that would duplicate a label is InvalidInput; the store keeps its last good state."""
        store = open_store()
        store.update(_add("acct0001", "one"))
        with pytest.raises(InvalidInput, match="duplicate label"):
            store.update(_add("acct0002", "one"))
        assert [x.id for x in open_store().read().accounts] == ["acct0001"]

    def test_an_account_update_sees_only_the_accounts_it_names_and_the_sessions(self, open_store: Opener) -> None:
        """update_accounts: the named rows (a removed one is absent), fresh; the change lands for every handle."""
        a, b = open_store(), open_store()
        a.update(_add("acct0001", "one"))
        a.update(_add("acct0002", "two"))

        def change(rows: Rows) -> list[str]:
            rows.get("acct0001").enabled = False
            rows.sessions["acme/s"] = SessionBinding(account_id="acct0001", expires_at=2e9)
            return sorted(rows.accounts)

        assert b.update_accounts(("acct0001", "gone0001"), change) == ["acct0001"]
        pool = a.read()
        assert [x.enabled for x in pool.accounts] == [False, True]
        assert pool.sessions["acme/s"].account_id == "acct0001"
        with pytest.raises(AccountNotFound):
            a.update_accounts(("gone0001",), lambda rows: rows.get("gone0001"))

    def test_the_version_moves_on_every_write_and_only_then(self, open_store: Opener) -> None:
        """version() changes when the metadata does, seen from any handle."""
        a, b = open_store(), open_store()
        first = b.version()
        assert b.version() == first
        a.update(_add("acct0001", "one"))
        second = b.version()
        assert second != first
        a.update(lambda pool: None)  # a write, even one that changes nothing, moves it
        assert b.version() != second

    def test_a_named_lock_excludes_another_process_until_released(self, open_store: Opener, tmp_path: Path) -> None:
        """Held here, the same name cannot be taken by another process; released, it can."""
        store = open_store()
        lock = store.named_lock("account-acct0001", 5.0)
        lock.acquire()
        try:
            other = _try_lock_in_another_process(store, "account-acct0001")
            assert other == "timeout"
        finally:
            lock.release()
        assert _try_lock_in_another_process(store, "account-acct0001") == "held"

    def test_a_named_lock_excludes_another_thread_and_times_out_naming_it(self, open_store: Opener) -> None:
        """A second taker in the same process waits, then gets LockTimeout."""
        store = open_store()
        held = threading.Event()
        release = threading.Event()

        def holder() -> None:
            with store.named_lock("probe-acct0001", 5.0):
                held.set()
                release.wait(30)

        t = threading.Thread(target=holder)
        t.start()
        try:
            assert held.wait(30)
            with pytest.raises(LockTimeout):
                store.named_lock("probe-acct0001", 0.0).acquire()
        finally:
            release.set()
            t.join(30)
        other = store.named_lock("probe-acct0001", 5.0)
        other.acquire()
        other.release()

    def test_locks_of_different_names_do_not_exclude_each_other(self, open_store: Opener) -> None:
        """Two accounts refresh at once: their locks are independent."""
        store = open_store()
        with store.named_lock("account-a", 1.0), store.named_lock("account-b", 0.0):
            pass


def _try_lock_in_another_process(store: MetadataStore, name: str) -> str:
    """'held' if a fresh process can take the lock at once, 'timeout' if not."""
    if isinstance(store, Store):
        opening = ("from pathlib import Path\nfrom authpool.home import Home\n"
                   "from authpool.storage.localstore import Store\n"
                   f"store = Store(Home.open(Path({str(store.home.path)!r})))\n")
    else:
        from authpool.storage.postgres import PostgresStore

        assert isinstance(store, PostgresStore), "add a branch for the new store kind"
        opening = ("from authpool.storage.postgres import PostgresStore\n"
                   f"store = PostgresStore({_URLS[id(store)]!r})\n")
    code = (
        "import sys\n"
        "from authpool.errors import LockTimeout\n"
        + opening +
        "lock = store.named_lock(sys.argv[1], 0.0)\n"
        "try:\n"
        "    lock.acquire()\n"
        "except LockTimeout:\n"
        "    print('timeout')\n"
        "else:\n"
        "    print('held')\n"
        "    lock.release()\n"
    )
    r = subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()
