"""The accounts of one provider (and namespace) kept ready to choose from: a roster.

:func:`~authpool.rotation.candidates.select` looks at every account in scope and sorts the ready
ones: fine for ten accounts, 10-50 ms per request at 10,000. A roster keeps, between requests,
what that work found:

- a heap of the ready accounts by the strategy's key (:func:`~authpool.rotation.strategy.key_of`),
  so a request takes the best few in ``O(k log n)``;
- a heap of the accounts cooling as a whole, or whose renewal backs off, by the time they free up,
  so the soonest is at hand and an account rejoins the ready heap when its time comes;
- a heap of the times a ready account's key changes by itself (a usage window resets).

It follows the store change by change: a snapshot derived from the previous one names the
accounts that changed (:meth:`PoolFile.changed_since`), and only those are placed again; any
other snapshot rebuilds the roster. What this process learns between store changes (an account
just picked or served, a window read from an answer) arrives as :meth:`Roster.touch`.

Heap entries are never removed in place: an entry whose key is no longer the account's current
one is stale and skipped when it surfaces (lazy deletion). Pure bookkeeping; no I/O; one lock
per roster, held for microseconds.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import TypeVar

from authpool.accounts.model import WHOLE_ACCOUNT, Account, PoolFile
from authpool.providers.provider import Provider
from authpool.rotation.candidates import Selection, renewal_blocked_until, select
from authpool.rotation.strategy import StrategyKey, UsageView, key_of

__all__ = ["Roster", "Rosters"]

Usage = Callable[[Account], UsageView]
_E = TypeVar("_E", tuple[float, str], tuple[StrategyKey, str])

# How many ready accounts a request is offered at once: it takes the first that it can use
# (one on probation that another request is probing is passed over), so a few suffice.
OFFERED = 8


@dataclass(frozen=True)
class _Placed:
    """Where an account stands in the roster, as of the key it was last placed with."""

    key: StrategyKey | None  # None: not ready (blocked or unusable)
    until: float | None  # blocked until (whole-account cooldown, renewal backoff)


_NOWHERE = _Placed(None, None)


class Roster:
    """The accounts of ``provider`` in ``namespace`` (None: every namespace), ready to be chosen."""

    def __init__(self, provider: Provider, namespace: str | None) -> None:
        self.provider = provider
        self.namespace = namespace
        self._guard = threading.Lock()
        self._pool: PoolFile | None = None
        self._members: dict[str, Account] = {}
        self._placed: dict[str, _Placed] = {}
        self._ready: list[tuple[StrategyKey, str]] = []
        self._blocked: list[tuple[float, str]] = []
        self._rekey: list[tuple[float, str]] = []
        self._touched: set[str] = set()

    # -- following the store and this process ------------------------------------------------

    def touch(self, account_ids: Iterable[str]) -> None:
        """This process changed what it knows of these accounts' use (placed again on the next choice)."""
        with self._guard:
            self._touched.update(account_ids)

    def _sync(self, pool: PoolFile, usage: Usage, now: float) -> None:
        if pool is not self._pool:
            changed = pool.changed_since(self._pool) if self._pool is not None else None
            self._pool = pool
            if changed is None:
                self._rebuild(pool, usage, now)
            else:
                self._touched |= changed
        if self._touched:
            touched, self._touched = self._touched, set()
            for account_id in touched:
                acc = pool.get(account_id)
                if acc is not None and self._in_scope(acc):
                    self._members[account_id] = acc
                    self._place(acc, usage, now)
                else:
                    self._members.pop(account_id, None)
                    self._placed.pop(account_id, None)
        while self._blocked and self._blocked[0][0] <= now:
            until, account_id = heapq.heappop(self._blocked)
            placed = self._placed.get(account_id)
            if placed is not None and placed.until == until:
                self._place(self._members[account_id], usage, now)
        while self._rekey and self._rekey[0][0] <= now:
            _, account_id = heapq.heappop(self._rekey)
            if account_id in self._members:
                self._place(self._members[account_id], usage, now)
        if len(self._ready) + len(self._blocked) + len(self._rekey) > 3 * len(self._members) + 64:
            self._compact()

    def _compact(self) -> None:
        """Drop stale heap entries (each re-placing leaves one behind) once they outnumber live ones."""
        self._ready = list({e[1]: e for e in self._ready if self._placed.get(e[1], _NOWHERE).key == e[0]}.values())
        self._blocked = list({e[1]: e for e in self._blocked
                              if self._placed.get(e[1], _NOWHERE).until == e[0]}.values())
        live = set(self._members)
        self._rekey = list({e[1]: e for e in sorted(self._rekey, reverse=True) if e[1] in live}.values())
        for heap in (self._ready, self._blocked, self._rekey):
            heapq.heapify(heap)  # type: ignore[misc]

    def heap_sizes(self) -> tuple[int, int, int]:
        """How many entries the ready, blocked and re-key heaps hold (stale ones included)."""
        with self._guard:
            return len(self._ready), len(self._blocked), len(self._rekey)

    def _rebuild(self, pool: PoolFile, usage: Usage, now: float) -> None:
        self._members = {a.id: a for a in pool.for_provider(self.provider.id) if self._in_scope(a)}
        self._placed, self._ready, self._blocked, self._rekey = {}, [], [], []
        self._touched = set()
        for acc in self._members.values():
            self._place(acc, usage, now, push=False)
        heapq.heapify(self._ready)
        heapq.heapify(self._blocked)
        heapq.heapify(self._rekey)

    def _in_scope(self, a: Account) -> bool:
        return a.provider == self.provider.id and (self.namespace is None or a.namespace == self.namespace)

    def _place(self, acc: Account, usage: Usage, now: float, *, push: bool = True) -> None:
        """Put ``acc`` where it belongs now: ready under its key, blocked until a time, or nowhere."""
        if not acc.enabled or acc.needs_reauth:
            self._placed[acc.id] = _Placed(None, None)
            return
        until = acc.cooldown_until(WHOLE_ACCOUNT, now) or renewal_blocked_until(acc, self.provider, now)
        if until is not None:
            if self._placed.get(acc.id) != _Placed(None, until):
                self._placed[acc.id] = _Placed(None, until)
                self._add(self._blocked, (until, acc.id), push)
            return
        key, changes_at = key_of(self.provider.strategy, self.provider.reserve, acc, usage(acc), now)
        if self._placed.get(acc.id) != _Placed(key, None):  # else its heap entry is still the live one
            self._placed[acc.id] = _Placed(key, None)
            self._add(self._ready, (key, acc.id), push)
        if changes_at is not None:
            self._add(self._rekey, (changes_at, acc.id), push)

    @staticmethod
    def _add(heap: list[_E], entry: _E, push: bool) -> None:
        if push:
            heapq.heappush(heap, entry)
        else:
            heap.append(entry)  # the caller heapifies once

    # -- choosing ---------------------------------------------------------------------------

    def select(self, pool: PoolFile, *, now: float, exclude: Collection[str], model: str | None, usage: Usage,
               prefer: str | None = None, offered: int = OFFERED) -> Selection:
        """The best ready accounts (at most ``offered``, ``prefer`` first if it is ready), when the
        soonest other one frees up, and how many accounts are in scope.

        Same rules as :func:`~authpool.rotation.candidates.select`; ``soonest`` is exact when no
        account is ready (the only time a request waits for it).
        """
        with self._guard:
            self._sync(pool, usage, now)
            first = self._preferred(prefer, exclude, model, now)
            first_below = first is not None and self._below_reserve(first.id)
            ready: list[Account] = []
            soonest: float | None = self._blocked_soonest()
            reserve = self.provider.reserve is not None
            taken: list[tuple[StrategyKey, str]] = []
            seen: set[str] = set()
            while self._ready and len(ready) < offered:
                entry = heapq.heappop(self._ready)
                key, account_id = entry
                placed = self._placed.get(account_id)
                if placed is None or placed.key != key or account_id in seen:
                    continue  # stale, or a second entry with the same key
                taken.append(entry)
                seen.add(account_id)
                if reserve and key[0] != 0 and ((ready and self._below_reserve(ready[0].id)) or first_below):
                    break  # kept in reserve while an account below the reserve is ready
                if account_id == prefer:
                    continue  # offered first (``first``) if it may serve
                acc = self._members[account_id]
                until = acc.cooldown_until(model, now) if model else None
                if until is None and account_id not in exclude:
                    until = renewal_blocked_until(acc, self.provider, now)  # moves with time: checked here
                    if until is None:
                        ready.append(acc)
                        continue
                if until is not None:
                    soonest = until if soonest is None else min(soonest, until)
            for entry in taken:
                heapq.heappush(self._ready, entry)
            if first is not None and reserve and not first_below and ready and self._below_reserve(ready[0].id):
                first = None  # the session's account is kept in reserve while another is below it
            if first is not None:
                ready = [first, *ready][:offered]
            if not ready:
                # Nothing may serve: the request waits for the soonest account or gives up, so that
                # time must be exact. A full scan, but only on this path (every account unusable).
                scan = select(list(self._members.values()), self.provider, now=now, exclude=set(exclude), model=model,
                              usage=usage)
                soonest = scan.soonest
            return Selection(ready, soonest, len(self._members))

    def _preferred(self, prefer: str | None, exclude: Collection[str], model: str | None, now: float) -> Account | None:
        """The session's account, if it may serve this request (the reserve aside)."""
        if prefer is None or prefer not in self._members or prefer in exclude or self._placed[prefer].key is None:
            return None
        acc = self._members[prefer]
        if acc.cooldown_until(model or WHOLE_ACCOUNT, now) or renewal_blocked_until(acc, self.provider, now):
            return None
        return acc

    def _below_reserve(self, account_id: str) -> bool:
        """Whether a ready account is below the provider's reserve (always, without one)."""
        key = self._placed[account_id].key
        return self.provider.reserve is None or (key is not None and key[0] == 0)

    def _blocked_soonest(self) -> float | None:
        while self._blocked:
            until, account_id = self._blocked[0]
            placed = self._placed.get(account_id)
            if placed is not None and placed.until == until:
                return until
            heapq.heappop(self._blocked)  # stale
        return None

    def accounts(self) -> list[Account]:
        """Every account in scope (as of the last choice)."""
        with self._guard:
            return list(self._members.values())


class Rosters:
    """One roster per (provider, namespace) of a pool, replaced when the provider's settings change."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._rosters: dict[tuple[str, str | None], Roster] = {}

    def get(self, provider: Provider, namespace: str | None) -> Roster:
        """The roster of ``provider`` in ``namespace`` (a new one if ``provider``'s settings changed)."""
        with self._guard:
            roster = self._rosters.get((provider.id, namespace))
            if roster is None or roster.provider is not provider:
                roster = self._rosters[(provider.id, namespace)] = Roster(provider, namespace)
            return roster

    def touch(self, account_id: str) -> None:
        """Tell every roster that this process's view of the account's use changed."""
        with self._guard:
            rosters = list(self._rosters.values())
        for roster in rosters:
            roster.touch((account_id,))
