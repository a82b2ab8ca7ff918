"""Rotation strategies: the order in which the ready accounts of a request are tried.

Each strategy is a sort key over an account and a view of its use (smallest first), so the same
order serves a one-off sort (:func:`order_accounts`) and the roster's heap, which keeps it
between requests (:mod:`authpool.rotation.roster`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from authpool.accounts.model import Account, QuotaWindow

__all__ = ["STRATEGIES", "StrategyKey", "UsageView", "key_of", "order_accounts"]


@dataclass(frozen=True)
class UsageView:
    """What a strategy may know about an account beyond its metadata."""

    last_used: float  # epoch seconds, 0 if never
    weight: float = 1.0
    # Requests this process served that are not in the account's counters yet (usage is
    # flushed in batches): without them least-used would not see its own recent choices.
    unrecorded: int = 0
    quota_resets_at: float | None = None  # when the account's current rate-limit window resets
    # The subscription's usage windows (5h, 7d …) as this process last saw them.
    windows: Mapping[str, QuotaWindow] = field(default_factory=dict)


# A strategy is a sort key: the account with the smallest key is tried first. Keys are tuples
# of numbers ending with the account id (so no two accounts tie).
StrategyKey = tuple[float | str, ...]
KeyFn = Callable[[Account, UsageView], StrategyKey]


def _ordered(a: Account, u: UsageView) -> StrategyKey:
    """Fill first: by configured order; least recently used among equal orders."""
    return (a.order, u.last_used, a.id)


def _round_robin(a: Account, u: UsageView) -> StrategyKey:
    """Spread evenly: least recently used first (never-used first), order breaks ties."""
    return (u.last_used, a.order, a.id)


def _least_used(a: Account, u: UsageView) -> StrategyKey:
    """Fewest requests per unit of weight first, so weights give proportional shares."""
    return (_share(a.counters.requests + u.unrecorded, u.weight), u.last_used, a.order, a.id)


def _share(requests: int, weight: float) -> float:
    """Requests per unit of weight; a weight of 0 (or less) means "only when nothing else is ready"."""
    return requests / weight if weight > 0 else float("inf")


def _drain_soonest_reset(a: Account, u: UsageView) -> StrategyKey:
    """Use first the account whose quota window resets soonest: its remaining quota would be
    lost at the reset anyway. A subscription's usage windows with quota left count first (the
    soonest-resetting one), then the reset headers of the last answer; accounts with no known
    reset come last, in configured order."""
    return (_soonest_reset(u), a.order, u.last_used, a.id)


def _soonest_reset(view: UsageView) -> float:
    windows = [w.resets_at for w in view.windows.values() if w.resets_at is not None and w.used < 1]
    if windows:
        return min(windows)
    return view.quota_resets_at if view.quota_resets_at is not None else float("inf")


KEYS: dict[str, KeyFn] = {
    "ordered": _ordered,
    "round-robin": _round_robin,
    "least-used": _least_used,
    "drain-soonest-reset": _drain_soonest_reset,
    "sticky": _ordered,  # sessions pin a request to its account; the rest fill first
}
STRATEGIES = tuple(KEYS)


def key_of(strategy: str, reserve: float | None, a: Account, view: UsageView,
           now: float) -> tuple[StrategyKey, float | None]:
    """``a``'s place in ``strategy``'s order, and when that place changes by itself (a usage window
    or quota resetting), if it depends on one.

    With ``reserve`` (a percentage), an account whose busiest usage window is at the reserve or
    above comes after every account below it; only when none is below is it used, in order.
    """
    key = KEYS.get(strategy, _ordered)(a, view)
    depends = strategy == "drain-soonest-reset"
    if reserve is not None:
        busiest = max((w.used for w in view.windows.values()), default=0.0)
        key = (0 if busiest < reserve / 100 else 1, *key)
        depends = True
    if not depends:
        return key, None
    resets = [w.resets_at for w in view.windows.values() if w.resets_at is not None and w.resets_at > now]
    if view.quota_resets_at is not None and view.quota_resets_at > now:
        resets.append(view.quota_resets_at)
    return key, min(resets, default=None)


def order_accounts(strategy: str, accounts: Sequence[Account], usage: Callable[[Account], UsageView], *,
                   reserve: float | None = None, now: float | None = None) -> list[Account]:
    """Order ``accounts`` by ``strategy`` (unknown names fall back to ``ordered``)."""
    at = time.time() if now is None else now
    return sorted(accounts, key=lambda a: key_of(strategy, reserve, a, usage(a), at)[0])
