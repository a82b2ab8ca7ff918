"""What happened in the pool, one JSON line at a time: :class:`Event` and the log that keeps them."""

from __future__ import annotations

from authpool.events.activity import METRICS, Activity, ActivityFeed, Metric
from authpool.events.event import Event, EventKind
from authpool.events.log import EventFilter, EventLog, follow_events, read_events

__all__ = ["METRICS", "Activity", "ActivityFeed", "Event", "EventFilter", "EventKind", "EventLog", "Metric",
           "follow_events", "read_events"]
