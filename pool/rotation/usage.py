"""Hot-path bookkeeping, batched: request counts, last use and last status of served requests.

Writing the pool file on every successful request would cost a lock and two fsyncs per call
(and serialize every process on the pool lock). Successes are therefore recorded in memory and
applied in one locked update at most every ``interval`` seconds, on close and at exit. Only
the caller's deltas are applied, on a fresh read, so batching never overwrites another
process's change. Everything that must not be lost — tokens, cooldowns, needs-reauth — is
written at once by the rotation engine, not here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from authpool.accounts import transitions
from authpool.accounts.model import Account, QuotaWindow, Rows
from authpool.errors import PoolError
from authpool.events.writer import Writer
from authpool.rotation.strategy import UsageView
from authpool.storage.protocols import MetadataStore

__all__ = ["UsageLog"]

log = logging.getLogger("authpool")


@dataclass
class _Pending:
    requests: int = 0
    last_used_at: float = 0.0
    last_status: int | None = None
    quota_resets_at: float | None = None
    windows: dict[str, QuotaWindow] = field(default_factory=dict)


class UsageLog:
    """Pending per-account usage of this process."""

    def __init__(self, store: MetadataStore, interval: float = 2.0,
                 on_change: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.interval = interval
        # Told the account id whenever this process's view of its use changes (the rosters re-rank it).
        self.on_change = on_change
        self._pending: dict[str, _Pending] = {}
        self._last_used: dict[str, float] = {}  # this process's view, for least-recently-used ordering
        self._quota_resets: dict[str, float] = {}
        self._windows: dict[str, dict[str, QuotaWindow]] = {}  # the latest usage windows this process saw
        self._guard = threading.Lock()
        self._flushing = threading.Lock()
        self._last_flush = time.monotonic()
        # The writer thread that flushes when a request finds the log due (started on first use).
        self._writer = Writer(self._flush_logged, name="authpool-usage")

    def record(self, account_id: str, status: int, *, quota_resets_at: float | None = None,
               windows: dict[str, QuotaWindow] | None = None) -> None:
        """A request this account served (counted in memory; written by the next flush)."""
        now = self.store.now()
        with self._guard:
            p = self._pending.setdefault(account_id, _Pending())
            p.requests += 1
            p.last_used_at = now
            p.last_status = status
            if quota_resets_at is not None:
                p.quota_resets_at = quota_resets_at
                self._quota_resets[account_id] = quota_resets_at
            if windows:
                p.windows.update(windows)
                self._windows.setdefault(account_id, {}).update(windows)
            self._last_used[account_id] = now
        if self.on_change is not None:
            self.on_change(account_id)

    def quota_resets_at(self, account_id: str, persisted: float | None) -> float | None:
        """When the account's current rate-limit window resets, as this process last heard."""
        with self._guard:
            return self._quota_resets.get(account_id, persisted)

    def touch(self, account_id: str) -> None:
        """Note that this process just picked the account (for least-recently-used ordering)."""
        with self._guard:
            self._last_used[account_id] = self.store.now()
        if self.on_change is not None:
            self.on_change(account_id)

    def unrecorded(self, account_id: str) -> int:
        """Requests served by this process that the pool file does not count yet."""
        with self._guard:
            p = self._pending.get(account_id)
            return p.requests if p is not None else 0

    def last_used(self, account_id: str, persisted: float | None) -> float:
        return max(self._last_used.get(account_id, 0.0), persisted or 0.0)

    def view(self, a: Account, weights: dict[str, float], now: float) -> UsageView:
        """What a strategy may know of ``a`` beyond its metadata, as this process sees it now."""
        reset = self.quota_resets_at(a.id, a.quota_resets_at)
        return UsageView(
            self.last_used(a.id, a.last_used_at),
            weights.get(a.id, weights.get(a.label, 1.0)),
            self.unrecorded(a.id),
            # A reset that has passed says nothing about the current window (the account has a
            # fresh quota, its next reset unknown); kept, it would rank first for draining.
            reset if reset is not None and reset > now else None,
            self.windows(a, now),
        )

    def windows(self, a: Account, now: float) -> dict[str, QuotaWindow]:
        """The account's usage windows that have not reset: the newest reading of each, stored or seen here."""
        with self._guard:
            seen = dict(self._windows.get(a.id, {}))
        merged = {name: w for name, w in a.windows.items()}
        for name, w in seen.items():
            if name not in merged or merged[name].seen_at <= w.seen_at:
                merged[name] = w
        return {name: w for name, w in merged.items() if w.resets_at is None or w.resets_at > now}

    def due(self) -> bool:
        with self._guard:
            return bool(self._pending) and time.monotonic() - self._last_flush >= self.interval

    def flush_soon(self) -> None:
        """Flush on this log's writer thread: the request that found the log due does not wait for
        the write (at 10,000 accounts used round-robin, one flush writes a thousand rows)."""
        if not self._writer.kick():  # used after close(): write here, as before there was a writer
            self.flush()

    def _flush_logged(self) -> None:
        try:
            self.flush()
        except Exception as e:  # noqa: BLE001 - counters are best-effort; the writer must live on
            log.warning("could not record usage counters: %s", e)

    def close(self) -> None:
        """Stop the writer thread (after its current write) and flush what is pending."""
        self._writer.stop()
        self.flush()

    def flush(self) -> None:
        """Apply pending usage in one locked update (accounts removed meanwhile are skipped).

        One flush at a time: a flush that finds nothing pending must not return while another
        is still writing, or a shutdown flush could exit before the periodic one has landed.
        """
        with self._flushing:
            self._flush()

    def _flush(self) -> None:
        with self._guard:
            pending, self._pending = self._pending, {}
            self._last_flush = time.monotonic()
        if not pending:
            return

        def apply(rows: Rows) -> None:
            for account_id, p in pending.items():
                acc = rows.accounts.get(account_id)
                if acc is None:  # removed meanwhile
                    continue
                transitions.record_usage(acc, requests=p.requests, last_used_at=p.last_used_at,
                                         last_status=p.last_status, quota_resets_at=p.quota_resets_at,
                                         windows=p.windows)

        try:
            self.store.update_accounts(tuple(pending), apply)
        except PoolError as e:
            # Counters are best-effort; put them back so a later flush can try again.
            log.warning("could not record usage counters: %s", e)
            with self._guard:
                for account_id, p in pending.items():
                    q = self._pending.setdefault(account_id, _Pending())
                    q.requests += p.requests
                    q.last_used_at = max(q.last_used_at, p.last_used_at)
                    q.last_status = q.last_status or p.last_status
                    q.quota_resets_at = q.quota_resets_at or p.quota_resets_at
                    q.windows = {**p.windows, **q.windows}
