"""The pool database (pool.db) under concurrency, crashes and bad input."""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from authpool import (
    AccountNotFound,
    DuplicateLabel,
    Home,
    LockTimeout,
    Pool,
    Store,
    StoreCorrupt,
    StoreVersionError,
    TokenSet,
)
from authpool.storage.lock import Lock
from tests.conftest import REPO, raw_pool, run_cli, run_worker, start_worker

KEYS_SEEN: dict[str, str] = {}


def make_pool_with(home: Path, *labels: str) -> Pool:
    pool = Pool.open(home)
    for label in labels:
        KEYS_SEEN[label] = f"sk-test-{label}-{os.urandom(8).hex()}"
        pool.add_api_key("openai", label, KEYS_SEEN[label])
    return pool


def raw_pool_backend(pool: Pool) -> str | None:
    return pool.store.read().secret_backend


def test_four_processes_of_250_updates_lose_no_update(home: Path) -> None:
    """4 processes x 250 locked increments on one account end at exactly 1000, other fields intact."""
    pool = make_pool_with(home, "a", "b")
    before = pool.get("openai/a")
    procs = [start_worker("increment", before.id, "250") for _ in range(4)]
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
    after = Pool.open(home).get("openai/a")
    assert after.counters.requests == 1000
    assert after.model_dump(exclude={"counters"}) == before.model_dump(exclude={"counters"})
    assert Pool.open(home).get("openai/b").counters.requests == 0


def test_row_updates_from_four_processes_see_their_own_and_each_other_s_last_writes(home: Path) -> None:
    """4 processes x 150 rounds, each round one row update of each of three accounts: a process's
    next update of a row takes its own last write without reading it again only while nobody else
    wrote the row since, so every increment lands whichever way the turns fall (600 for the row all
    four write, 450 for the two that three of them write)."""
    pool = make_pool_with(home, "a", "b", "c")
    ids = [pool.get(f"openai/{label}").id for label in "abc"]
    orders = [ids, ids[::-1], ids[1:] + ids[:1], ids[:1]]  # the last one only ever writes "a"
    procs = [start_worker("increment-rows", ",".join(order), "150") for order in orders]
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
    after = Pool.open(home)
    assert [after.get(f"openai/{label}").counters.requests for label in "abc"] == [600, 450, 450]


def test_a_store_s_own_last_write_is_forgotten_when_an_older_database_is_put_back_by_hand(home: Path) -> None:
    """An older ``pool.db`` copied into place by hand starts its change numbers again from the
    copy's (``doctor --restore`` moves them on by a million; a copy does not): a row another process
    then writes may carry the number of this process's last commit, and is read afresh, not taken
    for this process's own write."""
    pool = make_pool_with(home, "a", "b")
    a, b = pool.get("openai/a").id, pool.get("openai/b").id
    mine, other = Store(Home.open(home)), Store(Home.open(home))

    def note(account_id: str, text: str) -> Any:
        def change(rows: Any) -> None:
            rows.get(account_id).last_error = text
        return change

    try:
        other.update_accounts((a,), note(a, "in the copy"))
        other._backup()
        mine.update_accounts((a,), note(a, "mine, undone by the copy"))
        copy = home / "copied-back.db"
        shutil.copyfile(home / "pool.db.bak", copy)
        os.replace(copy, home / "pool.db")
        for suffix in ("-wal", "-shm"):
            (home / f"pool.db{suffix}").unlink(missing_ok=True)
        mine.update_accounts((a,), lambda rows: None)  # sees the new file, writes nothing
        other.update_accounts((a,), note(a, "after the copy"))  # the number mine's last commit had
        other.update_accounts((b,), note(b, "later"))  # mine's snapshot falls behind
        seen: list[str | None] = []
        mine.update_accounts((a,), lambda rows: seen.append(rows.get(a).last_error))
        assert seen == ["after the copy"]
    finally:
        mine.close()
        other.close()


def _crash_child(home: str, account_id: str, done: Any) -> None:  # a raw shared c_long
    os.environ["AUTHPOOL_HOME"] = home
    store = Store(Home.open(Path(home)))
    while True:
        def bump(p):  # type: ignore[no-untyped-def]
            acc = p.find(account_id)
            acc.counters.requests += 1
            acc.last_error = "x" * random.randint(0, 4000)  # vary the size: torn writes would show
            return acc.counters.requests

        n = store.update(bump)
        done.value = n


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_a_writer_killed_at_random_moments_never_leaves_a_broken_file(home: Path) -> None:
    """200 SIGKILLs mid-write: the database always opens and holds the last completed write."""
    pool = make_pool_with(home, "a")
    account_id = pool.get("openai/a").id
    ctx = multiprocessing.get_context("fork")
    # lock=False: a child killed while holding the Value's lock would leave it locked forever.
    done = ctx.Value("q", 0, lock=False)
    rng = random.Random(1234)
    for _ in range(200):
        child = ctx.Process(target=_crash_child, args=(str(home), account_id, done))
        child.start()
        time.sleep(rng.uniform(0.0, 0.02))
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        child.join()
        completed = done.value
        value = raw_pool(home)["accounts"][0]["counters"]["requests"]
        # The write in flight may have committed before the child recorded it.
        assert value in (completed, completed + 1)
        done.value = value
    assert Store(Home.open(home)).read().find(account_id).counters.requests == done.value
    # The lock is free again: dead holders release flock with their file descriptors.
    with Lock(home / "locks" / "pool.lock", timeout=2):
        pass


def test_a_stale_reader_cannot_undo_another_process_s_token_rotation(home: Path) -> None:
    """A reads, B rotates the secret and bumps the generation, A records a change: B's rotation survives."""
    pool = Pool.open(home)
    tokens = TokenSet.parse({"access_token": "lpat-old", "refresh_token": "lprt-old", "expires_in": 600})
    acc = pool.add_oauth("anthropic", "me", tokens)
    other = pool.add_api_key("anthropic", "key", "sk-ant-test-other")
    snapshot = pool.store.read()  # A's view, taken before B's rotation
    assert snapshot.find(acc.id).secret_generation == 1

    r = run_worker("rotate", acc.id, input=json.dumps({"access_token": "lpat-new", "refresh_token": "lprt-new"}))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["generation"] == 2

    def unrelated(p):  # type: ignore[no-untyped-def]
        p.find(other.id).enabled = False

    pool.store.update(unrelated)
    final = Pool.open(home)
    assert final.get(acc.id).secret_generation == 2
    assert final.get(other.id).enabled is False
    assert final.secret_of(final.get(acc.id)).refresh_token == "lprt-new"
    # A's own process sees the rotation too: its cache is keyed by generation.
    assert pool.secret_of(pool.get(acc.id)).refresh_token == "lprt-new"


def test_a_damaged_database_is_reported_and_never_overwritten(home: Path) -> None:
    """A pool.db that is not a database gives a clear error naming it and the backup; writes leave it alone."""
    pool = make_pool_with(home, "a", "b")
    assert home.joinpath("pool.db.bak").exists(), "the first write takes a backup"
    pool.store.close()
    damaged = b"SQLite format 3\x00" + b"\x13" * 4000
    home.joinpath("pool.db").write_bytes(damaged)
    for leftover in ("pool.db-wal", "pool.db-shm"):
        home.joinpath(leftover).unlink(missing_ok=True)
    fresh = Pool.open(home)
    with pytest.raises(StoreCorrupt) as e:
        fresh.store.read()
    assert str(home / "pool.db") in str(e.value) and "pool.db.bak" in str(e.value)
    with pytest.raises(StoreCorrupt):
        fresh.set_enabled("openai/a", False)
    assert home.joinpath("pool.db").read_bytes() == damaged
    r = run_cli("accounts", "list")
    assert r.returncode == 1 and "corrupt" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_doctor_restores_the_last_good_copy_and_keeps_the_damaged_file(home: Path) -> None:
    """`authpool doctor --restore` puts the backup back and keeps the damaged file aside."""
    make_pool_with(home, "a", "b").store.close()
    with sqlite3.connect(f"file:{home / 'pool.db.bak'}?mode=ro", uri=True) as bak:
        backed_up = [json.loads(d)["label"] for (d,) in bak.execute("SELECT doc FROM accounts ORDER BY position")]
    bak.close()
    home.joinpath("pool.db").write_text("garbage")
    r = run_cli("doctor", "--restore")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "restored" in r.stdout
    assert [a.label for a in Pool.open(home).accounts()] == backed_up  # the state the backup was taken in
    assert list(home.glob("pool.db.corrupt-*"))[0].read_text() == "garbage"


def test_a_database_from_a_newer_authpool_is_refused_untouched(home: Path) -> None:
    """A future layout version is refused with a message that says to upgrade."""
    make_pool_with(home, "a").store.close()
    with sqlite3.connect(home / "pool.db") as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'layout'")
    conn.close()
    before = raw_pool(home)
    with pytest.raises(StoreVersionError, match="upgrade authpool"):
        Pool.open(home).accounts()
    r = run_cli("accounts", "add-key", "openai", "--label", "x", input="sk-test-x")
    assert r.returncode == 1 and "schema version 99" in r.stderr
    assert raw_pool(home) == before


def test_a_pool_file_from_a_newer_authpool_is_refused_untouched(home: Path) -> None:
    """A home of an older authpool whose pool.json has a future schema_version is refused, not moved."""
    home.mkdir(mode=0o700)
    future = json.dumps({"schema_version": 99, "accounts": [], "new_thing": True})
    home.joinpath("pool.json").write_text(future)
    with pytest.raises(StoreVersionError, match="upgrade authpool"):
        Pool.open(home).accounts()
    r = run_cli("accounts", "add-key", "openai", "--label", "x", input="sk-test-x")
    assert r.returncode == 1 and "schema version 99" in r.stderr
    assert home.joinpath("pool.json").read_text() == future
    assert not home.joinpath("pool.db").exists()


def test_a_structurally_invalid_row_names_the_field_without_echoing_values(home: Path) -> None:
    """Validation errors say which row and field are wrong, not what they contain."""
    acc = make_pool_with(home, "a").get("openai/a")
    with sqlite3.connect(home / "pool.db") as conn:
        doc = json.loads(conn.execute("SELECT doc FROM accounts WHERE id = ?", (acc.id,)).fetchone()[0])
        conn.execute("UPDATE accounts SET doc = ? WHERE id = ?", (json.dumps({**doc, "kind": "sk-secretish"}), acc.id))
    conn.close()
    with pytest.raises(StoreCorrupt) as e:
        Pool.open(home).accounts()
    assert f"account row {acc.id!r}" in str(e.value) and "kind" in str(e.value)
    assert "sk-secretish" not in str(e.value)


def test_a_home_of_an_older_authpool_moves_into_pool_db_on_the_first_write_and_keeps_pool_json(home: Path) -> None:
    """pool.json is read as it is until the first write, which moves every account into pool.db."""
    pool = make_pool_with(home, "a", "b")
    accounts = raw_pool(home)["accounts"]
    pool.store.close()
    for name in ("pool.db", "pool.db-wal", "pool.db-shm", "pool.db.bak"):
        home.joinpath(name).unlink(missing_ok=True)
    legacy = json.dumps({"schema_version": 1, "secret_backend": raw_pool_backend(pool), "accounts": accounts})
    home.joinpath("pool.json").write_text(legacy)
    older = Pool.open(home)
    assert [a.label for a in older.accounts()] == ["a", "b"]
    assert not home.joinpath("pool.db").exists(), "reading moves nothing"
    older.set_enabled("openai/b", False)
    assert home.joinpath("pool.json.moved").read_text() == legacy
    assert json.loads(home.joinpath("pool.json").read_text())["moved_to"] == "pool.db"  # the marker
    moved = raw_pool(home)
    assert [(a["label"], a["enabled"]) for a in moved["accounts"]] == [("a", True), ("b", False)]
    assert older.secret_of(older.get("openai/a")).api_key == KEYS_SEEN["a"]
    assert (home / "pool.db").stat().st_mode & 0o777 == 0o600


def test_unknown_account_and_duplicate_label_are_clear_errors_that_change_nothing(home: Path) -> None:
    """Bad references fail cleanly and leave the pool as it was."""
    pool = make_pool_with(home, "a")
    before = raw_pool(home), pool.store.version()
    with pytest.raises(AccountNotFound):
        pool.set_enabled("openai/nope", False)
    with pytest.raises(DuplicateLabel):
        pool.add_api_key("openai", "A", "sk-test-dup")  # labels are case-insensitive
    assert (raw_pool(home), Pool.open(home).store.version()) == before
    r = run_cli("accounts", "disable", "nope")
    assert r.returncode == 1 and "no account 'nope'" in r.stderr


def test_a_failed_write_changes_nothing(home: Path) -> None:
    """When the database refuses the write, the error is one clear line and nothing changes.

    A read-only filesystem cannot be made for root in a test, so the CLI runs with every SQLite
    connection in ``query_only`` mode: SQLite refuses each write exactly as on a read-only disk."""
    make_pool_with(home, "a").store.close()
    before = raw_pool(home)
    code = (
        "import sqlite3, sys\n"
        "real = sqlite3.connect\n"
        "def connect(*args, **kwargs):\n"
        "    conn = real(*args, **kwargs)\n"
        "    if 'pool.db' in str(args[0]):  # the metadata store's (the vault is SQLite too)\n"
        "        conn.execute('PRAGMA query_only = 1')\n"
        "    return conn\n"
        "sqlite3.connect = connect\n"
        "from authpool.server.cli.main import main\n"
        "sys.exit(main(['accounts', 'add-key', 'openai', '--label', 'b' * 90]))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], input="sk-test-" + "k" * 40, capture_output=True,
                       text=True, cwd=REPO, timeout=60)
    assert r.returncode == 1, r.stderr
    assert "could not write" in r.stderr and "nothing was changed" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert raw_pool(home) == before
    # the API key written before the metadata failed was removed again
    assert len(Pool.open(home).accounts()) == 1


def test_a_commit_whose_snapshot_could_not_be_derived_is_still_seen_by_the_next_read(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The snapshot after a commit is derived outside the pool lock; if that fails, the committed
    change is not hidden behind the old snapshot: the next read loads the database afresh."""
    from authpool.storage import localstore

    pool = make_pool_with(home, "a")
    account_id = pool.get("openai/a").id

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("deriving failed")

    monkeypatch.setattr(localstore._Written, "derive", broken)
    with pytest.raises(RuntimeError):
        pool.set_enabled(account_id, False)
    monkeypatch.undo()
    assert not pool.store.read().find(account_id).enabled
    assert not raw_pool(home)["accounts"][0]["enabled"]


def test_wrong_modes_are_repaired_on_open_and_reported_by_doctor(home: Path) -> None:
    """A world-readable pool database is made 0600 again; doctor says so."""
    make_pool_with(home, "a")
    os.chmod(home / "pool.db", 0o644)
    os.chmod(home, 0o755)
    r = run_cli("doctor")
    assert r.returncode == 0, r.stdout
    assert "fixed" in r.stdout and "0644" in r.stdout and "0755" in r.stdout
    assert (home / "pool.db").stat().st_mode & 0o777 == 0o600
    assert home.stat().st_mode & 0o777 == 0o700
    os.chmod(home / "pool.db", 0o640)
    Pool.open(home)
    assert (home / "pool.db").stat().st_mode & 0o777 == 0o600


def test_a_lock_held_too_long_times_out_naming_the_holder(home: Path) -> None:
    """A lock wait ends with an error that says which process holds it."""
    make_pool_with(home, "a")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from authpool.storage.lock import Lock\n"
         f"l = Lock(Path({str(home / 'locks' / 'pool.lock')!r})); l.acquire()\n"
         "print('held', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        store = Store(Home.open(home), lock_timeout=0.3)
        with pytest.raises(LockTimeout) as e:
            store.update(lambda p: None)
        assert f"pid {holder.pid}" in str(e.value)
    finally:
        holder.kill()
        holder.wait()


def test_async_updates_do_not_block_the_event_loop(home: Path) -> None:
    """While another process holds the lock, an awaiting aupdate lets other tasks run."""
    import anyio

    pool = make_pool_with(home, "a")
    ticks = 0

    async def main() -> None:
        nonlocal ticks
        lock = Lock(home / "locks" / "pool.lock")
        # Hold the lock from this process in a thread that releases it after 0.3 s.
        import threading

        lock.acquire()
        threading.Timer(0.3, lock.release).start()

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await anyio.sleep(0.01)

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            await pool.store.aupdate(lambda p: None)
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert ticks >= 10


def test_reads_see_other_processes_writes_immediately(home: Path) -> None:
    """The cached snapshot follows another process's commit."""
    pool = make_pool_with(home, "a")
    assert pool.get("openai/a").enabled
    assert run_cli("accounts", "disable", "openai/a").returncode == 0
    assert pool.get("openai/a").enabled is False


def test_a_reader_sees_every_commit_of_another_connection_and_runs_no_statement_when_none_came(
        home: Path) -> None:
    """The read path's cheap check (SQLite's WAL-index header) never hides a commit, even while
    checkpoints restart the log again and again, and a read with nothing new costs no query."""
    gc.collect()  # stores other tests left to the collector let go of their -shm descriptors
    pool = make_pool_with(home, "a")
    account_id = pool.get("openai/a").id
    writer = Store(Home.open(home))  # its own connection: to SQLite, another process
    reader = Store(Home.open(home))
    statements: list[str] = []
    salts: set[bytes] = set()
    try:
        reader.read()
        writer.read()
        assert reader._conn is not None and writer._conn is not None
        writer._conn.execute("PRAGMA wal_autocheckpoint=4")  # a checkpoint, then a log restart, every few commits
        reader._conn.set_trace_callback(statements.append)
        for n in range(300):
            def note(rows: Any, n: int = n) -> None:
                rows.get(account_id).last_error = f"change {n}"
            writer.update_accounts((account_id,), note)
            header = reader._wal.read() if reader._wal is not None else None
            assert header is not None
            salts.add(header[32:40])  # aSalt (https://www.sqlite.org/walformat.html)
            assert reader.read().get(account_id).last_error == f"change {n}"  # type: ignore[union-attr]
            statements.clear()
            assert reader.read().get(account_id).last_error == f"change {n}"  # type: ignore[union-attr]
            assert statements == [], statements  # nothing committed since: no statement at all
        assert len(salts) > 10  # the log did restart, many times: a header naming only the last frame repeats
    finally:
        writer.close()
        reader.close()


def test_without_a_wal_index_header_to_trust_reads_fall_back_to_sqlite(tmp_path: Path) -> None:
    from authpool.storage.sqlite import WalHeader

    assert WalHeader(tmp_path / "none.db").read() is None
    (tmp_path / "odd.db-shm").write_bytes(b"\x01" * 4096)  # not a header this code knows
    odd = WalHeader(tmp_path / "odd.db")
    assert odd.read() is None and odd.follows()
    (tmp_path / "odd.db-shm").unlink()
    assert not odd.follows()


def test_a_header_read_while_its_descriptor_was_let_go_of_is_not_trusted(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry marks a descriptor before closing it (its file was deleted); by the time the
    read returns, the number may be another file's, whose header can equal the saved one."""
    store = Store(Home.open(home))
    try:
        store.update(lambda pool: None)
        wal = store._wal
        assert wal is not None and wal._descriptor is not None and wal.read() is not None
        descriptor, fd, real = wal._descriptor, wal._descriptor.fd, os.pread

        def pread(n: int, size: int, offset: int) -> bytes:
            data = real(n, size, offset)
            descriptor.fd = None  # let go of during the read
            return data

        monkeypatch.setattr(os, "pread", pread)
        assert wal.read() is None
        monkeypatch.undo()
        descriptor.fd = fd
        assert wal.read() is not None
    finally:
        store.close()


@pytest.mark.parametrize("argv", [
    ["accounts", "list"],
    ["accounts", "list", "--json"],
    ["status"],
    ["doctor"],
    ["request", "openai", "GET", "http://example.invalid/x"],
])
def test_ad_hoc_commands_never_import_the_mcp_sdk(home: Path, argv: list[str]) -> None:
    """The CLI stays fast: only serve and demo load the (heavy) MCP SDK."""
    code = (
        "import sys\n"
        "from authpool.server.cli.main import main\n"
        f"rc = main({argv!r})\n"
        "print('MCP_LOADED' if any(m == 'mcp' or m.startswith('mcp.') for m in sys.modules) else 'NO_MCP')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.stdout.strip().splitlines()[-1] == "NO_MCP", r.stdout + r.stderr


def test_the_library_exports_exactly_what_its_all_lists() -> None:
    """Every name in authpool.__all__ resolves (lazy ones too), and every error class is exported."""
    import authpool
    import authpool.errors

    for name in authpool.__all__:
        assert getattr(authpool, name) is not None, name
    errors = {n for n, v in vars(authpool.errors).items() if isinstance(v, type) and issubclass(v, Exception)
              and v.__module__ == "authpool.errors"}
    assert errors <= set(authpool.__all__), errors - set(authpool.__all__)
    assert sorted(authpool.errors.__all__) == sorted(errors)
