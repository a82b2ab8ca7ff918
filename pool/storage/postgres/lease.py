"""Named locks of a team store as lease rows: refresh locks (``account-ID``) and probation (``probe-ID``).

A lease is taken with one statement — insert the row, or take it over only if it has expired::

    INSERT INTO authpool_leases ... ON CONFLICT (name) DO UPDATE ... WHERE authpool_leases.expires_at < now()
    RETURNING token

— and released by deleting the row it inserted (its random token), so a holder never deletes a
lease someone else took over. All times are the database's. While held, a keeper thread extends
every lease of the process; a holder that dies (SIGKILL, power loss, a lost machine) stops
extending it, and the lease expires after its time to live. Threads of one process queue on an
in-memory lock first, as with the local store's file locks.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
import threading
import time
from types import TracebackType

from authpool.errors import LockTimeout
from authpool.storage.postgres.access import Cursor, StoreAccess

__all__ = ["DEFAULT_TTL", "Lease", "LeaseKeeper"]

log = logging.getLogger("authpool")

DEFAULT_TTL = float(os.environ.get("AUTHPOOL_LEASE_TTL", "20"))
_POLL_FIRST = 0.005
_POLL_CAP = 0.1

_registry_guard = threading.Lock()
_thread_locks: dict[str, threading.Lock] = {}


def _thread_lock(key: str) -> threading.Lock:
    with _registry_guard:
        lock = _thread_locks.get(key)
        if lock is None:
            lock = _thread_locks[key] = threading.Lock()
        return lock


def _holder() -> str:
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    return f"pid {os.getpid()} ({prog}) on {socket.gethostname() or 'localhost'}"


_TAKE = """
INSERT INTO authpool_leases (name, token, holder, expires_at)
VALUES (%(name)s, %(token)s, %(holder)s, now() + %(ttl)s * interval '1 second')
ON CONFLICT (name) DO UPDATE SET token = excluded.token, holder = excluded.holder, expires_at = excluded.expires_at
WHERE authpool_leases.expires_at < now()
RETURNING token
"""


class Lease:
    """The lease ``name`` in one team store (a :class:`~authpool.storage.protocols.HeldLock`)."""

    def __init__(self, store: StoreAccess, keeper: LeaseKeeper, name: str, timeout: float) -> None:
        self.store = store
        self.keeper = keeper
        self.name = name
        self.timeout = timeout
        self.token: str | None = None
        self._thread_lock = _thread_lock(f"{store.location}#{name}")

    @property
    def where(self) -> str:
        return f"lease {self.name} in {self.store.location}"

    def acquire(self, timeout: float | None = None) -> None:
        """Block until held, or raise :class:`LockTimeout` naming the holder.

        Raises:
            LockTimeout: held elsewhere for longer than ``timeout``.
            StoreUnavailable: the database cannot be reached.
        """
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        if not self._thread_lock.acquire(timeout=timeout):
            raise LockTimeout(self.where, timeout, f"another thread of this process (pid {os.getpid()})")
        try:
            token = secrets.token_hex(8)
            poll = _POLL_FIRST
            while True:
                row = self.store.run(lambda cur: cur.execute(_TAKE, {
                    "name": self.name, "token": token, "holder": _holder(), "ttl": self.store.lease_ttl,
                }).fetchone(), deadline=max(deadline, time.monotonic() + 1.0))
                if row is not None:
                    self.token = token
                    self.keeper.hold(self)
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LockTimeout(self.where, timeout, self._current_holder())
                time.sleep(min(poll, left))
                poll = min(_POLL_CAP, poll * 2)
        except BaseException:
            self._thread_lock.release()
            raise

    def _current_holder(self) -> str | None:
        try:
            row = self.store.run(lambda cur: cur.execute(
                "SELECT holder, greatest(0, extract(epoch FROM expires_at - now()))::float8 FROM authpool_leases "
                "WHERE name = %s", (self.name,)).fetchone(), deadline=time.monotonic() + 2.0)
        except Exception:  # noqa: BLE001 - only for the message
            return None
        return f"{row[0]} (expires in {row[1]:.0f}s unless renewed)" if row else None

    def release(self) -> None:
        """Delete our lease row; if the database cannot be reached, the lease expires by itself."""
        token, self.token = self.token, None
        try:
            if token is not None:
                self.keeper.drop(self)
                try:
                    self.store.run(lambda cur: cur.execute(
                        "DELETE FROM authpool_leases WHERE name = %s AND token = %s", (self.name, token)),
                        deadline=time.monotonic() + 5.0)
                except Exception as e:  # noqa: BLE001 - the lease expires by itself
                    log.warning("could not release %s (%s); it expires within %.0fs", self.where, e,
                                self.store.lease_ttl)
        finally:
            self._thread_lock.release()

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


class LeaseKeeper:
    """Extends every lease this process holds, every third of the time to live, until released."""

    def __init__(self, store: StoreAccess) -> None:
        self.store = store
        self._held: dict[int, Lease] = {}
        self._guard = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, lease: Lease) -> None:
        with self._guard:
            self._held[id(lease)] = lease
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="authpool-leases", daemon=True)
                self._thread.start()

    def drop(self, lease: Lease) -> None:
        with self._guard:
            self._held.pop(id(lease), None)

    def stop(self) -> None:
        """Stop extending (the store is closing): leases still held expire after their time to live."""
        with self._guard:
            self._held.clear()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.store.lease_ttl / 3)
            self._wake.clear()
            with self._guard:
                held = [(lease.name, lease.token) for lease in self._held.values() if lease.token is not None]
                if not held:
                    self._thread = None
                    return
            self._extend(held)

    def _extend(self, held: list[tuple[str, str]]) -> None:
        def extend(cur: Cursor) -> None:
            cur.execute(
                "UPDATE authpool_leases SET expires_at = now() + %s * interval '1 second' "
                "WHERE (name, token) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
                (self.store.lease_ttl, [n for n, _ in held], [t for _, t in held]))

        try:
            self.store.run(extend, deadline=time.monotonic() + self.store.lease_ttl / 3)
        except Exception as e:  # noqa: BLE001 - tried again at the next beat
            log.warning("could not extend %d lease(s) in %s: %s", len(held), self.store.location, e)
