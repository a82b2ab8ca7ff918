"""What happened in the pool, one JSON line at a time: :class:`Event` and the log that keeps them."""

from __future__ import annotations

from authpool.events.event import Event, EventKind
from authpool.events.log import EventFilter, EventLog, follow_events, read_events

__all__ = ["Event", "EventFilter", "EventKind", "EventLog", "follow_events", "read_events"]
