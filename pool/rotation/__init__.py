"""Rotation: one logical request served by whichever account can serve it (decisions and drivers).

The engine, its effects and the transport that drives them are loaded on first use: `authpool
serve` and ad-hoc commands import the roster and the usage log (through :class:`~authpool.Pool`)
and the result types long before, or without ever, sending a request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from authpool.lazy import lazy_names

if TYPE_CHECKING:
    from authpool.rotation.driver import PoolTransport
    from authpool.rotation.engine import Clock, Engine, Served, SystemClock
    from authpool.rotation.result import Attempt, Outcome, RequestResult, RotationOptions
    from authpool.rotation.sse import SSEEvent, StreamVerdict, assemble_text, judge_prefix, parse_events

__all__ = [
    "Attempt",
    "Clock",
    "Engine",
    "Outcome",
    "PoolTransport",
    "RequestResult",
    "RotationOptions",
    "SSEEvent",
    "Served",
    "StreamVerdict",
    "SystemClock",
    "assemble_text",
    "judge_prefix",
    "parse_events",
]

_WHERE = {
    "PoolTransport": "authpool.rotation.driver",
    "Clock": "authpool.rotation.engine",
    "Engine": "authpool.rotation.engine",
    "Served": "authpool.rotation.engine",
    "SystemClock": "authpool.rotation.engine",
    "Attempt": "authpool.rotation.result",
    "Outcome": "authpool.rotation.result",
    "RequestResult": "authpool.rotation.result",
    "RotationOptions": "authpool.rotation.result",
    "SSEEvent": "authpool.rotation.sse",
    "StreamVerdict": "authpool.rotation.sse",
    "assemble_text": "authpool.rotation.sse",
    "judge_prefix": "authpool.rotation.sse",
    "parse_events": "authpool.rotation.sse",
}


__getattr__ = lazy_names(__name__, _WHERE)
