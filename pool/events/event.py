"""One thing that happened in the pool, as a line of the event log.

An event says who (process, provider, account), what (kind, outcome, status), how long it took and
until when an account cools. It never carries a body, a header value or a secret: the fields are
names, numbers and the one-line details that tool results already show.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

__all__ = ["Event", "EventKind"]

EventKind = Literal[
    "attempt",  # one try of a request on one account (outcome: ok, rate_limited, ...)
    "cooldown",  # an account (or one model of it) cools until ``until``
    "probation",  # a probe after a cooldown (outcome: passed / failed)
    "refresh",  # a token call (outcome: renewed, adopted, failed, invalid_grant)
    "login",  # an account added or logged in again
    "state",  # enabled, disabled, reset, removed, needs-reauth
]
KINDS: frozenset[str] = frozenset(get_args(EventKind))
_DETAIL_MAX = 300  # characters of a detail kept: a line, not a document
_TEXT_MAX = 200  # characters of any other text (a model name is whatever a caller sent)


@dataclass(frozen=True)
class Event:
    """One line of ``events.jsonl``."""

    kind: EventKind
    provider: str | None = None
    account: str | None = None  # provider/label
    account_id: str | None = None
    outcome: str | None = None
    status: int | None = None
    latency_ms: float | None = None
    until: float | None = None  # a cooldown's end (epoch seconds)
    model: str | None = None
    detail: str | None = None
    at: float = field(default_factory=time.time)
    pid: int = field(default_factory=os.getpid)

    def __post_init__(self) -> None:
        # Texts are cut when the event is made, not only when written: a queued event never holds a
        # caller's megabyte-long "model" in memory.
        for name in ("provider", "account", "account_id", "outcome", "model", "detail"):
            value = getattr(self, name)
            limit = _DETAIL_MAX if name == "detail" else _TEXT_MAX
            if isinstance(value, str) and len(value) > limit:
                object.__setattr__(self, name, value[: limit - 1] + "…")

    def to_json(self) -> str:
        """The event as one JSON line (no newline, ASCII only; empty fields left out).

        ASCII escapes keep a lone surrogate or a control character in a caller's model name from
        breaking the line or reaching a reader's terminal.
        """
        # Every field is a plain value: read them directly (dataclasses.asdict deep-copies each
        # one, 28 µs an event, on the writer thread but holding the interpreter all the same).
        doc = {k: v for k in _FIELDS if (v := getattr(self, k)) is not None}
        if self.latency_ms is not None:
            doc["latency_ms"] = round(self.latency_ms, 2)
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=True, allow_nan=False)

    @classmethod
    def from_json(cls, line: str) -> Event | None:
        """The event on ``line``, or None for a line that is not one (torn, foreign, newer fields ignored)."""
        try:
            doc = json.loads(line)
        except ValueError:
            return None
        if not isinstance(doc, dict) or doc.get("kind") not in KINDS or not _number(doc.get("at")):
            return None
        try:
            return cls(
                kind=doc["kind"], provider=_text(doc.get("provider")), account=_text(doc.get("account")),
                account_id=_text(doc.get("account_id")), outcome=_text(doc.get("outcome")),
                status=doc["status"] if isinstance(doc.get("status"), int) else None,
                latency_ms=float(doc["latency_ms"]) if _number(doc.get("latency_ms")) else None,
                until=float(doc["until"]) if _number(doc.get("until")) else None,
                model=_text(doc.get("model")), detail=_text(doc.get("detail")),
                at=float(doc["at"]), pid=doc["pid"] if isinstance(doc.get("pid"), int) else 0,
            )
        except (KeyError, TypeError, ValueError):
            return None

    def matches(self, *, account: str | None = None, provider: str | None = None, since: float | None = None,
                kinds: frozenset[str] | None = None) -> bool:
        """Whether the event passes the filters: ``account`` is an id or ``provider/label``."""
        if since is not None and self.at < since:
            return False
        if provider is not None and self.provider != provider:
            return False
        if account is not None and account not in (self.account_id, self.account):
            return False
        return kinds is None or self.kind in kinds


_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Event))


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _text(v: Any) -> str | None:
    return v if isinstance(v, str) else None
