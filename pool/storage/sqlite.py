"""Making and opening the SQLite databases of a home (``pool.db``, ``vault.db``) the same way, and
noticing cheaply that another connection committed (:class:`WalHeader`)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
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
    fd: int | None  # None once closed (its file was deleted)


class _ShmDescriptors:
    """This process's read-only descriptors of ``-shm`` files: one per file, closed only once the
    file is gone, at most ``_KEPT`` of them.

    POSIX record locks belong to the process, and closing *any* descriptor of a file drops every
    lock the process holds on it, those SQLite holds for its own connections included (SQLite's VFS
    works around that for the descriptors it opens; one of ours is outside its reach). Dropping them
    lets the next process to open the database take it for unused and rebuild ``-shm`` under our
    connections (a review reproduced a SIGBUS). So a descriptor is never closed while its file can
    still be opened by name: only once SQLite has deleted it (the last connection to the database,
    in any process, closed), looked at whenever a descriptor is asked for. Counting the
    connections that use a file instead was tried, and a review found connections it could not
    count (a backup's, a check's, a store collected in a cycle or at exit). A process reading
    more homes than ``_KEPT`` that other processes keep open (their files are never deleted) gets
    no more descriptors: those stores ask ``PRAGMA data_version`` instead.
    """

    _KEPT = 64

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._open: dict[tuple[int, int], _Descriptor] = {}  # (device, inode) -> descriptor

    def take(self, shm: Path) -> tuple[tuple[int, int], _Descriptor] | None:
        """``((device, inode), descriptor)`` of the file at ``shm``, or None (no file, or too many kept)."""
        try:
            st = os.stat(shm)
        except OSError:
            return None
        with self._guard:
            found = self._open.get((st.st_dev, st.st_ino))
            if found is not None:
                return (st.st_dev, st.st_ino), found
            self._let_go_of_deleted()
            if len(self._open) >= self._KEPT:
                return None
            try:
                fd = os.open(shm, os.O_RDONLY | _CLOEXEC)
            except OSError:
                return None
            opened = os.fstat(fd)
            key = (opened.st_dev, opened.st_ino)  # the file opened (replaced since the stat: that one)
            found = self._open.get(key)
            if found is None:
                found = self._open[key] = _Descriptor(fd)
            else:  # already held: this one is one too many, but closing it could drop SQLite's locks
                self._open[(opened.st_dev, -fd)] = _Descriptor(fd)  # a key no file has; goes once deleted
            return key, found

    def _let_go_of_deleted(self) -> None:
        for key, found in list(self._open.items()):
            fd = found.fd
            try:
                gone = fd is None or os.fstat(fd).st_nlink == 0
            except OSError:
                gone = True
            if gone:
                del self._open[key]
                found.fd = None  # a reader still holding it reads nothing from now on (see WalHeader)
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)

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
    know, no file, no ``pread``, a descriptor let go of) sends the caller to ``PRAGMA
    data_version``. Make one after a connection to the database has read from it (SQLite then
    keeps the file in place), and :meth:`follows` tells whether the file at the path is still the
    one read. The descriptor is the process's one for the file (:class:`_ShmDescriptors`), never
    closed here.
    """

    def __init__(self, database: Path) -> None:
        self._path = Path(f"{database}-shm")
        found = _shm_descriptors.take(self._path) if hasattr(os, "pread") else None
        self._file: tuple[int, int] | None = found[0] if found is not None else None
        self._descriptor: _Descriptor | None = found[1] if found is not None else None

    def read(self) -> bytes | None:
        """The header as it is now, or None if it cannot be relied on."""
        descriptor = self._descriptor
        if descriptor is None or (fd := descriptor.fd) is None:
            return None
        try:
            header = os.pread(fd, _HEADER_BYTES, 0)
        except OSError:
            return None
        if descriptor.fd != fd:
            # Let go of meanwhile (its file was deleted: a restore, or by hand), and the number may
            # already be another file's, whose header can be byte for byte the saved one. The
            # registry marks a descriptor before closing it, so this catches every such read.
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
