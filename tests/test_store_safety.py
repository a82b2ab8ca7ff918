"""The pool keeps every change: deleted lock files, restores, symlinks, failed backups, hostile content."""

from __future__ import annotations

import gc
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from authpool import Home, Pool, Store, StoreCorrupt
from authpool.accounts.model import Account
from authpool.errors import StoreVersionError
from tests.conftest import REPO, assert_no_secrets, home_texts, raw_pool, run_cli, start_worker
from tests.history import module_at

KEYS = {label: f"sk-test-safety-{label}-5f0c7e1d9a2b" for label in ("a", "b")}
PIPED_KEY = "sk-test-safety-piped-3e8d1c0b"  # given on stdin to commands that fail


def make_pool_with(home: Path, *labels: str) -> Pool:
    pool = Pool.open(home)
    for label in labels:
        pool.add_api_key("openai", label, KEYS[label])
    return pool


def cli(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """`authpool ARGS` as a real subprocess; no key this module hands out may appear in its output."""
    r = run_cli(*args, input=input)
    assert_no_secrets([r.stdout, r.stderr], [*KEYS.values(), PIPED_KEY])
    return r


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Wait for ``condition`` (the event itself), failing after a generous deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_writer_whose_lock_file_is_deleted_mid_change_does_not_undo_the_next_writer(home: Path,
                                                                                        tmp_path: Path) -> None:
    """locks/ is deleted (the pool lock and its line) while a process holds the pool lock, and a second writer
    locks a new file: the database serializes the two transactions, so both changes land and neither undoes the
    other. (Deleting pool.lock alone lets nobody in: the second writer waits in line behind the holder.)"""
    make_pool_with(home, "a", "b")
    ready, go = tmp_path / "ready", tmp_path / "go"
    holder = start_worker("disable-when", "openai/a", str(ready), str(go))
    second: subprocess.Popen[str] | None = None
    try:
        wait_until(ready.exists, "the holder to be inside its change, holding the pool lock")
        shutil.rmtree(home / "locks")  # a cleaner, or a user's rm -rf
        second = subprocess.Popen([sys.executable, "-m", "authpool.server.cli", "accounts", "disable", "openai/b"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        wait_until((home / "locks" / "pool.lock").exists, "the second writer to lock the new lock file")
        go.touch()
        out, err = holder.communicate(timeout=60)
        second_out, second_err = second.communicate(timeout=60)
    finally:
        holder.kill()
        if second is not None:
            second.kill()
    assert holder.returncode == 0, err
    assert second.returncode == 0, second_err
    assert out.strip() == "done"
    pool = Pool.open(home)
    assert pool.get("openai/a").enabled is False
    assert pool.get("openai/b").enabled is False
    assert_no_secrets([out, err, second_out, second_err, *home_texts(home)], list(KEYS.values()))


def test_doctor_restore_refuses_to_replace_a_healthy_pool_unless_forced(home: Path) -> None:
    """`doctor --restore` on a working database refuses (it would undo changes); --force restores, with a warning."""
    make_pool_with(home, "a", "b").store.close()
    before = raw_pool(home)
    r = cli("doctor", "--restore")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "works" in r.stdout and "would undo every change since it was taken" in r.stdout and "--force" in r.stdout
    assert raw_pool(home) == before
    assert not list(home.glob("pool.db.corrupt-*"))
    assert [a.label for a in Pool.open(home).accounts()] == ["a", "b"]

    r = cli("doctor", "--restore", "--force")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "warn" in r.stdout and "undid every change since" in r.stdout
    assert [a.label for a in Pool.open(home).accounts()] == [], "the backup was taken at the first change"
    assert list(home.glob("pool.db.replaced-*"))


def test_a_symlinked_pool_database_is_refused_with_a_clear_error_and_left_as_it_is(home: Path,
                                                                                    tmp_path: Path) -> None:
    """pool.db as a symbolic link is refused (read and write) naming the fix; the link and its target stay."""
    make_pool_with(home, "a").store.close()
    elsewhere = tmp_path / "synced"
    elsewhere.mkdir()
    target = elsewhere / "pool.db"
    (home / "pool.db").rename(target)
    (home / "pool.db").symlink_to(target)
    before = target.read_bytes()
    for argv in (["accounts", "disable", "openai/a"], ["accounts", "list"]):
        r = cli(*argv)
        assert r.returncode == 1, r.stdout + r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
        assert "is a symbolic link" in r.stderr and str(target) in r.stderr and "AUTHPOOL_HOME" in r.stderr
    r = cli("doctor")
    assert r.returncode == 1 and "is a symbolic link" in r.stdout
    assert (home / "pool.db").is_symlink() and (home / "pool.db").resolve() == target
    assert target.read_bytes() == before


def test_a_backup_that_cannot_be_written_never_fails_a_change_and_leaves_no_temporary_file(home: Path) -> None:
    """When pool.db.bak cannot be replaced, the change still lands (the backup is a convenience, the
    database is the record), the failure is logged on stderr in one line, and no temporary file is left."""
    make_pool_with(home, "a").store.close()
    (home / "pool.db.bak").unlink()
    (home / "pool.db.bak").mkdir(mode=0o700)  # something in the way that a rename cannot replace
    (home / "pool.db.bak" / "keep").touch(mode=0o600)
    r = cli("accounts", "disable", "openai/a")
    assert r.returncode == 0, r.stderr
    assert "could not back up" in r.stderr and "Traceback" not in r.stderr
    assert Pool.open(home).get("openai/a").enabled is False
    assert sorted(p.name for p in home.iterdir() if p.name.endswith(".tmp")) == []


@pytest.mark.parametrize("text", [
    "[" * 100_000,
    # Parses, but an unknown field this deep could never be written back (pydantic stops at ~255).
    '{"schema_version": 2, "accounts": [], "future": ' + "[" * 300 + "]" * 300 + "}",
], ids=["100000-brackets", "deep-unknown-field"])
def test_a_deeply_nested_pool_file_is_reported_as_corrupt_not_as_an_internal_error(home: Path, text: str) -> None:
    """Deep nesting: every command says the file is corrupt (one line), doctor included; no RecursionError."""
    home.mkdir(mode=0o700)
    (home / "pool.json").write_text(text)
    with pytest.raises(StoreCorrupt, match="nested too deeply"):
        Pool.open(home).accounts()
    for argv in (["accounts", "list"], ["status"], ["accounts", "add-key", "openai", "--label", "x"]):
        r = cli(*argv, input=PIPED_KEY)
        assert r.returncode == 1, r.stdout + r.stderr
        assert r.stderr.count("\n") == 1 and "corrupt" in r.stderr and "nested too deeply" in r.stderr, r.stderr
        assert "internal error" not in r.stderr and "Recursion" not in r.stderr
    r = cli("doctor")
    assert r.returncode == 1 and "[ fail] pool file" in r.stdout and "nested too deeply" in r.stdout
    assert (home / "pool.json").read_text() == text


def _tamper(doc: dict[str, Any], where: str, value: Any) -> None:
    target: Any = doc
    *path, last = where.split(".")
    for part in path:
        target = target[int(part)] if part.isdigit() else target[part]
    target[last] = value


@pytest.mark.parametrize(("where", "raw_value", "named"), [
    ("secret_generation", "-5", "secret_generation"),
    ("access_expires_at", "Infinity", "access_expires_at"),
    ("access_expires_at", "NaN", "access_expires_at"),
    ("last_used_at", "1e999", "last_used_at"),
    ("created_at", "-Infinity", "created_at"),
    ("counters.requests", "-1", "counters.requests"),
    ("counters.rate_limited", "-3", "counters.rate_limited"),
    ("backoff_level", "-2", "backoff_level"),
    ("cooldowns", '{"*": {"until": NaN, "reason": "429"}}', "cooldowns.*.until"),
])
def test_impossible_numbers_in_an_account_row_are_refused_as_corrupt_naming_the_field(
        home: Path, where: str, raw_value: str, named: str) -> None:
    """Negative counters or generations, NaN and infinite times: the row is corrupt, and the field is named."""
    account_id = make_pool_with(home, "a").get("openai/a").id
    with sqlite3.connect(home / "pool.db") as conn:
        doc = json.loads(conn.execute("SELECT doc FROM accounts").fetchone()[0])
        marker = "__VALUE__"
        _tamper(doc, where, marker)
        text = json.dumps(doc).replace(f'"{marker}"', raw_value)
        conn.execute("UPDATE accounts SET doc = ?", (text,))
    conn.close()
    with pytest.raises(StoreCorrupt) as e:
        Pool.open(home).accounts()
    assert f"account row {account_id!r}" in str(e.value) and named in str(e.value), str(e.value)
    r = cli("accounts", "list")
    assert r.returncode == 1 and "corrupt" in r.stderr and named in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1
    assert raw_pool_text(home) == text


def raw_pool_text(home: Path) -> str:
    conn = sqlite3.connect(f"file:{home / 'pool.db'}?mode=ro", uri=True)
    try:
        return str(conn.execute("SELECT doc FROM accounts").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.parametrize("data", [
    "{}".encode("utf-16"),                               # a UTF-16 file (with its byte order mark)
    b'{"schema_version": 2, "accounts": [], "note": "caf\xe9"}',  # Latin-1
    b"\xff\xfe\x00garbage",
])
def test_a_pool_file_that_is_not_utf8_is_reported_as_such(home: Path, data: bytes) -> None:
    """Bytes that are not UTF-8 are reported as "not UTF-8 text", not as a JSON syntax error at line 1 column 1."""
    home.mkdir(mode=0o700)
    (home / "pool.json").write_bytes(data)
    with pytest.raises(StoreCorrupt, match="not UTF-8 text") as e:
        Pool.open(home).accounts()
    assert "line 1 column 1" not in str(e.value)
    r = cli("accounts", "list")
    assert r.returncode == 1 and "not UTF-8 text" in r.stderr


def test_a_writer_flushing_its_commit_to_disk_holds_no_lock_and_returns_only_after_the_flush(
        home: Path, tmp_path: Path) -> None:
    """The pool lock covers the transaction alone: while one process flushes its commit to the disk, its
    change is already visible and another process's update goes through; its own update returns after."""
    make_pool_with(home, "a", "b")
    ready, go = tmp_path / "ready", tmp_path / "go"
    flushing = start_worker("flush-when", "openai/a", str(ready), str(go))
    try:
        wait_until(ready.exists, "the writer to be flushing its commit")
        assert Pool.open(home).get("openai/a").enabled is False  # committed: every process sees it
        r = subprocess.run([sys.executable, "-m", "authpool.server.cli", "accounts", "disable", "openai/b"],
                           capture_output=True, text=True, cwd=REPO, timeout=60)
        assert r.returncode == 0, r.stderr  # not stuck behind the flush
        assert flushing.poll() is None  # still flushing: its update has not returned
        go.touch()
        out, err = flushing.communicate(timeout=60)
    finally:
        flushing.kill()
    assert flushing.returncode == 0, err
    assert out.strip() == "done"
    pool = Pool.open(home)
    assert pool.get("openai/a").enabled is False and pool.get("openai/b").enabled is False


def test_a_running_process_writes_into_the_restored_database_not_the_replaced_one(home: Path) -> None:
    """A process with the pool open while `doctor --restore --force` (another process) puts the backup in
    place: its next change lands in the restored pool.db, where every other process sees it, and its reads
    follow the new file too."""
    running = make_pool_with(home, "a", "b")
    assert len(running.accounts()) == 2  # its connection is open on the current pool.db
    r = cli("doctor", "--restore", "--force")
    assert r.returncode == 0, r.stdout + r.stderr
    running.add_api_key("openai", "after", KEYS["a"])
    assert [a.label for a in Pool.open(home).accounts()] == ["after"]  # the backup was taken before a and b
    assert [a.label for a in running.accounts()] == ["after"]


POOL_JSON_COMMIT = "b933724"  # the last commit whose store was pool.json


def test_an_older_authpool_still_running_after_the_pool_moves_into_pool_db_fails_closed(home: Path,
                                                                                      tmp_path: Path) -> None:
    """A server started before the upgrade, still running the pool.json store: after the move it neither
    serves an empty pool nor writes a pool.json nobody reads; it says to upgrade."""
    old_store = module_at(POOL_JSON_COMMIT, "pool/storage/filestore.py", tmp_path).Store(Home.open(home))
    acc = Account.model_validate({"id": "a1b2c3d4", "provider": "openai", "label": "kept", "kind": "api_key"})
    old_store.update(lambda p: p.accounts.append(acc))
    assert [a.label for a in old_store.read().accounts] == ["kept"]
    Pool.open(home).store.update_accounts(["a1b2c3d4"], lambda rows: setattr(rows.get("a1b2c3d4"), "enabled", False))
    with pytest.raises(StoreVersionError):
        old_store.read()
    with pytest.raises(StoreVersionError):
        old_store.update(lambda p: p.accounts.clear())
    assert Pool.open(home).get("openai/kept").enabled is False
    assert json.loads((home / "pool.json.moved").read_text())["accounts"][0]["label"] == "kept"
    r = cli("doctor")
    assert "no longer read" not in r.stdout, r.stdout  # the marker is not an older authpool's pool.json


_DMS_PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 128)  # SQLite's "someone uses this" byte of -shm
except OSError:
    print("held")
else:
    print("free")
"""


def test_closing_one_store_keeps_the_locks_sqlite_holds_for_another_store_of_the_process(home: Path) -> None:
    """POSIX locks belong to the process: closing *any* descriptor of a file drops all of them, those
    SQLite holds for another connection included. Nothing of authpool may open and close pool.db's
    files beside SQLite's own (an earlier freshness check read pool.db-shm through a descriptor of
    its own: closing one Store then let the next process rebuild -shm under the other, SIGBUS)."""
    make_pool_with(home, "a").store.close()
    first, second = Store(Home.open(home)), Store(Home.open(home))
    try:
        first.read()
        second.read()
        first.close()
        probe = subprocess.run([sys.executable, "-c", _DMS_PROBE, str(home / "pool.db-shm")],
                               capture_output=True, text=True, timeout=60)
        assert probe.stdout.strip() == "held", probe.stderr
        account_id = second.read().accounts[0].id
        second.update_accounts((account_id,), lambda rows: setattr(rows.get(account_id), "last_error", "x"))
        probe = subprocess.run([sys.executable, "-c", _DMS_PROBE, str(home / "pool.db-shm")],
                               capture_output=True, text=True, timeout=60)
        assert probe.stdout.strip() == "held", probe.stderr
    finally:
        second.close()


def test_the_descriptors_kept_for_reading_wal_headers_follow_the_files_that_exist(tmp_path: Path) -> None:
    """Never closed while a store of the process uses their -shm file (see above), and let go of
    once SQLite deletes the file: 40 homes opened and closed one after another leave a handful."""
    from authpool.storage import sqlite as sqlite_module

    gc.collect()  # stores other tests left to the collector: their -shm files go, and their descriptors
    before = sqlite_module._shm_descriptors.count()
    for n in range(40):
        store = Store(Home.open(tmp_path / f"home-{n}"))
        store.update(lambda pool: None)  # creates pool.db; reading it creates pool.db-shm
        assert store._wal is not None and store._wal.read() is not None
        store.close()  # the last connection: SQLite deletes pool.db-shm
        assert not (tmp_path / f"home-{n}" / "pool.db-shm").exists()
    assert sqlite_module._shm_descriptors.count() <= before + 2


_KEEPER = """
import sqlite3, sys
held = [sqlite3.connect(path) for path in sys.argv[1:]]
for conn in held:
    conn.execute("SELECT count(*) FROM meta").fetchone()
print("ready", flush=True)
sys.stdin.read()
"""


def test_homes_that_other_processes_keep_open_do_not_pile_up_descriptors(tmp_path: Path) -> None:
    """Their -shm files are never deleted while another process has them open, and a descriptor of
    a file that exists is never closed: past a bound, stores read without one (data_version)."""
    from authpool.storage import sqlite as sqlite_module

    kept = sqlite_module._ShmDescriptors._KEPT
    homes = [tmp_path / f"home-{n}" for n in range(kept + 6)]
    for home in homes:
        Store(Home.open(home)).update(lambda pool: None)
    keeper = subprocess.Popen([sys.executable, "-c", _KEEPER, *(str(h / "pool.db") for h in homes)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert keeper.stdout is not None and keeper.stdout.readline().strip() == "ready"
        without = 0
        for home in homes:
            store = Store(Home.open(home))
            account = store.read()
            assert account is not None and store._wal is not None
            without += store._wal.read() is None
            store.close()
        assert sqlite_module._shm_descriptors.count() <= kept
        assert without >= 6
        last = Store(Home.open(homes[-1]))  # without a descriptor: still sees another connection's commit
        other = Store(Home.open(homes[-1]))
        try:
            first = last.read().revision
            other.update(lambda pool: None)
            assert last.read().revision == first + 1
        finally:
            last.close()
            other.close()
        probe = subprocess.run([sys.executable, "-c", _DMS_PROBE, str(homes[0] / "pool.db-shm")],
                               capture_output=True, text=True, timeout=60)
        assert probe.stdout.strip() == "held"  # the keeper's lock, untouched by what this process did
    finally:
        assert keeper.stdin is not None
        keeper.stdin.close()
        keeper.wait(timeout=60)


def test_a_child_forked_while_another_thread_holds_the_descriptor_registry_can_use_it(tmp_path: Path) -> None:
    import multiprocessing

    from authpool.storage import sqlite as sqlite_module

    store = Store(Home.open(tmp_path / "home"))
    store.update(lambda pool: None)
    shm = tmp_path / "home" / "pool.db-shm"

    def child() -> None:
        found = sqlite_module._shm_descriptors.take(shm)
        os._exit(0 if found is not None else 3)

    held = sqlite_module._shm_descriptors._guard
    held.acquire()  # as if another thread were inside take() at the fork
    try:
        process = multiprocessing.get_context("fork").Process(target=child)
        process.start()
    finally:
        held.release()
    process.join(timeout=60)
    if process.exitcode is None:
        process.kill()
    assert process.exitcode == 0
    store.close()
