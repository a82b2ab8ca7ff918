"""Opening the SQLite databases of a home (``pool.db``, ``vault.db``) the same way."""

from __future__ import annotations

import sqlite3
from pathlib import Path

__all__ = ["open_existing"]


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
