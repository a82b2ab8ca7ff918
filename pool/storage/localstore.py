"""The local metadata store: ``pool.db`` in the home, an SQLite database, one row per account.

Why SQLite and not the JSON file it replaces: a change rewrote and re-validated every account,
so a pool of thousands of accounts paid for all of them on every cooldown, every counter flush
and every account added (quadratic to build). Here a change writes the rows it changed, in one
transaction, and a reader fetches only the rows changed since its cached snapshot. SQLite is in
Python's standard library, atomic, crash-safe (write-ahead log, flushed before an update returns)
and detects a damaged file. See ``docs/design.md``, "The local store is SQLite".

- Every change runs under the home's pool lock (:class:`~authpool.storage.lock.Lock`: waiters
  queue in the kernel, in order, unlike SQLite's own sleep-and-retry busy handler) and in one
  ``BEGIN IMMEDIATE`` transaction: read the rows the change names fresh (from the snapshot if no
  other process committed since, else from the database), apply the caller's change to copies,
  validate what changed, write only that, commit. Nobody ever writes a snapshot taken earlier
  over another process's change. The lock is held for the transaction alone: the snapshot after
  it, and the flush of the log to the disk, come after the lock is let go (and before the update
  returns), so writers of other processes do not wait for them.
- Each commit moves a change number (``meta.version``) and stamps the rows it wrote with it;
  removals leave a row in ``removed``. A reader that has a snapshot at change N reads the rows
  stamped after N and derives the next snapshot from its own, reusing every unchanged account.
  ``PRAGMA data_version`` tells, without reading anything, whether another connection committed.
- Reads take no lock (the write-ahead log gives each reader a consistent view).
- A damaged database or row is refused, never overwritten: the error names it and the last good
  copy (``pool.db.bak``, taken at most hourly with SQLite's online backup).
- A home written by authpool 0.1 holds ``pool.json``: it is read (strictly) until the
  first write, which moves it into ``pool.db`` and keeps the old file as ``pool.json.moved``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Collection, Hashable
from pathlib import Path
from typing import Any, TypeVar

import anyio
from pydantic import ValidationError

from authpool.accounts.model import SCHEMA_VERSION as DOC_SCHEMA
from authpool.accounts.model import Account, ChangeLog, PoolFile, Rows, SessionBinding
from authpool.errors import (
    DuplicateLabel,
    InvalidInput,
    LockLost,
    StoreCorrupt,
    StoreError,
    StoreVersionError,
    StoreWriteError,
)
from authpool.home import FILE_MODE, Home
from authpool.storage.atomicfile import fsync_dir, write_atomic
from authpool.storage.legacy import MOVED_MARKER, extras_too_deep, read_legacy, validation_summary
from authpool.storage.lock import DEFAULT_TIMEOUT, Lock
from authpool.storage.sqlite import WalHeader, create_aside, open_existing

__all__ = ["LAYOUT_VERSION", "Store"]

log = logging.getLogger("authpool")

T = TypeVar("T")

LAYOUT_VERSION = 1  # the tables of pool.db; a newer one is refused (see _check_layout)
_LOCK_LOST_ATTEMPTS = 3  # a lock file deleted under us this often in a row: someone keeps deleting it
_BACKUP_EVERY = 3600.0  # seconds between backups (each copies the whole database)
_BACKUP_LOOK_EVERY = 60.0  # seconds between a process's looks at the backup's age
_REMOVED_KEPT = 10_000  # change numbers a removal stays visible for; an older snapshot reloads whole
_fdatasync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync
_IDENTITY_EVERY = 0.5  # seconds between a reader's looks at whether pool.db was replaced
_IDS_PER_QUERY = 500  # accounts read by id in one query (SQLite allows 32,766 parameters since 3.32)

_TABLES = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    label_key TEXT NOT NULL,
    position INTEGER NOT NULL,
    doc TEXT NOT NULL,
    changed INTEGER NOT NULL,
    UNIQUE (provider, label_key)
);
CREATE INDEX accounts_changed ON accounts (changed);
CREATE INDEX accounts_position ON accounts (position);
CREATE TABLE sessions (key TEXT PRIMARY KEY, doc TEXT NOT NULL, changed INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX sessions_changed ON sessions (changed);
CREATE TABLE removed (kind TEXT NOT NULL, key TEXT NOT NULL, changed INTEGER NOT NULL, PRIMARY KEY (kind, key))
    WITHOUT ROWID;
CREATE INDEX removed_changed ON removed (changed);
"""


class Store:
    """The metadata store of one home directory (``pool.db``).

    Example:
        >>> store = Store(Home.open())  # doctest: +SKIP
        >>> def disable(rows): rows.get("a2b3c4d5").enabled = False  # doctest: +SKIP
        >>> store.update_accounts(["a2b3c4d5"], disable)  # doctest: +SKIP
    """

    def __init__(self, home: Home, *, lock_timeout: float = DEFAULT_TIMEOUT) -> None:
        self.home = home
        self.path = home.pool_db
        self.legacy_path = home.pool_file
        self.backup_path = self.path.with_name(self.path.name + ".bak")
        self.lock = Lock(home.lock_file("pool"), lock_timeout)
        self._guard = threading.RLock()  # the connection and the cache, shared by this process's threads
        self._conn: sqlite3.Connection | None = None
        self._cache: PoolFile | None = None
        self._data_version: int | None = None  # PRAGMA data_version when the cache was current
        self._wal: WalHeader | None = None  # the connection's WAL-index header, read before data_version
        self._header: bytes | None = None  # the header when the cache was last known current
        # The accounts this process's last commit wrote and its change number: while other processes
        # commit too, the snapshot falls behind, and the next update of the same rows takes them from
        # here instead of parsing its own last write again (see _fresh_rows).
        self._own: tuple[int, dict[str, Account]] | None = None
        self._identity: tuple[int, int] | None = None  # (device, inode) of the pool.db the connection has open
        self._identity_checked = 0.0  # monotonic time of the last look at the path (reads look twice a second)
        self._dir_flushed = False  # the home directory flushed since the connection opened (its -wal entry)
        self._legacy: tuple[tuple[int, int, int], PoolFile] | None = None
        self._backup_look_at = 0.0  # monotonic time before which the backup is not looked at again
        self._history = ChangeLog()

    # -- MetadataStore: reading -------------------------------------------------------------

    @property
    def location(self) -> str:
        """The database's path."""
        return str(self.path)

    def read(self) -> PoolFile:
        """The current metadata as a snapshot (never changed; indexed for lookups).

        Raises:
            StoreCorrupt, StoreVersionError: the database cannot be used (it is left untouched).
        """
        with self._guard:
            conn = self._connection(create=False)
            if conn is None:
                return self._without_database()
            try:
                if conn.in_transaction:
                    # A change function of this thread's own update reading the pool (the guard keeps
                    # other threads out meanwhile): the transaction's view is the freshest there is,
                    # and a second BEGIN would fail.
                    return self._catch_up(conn)
                # Read before data_version: a commit in between shows as a changed header next time.
                header = self._wal.read() if self._wal is not None else None
                if self._cache is not None and header is not None and header == self._header:
                    return self._cache  # nobody committed: the common case, one pread
                if self._cache is not None and self._data_version == _data_version(conn):
                    self._header = header
                    return self._cache
                conn.execute("BEGIN")
                try:
                    self._catch_up(conn)
                    self._data_version = _data_version(conn)
                    self._header = header
                finally:
                    conn.execute("COMMIT")
            except sqlite3.OperationalError as e:
                raise StoreError(f"cannot read {self.path}: {e}") from None
            except sqlite3.DatabaseError as e:
                raise self._damaged(e) from None
            assert self._cache is not None  # noqa: S101 - _catch_up always leaves one
            return self._cache

    def peek(self) -> PoolFile:
        """:meth:`read`: a local database answers at once."""
        return self.read()

    def now(self) -> float:
        """This machine's clock: every process using the home runs on it."""
        return time.time()

    def version(self) -> Hashable:
        """The change number of the metadata (moves with every commit, of any process)."""
        return self.read().revision

    def named_lock(self, name: str, timeout: float) -> Lock:
        """The lock file ``locks/NAME.lock`` of the home (never deleted)."""
        return Lock(self.home.lock_file(name), timeout)

    # -- MetadataStore: writing -------------------------------------------------------------

    def update_accounts(self, ids: Collection[str], change: Callable[[Rows], T]) -> T:
        """Apply ``change`` to fresh copies of the accounts ``ids`` and the session bindings, under
        the lock; write the rows it changed, added (``Rows.add``) or removed (``Rows.remove``).

        Raises:
            InvalidInput: the result is invalid (nothing is written); DuplicateLabel for a taken label.
            LockTimeout, LockLost, StoreCorrupt, StoreVersionError, StoreWriteError: as :meth:`update`.
        """
        wanted = list(dict.fromkeys(ids))
        return self._transaction(lambda conn, version: self._apply_rows(conn, version, wanted, change))

    def update(self, change: Callable[[PoolFile], T]) -> T:
        """Apply ``change`` to a fresh copy of the whole pool under the lock and save what changed.

        ``change`` mutates the :class:`PoolFile` it is given (and may return a value, which
        ``update`` returns). If it raises, nothing is written. The result is validated first; an
        invalid one (say, a duplicate label) raises :class:`InvalidInput`. If the lock file is
        deleted while held, ``change`` is applied again to a fresh read, so it must depend only on
        the pool it is given. Copying the whole pool costs in proportion to its size: the hot
        paths use :meth:`update_accounts`.

        Raises:
            LockTimeout: another process held the lock too long.
            StoreCorrupt, StoreVersionError: the database cannot be used (left untouched).
            StoreWriteError: the disk refused the write (nothing was written).
            LockLost: the lock file kept being deleted while held (nothing was written).
        """
        return self._transaction(lambda conn, version: self._apply_whole(conn, self._catch_up(conn), change))

    async def aupdate(self, change: Callable[[PoolFile], T]) -> T:
        """:meth:`update` for async callers: waits for the lock in a worker thread."""
        return await anyio.to_thread.run_sync(self.update, change)

    def _transaction(self, body: Callable[[sqlite3.Connection, int], tuple[T, _Written]]) -> T:
        deadline = time.monotonic() + self.lock.timeout
        for attempt in range(1, _LOCK_LOST_ATTEMPTS + 1):
            try:
                return self._locked(body, max(0.0, deadline - time.monotonic()))
            except LockLost as e:
                # Our lock file was deleted or replaced while we held it: another process may
                # have written since our read. Nothing was written; redo the change on a fresh
                # read under the lock file that is there now.
                if attempt == _LOCK_LOST_ATTEMPTS:
                    raise
                log.warning("%s; applying the change again (attempt %d/%d)", e, attempt + 1, _LOCK_LOST_ATTEMPTS)
        raise AssertionError("unreachable")  # pragma: no cover

    def _locked(self, body: Callable[[sqlite3.Connection, int], tuple[T, _Written]], timeout: float) -> T:
        self.lock.acquire(timeout)
        held = True
        committed = False
        backup_due = False
        try:
            with self._guard:
                conn = self._connection(create=True)
                assert conn is not None  # noqa: S101 - create=True
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as e:
                    raise StoreWriteError(f"could not write {self.path}: {e}; nothing was changed") from None
                except sqlite3.DatabaseError as e:
                    raise self._damaged(e) from None
                try:
                    current = _meta_int(conn, "version")
                    result, written = body(conn, current)
                    if written.empty:
                        conn.execute("ROLLBACK")
                        return result
                    version = current + 1
                    written.commit_rows(conn, version)
                    _set_meta(conn, "version", version)
                    if version % 1000 == 0:
                        _prune_removed(conn, version)
                    self.lock.ensure_held()  # a lost lock: another process may be writing too
                    conn.execute("COMMIT")
                    committed = True
                except BaseException as e:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    if isinstance(e, sqlite3.OperationalError):
                        raise StoreWriteError(f"could not write {self.path}: {e}; nothing was changed") from None
                    if isinstance(e, sqlite3.DatabaseError):
                        raise self._damaged(e) from None
                    raise
                # Committed (written, not yet flushed: see _flush): other processes may write now.
                # The version mark is read before they can (our own commit does not move it), so a
                # later commit of theirs is seen as a change. Whatever else is left (the snapshot,
                # the flush) happens outside the pool lock, so the lock is held for the transaction
                # alone and the next writer in line goes on meanwhile.
                mark = _data_version(conn)
                header = self._wal.read() if self._wal is not None else None  # ours, under the lock
                self.lock.release()
                held = False
                self._committed(written, current, mark, header)
                backup_due = self._backup_due()
        finally:
            if held:
                self.lock.release()
            if committed:
                self._flush()
        if backup_due:
            self._backup()
        return result

    def _committed(self, written: _Written, current: int, mark: int, header: bytes | None) -> None:
        """The snapshot after our commit of change ``current + 1`` (under the guard, not the lock)."""
        self._own = (current + 1, written.accounts)
        cache = self._cache
        if cache is None or cache.revision != current:
            # Others committed since our snapshot, and the change read only its own rows: the next
            # read catches up (their changes and ours, at once), instead of every writer copying
            # the whole pool's index for each commit it sees.
            self._data_version = self._header = None
            return
        try:
            self._cache = written.derive(cache, current + 1, self._history)
        except BaseException:
            self._cache = None  # never a snapshot without our commit: the next read loads afresh
            raise
        self._data_version, self._header = mark, header

    def _flush(self) -> None:
        """Make the last commit durable before the update returns: fsync the write-ahead log.

        SQLite runs with ``synchronous=NORMAL``: a commit is written to the log (so every process
        sees it, and a killed process loses nothing) but not flushed to the disk, and the log is
        flushed before each checkpoint, so a power loss can only lose the last commits, never
        damage the file. The writer flushes the log itself, after letting go of the pool lock and
        before returning: ``update`` still returns only once its change survives a power loss,
        but the next writer does not wait for this one's disk flush, and writers flushing at once
        share one. A later commit is written after ours in the same log (or ours was already
        checkpointed into the database, flushed), so whoever flushes flushes ours too.
        """
        path = self.path.with_name(self.path.name + "-wal")  # SQLite holds no lock on the log itself
        try:
            _fsync(path, data_only=True)
            if not self._dir_flushed:  # the log's name in the directory, once per connection
                fsync_dir(self.path.parent)
                self._dir_flushed = True
        except FileNotFoundError:
            # No log: never while a connection is open (the database is made in WAL mode, which
            # stays). pool.db itself is not flushed from here: closing a descriptor of it would drop
            # the locks SQLite holds on it for this process's connections (see WalHeader).
            return
        except OSError as e:
            raise StoreWriteError(f"could not flush {path} to disk: {e}") from None

    def _apply_rows(self, conn: sqlite3.Connection, version: int, ids: list[str],
                    change: Callable[[Rows], T]) -> tuple[T, _Written]:
        originals, sessions = self._fresh_rows(conn, version, ids)
        rows = Rows({i: _copied(a) for i, a in originals.items()}, dict(sessions))
        result = change(rows)
        written = _Written()
        for account_id in rows.removed:
            if account_id in originals:
                written.remove(account_id)
        for account_id, acc in rows.accounts.items():
            if account_id in rows.added:
                written.insert(acc)
            elif account_id in originals:
                written.maybe_update(originals[account_id], acc)
        written.sessions(sessions, rows.sessions)
        return result, written

    def _fresh_rows(self, conn: sqlite3.Connection, version: int,
                    ids: list[str]) -> tuple[dict[str, Account], dict[str, SessionBinding]]:
        """The accounts ``ids`` (those that exist) and the session bindings at change ``version``
        (inside the transaction). From the snapshot if it is current; else the named rows are read
        (reusing the snapshot's object for a row unchanged since) and the bindings caught up, without
        deriving a whole snapshot under the lock."""
        cache = self._cache
        if cache is None or cache.revision > version:
            cache = self._catch_up(conn)
        if cache.revision == version:
            return {i: a for i in ids if (a := cache.get(i)) is not None}, cache.sessions
        since = cache.revision
        own_version, own = self._own if self._own is not None else (0, {})
        found: dict[str, Account] = {}
        for start in range(0, len(ids), _IDS_PER_QUERY):
            chunk = ids[start:start + _IDS_PER_QUERY]
            marks = ", ".join("?" * len(chunk))
            for account_id, doc, stamped in conn.execute(
                    f"SELECT id, doc, changed FROM accounts WHERE id IN ({marks})", chunk):  # noqa: S608 - only ?s
                kept = (cache.get(account_id) if stamped <= since
                        else own.get(account_id) if stamped == own_version else None)
                found[account_id] = kept if kept is not None else self._account(account_id, doc)
        originals = {i: found[i] for i in ids if i in found}
        if since < _meta_int(conn, "removed_floor"):  # which bindings ended is forgotten: read them all
            return originals, {k: self._session(k, doc) for k, doc in conn.execute("SELECT key, doc FROM sessions")}
        bound = {k: self._session(k, doc) for k, doc in
                 conn.execute("SELECT key, doc FROM sessions WHERE changed > ?", (since,))}
        ended = {k for (k,) in conn.execute(
            "SELECT key FROM removed WHERE kind = 'session' AND changed > ?", (since,))} - bound.keys()
        if not bound and not ended:
            return originals, cache.sessions
        sessions = {k: v for k, v in cache.sessions.items() if k not in ended}
        sessions.update(bound)
        return originals, sessions

    def _apply_whole(self, conn: sqlite3.Connection, base: PoolFile,
                     change: Callable[[PoolFile], T]) -> tuple[T, _Written]:
        # A new, unfrozen PoolFile: the change searches it (no snapshot index) and mutates only copies.
        pool = PoolFile.model_construct(**base.model_dump(exclude={"accounts", "sessions"}),
                                        accounts=[a.model_copy(deep=True) for a in base.accounts],
                                        sessions=dict(base.sessions))
        result = change(pool)
        try:
            checked = PoolFile.model_validate(pool.model_dump())
        except ValidationError as e:
            raise InvalidInput(f"change rejected: {validation_summary(e)}") from None
        written = _Written()
        written.always = True
        after = {a.id: a for a in checked.accounts}
        for account_id in {a.id for a in base.accounts} - after.keys():
            written.remove(account_id)
        for acc in checked.accounts:
            before = base.get(acc.id)
            if before is None:
                written.insert(acc)
            else:
                written.maybe_update(before, acc)
        written.sessions(base.sessions, checked.sessions)
        written.pool_fields(_pool_fields(base), _pool_fields(checked))
        return result, written

    # -- the connection and the cache --------------------------------------------------------

    def _connection(self, *, create: bool) -> sqlite3.Connection | None:
        """This process's connection; None if there is no database yet (and ``create`` is false).

        ``create`` (only under the pool lock): make the database, moving ``pool.json`` into it.
        """
        if self._conn is not None:
            if not self._replaced(exact=create):
                return self._conn
            # `doctor --restore` put another pool.db in place (or it was deleted): commits to the
            # file this connection has open would reach nobody. Open the one at the path.
            log.warning("%s was replaced since this process opened it; opening it again", self.path)
            self._close()
        if self.path.is_symlink():
            raise self._symlink_refused()
        if not self.path.exists():
            if not create:
                return None
            self._create()
        try:
            # The identity first: a file put in place between the two (doctor --restore) then shows
            # as replaced and is opened again, never taken for the one the connection has open.
            st = os.stat(self.path)
            conn = open_existing(self.path, self.lock.timeout)
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"cannot open {self.path}: {e}") from None
        try:
            conn.execute("PRAGMA synchronous=NORMAL")  # flushed by the writer, outside the lock: _flush
            _check_layout(conn, self.path)
        except sqlite3.OperationalError as e:
            conn.close()
            raise StoreError(f"cannot read {self.path}: {e}") from None
        except sqlite3.DatabaseError as e:
            conn.close()
            raise self._damaged(e) from None
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._wal = WalHeader(self.path)  # after the first read: the -shm file exists and is kept
        self._identity, self._identity_checked = (st.st_dev, st.st_ino), time.monotonic()
        self._dir_flushed = False
        return conn

    def _replaced(self, *, exact: bool) -> bool:
        """Whether ``pool.db`` at the path is no longer the file this process's connection has open.
        Writers look every time (under the lock), readers at most twice a second."""
        now = time.monotonic()
        if not exact and now - self._identity_checked < _IDENTITY_EVERY:
            return False
        self._identity_checked = now
        if self._wal is not None and not self._wal.follows():
            # pool.db-shm is not the file the header is read from (deleted by hand, say): the header
            # would never move again. data_version answers from here on.
            self._wal = self._header = None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self._identity

    def _catch_up(self, conn: sqlite3.Connection) -> PoolFile:
        """Bring the cache up to the database's change number (inside a transaction); returns it."""
        version = _meta_int(conn, "version")
        cache = self._cache
        floor = _meta_int(conn, "removed_floor")
        if cache is not None and cache.revision == version:
            return cache
        if cache is None or cache.revision > version or cache.revision < floor:
            self._cache = self._load(conn, version)
        else:
            self._cache = self._changes(conn, cache, version)
        return self._cache

    def _load(self, conn: sqlite3.Connection, version: int) -> PoolFile:
        fields = self._pool_doc(conn)
        accounts = [self._account(i, doc) for i, doc in
                    conn.execute("SELECT id, doc FROM accounts ORDER BY position")]
        sessions = {k: self._session(k, doc) for k, doc in conn.execute("SELECT key, doc FROM sessions")}
        pool = PoolFile.model_construct(**fields, accounts=accounts, sessions=sessions)
        return pool.freeze(version, self._history)

    def _changes(self, conn: sqlite3.Connection, cache: PoolFile, version: int) -> PoolFile:
        """The snapshot at ``version`` derived from ``cache``: only rows stamped since are read."""
        since = cache.revision
        changed = {i: self._account(i, doc) for i, doc in
                   conn.execute("SELECT id, doc FROM accounts WHERE changed > ? ORDER BY position", (since,))}
        gone = {k for (k,) in conn.execute(
            "SELECT key FROM removed WHERE kind = 'account' AND changed > ?", (since,))} - changed.keys()
        sessions = {k: self._session(k, doc) for k, doc in
                    conn.execute("SELECT key, doc FROM sessions WHERE changed > ?", (since,))}
        ended = {k for (k,) in conn.execute(
            "SELECT key FROM removed WHERE kind = 'session' AND changed > ?", (since,))} - sessions.keys()
        fields = self._pool_doc(conn) if _meta_int(conn, "pool_changed") > since else None
        return cache.derive(version, self._history, changed, gone, sessions, ended, fields)

    def _pool_doc(self, conn: sqlite3.Connection) -> dict[str, Any]:
        raw = _meta(conn, "pool")
        try:
            fields = json.loads(raw) if raw else {}
        except ValueError:
            raise StoreCorrupt(self.path, "the pool's own fields are not JSON", self._backup_found()) from None
        if not isinstance(fields, dict):
            raise StoreCorrupt(self.path, "the pool's own fields are not a JSON object", self._backup_found())
        fields["schema_version"] = DOC_SCHEMA
        return fields

    def _account(self, account_id: str, doc: str) -> Account:
        try:
            acc = Account.model_validate_json(doc)
        except ValidationError as e:
            raise StoreCorrupt(self.path, f"account row {account_id!r}: {validation_summary(e)}",
                               self._backup_found()) from None
        if acc.id != account_id:
            raise StoreCorrupt(self.path, f"account row {account_id!r} holds account {acc.id!r}",
                               self._backup_found())
        return acc

    def _session(self, key: str, doc: str) -> SessionBinding:
        try:
            return SessionBinding.model_validate_json(doc)
        except ValidationError as e:
            raise StoreCorrupt(self.path, f"session row {key!r}: {validation_summary(e)}",
                               self._backup_found()) from None

    def _without_database(self) -> PoolFile:
        """Before the first write: the old ``pool.json`` if the home has one, else an empty pool."""
        try:
            st = self.legacy_path.stat()
        except FileNotFoundError:
            return PoolFile().freeze()
        signature = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._legacy is not None and self._legacy[0] == signature:
            return self._legacy[1]
        pool = read_legacy(self.legacy_path) or PoolFile()
        pool.freeze()
        self._legacy = (signature, pool)
        return pool

    # -- creating, and moving pool.json in -------------------------------------------------

    def _create(self) -> None:
        """Make ``pool.db`` (under the pool lock): built aside, then renamed into place whole."""
        legacy = read_legacy(self.legacy_path)
        pool = legacy if legacy is not None else PoolFile()

        def fill(conn: sqlite3.Connection) -> None:
            _set_meta(conn, "layout", LAYOUT_VERSION)
            _set_meta(conn, "version", 1)
            _set_meta(conn, "pool_changed", 1)
            _set_meta(conn, "removed_floor", 0)
            conn.execute("INSERT INTO meta VALUES ('pool', ?)", (json.dumps(_pool_fields(pool)),))
            conn.executemany(
                "INSERT INTO accounts (id, provider, label_key, position, doc, changed) VALUES (?, ?, ?, ?, ?, 1)",
                [(a.id, a.provider, a.label.casefold(), n, a.model_dump_json()) for n, a in
                 enumerate(pool.accounts, 1)])
            conn.executemany("INSERT INTO sessions (key, doc, changed) VALUES (?, ?, 1)",
                             [(k, b.model_dump_json()) for k, b in pool.sessions.items()])

        try:
            create_aside(self.path, _TABLES, fill, before_replace=self.lock.ensure_held)
        except sqlite3.Error as e:
            raise StoreError(f"cannot create {self.path}: {e}") from None
        if legacy is not None:
            moved = self.legacy_path.with_name(self.legacy_path.name + ".moved")
            write_atomic(_unused(moved), self.legacy_path.read_bytes())  # the old file kept...
            write_atomic(self.legacy_path, MOVED_MARKER)  # ...and the marker in its place (see MOVED_MARKER)
            log.info("moved the pool from %s into %s (the old file is kept as %s)", self.legacy_path, self.path,
                     moved)

    # -- damage, backups --------------------------------------------------------------------

    def _damaged(self, e: sqlite3.DatabaseError) -> StoreCorrupt:
        self._close()
        return StoreCorrupt(self.path, str(e) or type(e).__name__, self._backup_found())

    def _symlink_refused(self) -> StoreError:
        # Refused rather than followed: the database's write-ahead log, its lock, backup and vault
        # live in the home, not next to the target. See docs/design.md.
        return StoreError(
            f"pool database {self.path} is a symbolic link (to {os.path.realpath(self.path)}); authpool does "
            "not follow it, because its write-ahead log, lock, backup and vault live in the home: move the real "
            "file into the home, or point AUTHPOOL_HOME at the directory holding it (a symlinked home "
            "directory is fine)"
        )

    def _backup_found(self) -> Path | None:
        return self.backup_path if self.backup_path.exists() else None

    def _backup_due(self) -> bool:
        # The backup's age is looked at once a minute at most, not after every commit (a stat each).
        if time.monotonic() < self._backup_look_at:
            return False
        try:
            st = self.backup_path.stat()
        except FileNotFoundError:
            return True
        if not stat.S_ISREG(st.st_mode):
            return True
        left = _BACKUP_EVERY - (time.time() - st.st_mtime)
        if left <= 0:
            return True
        self._backup_look_at = time.monotonic() + min(left, _BACKUP_LOOK_EVERY)
        return False

    def _backup(self) -> None:
        """Copy the database to ``pool.db.bak`` (a consistent copy, taken while others keep writing)."""
        tmp = self.backup_path.with_name(f".{self.backup_path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
            os.close(fd)
            source = sqlite3.connect(self.path)
            target = sqlite3.connect(tmp)
            try:
                source.backup(target)
                target.execute("PRAGMA journal_mode=DELETE")  # the copy is one self-contained file
            finally:
                target.close()
                source.close()
            _fsync(tmp)
            os.replace(tmp, self.backup_path)
        except (OSError, sqlite3.Error) as e:
            log.warning("could not back up %s to %s: %s", self.path, self.backup_path, e)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def restore_backup(self, *, force: bool = False) -> Path:
        """Replace a damaged database with the last good copy; returns where the replaced one went.

        A database that works is refused unless ``force``: the backup is older, so restoring it
        undoes every change since it was taken.

        Raises:
            StoreError: there is no usable backup, or the database works (and not ``force``).
        """
        with self.lock:
            if self.path.is_symlink():
                raise self._symlink_refused()
            if not self.backup_path.exists():
                raise StoreError(f"no backup at {self.backup_path} to restore")
            problem = _check_file(self.backup_path)
            if problem is not None:
                raise StoreError(f"the backup {self.backup_path} is not usable either ({problem})")
            healthy = self.path.exists() and _check_file(self.path) is None
            if healthy and not force:
                raise StoreError(
                    f"pool database {self.path} works; restoring {self.backup_path} would undo every change "
                    "since it was taken (use --force to restore it anyway)"
                )
            kind = "replaced" if healthy else "corrupt"
            aside = _unused(self.path.with_name(f"{self.path.name}.{kind}-{time.strftime('%Y%m%d-%H%M%S')}"))
            self.lock.ensure_held()  # before anything moves: a lost lock leaves the files as they were
            with self._guard:
                self._close()
                if self.path.exists():
                    os.replace(self.path, aside)
                for suffix in ("-wal", "-shm"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.path.with_name(self.path.name + suffix))
                restored = sqlite3.connect(self.path)
                source = sqlite3.connect(self.backup_path)
                try:
                    source.backup(restored)
                    restored.execute("PRAGMA journal_mode=WAL")
                    # A new change number past any a process saw: every cache reloads whole.
                    version = _meta_int(restored, "version") + 1_000_000
                    restored.execute("UPDATE meta SET value = ? WHERE key IN ('version', 'removed_floor')",
                                     (str(version),))
                    restored.commit()
                finally:
                    source.close()
                    restored.close()
                os.chmod(self.path, FILE_MODE)
            return aside

    def check(self) -> str | None:
        """What is wrong with the database (SQLite's integrity check and every row), or None."""
        return _check_file(self.path) if self.path.exists() else None

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
        # The header's descriptor is the process's (WalHeader): never closed with the store.
        self._conn, self._cache, self._data_version, self._wal, self._header = None, None, None, None, None
        self._own = None  # a database put in place by hand may number other rows as our last commit

    def close(self) -> None:
        """Close this process's connection (the next use opens it again)."""
        with self._guard:
            self._close()


class _Written:
    """What one transaction writes: rows inserted, updated, removed; sessions; the pool's fields."""

    def __init__(self) -> None:
        self.accounts: dict[str, Account] = {}  # inserted or updated, validated
        self.inserted: set[str] = set()
        self.removed: set[str] = set()
        self.bindings: dict[str, SessionBinding] = {}
        self.ended: set[str] = set()
        self.fields: dict[str, Any] | None = None
        self.always = False  # a whole-pool update moves the change number even when it changed nothing

    @property
    def empty(self) -> bool:
        return not (self.always or self.accounts or self.removed or self.bindings or self.ended
                    or self.fields is not None)

    def insert(self, acc: Account) -> None:
        self.accounts[acc.id] = _validated(acc)
        self.inserted.add(acc.id)

    def maybe_update(self, before: Account, after: Account) -> None:
        if after is before:
            return
        doc = after.model_dump(mode="json")
        if doc != before.model_dump(mode="json"):
            self.accounts[after.id] = _validated(after, doc)

    def remove(self, account_id: str) -> None:
        self.removed.add(account_id)

    def sessions(self, before: dict[str, SessionBinding], after: dict[str, SessionBinding]) -> None:
        # Bindings are replaced, never changed in place (transitions.bind), so identity tells.
        for key, binding in after.items():
            if before.get(key) is not binding:
                try:
                    self.bindings[key] = SessionBinding.model_validate(binding.model_dump())
                except ValidationError as e:
                    raise InvalidInput(f"change rejected: {validation_summary(e)}") from None
        self.ended = before.keys() - after.keys()

    def pool_fields(self, before: dict[str, Any], after: dict[str, Any]) -> None:
        if before != after:
            self.fields = after

    def commit_rows(self, conn: sqlite3.Connection, version: int) -> None:
        """Write everything, stamped with ``version`` (inside the caller's transaction)."""
        if self.removed:
            conn.executemany("DELETE FROM accounts WHERE id = ?", [(i,) for i in self.removed])
            conn.executemany("INSERT OR REPLACE INTO removed VALUES ('account', ?, ?)",
                             [(i, version) for i in self.removed])
        position = _next_position(conn) if self.inserted else 0
        for acc in self.accounts.values():
            doc = acc.model_dump_json()
            try:
                if acc.id in self.inserted:
                    conn.execute("INSERT INTO accounts (id, provider, label_key, position, doc, changed) "
                                 "VALUES (?, ?, ?, ?, ?, ?)",
                                 (acc.id, acc.provider, acc.label.casefold(), position, doc, version))
                    position += 1
                else:
                    conn.execute("UPDATE accounts SET provider = ?, label_key = ?, doc = ?, changed = ? "
                                 "WHERE id = ?", (acc.provider, acc.label.casefold(), doc, version, acc.id))
            except sqlite3.IntegrityError as e:
                raise _conflict(acc, e) from None
        if self.inserted:
            conn.executemany("DELETE FROM removed WHERE kind = 'account' AND key = ?", [(i,) for i in self.inserted])
        conn.executemany("INSERT OR REPLACE INTO sessions (key, doc, changed) VALUES (?, ?, ?)",
                         [(k, b.model_dump_json(), version) for k, b in self.bindings.items()])
        if self.bindings:
            conn.executemany("DELETE FROM removed WHERE kind = 'session' AND key = ?", [(k,) for k in self.bindings])
        if self.ended:
            conn.executemany("DELETE FROM sessions WHERE key = ?", [(k,) for k in self.ended])
            conn.executemany("INSERT OR REPLACE INTO removed VALUES ('session', ?, ?)",
                             [(k, version) for k in self.ended])
        if self.fields is not None:
            conn.execute("UPDATE meta SET value = ? WHERE key = 'pool'", (json.dumps(self.fields),))
            _set_meta(conn, "pool_changed", version)

    def derive(self, base: PoolFile, version: int, history: ChangeLog) -> PoolFile:
        """The snapshot after this transaction, from the one before it (no read)."""
        return base.derive(version, history, self.accounts, self.removed, self.bindings, self.ended,
                           {**self.fields, "schema_version": DOC_SCHEMA} if self.fields is not None else None)


def _copied(acc: Account) -> Account:
    """A copy of a snapshot's account for a change to mutate: rebuilt from its fields, a quarter of
    the time of ``model_copy(deep=True)`` (``copy.deepcopy``, inside the pool lock)."""
    return Account.model_validate(acc.model_dump())


def _validated(acc: Account, doc: dict[str, Any] | None = None) -> Account:
    try:
        checked = Account.model_validate(doc if doc is not None else acc.model_dump(mode="json"))
    except ValidationError as e:
        raise InvalidInput(f"change rejected: {validation_summary(e)}") from None
    if extras_too_deep(PoolFile.model_construct(accounts=[checked], sessions={})):
        raise InvalidInput("change rejected: a value is nested too deeply")
    return checked


def _pool_fields(pool: PoolFile) -> dict[str, Any]:
    """The pool's own fields (which secret backend, anything a newer authpool added), as stored."""
    return pool.model_dump(mode="json", exclude={"accounts", "sessions", "schema_version"})


def _conflict(acc: Account, e: sqlite3.IntegrityError) -> InvalidInput:
    """An insert or rename the database refused: a taken label, or (rarely) a taken id."""
    if "label_key" in str(e):
        return DuplicateLabel(f"{acc.name} already exists")
    if "accounts.id" in str(e):
        return InvalidInput("account id collision; try again")
    return InvalidInput(f"change rejected for {acc.name}: {e}")


def _check_layout(conn: sqlite3.Connection, path: Path) -> None:
    layout = _meta_int(conn, "layout")
    if layout > LAYOUT_VERSION:
        raise StoreVersionError(path, layout, LAYOUT_VERSION, what="pool database")
    if layout < 1:
        raise sqlite3.DatabaseError("no layout version: not a pool database")


def _check_file(path: Path) -> str | None:
    """SQLite's integrity check plus every row parsed: None if the database is whole."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as e:
        return str(e)
    try:
        found = conn.execute("PRAGMA quick_check").fetchone()
        if not found or found[0] != "ok":
            return str(found[0]) if found else "integrity check failed"
        _check_layout(conn, path)
        for account_id, doc in conn.execute("SELECT id, doc FROM accounts"):
            Account.model_validate_json(doc)
            del account_id
        for _key, doc in conn.execute("SELECT key, doc FROM sessions"):
            SessionBinding.model_validate_json(doc)
        raw = _meta(conn, "pool")
        if raw is not None and not isinstance(json.loads(raw), dict):
            return "the pool's own fields are not a JSON object"
    except StoreVersionError:
        return None  # a newer authpool's database is not damaged
    except (sqlite3.Error, ValidationError, ValueError) as e:
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    finally:
        conn.close()
    return None


def _data_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("PRAGMA data_version").fetchone()
    return int(row[0]) if row else 0


def _meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return str(row[0]) if row else None


def _meta_int(conn: sqlite3.Connection, key: str) -> int:
    raw = _meta(conn, key)
    try:
        return int(raw) if raw is not None else 0
    except ValueError:
        raise sqlite3.DatabaseError(f"meta value {key!r} is not a number") from None


def _set_meta(conn: sqlite3.Connection, key: str, value: int) -> None:
    conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, str(value)))


def _next_position(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT max(position) FROM accounts").fetchone()
    return (int(row[0]) if row and row[0] is not None else 0) + 1


def _prune_removed(conn: sqlite3.Connection, version: int) -> None:
    """Forget old removals; a snapshot older than what is kept reloads whole."""
    floor = version - _REMOVED_KEPT
    if floor > 0:
        conn.execute("DELETE FROM removed WHERE changed <= ?", (floor,))
        _set_meta(conn, "removed_floor", floor)


def _fsync(path: Path, *, data_only: bool = False) -> None:
    """Flush ``path`` to the disk; ``data_only``: its data and what reading it needs (its size), as
    SQLite itself flushes its log (``fdatasync`` where there is one)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        (_fdatasync if data_only else os.fsync)(fd)
    finally:
        os.close(fd)


def _unused(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``... whichever does not exist (never overwrite a kept file)."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate
