"""Pages of accounts: which accounts a listing shows, in which order, and where the next page starts.

A pure decision over accounts already read (no I/O), shared by the ``list_accounts`` tool, the
``authpool://accounts`` resource and ``authpool accounts list``. Accounts are ordered by
:func:`listing_key` — provider, namespace, order, creation time, id — which no two accounts share,
so the order is total and stable. A cursor encodes the key of the last account a page showed
(keyset paging, not an offset): the next page starts after that key, so a cursor stays valid
while accounts are added or removed elsewhere, and no account is skipped or shown twice because
of it. An account added before the cursor's position appears on no later page; one whose
``order`` changes between pages may move past it.

Example:
    >>> page = page_accounts(pool.accounts(), provider="openai", limit=50)  # doctest: +SKIP
    >>> more = page_accounts(pool.accounts(), provider="openai", limit=50, cursor=page.next_cursor)  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import binascii
import heapq
import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import get_args

from authpool.accounts.model import Account, AccountState
from authpool.errors import InvalidInput

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "STATES", "AccountPage", "ListingKey", "listing_key", "page_accounts"]

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
STATES: tuple[AccountState, ...] = get_args(AccountState)

ListingKey = tuple[str, str, int, float, str]
_CURSOR_PREFIX = "c1."  # a version, so a later cursor format can refuse this one clearly


@dataclass(frozen=True)
class AccountPage:
    """One page of a listing: its accounts, how many match in all, and the cursor of the next page."""

    accounts: list[Account]
    total: int  # accounts matching the filters, on every page together
    next_cursor: str | None  # None: this is the last page


def listing_key(a: Account) -> ListingKey:
    """Where ``a`` sits in every listing (unique: the id breaks every tie)."""
    return (a.provider, a.namespace, a.order, a.created_at, a.id)


def page_accounts(
    accounts: Iterable[Account],
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
        accounts: every account (any order).
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
    if state is not None and state not in STATES:
        raise InvalidInput(f"state must be one of {', '.join(STATES)}")
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}")
    after = decode_cursor(cursor) if cursor is not None else None
    now = time.time() if now is None else now
    matches = [
        a for a in accounts
        if (provider is None or a.provider == provider)
        and (namespace is None or a.namespace == namespace)
        and (state is None or a.state(now) == state)
    ]
    rest = matches if after is None else [a for a in matches if listing_key(a) > after]
    # The page and one more, to know whether a next page exists: O(n log limit), no full sort.
    shown = heapq.nsmallest(limit + 1, rest, key=listing_key)
    more = len(shown) > limit
    shown = shown[:limit]
    return AccountPage(shown, len(matches), encode_cursor(listing_key(shown[-1])) if more else None)


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
