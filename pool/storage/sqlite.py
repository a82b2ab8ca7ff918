"""Making and opening the SQLite databases of a home (``pool.db``, ``vault.db``) the same way, and
noticing cheaply that another connection committed (:class:`WalHeader`)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
from collections.abc import Callable
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


class WalHeader:
    """The WAL-index header of a database in write-ahead-log mode, read from its ``-shm`` file.

    Every commit, by any connection of any process, rewrites the header: a counter every
    transaction moves, the last valid frame, the salts, a checksum (SQLite's "WAL-index header",
    https://www.sqlite.org/walformat.html). Reading its first 48 bytes is one ``pread`` (about
    1 µs); ``PRAGMA data_version`` begins and ends a read transaction, two lock calls on the same
    file and 4-15 µs, twice on every request through the pool. The header only ever answers
    "unchanged since": equal bytes mean nobody committed in between; anything else (a different
    header, a layout this code does not know, no file, no ``pread``) sends the caller to
    ``PRAGMA data_version``. Open it only while a connection to the database is open: SQLite then
    keeps the ``-shm`` file in place.
    """

    def __init__(self, database: Path) -> None:
        self._fd: int | None = None
        if hasattr(os, "pread"):
            with contextlib.suppress(OSError):
                self._fd = os.open(f"{database}-shm", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))

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

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
