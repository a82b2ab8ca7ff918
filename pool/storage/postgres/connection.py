"""Connections to a team store's PostgreSQL: a pool that reconnects by itself, errors in one line.

The address is shown everywhere without its password (``postgresql://user@host:port/db``). A
database that is down or unreachable is a :class:`~authpool.errors.StoreUnavailable` naming host
and port and the reason, raised within the caller's deadline (the lock timeout); the pool keeps
reconnecting in the background with backoff, so every process recovers by itself when the
database is back.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg_pool
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from authpool.errors import InvalidInput, StoreUnavailable

__all__ = ["Address", "Database", "parse_address"]

log = logging.getLogger("authpool")
# The pool logs every failed connection attempt; unconfigured, Python would print each to stderr
# with its traceback-like detail. What a user needs is our one line (and the reconnect warning).
logging.getLogger("psycopg").addHandler(logging.NullHandler())

_CONNECT_TIMEOUT = 5  # seconds for one connection attempt (the pool retries with backoff)
_POOL_SIZE = 8


@dataclass(frozen=True)
class Address:
    """Where a team store is; ``display`` never includes the password."""

    conninfo: str
    host: str
    port: str
    dbname: str
    user: str

    @property
    def display(self) -> str:
        user = f"{self.user}@" if self.user else ""
        return f"postgresql://{user}{self.host}:{self.port}/{self.dbname}"


def parse_address(url: str) -> Address:
    """Parse ``postgresql://user[:password]@host[:port]/db[?options]``.

    Raises:
        InvalidInput: not a PostgreSQL URL (the message never repeats a password).
    """
    if not url.startswith(("postgresql://", "postgres://")):
        raise InvalidInput("a team store URL starts with postgresql:// (postgresql://user@host:port/dbname)")
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        raise InvalidInput("the team store URL cannot be parsed (postgresql://user@host:port/dbname)") from None
    params.setdefault("connect_timeout", _CONNECT_TIMEOUT)
    params.setdefault("application_name", "authpool")
    host = str(params.get("host") or "localhost")
    return Address(
        conninfo=make_conninfo("", **params),
        host=host,
        port=str(params.get("port") or 5432),
        dbname=str(params.get("dbname") or params.get("user") or ""),
        user=str(params.get("user") or ""),
    )


def _configure(conn: psycopg.Connection[Any]) -> None:
    # A client that stops mid-transaction (hung, partitioned) must not hold row locks for ever.
    conn.execute("SET idle_in_transaction_session_timeout = '60s'")
    conn.commit()


class Database:
    """A connection pool on one team store's database."""

    def __init__(self, address: Address) -> None:
        self.address = address
        self._pool = psycopg_pool.ConnectionPool(
            address.conninfo,
            min_size=1,
            max_size=_POOL_SIZE,
            open=False,
            configure=_configure,
            kwargs={"autocommit": False},
            reconnect_timeout=60.0,
            reconnect_failed=self._reconnect_failed,
            name="authpool",
            max_idle=300.0,
        )
        self._opened = False

    def _reconnect_failed(self, pool: psycopg_pool.ConnectionPool[Any]) -> None:
        log.warning("the team store at %s is still unreachable; retrying", self.address.display)

    @contextlib.contextmanager
    def connection(self, deadline: float) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection, waited for until ``deadline`` (``time.monotonic()``).

        Raises:
            StoreUnavailable: none could be had in time (names host, port and the reason).
        """
        if not self._opened:
            self._pool.open(wait=False)
            self._opened = True
        try:
            conn = self._pool.getconn(timeout=max(0.05, deadline - time.monotonic()))
        except psycopg_pool.PoolTimeout:
            raise self.unavailable(None) from None
        try:
            yield conn
        finally:
            self._pool.putconn(conn)

    def connect(self, *, autocommit: bool = True, timeout: float = _CONNECT_TIMEOUT) -> psycopg.Connection[Any]:
        """A connection of its own (the listener's), outside the pool.

        Raises:
            StoreUnavailable: it could not be made.
        """
        try:
            return psycopg.connect(self.address.conninfo, autocommit=autocommit, connect_timeout=max(1, int(timeout)))
        except psycopg.Error as e:
            raise self.unavailable(e) from None

    def unavailable(self, error: BaseException | None) -> StoreUnavailable:
        """The one line for "the database cannot be reached", with the reason when there is one."""
        reason = _reason(error) if error is not None else self._probe()
        return StoreUnavailable(
            f"cannot reach the team store at {self.address.host}:{self.address.port} "
            f"(database {self.address.dbname}): {reason}; is PostgreSQL running there? (AUTHPOOL_STORE selects it)"
        )

    def _probe(self) -> str:
        try:
            with psycopg.connect(self.address.conninfo, connect_timeout=2):
                return "no connection became free in time"
        except psycopg.Error as e:
            return _reason(e)

    def close(self) -> None:
        if self._opened:
            self._pool.close(timeout=2.0)
            self._opened = False


def _reason(error: BaseException) -> str:
    """The first line of a driver error, without the server's address repeated (we name it already)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "failed: " in text:
        text = text.rsplit("failed: ", 1)[1]
    return text[:200]
