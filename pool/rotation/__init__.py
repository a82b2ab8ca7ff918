"""Rotation: one logical request served by whichever account can serve it (decisions and drivers)."""

from __future__ import annotations

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
