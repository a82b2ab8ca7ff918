"""Pages of accounts: which accounts a listing shows, in which order, and where the next page starts.

No I/O: a decision over a snapshot already read, shared by the ``list_accounts`` tool, the
``authpool://accounts`` resource and ``authpool accounts list``. Accounts are ordered by
:func:`listing_key` — provider, namespace, order, creation time, id — which no two accounts share,
so the order is total and stable. A cursor encodes the key of the last account a page showed
(keyset paging, not an offset): the next page starts after that key, so a cursor stays valid
while accounts are added or removed elsewhere, and no account is skipped or shown twice because
of it. An account added before the cursor's position appears on no later page; one whose
``order`` changes between pages may move past it.

A page does not sort the pool. A :class:`Listing` keeps a snapshot's accounts sorted per
provider and namespace; it is built once per snapshot and, for the next snapshot of the same
store, derived from the previous listing by moving only the accounts that changed
(:meth:`PoolFile.changed_since`). A page then finds its place by bisection and reads ``limit``
accounts: its cost follows the page, not the pool, except with a ``state`` filter (a state
depends on the clock, so every account of the groups asked for is looked at, to count them).

Example:
    >>> page = page_accounts(pool.store.read(), provider="openai", limit=50)  # doctest: +SKIP
    >>> more = page_accounts(pool.store.read(), provider="openai", limit=50, cursor=page.next_cursor)  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
import math
import threading
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import get_args

from authpool.accounts.model import WHOLE_ACCOUNT, Account, AccountState, PoolFile
from authpool.errors import InvalidInput

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "STATES",
    "AccountPage",
    "Listing",
    "ListingKey",
    "listing_key",
    "listing_of",
    "page_accounts",
]

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
STATES: tuple[AccountState, ...] = get_args(AccountState)

ListingKey = tuple[str, str, int, float, str]
_CURSOR_PREFIX = "c1."  # a version, so a later cursor format can refuse this one clearly
_DERIVE_AT_MOST = 512  # changed accounts moved one by one into a derived listing; more: sort again

_Rank = tuple[int, float, str]  # (order, created_at, id): the rest of the listing key, within a group


@dataclass(frozen=True)
class AccountPage:
    """One page of a listing: its accounts, how many match in all, and the cursor of the next page."""

    accounts: list[Account]
    total: int  # accounts matching the filters, on every page together
    next_cursor: str | None  # None: this is the last page


def listing_key(a: Account) -> ListingKey:
    """Where ``a`` sits in every listing (unique: the id breaks every tie)."""
    return (a.provider, a.namespace, a.order, a.created_at, a.id)


def _rank(a: Account) -> _Rank:
    return (a.order, a.created_at, a.id)


def _maybe_not_ready(a: Account) -> bool:
    """Whether ``a`` can be in any state but ready (:meth:`Account.state`): only a disabled account, a
    dead login, a failing token endpoint or a whole-account cooldown (which may have ended) is."""
    return (not a.enabled or a.needs_reauth or a.failing_refresh() is not None
            or WHOLE_ACCOUNT in a.cooldowns)


class _Sorted:
    """Accounts sorted by rank, with the ranks beside them for bisection."""

    __slots__ = ("members", "ranks")

    def __init__(self, members: list[Account]) -> None:
        self.members = members
        self.ranks = [_rank(a) for a in members]

    def copy(self) -> _Sorted:
        new = _Sorted([])
        new.members, new.ranks = list(self.members), list(self.ranks)
        return new

    def after(self, rank: _Rank | None) -> int:
        """The position of the first account ranked after ``rank`` (0 for None)."""
        return 0 if rank is None else bisect.bisect_right(self.ranks, rank)

    def insert(self, a: Account) -> None:
        rank = _rank(a)
        i = bisect.bisect_left(self.ranks, rank)
        self.ranks.insert(i, rank)
        self.members.insert(i, a)

    def remove(self, a: Account) -> bool:
        """Take ``a`` out; False if it is not here."""
        rank = _rank(a)
        i = bisect.bisect_left(self.ranks, rank)
        if i == len(self.ranks) or self.ranks[i] != rank:
            return False
        del self.ranks[i], self.members[i]
        return True


class _Group:
    """One (provider, namespace): every account, and apart the few that may not be ready, so a
    ``state`` filter looks at those only."""

    __slots__ = ("every", "flagged")

    def __init__(self, every: _Sorted, flagged: _Sorted) -> None:
        self.every = every
        self.flagged = flagged


class Listing:
    """Accounts in listing order, kept per (provider, namespace) group. Never changed once built
    (pages may read it from several threads); :meth:`evolved` makes the next one."""

    def __init__(self, groups: dict[tuple[str, str], _Group]) -> None:
        self._groups = groups
        self._order = sorted(groups)

    @classmethod
    def of(cls, accounts: Iterable[Account]) -> Listing:
        """The listing of ``accounts`` (any order): one sort."""
        grouped: dict[tuple[str, str], list[Account]] = {}
        for a in accounts:
            grouped.setdefault((a.provider, a.namespace), []).append(a)
        groups = {}
        for key, members in grouped.items():
            members.sort(key=_rank)
            groups[key] = _Group(_Sorted(members), _Sorted([a for a in members if _maybe_not_ready(a)]))
        return cls(groups)

    def evolved(self, before: PoolFile, after: PoolFile, changed: Collection[str]) -> Listing | None:
        """The listing of ``after``, this being the listing of ``before`` and ``changed`` the ids of the
        accounts added, changed or removed in between; None if this listing does not match ``before``."""
        groups = dict(self._groups)
        copied: set[tuple[str, str]] = set()

        def mutable(a: Account) -> _Group:
            key = (a.provider, a.namespace)
            if key not in copied:
                old = groups.get(key)
                groups[key] = _Group(old.every.copy(), old.flagged.copy()) if old else _Group(_Sorted([]), _Sorted([]))
                copied.add(key)
            return groups[key]

        for account_id in changed:
            old, new = before.get(account_id), after.get(account_id)
            if old is not None:
                group = mutable(old)
                if not group.every.remove(old) or group.flagged.remove(old) != _maybe_not_ready(old):
                    return None
            if new is not None:
                group = mutable(new)
                group.every.insert(new)
                if _maybe_not_ready(new):
                    group.flagged.insert(new)
        return Listing({key: g for key, g in groups.items() if g.every.members})

    def page(
        self,
        *,
        provider: str | None = None,
        namespace: str | None = None,
        state: str | None = None,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
        now: float | None = None,
    ) -> AccountPage:
        """See :func:`page_accounts`."""
        after = _checked(state, limit, cursor)
        now = time.time() if now is None else now
        shown: list[Account] = []
        total = 0
        for key in self._order:
            if (provider is not None and key[0] != provider) or (namespace is not None and key[1] != namespace):
                continue
            group = self._groups[key]
            if after is not None and key < after[:2]:
                start: _Rank | None = None
                done = True  # before the cursor: counted, not shown
            else:
                start, done = (after[2:] if after is not None and key == after[:2] else None), False
            total += _collect(group, state, start, None if done else shown, limit + 1, now)
        more = len(shown) > limit
        del shown[limit:]
        return AccountPage(shown, total, encode_cursor(listing_key(shown[-1])) if more else None)


def _collect(group: _Group, state: str | None, start: _Rank | None, into: list[Account] | None, want: int,
             now: float) -> int:
    """Append ``group``'s accounts in ``state`` ranked after ``start`` to ``into`` until it holds ``want``;
    return how many of the group's accounts are in ``state`` (all of them for None)."""
    if state is None:
        if into is not None and len(into) < want:
            i = group.every.after(start)
            into += group.every.members[i:i + want - len(into)]
        return len(group.every.members)
    if state != "ready":  # only a flagged account can be in another state
        flagged = group.flagged
        first = flagged.after(start)
        count = 0
        for i, a in enumerate(flagged.members):
            if a.state(now) == state:
                count += 1
                if into is not None and i >= first and len(into) < want:
                    into.append(a)
        return count
    not_ready = sum(1 for a in group.flagged.members if a.state(now) != "ready")
    if into is not None and len(into) < want:
        members = group.every.members
        for i in range(group.every.after(start), len(members)):  # no slice: that would copy the rest
            if len(into) >= want:
                break
            if members[i].state(now) == "ready":
                into.append(members[i])
    return len(group.every.members) - not_ready


def _checked(state: str | None, limit: int, cursor: str | None) -> ListingKey | None:
    """The key the page resumes after, once the arguments are checked.

    Raises:
        InvalidInput: as :func:`page_accounts`.
    """
    if state is not None and state not in STATES:
        raise InvalidInput(f"state must be one of {', '.join(STATES)}")
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}")
    return decode_cursor(cursor) if cursor is not None else None


class _Latest:
    """The latest snapshot listed in this process and its listing, kept to derive the next one's."""

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.entry: tuple[PoolFile, Listing] | None = None


_latest = _Latest()


def listing_of(snapshot: PoolFile) -> Listing:
    """The listing of a store's snapshot (treated as read-only, as every snapshot is).

    The listing of the latest snapshot listed is kept: asked again for the same snapshot, it is
    reused; for a later snapshot of the same store, it is derived from it (only the accounts that
    changed move); otherwise it is built with one sort.
    """
    with _latest.guard:
        last = _latest.entry
    if last is not None and last[0] is snapshot:
        return last[1]
    listing: Listing | None = None
    if last is not None:
        changed = snapshot.changed_since(last[0])
        if changed is not None and len(changed) <= _DERIVE_AT_MOST:
            listing = last[1].evolved(last[0], snapshot, changed)
    if listing is None:
        listing = Listing.of(snapshot.accounts)
    with _latest.guard:
        # Whichever thread stores last wins: any earlier snapshot of a store derives a later one.
        _latest.entry = (snapshot, listing)
    return listing


def page_accounts(
    accounts: PoolFile | Iterable[Account],
    *,
    provider: str | None = None,
    namespace: str | None = None,
    state: str | None = None,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
    now: float | None = None,
) -> AccountPage:
    """The page of ``accounts`` matching the filters that starts after ``cursor``.

    Args:
        accounts: a store's snapshot (its listing is kept and derived, see :func:`listing_of`), or
            accounts in any order (sorted for this page only).
        provider, namespace: only accounts of this provider / namespace (exact ids).
        state: only accounts in this state as of ``now`` (one of :data:`STATES`).
        limit: at most this many accounts (1 to :data:`MAX_LIMIT`).
        cursor: a previous page's ``next_cursor``; None for the first page.

    Returns:
        The page; ``total`` counts every match, before and after the cursor.

    Raises:
        InvalidInput: ``state`` is not a state, ``limit`` is out of range, or ``cursor`` is not one a
            listing handed out.
    """
    _checked(state, limit, cursor)  # before building a listing for nothing
    listing = listing_of(accounts) if isinstance(accounts, PoolFile) else Listing.of(accounts)
    return listing.page(provider=provider, namespace=namespace, state=state, limit=limit, cursor=cursor, now=now)


def encode_cursor(key: ListingKey) -> str:
    """An opaque cursor that resumes a listing after ``key`` (URL- and shell-safe)."""
    raw = json.dumps(list(key), separators=(",", ":"), ensure_ascii=False).encode()
    return _CURSOR_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> ListingKey:
    """The key a cursor resumes after.

    Raises:
        InvalidInput: not a cursor a listing handed out (the message never repeats it).
    """
    bad = InvalidInput("the cursor is not one a listing handed out; list again without it to start over")
    if not cursor.startswith(_CURSOR_PREFIX) or len(cursor) > 2048:
        raise bad
    body = cursor[len(_CURSOR_PREFIX):]
    try:
        doc = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (binascii.Error, ValueError):
        raise bad from None
    if not (isinstance(doc, list) and len(doc) == 5):
        raise bad
    provider, namespace, order, created_at, account_id = doc
    if not (isinstance(provider, str) and isinstance(namespace, str) and isinstance(account_id, str)
            and isinstance(order, int) and not isinstance(order, bool)
            and isinstance(created_at, int | float) and not isinstance(created_at, bool)
            and math.isfinite(created_at)):
        raise bad
    return (provider, namespace, order, float(created_at), account_id)
