"""Making and opening the SQLite databases of a home (``pool.db``, ``vault.db``) the same way."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from authpool.home import FILE_MODE
from authpool.storage.atomicfile import fsync_dir

__all__ = ["create_aside", "open_existing"]


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
