"""Server-sent events: enough parsing to judge how a provider's stream *opens*.

Providers sometimes answer ``200 text/event-stream`` and then open the stream with an error
instead of content: Anthropic sends ``event: error`` with ``rate_limit_error`` or
``overloaded_error``; OpenAI-compatible servers send a first ``data: {"error": …}`` chunk.
Nothing has reached the caller yet, so that is a 429 (or 529) in disguise and the request can
move to another account. Once content has been delivered, a later error belongs to the caller
(retrying would duplicate output). :func:`judge_prefix` decides, from the events buffered so
far, which of those cases holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["SSEEvent", "StreamVerdict", "assemble_text", "judge_prefix", "parse_events"]

# Events that carry no content: buffering continues past them.
_PREAMBLE = frozenset({"message_start", "ping", "content_block_start", "response.created", "response.in_progress"})
_RATE_LIMIT_TYPES = frozenset({"rate_limit_error", "rate_limit_exceeded", "insufficient_quota", "usage_limit_reached",
                               "RESOURCE_EXHAUSTED", "resource_exhausted", "too_many_requests"})
_OVERLOADED_TYPES = frozenset({"overloaded_error", "server_error", "api_error", "service_unavailable", "UNAVAILABLE"})


@dataclass(frozen=True)
class SSEEvent:
    event: str  # "message" when the stream gave no event name
    data: str

    def json(self) -> Any:
        try:
            return json.loads(self.data)
        except ValueError:
            return None


@dataclass(frozen=True)
class StreamVerdict:
    """``content``: deliver; ``rate_limited``/``overloaded``: rotate; ``undecided``: read more."""

    kind: Literal["content", "rate_limited", "overloaded", "undecided"]
    error: dict[str, Any] | None = None  # the provider's error object, for reset deadlines and model scope


def parse_events(buffer: bytes) -> tuple[list[SSEEvent], bytes]:
    """Complete events in ``buffer`` and the unconsumed remainder (an incomplete event)."""
    text = buffer.replace(b"\r\n", b"\n")
    events: list[SSEEvent] = []
    while True:
        end = text.find(b"\n\n")
        if end < 0:
            return events, text
        block, text = text[:end], text[end + 2 :]
        name, data = "message", []
        for line in block.decode("utf-8", errors="replace").split("\n"):
            if not line or line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        if data or name != "message":
            events.append(SSEEvent(name, "\n".join(data)))


def judge_prefix(events: list[SSEEvent], *, finished: bool = False) -> StreamVerdict:
    """Judge a stream from its first events (see the module docstring)."""
    for ev in events:
        doc = ev.json()
        error = _error_of(ev, doc)
        if error is not None:
            return StreamVerdict(_error_kind(error), error)
        if ev.event in _PREAMBLE or ev.data.strip() == "":
            continue
        if isinstance(doc, dict) and doc.get("type") in _PREAMBLE:
            continue
        return StreamVerdict("content")
    return StreamVerdict("content" if finished else "undecided")


def assemble_text(events: list[SSEEvent]) -> str:
    """The generated text of a stream: Anthropic text deltas or OpenAI chat/completions deltas."""
    out: list[str] = []
    for ev in events:
        doc = ev.json()
        if not isinstance(doc, dict):
            continue
        delta = doc.get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("text"), str):
            out.append(delta["text"])
            continue
        for choice in doc.get("choices") or []:
            if isinstance(choice, dict):
                d = choice.get("delta") or {}
                if isinstance(d, dict) and isinstance(d.get("content"), str):
                    out.append(d["content"])
                elif isinstance(choice.get("text"), str):
                    out.append(choice["text"])
    return "".join(out)


def _error_of(ev: SSEEvent, doc: Any) -> dict[str, Any] | None:
    if not isinstance(doc, dict):
        return {"type": "unknown", "message": ev.data[:200]} if ev.event == "error" else None
    if ev.event == "error" or doc.get("type") == "error" or "error" in doc:
        err = doc.get("error", doc)
        return err if isinstance(err, dict) else {"type": str(err)}
    return None


def _error_kind(error: dict[str, Any]) -> Literal["rate_limited", "overloaded"]:
    # Every classifying field counts: OpenAI sends a rate limit as type "tokens" (or "requests")
    # with code "rate_limit_exceeded", so the type alone would call it an overload (no cooldown).
    kinds = [str(error.get(key) or "") for key in ("type", "code", "status")]
    if any(k in _RATE_LIMIT_TYPES or "rate" in k.lower() or "quota" in k.lower() for k in kinds if k):
        return "rate_limited"
    if any(k in _OVERLOADED_TYPES or "overload" in k.lower() for k in kinds if k):
        return "overloaded"
    # An unknown error before any content: still safe to move on, and most are capacity problems.
    return "overloaded"
