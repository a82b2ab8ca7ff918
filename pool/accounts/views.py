"""Public views of the pool: what the CLI, the MCP tools and resources show. Never a secret."""

from __future__ import annotations

import collections
import heapq
import shlex
import time
from collections.abc import Iterable
from typing import Any

from authpool.accounts.listing import ListingKey, listing_key
from authpool.accounts.model import Account, AccountState

__all__ = [
    "ATTENTION_LIMIT",
    "SHOWN_LIMIT",
    "account_view",
    "attention_view",
    "describe_windows",
    "fix_command",
    "pool_status",
    "relogin_command",
    "shown_accounts",
    "window_views",
]


def account_view(a: Account, now: float | None = None) -> dict[str, Any]:
    """The public view of one account."""
    now = time.time() if now is None else now
    return {
        "id": a.id,
        "provider": a.provider,
        "namespace": a.namespace,
        "label": a.label,
        "name": a.name,
        "kind": a.kind,
        "enabled": a.enabled,
        "state": a.state(now),
        "cooling_until": a.cooldown_until(now=now),
        "cooldowns": {scope: {"until": cd.until, "reason": cd.reason}
                      for scope, cd in a.cooldowns.items() if cd.until > now},
        "needs_reauth": a.needs_reauth,
        "refresh_failing": (failing.describe() if (failing := a.failing_refresh()) is not None else None),
        "windows": window_views(a, now),
        "token_expires_at": a.access_expires_at,
        "linked_to": f"{a.link.source}: {a.link.path}" if a.link is not None else None,
        "last_used_at": a.last_used_at,
        "last_status": a.last_status,
        "last_error": a.last_error,
        "counters": a.counters.model_dump(),
    }


def window_views(a: Account, now: float) -> dict[str, dict[str, Any]]:
    """The account's usage windows that have not reset since they were reported, by name, as every
    view shows them (percent used, when it resets, the provider's status)."""
    return {name: {"used_percent": round(w.used * 100, 1), "resets_at": w.resets_at, "status": w.status}
            for name, w in sorted(a.windows.items()) if w.resets_at is None or w.resets_at > now}


ATTENTION_LIMIT = 20  # accounts needing attention listed per provider; the rest are counted


def pool_status(accounts: Iterable[Account], now: float | None = None, *,
                attention_limit: int = ATTENTION_LIMIT) -> dict[str, Any]:
    """A summary per provider, the same size whatever the pool's: how many accounts are in each
    state, when the next cooling one frees up, and the accounts that need a person (a dead login, a
    failing token endpoint), at most ``attention_limit`` of them with a count of the rest."""
    now = time.time() if now is None else now
    by_provider: dict[str, list[tuple[Account, AccountState]]] = {}
    for a in accounts:  # each account's state once: it is most of the cost at 10,000 accounts
        by_provider.setdefault(a.provider, []).append((a, a.state(now)))
    providers = []
    for pid, group in sorted(by_provider.items()):
        states = collections.Counter(state for _, state in group)
        cooling_until = [u for a, state in group if state == "cooling" and (u := a.cooldown_until(now=now))]
        attention = sorted((a for a, state in group if state in ("needs-reauth", "refresh-failing")),
                           key=lambda a: (not a.needs_reauth, listing_key(a)))
        providers.append({
            "provider": pid,
            "total": len(group),
            "ready": states["ready"],
            "cooling": states["cooling"],
            "needs_reauth": states["needs-reauth"],
            "refresh_failing": states["refresh-failing"],
            "disabled": states["disabled"],
            "next_free_at": min(cooling_until) if cooling_until else None,
            "attention": [attention_view(a, now) for a in attention[:attention_limit]],
            "attention_more": max(0, len(attention) - attention_limit),
        })
    return {"now": now, "providers": providers}


SHOWN_LIMIT = 200  # accounts a live view (the dashboard, `authpool top`) lists at once; the rest are counted
# Which accounts a live view keeps when it cannot list them all: those that need a person, then the
# cooling ones (they come back by themselves), then the ready ones, the disabled last.
_SHOWN_FIRST: dict[AccountState, int] = {
    "needs-reauth": 0, "refresh-failing": 1, "cooling": 2, "ready": 3, "disabled": 4}


def shown_accounts(accounts: Iterable[Account], now: float, *, needle: str = "",
                   limit: int = SHOWN_LIMIT) -> tuple[list[Account], int]:
    """What a live view lists, refreshed every second whatever the pool's size: the accounts whose
    name, provider or state contains ``needle`` (any case), at most ``limit`` of them (those that
    need a person first, then cooling, ready, disabled), in the pool's order; and how many matched.

    A small pool is listed whole and in order, as before; 10,000 accounts cost one look at each
    (their state) and a bounded selection, not a view, a table row and a chart each per second.
    """
    folded = needle.casefold()
    matching: list[tuple[int, ListingKey, Account]] = []
    for a in accounts:
        state = a.state(now)
        if folded and not (folded in a.name.casefold() or folded in a.provider.casefold() or folded in state):
            continue
        matching.append((_SHOWN_FIRST[state], listing_key(a), a))
    kept = heapq.nsmallest(max(0, limit), matching, key=lambda t: (t[0], t[1]))
    return [a for _, _, a in sorted(kept, key=lambda t: t[1])], len(matching)


def attention_view(a: Account, now: float) -> dict[str, Any]:
    """An account that needs a person, in a few fields: what is wrong, and the command that fixes a dead
    login (a failing token endpoint has none: renewal retries by itself, on a backoff)."""
    failing = a.failing_refresh()
    return {
        "id": a.id,
        "name": a.name,
        "state": a.state(now),
        "detail": failing.describe() if failing is not None and not a.needs_reauth else a.last_error,
        "fix": fix_command(a),
    }


def fix_command(a: Account) -> str | None:
    """The command that brings back an account that needs re-auth (None if it does not)."""
    return relogin_command(a) if a.needs_reauth else None


def relogin_command(a: Account) -> str:
    """The command that gives the account a new login (OAuth) or a new key: the one place it is written."""
    label = shlex.quote(a.label)  # labels may hold spaces: the command must paste as is
    if a.kind == "oauth":
        return f"authpool login {a.provider} --label {label}"
    return f"authpool accounts remove {a.id} && authpool accounts add-key {a.provider} --label {label}"


def describe_windows(view: dict[str, Any], now: float) -> str:
    """An account view's usage windows in a few words: ``5h 42% (resets in 1.5h), 7d 18%``."""
    parts = []
    for name, w in view.get("windows", {}).items():
        reset = w.get("resets_at")
        when = f" (resets in {_span(reset - now)})" if reset is not None and reset > now else ""
        parts.append(f"{name} {w['used_percent']:.0f}%{when}")
    return ", ".join(parts)


def _span(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"
