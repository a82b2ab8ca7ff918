"""The team store: a :class:`~authpool.storage.protocols.MetadataStore` on PostgreSQL.

- ``update(change)`` is one transaction: the pool row and every account row locked
  (``SELECT ... FOR UPDATE``) and read fresh, the change applied and validated, only what changed
  written, NOTIFY, commit. ``update_accounts(ids, change)`` locks and writes only the named rows.
  Session bindings are read without a lock and written key by key (an expired one is deleted
  only if it is still the binding that was read), so updates of different accounts never wait
  for each other. No transaction is ever open across a provider call: the change functions are
  plain code, and refreshes hold leases (:mod:`.lease`), not transactions.
- A connection lost before COMMIT writes nothing (the server rolls the transaction back), and
  the change is applied again to a fresh read on a new connection, within the lock timeout. A
  connection lost *during* COMMIT is settled by asking the server whether the transaction
  (its id was read first) committed: never applied twice, never lost.
- ``read()`` answers from a cache that the change feed (:mod:`.listener`: NOTIFY, and a poll as
  the fallback) invalidates: a warm request pays no round trip.
- ``now()`` is the database's clock (the local clock corrected by the measured offset): every
  deadline written to the store — cooldowns, backoffs, session expiries, journal records — is
  in database time, so machines with skewed clocks agree on them.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection, Hashable
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg.types.json import Jsonb
from pydantic import ValidationError

from authpool.accounts.model import SCHEMA_VERSION as POOL_SCHEMA
from authpool.accounts.model import Account, PoolFile, Rows, SessionBinding
from authpool.errors import (
    DuplicateLabel,
    InvalidInput,
    LockTimeout,
    StoreCorrupt,
    StoreError,
    StoreUnavailable,
    StoreVersionError,
)
from authpool.storage.lock import DEFAULT_TIMEOUT
from authpool.storage.postgres.access import Cursor
from authpool.storage.postgres.connection import Database, parse_address
from authpool.storage.postgres.lease import DEFAULT_TTL, Lease, LeaseKeeper
from authpool.storage.postgres.listener import VERSION_QUERY, Listener
from authpool.storage.postgres.schema import CHANNEL, SCHEMA_VERSION, ensure_schema

if TYPE_CHECKING:
    from authpool.storage.postgres.secrets import TeamSecrets

__all__ = ["PostgresStore", "ServerInfo"]

log = logging.getLogger("authpool")

T = TypeVar("T")

_RETRY_FIRST = 0.05
_RETRY_CAP = 1.0


class ServerInfo:
    """What ``authpool doctor`` shows about a team store."""

    def __init__(self, server_version: str, schema_version: int, round_trip_ms: float, accounts: int) -> None:
        self.server_version = server_version
        self.schema_version = schema_version
        self.round_trip_ms = round_trip_ms
        self.accounts = accounts


class PostgresStore:
    """A team's pool metadata in a PostgreSQL database.

    Example:
        >>> store = PostgresStore("postgresql://authpool@db.internal:5432/authpool")  # doctest: +SKIP
        >>> store.update_accounts(["a2b3c4d5"], lambda rows: rows.get("a2b3c4d5"))  # doctest: +SKIP
    """

    def __init__(self, url: str, *, lock_timeout: float = DEFAULT_TIMEOUT, lease_ttl: float = DEFAULT_TTL,
                 poll: float = 1.0) -> None:
        self.address = parse_address(url)
        self.db = Database(self.address)
        self.lock_timeout = lock_timeout
        self.lease_ttl = lease_ttl
        self.leases = LeaseKeeper(self)
        self._guard = threading.Lock()
        self._epoch = 0
        self._cache: tuple[int, PoolFile] | None = None
        self._schema_checked = False
        self._newer_schema: int | None = None
        self._listener = Listener(self.db, self._invalidate, self._schema_seen, poll=poll)
        self._started = False

    # -- MetadataStore ---------------------------------------------------------------------

    @property
    def location(self) -> str:
        """``postgresql://user@host:port/db`` (never the password)."""
        return self.address.display

    def now(self) -> float:
        """The database's clock, in epoch seconds (the local clock plus the measured offset)."""
        return time.time() + self._listener.offset

    def read(self) -> PoolFile:
        """The current metadata: the cached view while the change feed is live, else a fresh read.

        Raises:
            StoreUnavailable: the database cannot be reached.
            StoreVersionError: a newer authpool migrated the database.
        """
        cached = self.peek()
        if cached is not None:
            return cached
        with self._guard:
            epoch = self._epoch
        pool = self.run(self._fetch)
        with self._guard:
            self._cache = (epoch, pool)
        return pool

    def peek(self) -> PoolFile | None:
        """The cached view if it is known to be current (no I/O), else None."""
        self._start()
        with self._guard:
            cache, epoch = self._cache, self._epoch
        if cache is not None and cache[0] == epoch and self._listener.live() and self._newer_schema is None:
            return cache[1]
        return None

    def update(self, change: Callable[[PoolFile], T]) -> T:
        """Apply ``change`` to the whole pool, locked and read fresh, in one transaction.

        Raises:
            InvalidInput: the result is invalid (nothing is written).
            LockTimeout: the rows stayed locked past the lock timeout.
            StoreUnavailable: the database could not be reached within the lock timeout.
        """
        return self.transact(lambda cur: self._update_all(cur, change))

    def update_accounts(self, ids: Collection[str], change: Callable[[Rows], T]) -> T:
        """Apply ``change`` to the accounts ``ids`` (locked, fresh) and the session bindings."""
        wanted = sorted(set(ids))
        return self.transact(lambda cur: self._update_rows(cur, wanted, change))

    def version(self) -> Hashable:
        """A value that moves with every committed change (one round trip)."""
        row = self.run(lambda cur: cur.execute(VERSION_QUERY).fetchone())
        return tuple(row[1:4]) if row else None

    def named_lock(self, name: str, timeout: float) -> Lease:
        """The lease ``name`` (see :mod:`.lease`)."""
        self._start()
        return Lease(self, self.leases, name, timeout)

    # -- reading ---------------------------------------------------------------------------

    def _fetch(self, cur: Cursor) -> PoolFile:
        row = cur.execute(
            "SELECT (SELECT doc FROM authpool_pool WHERE id = 1),"
            " (SELECT coalesce(json_agg(doc ORDER BY position), '[]'::json) FROM authpool_accounts),"
            " (SELECT coalesce(json_object_agg(key, doc), '{}'::json) FROM authpool_sessions)").fetchone()
        if row is None:
            raise StoreError(f"the team store {self.location} is not set up (no pool row)")
        return self._parse(row[0] or {}, row[1], row[2])

    def _parse(self, pool_doc: dict[str, Any], accounts: list[Any], sessions: dict[str, Any]) -> PoolFile:
        try:
            return PoolFile.model_validate({**pool_doc, "schema_version": POOL_SCHEMA, "accounts": accounts,
                                            "sessions": sessions})
        except ValidationError as e:
            raise StoreCorrupt(self.location, _summary(e), None) from None

    # -- writing ---------------------------------------------------------------------------

    def _update_all(self, cur: Cursor, change: Callable[[PoolFile], T]) -> T:
        prow = cur.execute("SELECT doc FROM authpool_pool WHERE id = 1 FOR UPDATE").fetchone()
        pool_doc: dict[str, Any] = dict(prow[0]) if prow else {}
        accounts = [r[0] for r in cur.execute("SELECT doc FROM authpool_accounts ORDER BY position FOR UPDATE")]
        sessions = self._sessions(cur)
        pool = self._parse(pool_doc, accounts, {k: v[0] for k, v in sessions.items()})
        before = {a.id: a.model_dump(mode="json") for a in pool.accounts}
        result = change(pool)
        checked = _validated(pool)
        after_doc = checked.model_dump(mode="json", exclude={"accounts", "sessions", "schema_version"})
        self._write_accounts(cur, before, checked.accounts, insert=True)
        for gone in set(before) - {a.id for a in checked.accounts}:
            cur.execute("DELETE FROM authpool_accounts WHERE id = %s", (gone,))
        self._write_sessions(cur, sessions, checked.sessions)
        # Always: a whole-pool update moves the version even when it changed nothing.
        cur.execute("UPDATE authpool_pool SET doc = %s, changed = nextval('authpool_changes') WHERE id = 1",
                    (Jsonb(after_doc),))
        cur.execute("SELECT pg_notify(%s, 'pool')", (CHANNEL,))
        return result

    def _update_rows(self, cur: Cursor, ids: list[str], change: Callable[[Rows], T]) -> T:
        found = [r[0] for r in cur.execute(
            "SELECT doc FROM authpool_accounts WHERE id = ANY(%s) ORDER BY id FOR UPDATE", (ids,))]
        sessions = self._sessions(cur)
        try:
            accounts = {a.id: a for a in (Account.model_validate(doc) for doc in found)}
            bindings = {k: SessionBinding.model_validate(v[0]) for k, v in sessions.items()}
        except ValidationError as e:
            raise StoreCorrupt(self.location, _summary(e), None) from None
        before = {a.id: a.model_dump(mode="json") for a in accounts.values()}
        rows = Rows(accounts, bindings)
        result = change(rows)
        try:
            checked = [Account.model_validate(a.model_dump()) for a in rows.accounts.values()
                       if a.id in before or a.id in rows.added]
            new_sessions = {k: SessionBinding.model_validate(v.model_dump()) for k, v in rows.sessions.items()}
        except ValidationError as e:
            raise InvalidInput(f"change rejected: {_summary(e)}") from None
        wrote = self._write_accounts(cur, before, checked, insert=bool(rows.added))
        for gone in rows.removed & before.keys():
            cur.execute("DELETE FROM authpool_accounts WHERE id = %s", (gone,))
            wrote = True
        wrote |= self._write_sessions(cur, sessions, new_sessions)
        if wrote:
            cur.execute("SELECT pg_notify(%s, 'rows')", (CHANNEL,))
        return result

    def _sessions(self, cur: Cursor) -> dict[str, tuple[dict[str, Any], int]]:
        return {str(k): (doc, int(changed)) for k, doc, changed in
                cur.execute("SELECT key, doc, changed FROM authpool_sessions")}

    def _write_accounts(self, cur: Cursor, before: dict[str, dict[str, Any]], after: list[Account], *,
                        insert: bool) -> bool:
        wrote = False
        for acc in after:
            doc = acc.model_dump(mode="json")
            if before.get(acc.id) == doc:
                continue
            wrote = True
            if acc.id in before:
                cur.execute(
                    "UPDATE authpool_accounts SET doc = %s, provider = %s, label_key = %s, "
                    "changed = nextval('authpool_changes') WHERE id = %s",
                    (Jsonb(doc), acc.provider, acc.label.casefold(), acc.id))
            elif insert:
                cur.execute(
                    "INSERT INTO authpool_accounts (id, provider, label_key, position, doc, changed) "
                    "VALUES (%s, %s, %s, nextval('authpool_changes'), %s, nextval('authpool_changes'))",
                    (acc.id, acc.provider, acc.label.casefold(), Jsonb(doc)))
        return wrote

    def _write_sessions(self, cur: Cursor, before: dict[str, tuple[dict[str, Any], int]],
                        after: dict[str, SessionBinding]) -> bool:
        wrote = False
        for key, binding in after.items():
            doc = binding.model_dump(mode="json")
            if key in before and before[key][0] == doc:
                continue
            wrote = True
            cur.execute(
                "INSERT INTO authpool_sessions (key, doc, changed) VALUES (%s, %s, nextval('authpool_changes')) "
                "ON CONFLICT (key) DO UPDATE SET doc = excluded.doc, changed = excluded.changed",
                (key, Jsonb(doc)))
        for key in set(before) - set(after):
            wrote = True
            # Only the binding that was read: one written meanwhile by another update stays.
            cur.execute("DELETE FROM authpool_sessions WHERE key = %s AND changed = %s", (key, before[key][1]))
        return wrote

    def transact(self, body: Callable[[Cursor], T], *, timeout: float | None = None) -> T:
        """Run ``body`` in one transaction and commit, applying it again on a fresh read if the
        connection is lost before COMMIT; settled by the server's word if it is lost during COMMIT.

        ``body`` must depend only on what it reads (it may run more than once). Row locks wait
        at most the lock timeout; a database that is down is waited for until ``timeout``
        (default: the lock timeout).
        """
        self._start()
        self._check_schema()
        deadline = time.monotonic() + (timeout if timeout is not None else self.lock_timeout)
        lock_deadline = time.monotonic() + self.lock_timeout
        delay = _RETRY_FIRST
        attempt = 0
        while True:
            attempt += 1
            xid: int | None = None
            committing = False
            try:
                with self.db.connection(deadline) as conn:
                    try:
                        with conn.cursor() as cur:
                            cur.execute("SELECT set_config('lock_timeout', %s, true)",
                                        (f"{max(1, int((lock_deadline - time.monotonic()) * 1000))}ms",))
                            row = cur.execute("SELECT txid_current()").fetchone()
                            xid = int(row[0]) if row else None
                            result = body(cur)
                        committing = True
                        conn.commit()
                    except BaseException:
                        with contextlib.suppress(psycopg.Error):
                            conn.rollback()
                        raise
                self._invalidate()
                return result
            except psycopg.errors.LockNotAvailable:
                raise LockTimeout(self.location, self.lock_timeout, "another update holding its rows") from None
            except psycopg.errors.UniqueViolation as e:
                if "label_key" in _reason(e):  # an account added meanwhile took the label
                    raise DuplicateLabel(f"that label is taken: {_reason(e)}") from None
                raise InvalidInput(f"change rejected: {_reason(e)}") from None
            except psycopg.OperationalError as e:
                if committing and xid is not None and self._committed(xid, deadline):
                    self._invalidate()
                    return result
                if time.monotonic() + delay >= deadline:
                    raise self.db.unavailable(e) from None
                log.info("team store connection lost (%s); applying the change again (attempt %d)",
                         type(e).__name__, attempt + 1)
                time.sleep(delay)
                delay = min(_RETRY_CAP, delay * 2)

    def _committed(self, xid: int, deadline: float) -> bool:
        """Whether transaction ``xid`` committed (asked on a new connection once the server answers)."""
        while True:
            try:
                row = self.run(lambda cur: cur.execute("SELECT txid_status(%s)", (xid,)).fetchone(),
                               deadline=deadline)
                status = row[0] if row else None
                if status == "in progress" and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                return status == "committed"
            except StoreUnavailable:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)

    def run(self, body: Callable[[Cursor], T], *, deadline: float | None = None) -> T:
        """Run ``body`` on a pooled connection and commit (reads, leases); lost connections retried.

        Raises:
            StoreUnavailable: not done before ``deadline`` (default: the lock timeout from now).
        """
        self._check_schema()
        deadline = deadline if deadline is not None else time.monotonic() + self.lock_timeout
        delay = _RETRY_FIRST
        while True:
            try:
                with self.db.connection(deadline) as conn:
                    try:
                        with conn.cursor() as cur:
                            result = body(cur)
                        conn.commit()
                    except BaseException:
                        with contextlib.suppress(psycopg.Error):
                            conn.rollback()
                        raise
                return result
            except psycopg.OperationalError as e:
                if time.monotonic() + delay >= deadline:
                    raise self.db.unavailable(e) from None
                time.sleep(delay)
                delay = min(_RETRY_CAP, delay * 2)

    # -- the change feed -------------------------------------------------------------------

    def _start(self) -> None:
        if self._started:
            return
        with self._guard:
            first, self._started = not self._started, True
        if first:
            self._listener.start()

    def _invalidate(self) -> None:
        with self._guard:
            self._epoch += 1

    def _schema_seen(self, version: int) -> None:
        self._newer_schema = version if version > SCHEMA_VERSION else None

    def _check_schema(self) -> None:
        if self._newer_schema is not None:
            raise StoreVersionError(self.location, self._newer_schema, SCHEMA_VERSION, what="the team store")
        if self._schema_checked:
            return
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                with self.db.connection(deadline) as conn:
                    ensure_schema(conn, self.location)
                break
            except psycopg.OperationalError as e:
                if time.monotonic() >= deadline:
                    raise self.db.unavailable(e) from None
                time.sleep(0.1)
        self._schema_checked = True

    def wait_live(self, timeout: float = 30.0) -> bool:
        """Wait until the change feed listens (benchmarks and tests; requests never wait for it)."""
        self._start()
        return self._listener.connected.wait(timeout)

    # -- the rest --------------------------------------------------------------------------

    def server_info(self) -> ServerInfo:
        """Server version, schema version and the round-trip time (median of five), for ``doctor``."""
        def probe(cur: Cursor) -> tuple[str, int, int]:
            row = cur.execute("SELECT current_setting('server_version'), "
                              "(SELECT version FROM authpool_schema WHERE id = 1), "
                              "(SELECT count(*) FROM authpool_accounts)").fetchone()
            if row is None:
                raise StoreError(f"the team store {self.location} answered nothing")
            return str(row[0]), int(row[1]), int(row[2])

        server, schema, accounts = self.run(probe)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            self.run(lambda cur: cur.execute("SELECT 1").fetchone())
            times.append((time.perf_counter() - start) * 1000)
        return ServerInfo(server, schema, sorted(times)[2], accounts)

    def team_secrets(self) -> TeamSecrets:
        """The secret backend of this store: sealed secrets in the same database (``TeamSecrets``)."""
        from authpool.storage.postgres.secrets import TeamSecrets

        return TeamSecrets(self)

    def close(self) -> None:
        """Stop the change feed and close the connections (leases held are released by their holders)."""
        self.leases.stop()
        self._listener.stop()
        self.db.close()


def _validated(pool: PoolFile) -> PoolFile:
    try:
        return PoolFile.model_validate(pool.model_dump())
    except ValidationError as e:
        raise InvalidInput(f"change rejected: {_summary(e)}") from None


def _summary(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "document"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def _reason(e: BaseException) -> str:
    diag = getattr(e, "diag", None)
    detail = getattr(diag, "message_detail", None) if diag is not None else None
    return str(detail or str(e).splitlines()[0])[:200]
