"""Activity per account and minute, counted from the event log: what ``authpool top`` draws as
sparklines and the gateway's dashboard as charts.

:class:`Activity` is bookkeeping only (no I/O): it takes events and answers "how many requests,
429s and token calls did this account have in each of the last N minutes". :class:`ActivityFeed`
fills one from the log, the last hour first, then each new event as it is written (a thread
following ``events.jsonl``, so another process's requests show up as they happen).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from authpool.events.event import Event
from authpool.events.log import EventFilter, follow_events

__all__ = ["METRICS", "Activity", "ActivityFeed", "Metric"]

Metric = Literal["requests", "rate_limited", "refreshes"]
METRICS: tuple[Metric, ...] = ("requests", "rate_limited", "refreshes")
HOUR_MINUTES = 60
RECENT = 200  # events kept for a live stream


class Activity:
    """Counts per (account id, metric, minute) over the last hour, and the most recent events."""

    def __init__(self, minutes: int = HOUR_MINUTES) -> None:
        self.minutes = minutes
        self._counts: dict[tuple[str, Metric], dict[int, int]] = {}
        self.recent: deque[Event] = deque(maxlen=RECENT)
        self._guard = threading.Lock()
        self.version = 0  # bumped by every event: a view redraws when it changes

    def add(self, event: Event) -> None:
        """Count ``event`` (an attempt is a request; a 429 attempt also a rate limit; a refresh a token call)."""
        metrics: list[Metric] = []
        if event.kind == "attempt":
            metrics.append("requests")
            if event.outcome in {"rate_limited", "stream_rate_limited"}:
                metrics.append("rate_limited")
        elif event.kind == "refresh":
            metrics.append("refreshes")
        minute = int(event.at // 60)
        with self._guard:
            self.recent.append(event)
            self.version += 1
            if event.account_id is None:
                return
            for metric in metrics:
                per_minute = self._counts.setdefault((event.account_id, metric), {})
                per_minute[minute] = per_minute.get(minute, 0) + 1
                if len(per_minute) > self.minutes + 5:  # forget minutes older than the window
                    for old in sorted(per_minute)[: len(per_minute) - self.minutes]:
                        del per_minute[old]

    def series(self, account_id: str, metric: Metric, now: float, minutes: int | None = None) -> list[int]:
        """Counts for each of the last ``minutes`` minutes (oldest first, the current minute last)."""
        n = minutes or self.minutes
        current = int(now // 60)
        with self._guard:
            per_minute = dict(self._counts.get((account_id, metric), {}))
        return [per_minute.get(m, 0) for m in range(current - n + 1, current + 1)]

    def total(self, account_id: str, metric: Metric, now: float, minutes: int | None = None) -> int:
        return sum(self.series(account_id, metric, now, minutes))

    def latest(self, n: int = 50) -> list[Event]:
        """The ``n`` most recent events, newest last."""
        with self._guard:
            return list(self.recent)[-n:]


class ActivityFeed:
    """An :class:`Activity` kept current from the log at ``path`` by a thread, until :meth:`stop`."""

    def __init__(self, path: Path, activity: Activity | None = None, *, poll: float = 0.25,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.activity = activity or Activity()
        self._poll = poll
        self._stop = threading.Event()
        self._ready = threading.Event()
        since = clock() - self.activity.minutes * 60
        self._thread = threading.Thread(target=self._run, args=(since,), name="authpool-activity", daemon=True)

    def start(self) -> ActivityFeed:
        self._thread.start()
        return self

    def wait_loaded(self, timeout: float | None = None) -> bool:
        """Block until the last hour of the log has been read (True), or ``timeout`` passes."""
        return self._ready.wait(timeout)

    def _run(self, since: float) -> None:
        # The last hour, then on as written: one reader, so no event falls between the two.
        for event in follow_events(self.path, EventFilter(since=since), poll=self._poll, stop=self._stop,
                                   on_idle=self._ready.set):
            self.activity.add(event)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
