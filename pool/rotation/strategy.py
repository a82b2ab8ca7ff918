"""Rotation strategies: small pure functions that order the ready accounts of a request.

Each takes the candidate accounts (already filtered to enabled, not needing re-auth, not
cooling) and a view of their use, and returns them in the order they should be tried.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from authpool.accounts.model import Account, QuotaWindow

__all__ = ["STRATEGIES", "UsageView", "order_accounts"]


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


Strategy = Callable[[Sequence[Account], Callable[[Account], UsageView]], list[Account]]


def ordered(accounts: Sequence[Account], usage: Callable[[Account], UsageView]) -> list[Account]:
    """Fill first: by configured order; least recently used among equal orders."""
    return sorted(accounts, key=lambda a: (a.order, usage(a).last_used, a.id))


def round_robin(accounts: Sequence[Account], usage: Callable[[Account], UsageView]) -> list[Account]:
    """Spread evenly: least recently used first (never-used first), order breaks ties."""
    return sorted(accounts, key=lambda a: (usage(a).last_used, a.order, a.id))


def least_used(accounts: Sequence[Account], usage: Callable[[Account], UsageView]) -> list[Account]:
    """Fewest requests per unit of weight first, so weights give proportional shares."""
    return sorted(
        accounts,
        key=lambda a: (_share(a.counters.requests + usage(a).unrecorded, usage(a).weight),
                       usage(a).last_used, a.order, a.id),
    )


def _share(requests: int, weight: float) -> float:
    """Requests per unit of weight; a weight of 0 (or less) means "only when nothing else is ready"."""
    return requests / weight if weight > 0 else float("inf")


def drain_soonest_reset(accounts: Sequence[Account], usage: Callable[[Account], UsageView]) -> list[Account]:
    """Use first the account whose quota window resets soonest: its remaining quota would be
    lost at the reset anyway. A subscription's usage windows with quota left count first (the
    soonest-resetting one), then the reset headers of the last answer; accounts with no known
    reset come last, in configured order."""
    return sorted(accounts, key=lambda a: (_soonest_reset(usage(a)), a.order, usage(a).last_used, a.id))


def _soonest_reset(view: UsageView) -> float:
    windows = [w.resets_at for w in view.windows.values() if w.resets_at is not None and w.used < 1]
    if windows:
        return min(windows)
    return view.quota_resets_at if view.quota_resets_at is not None else float("inf")


STRATEGIES: dict[str, Strategy] = {
    "ordered": ordered,
    "round-robin": round_robin,
    "least-used": least_used,
    "drain-soonest-reset": drain_soonest_reset,
    "sticky": ordered,  # sessions pin a request to its account; the rest fill first
}


def order_accounts(
    strategy: str, accounts: Sequence[Account], usage: Callable[[Account], UsageView]
) -> list[Account]:
    """Order ``accounts`` by ``strategy`` (unknown names fall back to ``ordered``)."""
    return STRATEGIES.get(strategy, ordered)(accounts, usage)
