"""Making and opening the SQLite databases of a home (``pool.db``, ``vault.db``) the same way, and
noticing cheaply that another connection committed (:class:`WalHeader`)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from authpool.home import FILE_MODE
from authpool.storage.atomicfile import fsync_dir

__all__ = ["WalHeader", "create_aside", "open_existing"]


def open_existing(path: Path, timeout: float) -> sqlite3.Connection:
    """A connection to the database at ``path``, which must exist, shared by this process's threads
    (callers guard it), in autocommit mode (callers write ``BEGIN``).

    ``mode=rw``: if the file went away since the caller looked, this fails instead of creating an
    empty file in its place (which would then be refused as damaged, or read as an empty pool).

    Raises:
        sqlite3.Error: it cannot be opened.
    """
    return sqlite3.connect(f"{path.absolute().as_uri()}?mode=rw", uri=True, timeout=timeout, isolation_level=None,
                           check_same_thread=False)


def create_aside(path: Path, tables: str, fill: Callable[[sqlite3.Connection], None], *,
                 before_replace: Callable[[], None] = lambda: None) -> None:
    """Make the database ``path`` whole or not at all (call under the lock that guards it).

    It is built in a temporary file beside it (0600, write-ahead log, ``tables``, then ``fill`` in
    one transaction), flushed, and renamed into place, the directory flushed after: nobody ever
    opens a half-made database. ``before_replace`` runs just before the rename (the store checks
    there that its lock is still its own).

    Raises:
        sqlite3.Error: SQLite refused (nothing is left behind); whatever ``before_replace`` raises.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    try:
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")  # kept in the file: every connection uses it
            conn.executescript(tables)  # a file nobody else sees yet: no transaction needed
            conn.execute("BEGIN")
            fill(conn)
            conn.execute("COMMIT")
        finally:
            conn.close()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        before_replace()
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


_WAL_INDEX_VERSION = 3007000  # iVersion of the WAL-index header since SQLite 3.7.0
_HEADER_BYTES = 48  # the first copy of the header (https://www.sqlite.org/walformat.html)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


@dataclass
class _Descriptor:
    fd: int
    users: int = 0  # live WalHeaders (stores with a connection open) reading it
    idle_since: float = 0.0  # monotonic time its users went to zero
    extra: list[int] = field(default_factory=list)  # more descriptors of the same file, closed with it


class _ShmDescriptors:
    """This process's read-only descriptors of ``-shm`` files: one per file, never closed while
    this process may hold SQLite locks on the file.

    POSIX record locks belong to the process, and closing *any* descriptor of a file drops every
    lock the process holds on it, those SQLite holds for its own connections included (SQLite's VFS
    works around that for the descriptors it opens; one of ours is outside its reach). Dropping them
    lets the next process to open the database take it for unused and rebuild ``-shm`` under our
    connections (a review reproduced a SIGBUS). So a descriptor is closed only when no
    :class:`WalHeader` uses it (no store of this process has a connection to that database) and
    either its file is gone (SQLite deleted it: nobody can open it again) or more than
    ``_IDLE_KEPT`` such idle descriptors are kept (the oldest go: a process reading many homes that
    other processes keep open must not run out of descriptors).
    """

    _IDLE_KEPT = 8

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._open: dict[tuple[int, int], _Descriptor] = {}  # (device, inode) -> descriptor

    def take(self, shm: Path) -> tuple[tuple[int, int], int] | None:
        """``((device, inode), descriptor)`` of the file at ``shm``, one more user of it; None if
        there is none. Give it back with :meth:`give_back`."""
        try:
            st = os.stat(shm)
        except OSError:
            return None
        with self._guard:
            found = self._open.get((st.st_dev, st.st_ino))
            if found is None:
                try:
                    fd = os.open(shm, os.O_RDONLY | _CLOEXEC)
                except OSError:
                    return None
                opened = os.fstat(fd)
                key = (opened.st_dev, opened.st_ino)  # the file opened (replaced since the stat: that one)
                found = self._open.get(key)
                if found is None:
                    found = self._open[key] = _Descriptor(fd)
                else:  # a file already held: this descriptor goes with that one (closing it alone is unsafe)
                    found.extra.append(fd)
            else:
                key = (st.st_dev, st.st_ino)
            found.users += 1
            return key, found.fd

    def give_back(self, key: tuple[int, int]) -> None:
        """One user fewer; descriptors nobody uses are let go of as the class says."""
        with self._guard:
            found = self._open.get(key)
            if found is not None:
                found.users -= 1
                if found.users <= 0:
                    found.users, found.idle_since = 0, time.monotonic()
            self._trim()

    def _trim(self) -> None:
        idle = sorted((d.idle_since, key) for key, d in self._open.items() if d.users == 0)
        for n, (_, key) in enumerate(idle):
            fd = self._open[key].fd
            try:
                gone = os.fstat(fd).st_nlink == 0
            except OSError:
                gone = True
            if gone or n < len(idle) - self._IDLE_KEPT:
                for each in (fd, *self._open.pop(key).extra):
                    with contextlib.suppress(OSError):
                        os.close(each)

    def count(self) -> int:
        """How many descriptors are kept (for tests)."""
        with self._guard:
            return len(self._open)

    def after_fork(self) -> None:
        """In a forked child: a guard of its own (another thread may have held the parent's). The
        descriptors stay: they are the child's copies, and closing them would drop the child's
        locks, not the parent's."""
        self._guard = threading.Lock()


_shm_descriptors = _ShmDescriptors()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_shm_descriptors.after_fork)


class WalHeader:
    """The WAL-index header of a database in write-ahead-log mode, read from its ``-shm`` file.

    Every commit, by any connection of any process, rewrites the header: a counter every
    transaction moves, the last valid frame, the salts, a checksum (SQLite's "WAL-index header",
    https://www.sqlite.org/walformat.html). Reading its first 48 bytes is one ``pread`` (about
    1 µs); ``PRAGMA data_version`` begins and ends a read transaction (two lock calls on the same
    file: 4 µs warm, 10-15 µs with the caches cold as they are inside a request), twice on every
    request through the pool. The header only ever answers "unchanged since": equal bytes mean
    nobody committed in between; anything else (a different header, a layout this code does not
    know, no file, no ``pread``) sends the caller to ``PRAGMA data_version``. Make one after a
    connection to the database has read from it (SQLite then keeps the file in place), and
    :meth:`follows` tells whether the file at the path is still the one read.

    The descriptor is this process's one for the file (:class:`_ShmDescriptors`): :meth:`close`
    gives it back, and the registry closes it only when that cannot drop SQLite's locks.
    """

    def __init__(self, database: Path) -> None:
        self._path = Path(f"{database}-shm")
        found = _shm_descriptors.take(self._path) if hasattr(os, "pread") else None
        self._file: tuple[int, int] | None = None
        self._fd: int | None = None
        self._done: weakref.finalize[..., WalHeader] | None = None
        if found is not None:
            self._file, self._fd = found
            # A store dropped without close() gives its use back when it is collected.
            self._done = weakref.finalize(self, _shm_descriptors.give_back, found[0])

    def close(self) -> None:
        """This reader's use of the descriptor is over (the descriptor itself is the process's)."""
        self._fd = None
        if self._done is not None:
            self._done()

    def read(self) -> bytes | None:
        """The header as it is now, or None if it cannot be relied on."""
        fd = self._fd
        if fd is None:
            return None
        try:
            header = os.pread(fd, _HEADER_BYTES, 0)
        except OSError:
            return None
        if len(header) < _HEADER_BYTES or int.from_bytes(header[:4], sys.byteorder) != _WAL_INDEX_VERSION:
            return None
        return header

    def follows(self) -> bool:
        """Whether the ``-shm`` file at the path is still the one this reads (one stat)."""
        try:
            st = os.stat(self._path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._file
