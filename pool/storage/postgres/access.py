"""What leases and sealed secrets need of a team store: run a statement, run a transaction, its address."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import psycopg

__all__ = ["Cursor", "StoreAccess"]

T = TypeVar("T")
Cursor = psycopg.Cursor[Any]


class StoreAccess(Protocol):
    """The team store as :mod:`.lease` and :mod:`.secrets` use it (implemented by ``PostgresStore``)."""

    @property
    def location(self) -> str:
        """The address, without password."""

    @property
    def lease_ttl(self) -> float:
        """Seconds a lease lives unless its holder extends it."""

    def run(self, body: Callable[[Cursor], T], *, deadline: float | None = None) -> T:
        """Run ``body`` on a connection and commit; lost connections retried until ``deadline``."""

    def transact(self, body: Callable[[Cursor], T], *, timeout: float | None = None) -> T:
        """Run ``body`` in one transaction, applied again on a fresh read if the connection is lost."""
