"""Copying a pool between stores (``authpool store copy``): metadata and secrets, all or nothing.

Into a team store, every account and its sealed secret are inserted in one database transaction;
into the local store, the secrets are written first and the metadata in one locked update, and the
secrets are removed again if that update fails. Either way a failure leaves the target as it was.

A refresh token must be rotated by one pool only (the provider revokes the login when a rotated
token is presented again), so once the copy has landed the *source*'s OAuth accounts are disabled
(kept, with a note saying where they went); API keys do not rotate and stay enabled in both.
While copying, every source account's refresh lock is held, so no rotation happens in between.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from authpool.accounts import transitions
from authpool.accounts.model import Account, PoolFile, Rows
from authpool.accounts.secret import Secret
from authpool.errors import DuplicateLabel, SecretError
from authpool.pool import Pool
from authpool.storage.protocols import HeldLock

__all__ = ["CopyReport", "copy_pool"]


@dataclass(frozen=True)
class CopyReport:
    """What a copy did: accounts copied, and the source's OAuth accounts disabled afterwards."""

    copied: list[str]
    disabled: list[str]


def copy_pool(source: Pool, target: Pool) -> CopyReport:
    """Copy every account of ``source`` (metadata and secret) into ``target``.

    Raises:
        SharingRefused: the target is a team store and an OAuth login's provider keeps logins personal.
        DuplicateLabel: the target has one of the accounts already (nothing is copied).
        SecretError, StoreError: reading or writing failed (nothing is copied).
    """
    accounts = source.accounts()
    for acc in accounts:
        target.check_sharing(target.provider(acc.provider), acc.kind)
    taken = target.store.read()
    clash = [a.name for a in accounts if any(t.id == a.id or (t.provider == a.provider and
                                                                t.label.casefold() == a.label.casefold())
                                             for t in taken.accounts)]
    if clash:
        raise DuplicateLabel(f"{target.store.location} has these accounts already: {', '.join(clash)}; "
                             "nothing was copied")
    held: list[HeldLock] = []
    try:
        for acc in accounts:
            lock = source.secret_lock(acc.id)
            lock.acquire()
            held.append(lock)
        current = [a for a in source.store.read().accounts if a.id in {x.id for x in accounts}]
        values = {a.id: source.secrets.load_fresh(a.id) for a in current}
        copies = [_fresh_copy(a) for a in current]
        if target.team:
            from authpool.storage.postgres import TeamSecrets, copy_in

            team = target.secrets
            if not isinstance(team, TeamSecrets):  # a team store's pool always has them
                raise TypeError(f"{target.store.location} has no team secrets")
            copy_in(team, copies, values)
        else:
            _copy_local(target, copies, values)
        oauth = [a.id for a in current if a.kind == "oauth"]
        if oauth:
            note = f"copied to {target.store.location}; disabled here so one pool alone rotates its refresh token"

            def disable(rows: Rows) -> None:
                for account_id in oauth:
                    acc = rows.accounts.get(account_id)
                    if acc is not None:
                        transitions.set_enabled(acc, False)
                        acc.last_error = note

            source.store.update_accounts(oauth, disable)
    finally:
        for lock in reversed(held):
            lock.release()
    by_id = {a.id: a.name for a in current}
    return CopyReport([a.name for a in current], [by_id[i] for i in oauth])


def _fresh_copy(acc: Account) -> Account:
    """The account as the target gets it: its settings and history, no in-flight state of the source."""
    copy = acc.model_copy(deep=True)
    copy.refresh_journal = None
    copy.refresh_failing = None
    copy.link = None  # the source keeps the tool's file in step; two pools writing it would fight
    return copy


def _copy_local(target: Pool, copies: list[Account], values: dict[str, Secret]) -> None:
    written: list[str] = []
    try:
        for acc in copies:
            target.secrets.save(acc.id, values[acc.id], acc.secret_generation)
            written.append(acc.id)

        def insert(pool: PoolFile) -> None:
            for acc in copies:
                if any(a.id == acc.id for a in pool.accounts):
                    raise DuplicateLabel(f"account id {acc.id} exists in {target.store.location}; nothing was copied")
                pool.accounts.append(acc)

        target.store.update(insert)
    except BaseException:
        for account_id in written:
            with contextlib.suppress(SecretError):
                target.secrets.delete(account_id)
        raise
