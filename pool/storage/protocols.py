"""The two storage interfaces everything else depends on: metadata, and secrets.

Rotation, refresh, the pool and the server see storage only through these protocols, so a
store is a choice, not a rewrite: the local pool file with its file locks and the OS keyring or
the encrypted vault (the embedded default), or a team's shared database. Each protocol has one
contract test suite (``tests/test_storage_contracts.py``) that every implementation passes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Sequence
from types import TracebackType
from typing import Protocol, TypeVar, runtime_checkable

from authpool.accounts.model import PoolFile, Rows
from authpool.accounts.secret import Secret

__all__ = ["HeldLock", "MetadataStore", "SecretBackend", "TeamStore"]

T = TypeVar("T")


class HeldLock(Protocol):
    """A lock shared by every thread and process using the store (a file lock, a lease row)."""

    def acquire(self, timeout: float | None = None) -> None:
        """Block until held, or raise :class:`~authpool.errors.LockTimeout`."""

    def release(self) -> None:
        """Let the next waiter in."""

    def __enter__(self) -> HeldLock:
        """Acquire (``with lock:``)."""

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Release."""


class MetadataStore(Protocol):
    """Where the pool's metadata lives: accounts, cooldowns, sessions, journal; never a secret.

    Every change is :meth:`update`: the change function is applied to a fresh read under the
    store's lock and the result is written atomically, so nobody ever writes a snapshot taken
    earlier over another process's change.
    """

    @property
    def location(self) -> str:
        """Where the store is, for messages (a path, a database address without password)."""

    def read(self) -> PoolFile:
        """The current metadata; treat it as read-only (cached while nothing changed)."""

    def peek(self) -> PoolFile | None:
        """The metadata if it can be had without waiting on a server (a cache known to be current),
        else None: async callers read it on the event loop, and :meth:`read` in a worker thread."""

    def now(self) -> float:
        """The time every deadline in the store is measured by (epoch seconds): the local clock
        for a local store, the database's for a team store, so machines agree on deadlines."""

    def update(self, change: Callable[[PoolFile], T]) -> T:
        """Apply ``change`` to a fresh read under the lock, validate, save; return what it returned.

        If ``change`` raises, nothing is written.
        """

    def update_accounts(self, ids: Collection[str], change: Callable[[Rows], T]) -> T:
        """Apply ``change`` to the accounts ``ids`` (and the session bindings), fresh, under the lock.

        Only these rows are locked, read and written, so the cost follows the change, not the
        pool. Accounts removed meanwhile are absent from ``Rows.accounts``.
        """

    def version(self) -> Hashable:
        """A value that changes whenever the metadata does (in this process or any other)."""

    def named_lock(self, name: str, timeout: float) -> HeldLock:
        """A lock named ``name`` (``account-ID``: its refresh; ``probe-ID``: its probation)."""


class SecretBackend(Protocol):
    """Where the secrets live: one entry per account, read through a cache keyed by generation."""

    @property
    def name(self) -> str:
        """Which backend this is, as recorded in the metadata (every process must use the same)."""

    def load(self, account_id: str, generation: int) -> Secret:
        """The secret at ``generation`` (cached per generation; a newer generation is read fresh)."""

    def cached(self, account_id: str, generation: int) -> Secret | None:
        """The cached secret of ``generation`` without touching the backend (None on a miss)."""

    def load_fresh(self, account_id: str) -> Secret:
        """Read the secret from the backend, bypassing the cache."""

    def save(self, account_id: str, secret: Secret, generation: int) -> None:
        """Write ``secret``; the caller records ``generation`` in the metadata afterwards."""

    def save_many(self, items: Sequence[tuple[str, Secret, int]]) -> None:
        """Write the secrets of new accounts, ``(account id, secret, generation)`` each: all, or none.

        A backend that can writes them at once (the vault rewrites its file once, the team store
        commits one transaction); the others write them one by one and delete those written if
        one fails.
        """

    def swap(self, account_id: str, old: Secret, new: Secret, generation: int) -> Secret:
        """Compare-and-swap: store ``new`` only if the stored secret is still ``old``.

        Returns what is stored afterwards: ``new``, or the newer secret someone else stored
        meanwhile (a refresh then uses theirs and discards its own).
        """

    def delete(self, account_id: str) -> None:
        """Remove the secret (a missing one is not an error)."""

    def delete_many(self, account_ids: Sequence[str]) -> None:
        """Remove several secrets (missing ones are not an error), at once where the backend can."""


@runtime_checkable
class TeamStore(Protocol):
    """A metadata store shared by a team's machines, which keeps the secrets too (sealed under a team key).

    A pool on such a store uses its secret backend, never a machine's keyring: every member's
    process must read the secrets every other member's process stores.
    """

    def team_secrets(self) -> SecretBackend:
        """The store's own secret backend."""
