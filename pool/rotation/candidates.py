"""Which accounts may serve a request now, in which order, and when the next one frees up.

Pure functions of the metadata, the time and this process's view of usage: no I/O. An account
is a candidate when it is enabled, its login is alive, it is not cooling for the request's
scope, it was not already tried by this request, and its renewal is not backing off while it
needs one. Candidates come ordered by the provider's strategy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from authpool.accounts.model import WHOLE_ACCOUNT, Account, PoolFile
from authpool.providers.provider import Provider
from authpool.rotation.strategy import StrategyKey, UsageView, key_of

__all__ = ["Selection", "in_scope", "renewal_blocked_until", "select", "without_reserve"]


@dataclass(frozen=True)
class Selection:
    """The ready accounts in strategy order, when the soonest other one frees up, how many exist at all."""

    ready: list[Account]
    soonest: float | None
    considered: int


def in_scope(pool: PoolFile, provider: str, *, namespace: str | None, pinned: str | None) -> list[Account]:
    """The accounts a request may use at all: the provider's, in the namespace, or only the pinned one."""
    return [a for a in pool.accounts
            if a.provider == provider and (pinned is None or a.id == pinned)
            and (namespace is None or a.namespace == namespace)]


def renewal_blocked_until(a: Account, provider: Provider, now: float) -> float | None:
    """When an account that cannot serve until renewed, while renewing it fails, may try again.

    Its token was refused, or is inside the mandatory window; the token endpoint failed (or an
    interrupted refresh may still land) and the backoff has not ended. Skipped like a cooling
    account: no token call, no request.
    """
    failing = a.failing_refresh()
    if failing is None or failing.next_try_at <= now:
        return None
    _, mandatory = provider.refresh_windows(a.access_lifetime, linked=a.link is not None)
    expiring = a.access_expires_at is not None and a.access_expires_at - now <= mandatory
    return failing.next_try_at if failing.token_refused or expiring else None


def select(accounts: Sequence[Account], provider: Provider, *, now: float, exclude: set[str], model: str | None,
           usage: Callable[[Account], UsageView]) -> Selection:
    """The candidates among ``accounts`` (already in scope) for a request for ``model``.

    An account cooling only for another model than ``model`` is ready. Accounts in ``exclude``
    (tried by this request) are left out, except that a cooldown still counts towards
    ``soonest``: a rate-limited account comes back when its cooldown ends.
    """
    ready: list[Account] = []
    soonest: float | None = None
    for a in accounts:
        if not a.enabled or a.needs_reauth:
            continue
        until = a.cooldown_until(model or WHOLE_ACCOUNT, now)
        if until is None and a.id not in exclude:
            until = renewal_blocked_until(a, provider, now)
            if until is None:
                ready.append(a)
                continue
        if until is not None:
            soonest = until if soonest is None else min(soonest, until)
    keyed = sorted(((key_of(provider.strategy, provider.reserve, a, usage(a), now)[0], a) for a in ready),
                   key=lambda pair: pair[0])
    return Selection(without_reserve([a for _, a in keyed], [k for k, _ in keyed], provider.reserve), soonest,
                     len(accounts))


def without_reserve(ordered: list[Account], keys: list[StrategyKey], reserve: float | None) -> list[Account]:
    """With ``reserve``, the accounts kept in reserve (at or above it) are out of rotation while
    any account below it is ready; ``keys`` are ``ordered``'s keys (their first item says which)."""
    if reserve is None or not keys or keys[0][0] != 0:
        return ordered
    return [a for a, k in zip(ordered, keys, strict=True) if k[0] == 0]
