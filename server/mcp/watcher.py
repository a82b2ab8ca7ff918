"""Watching the pool for changes, from this process or any other: which resources moved.

The store's change version (``MetadataStore.version()``) moves whenever the pool's metadata
changes in any process: a CLI ``accounts disable``, another server, a gateway, a team-mate's
machine on a team store. :class:`PoolWatcher` reads it every :data:`POLL_EVERY` seconds in a
worker thread, and at once when this process has just changed something (:meth:`kick`: the
server kicks after every tool call). Watching goes through the store's protocol only, never a
file path, so it works the same on every store.

When the version moved, the watcher waits :data:`DEBOUNCE` for a burst of writes to settle,
reads the pool once and compares each account's public view with the last one it saw. An
account's state also changes with time alone (a cooldown runs out, a usage window resets), so
between reads the views are recomputed from the last snapshot at each poll. The URIs whose
content changed go to ``publish``: ``authpool://accounts/ID`` for each account that changed,
``authpool://accounts`` and ``authpool://pool-status`` when any did, ``authpool://providers``
when accounts came or went (it counts them).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Hashable

import anyio
from anyio.abc import TaskStatus

from authpool import Pool, PoolError
from authpool.accounts import Account, account_view

__all__ = ["ACCOUNTS_URI", "ACCOUNT_URI", "DEBOUNCE", "POLL_EVERY", "POOL_STATUS_URI", "PROVIDERS_URI",
           "PoolWatcher", "changed_uris"]

log = logging.getLogger("authpool")

#: Seconds between looks at the store's change version.
POLL_EVERY = 0.5
#: Seconds a change is given to settle (a burst of writes becomes one notification per resource).
DEBOUNCE = 0.05

ACCOUNTS_URI = "authpool://accounts"
POOL_STATUS_URI = "authpool://pool-status"
PROVIDERS_URI = "authpool://providers"
ACCOUNT_URI = "authpool://accounts/{id}"

Publish = Callable[[list[str]], Awaitable[None]]
Fingerprints = dict[str, str]


def fingerprints(accounts: list[Account], now: float) -> Fingerprints:
    """Each account's public view as of ``now``, as comparable text (no secret is in a view)."""
    return {a.id: json.dumps(account_view(a, now), sort_keys=True, default=str) for a in accounts}


def changed_uris(before: Fingerprints, after: Fingerprints) -> list[str]:
    """The resource URIs whose content differs between two sets of fingerprints."""
    moved = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if not moved:
        return []
    uris = [ACCOUNTS_URI, POOL_STATUS_URI]
    if before.keys() != after.keys():
        uris.append(PROVIDERS_URI)
    return uris + [ACCOUNT_URI.format(id=account_id) for account_id in moved]


class PoolWatcher:
    """Polls a pool's store for changes and hands the changed resource URIs to ``publish``.

    Example:
        >>> watcher = PoolWatcher(lambda: pool, publish)  # doctest: +SKIP
        >>> tg.start_soon(watcher.run)  # doctest: +SKIP
        >>> watcher.kick()  # after a change made in this process  # doctest: +SKIP
    """

    def __init__(self, pool: Callable[[], Pool], publish: Publish, *, wanted: Callable[[], bool] = lambda: True,
                 poll_every: float = POLL_EVERY, debounce: float = DEBOUNCE) -> None:
        self._pool = pool
        self._publish = publish
        self._wanted = wanted
        self._poll_every = poll_every
        self._debounce = debounce
        self._kicked = anyio.Event()
        self._version: Hashable = None
        self._accounts: list[Account] | None = None
        self._seen: Fingerprints | None = None

    def kick(self) -> None:
        """Look at the store now rather than at the next poll (something in this process changed it).

        While nobody is subscribed the watcher would only wake to find that out (after every tool
        call): it is left asleep instead."""
        if self._wanted():
            self._kicked.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Watch until cancelled. A store that cannot be read is retried at the next poll (logged once).

        The first look, at once, is the baseline; ``task_status`` is told once it is taken, so a
        server that starts the watcher with ``tg.start`` serves no subscription before it. While
        nobody is subscribed (``wanted()`` is false) the store is not read at all; the baseline
        then grows stale, which can only make the first look after a subscription report more
        URIs than changed, never fewer.
        """
        failing = False
        first = True
        first_done = False
        while True:
            if not first:
                with anyio.move_on_after(self._poll_every):
                    await self._kicked.wait()
                self._kicked = anyio.Event()
                if not self._wanted():
                    continue
            first = False
            try:
                await self.check()
            except Exception as e:  # noqa: BLE001 - notifications are a side channel: never take the server down
                if not failing:
                    reason = str(e) if isinstance(e, PoolError) else type(e).__name__
                    log.warning("cannot watch the pool for changes (%s); retrying every %gs", reason, self._poll_every)
                failing = True
            else:
                failing = False
            if first_done is False:
                first_done = True
                task_status.started()

    async def check(self) -> None:
        """One look: read the pool if its version moved, publish what changed since the last look."""
        pool = self._pool()
        version = await anyio.to_thread.run_sync(pool.store.version)
        if version != self._version or self._accounts is None:
            if self._accounts is not None:
                # A change: let a burst of writes land first. The first look (the baseline, which
                # the server waits for before answering anything) has nothing to coalesce.
                await anyio.sleep(self._debounce)
            version, accounts = await anyio.to_thread.run_sync(_read, pool)
            self._version, self._accounts = version, accounts
        current = fingerprints(self._accounts, pool.store.now())
        before, self._seen = self._seen, current
        if before is None:
            return  # the first look is the baseline: nothing to compare with yet
        uris = changed_uris(before, current)
        if uris:
            await self._publish(uris)


def _read(pool: Pool) -> tuple[Hashable, list[Account]]:
    # The version first: a write between the two makes the next look read again, never miss it.
    version = pool.store.version()
    return version, list(pool.store.read().accounts)
