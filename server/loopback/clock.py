"""The loopback provider's clock: wall time by default, or a ``ManualClock`` a test moves by hand.

Everything the provider decides by the time (access-token expiry, rate-limit windows, quota
windows, authorization-code and device-code lifetimes, device polling intervals, the reset
times it writes into headers and bodies) reads ``LoopbackProvider.clock``. A test that gives it
a ``ManualClock`` makes a token expire or a window pass with ``clock.advance(seconds)`` instead
of sleeping until it does. Deliberate slowness (``set_hang``, ``/slow``, stream pauses, a slow
token endpoint) stays real: it exists to make clients wait.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["Clock", "ManualClock"]

#: Seconds since the epoch, as ``time.time`` returns them.
Clock = Callable[[], float]


class ManualClock:
    """A clock that stands still until ``advance`` moves it (thread-safe).

    Example:
        >>> clock = ManualClock(start=1000.0)
        >>> clock.advance(30)
        >>> clock()
        1030.0
    """

    def __init__(self, start: float | None = None) -> None:
        """Start at ``start`` (seconds since the epoch), by default the current wall time."""
        self._now = time.time() if start is None else start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (never backwards).

        Raises:
            ValueError: ``seconds`` is negative.
        """
        if seconds < 0:
            raise ValueError("a ManualClock only moves forward")
        with self._lock:
            self._now += seconds
