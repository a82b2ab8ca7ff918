"""What keeps a process's cached view of a team store current: LISTEN, a poll as the fallback, the clock.

A thread with a connection of its own LISTENs on the store's channel; every committed change
NOTIFYs in its transaction, so other machines drop their cached view at once. Notifications are
lost across reconnects and through transaction-pooling proxies, so the thread also polls a cheap
version query every second: a change it did not hear of is noticed within a poll. The same query
reads the database's clock, so the process knows its offset from the time every deadline in the
store is measured by.

The cache is trusted only while the listener is live (listening, and its last poll recent); when
it is not, every read goes to the database.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

import psycopg

from authpool.storage.postgres.connection import Database
from authpool.storage.postgres.schema import CHANNEL

__all__ = ["VERSION_QUERY", "Listener"]

log = logging.getLogger("authpool")

# One row that changes whenever anything does: the pool row's change number, and per table the
# sum and count of change numbers (a sequence's numbers are not in commit order, so a max alone
# could miss a change that committed late). Also the schema version and the database's clock.
VERSION_QUERY = """
SELECT (SELECT version FROM authpool_schema WHERE id = 1),
       (SELECT changed FROM authpool_pool WHERE id = 1),
       (SELECT (coalesce(sum(changed), 0), count(*))::text FROM authpool_accounts),
       (SELECT (coalesce(sum(changed), 0), count(*))::text FROM authpool_sessions),
       extract(epoch FROM clock_timestamp())::float8
"""

_BACKOFF_FIRST = 0.1
_BACKOFF_CAP = 5.0


class Listener(threading.Thread):
    """The LISTEN connection and the poll, in a daemon thread."""

    def __init__(self, db: Database, on_change: Callable[[], None], on_schema: Callable[[int], None], *,
                 poll: float = 1.0) -> None:
        super().__init__(name="authpool-listen", daemon=True)
        self.db = db
        self.on_change = on_change
        self.on_schema = on_schema
        self.poll = poll
        self.offset = 0.0  # database clock minus ours, seconds
        self._stop = threading.Event()
        self._live = False
        self._last_ok = 0.0
        self._seen: Hashable = None
        self._conn: psycopg.Connection[Any] | None = None
        self.connected = threading.Event()  # set once it listens (tests and benchmarks wait on it)

    def live(self) -> bool:
        """Whether a change elsewhere would reach this process now (listening, and polled recently)."""
        return self._live and time.monotonic() - self._last_ok < 3 * self.poll + 1.0

    def run(self) -> None:
        backoff = _BACKOFF_FIRST
        while not self._stop.is_set():
            try:
                self._conn = self.db.connect(autocommit=True)
                self._conn.execute(f"LISTEN {CHANNEL}")
                self._check()
                self._live = True
                self.on_change()  # anything may have changed while nobody listened
                self.connected.set()
                backoff = _BACKOFF_FIRST
                while not self._stop.is_set():
                    for _ in self._conn.notifies(timeout=self.poll):
                        self.on_change()
                    self._check()
            except Exception as e:  # noqa: BLE001 - the listener never dies: it reconnects with backoff
                if self._stop.is_set():
                    break
                if self._live:
                    log.warning("lost the change feed of the team store at %s (%s); reconnecting",
                                self.db.address.display, type(e).__name__)
                self._live = False
                self.connected.clear()
                self.on_change()
                self._close()
                self._stop.wait(backoff)
                backoff = min(_BACKOFF_CAP, backoff * 2)
        self._live = False
        self._close()

    def _check(self) -> None:
        """The poll: the version row (a change not heard of drops the cache) and the clock offset."""
        conn = self._conn
        if conn is None:
            return
        sent = time.time()
        row = conn.execute(VERSION_QUERY).fetchone()
        received = time.time()
        if row is None:
            return
        self.on_schema(int(row[0]))
        if received - sent < 0.05:  # a slow round trip measures the offset badly: keep the last one
            self.offset = float(row[4]) - (sent + received) / 2
        seen = tuple(row[1:4])
        if seen != self._seen:
            self._seen = seen
            self.on_change()
        self._last_ok = time.monotonic()

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # closing a broken connection may fail; it is gone either way
                conn.close()

    def stop(self) -> None:
        self._stop.set()
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):  # best effort: the thread also wakes at its next poll
                conn.cancel_safe()
