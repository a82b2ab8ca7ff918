"""How long a rate-limited account must rest, read from what the provider said.

Sources, most authoritative first: ``Retry-After`` (seconds or an HTTP date), ``retry-after-ms``,
then the provider's reset headers (Anthropic RFC 3339 timestamps, OpenAI Go-style durations such
as ``6m0s``, GitHub epoch seconds). When several reset headers apply, the latest deadline wins: an
account released early would only be rate-limited again. With no information at all, an
exponential default (``default_cooldown * 2**level``, capped) applies; the level resets after a
success.
"""

from __future__ import annotations

import email.utils
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

__all__ = [
    "MAX_HONOURED",
    "CooldownDecision",
    "decide_cooldown",
    "latest_reset",
    "parse_duration",
    "parse_reset",
    "parse_retry_after",
]

# A provider's deadline is honoured up to 8 days (weekly subscription limits); anything later
# is treated as garbage rather than parking an account for months.
MAX_HONOURED = 8 * 86400.0

_NUM = r"(\d+(?:\.\d+)?)"
_GO_DURATION = re.compile(rf"^(?:{_NUM}h)?(?:{_NUM}m(?!s))?(?:{_NUM}s)?(?:{_NUM}ms)?$")


@dataclass(frozen=True)
class CooldownDecision:
    """``until`` (epoch seconds), where it came from, and whether it was the exponential default.

    ``capped`` is set when the provider asked for longer than ``max_cooldown``: the account is
    probed at the cap instead (an 18-day ``Retry-After`` has been seen in the field).
    """

    until: float
    source: str
    is_default: bool
    capped: bool = False


def parse_retry_after(value: str, now: float) -> float | None:
    """``Retry-After`` as an absolute time: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    value = value.strip()
    if not value:
        return None
    seconds = _number(value)
    if seconds is not _NOT_A_NUMBER:
        return now + seconds if seconds is not None and seconds >= 0 else None
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return dt.timestamp()


def parse_duration(value: str) -> float | None:
    """A Go-style duration (``1s``, ``6m0s``, ``20ms``, ``1h2m3.5s``) or plain seconds, in seconds."""
    value = value.strip()
    if not value:
        return None
    seconds = _number(value)
    if seconds is not _NOT_A_NUMBER:
        return seconds
    m = _GO_DURATION.match(value)
    if not m or not any(m.groups()):
        return None
    h, mi, s, ms = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mi * 60 + s + ms / 1000


def parse_reset(value: str, now: float) -> float | None:
    """A reset header value as an absolute time: RFC 3339 timestamp, duration, or epoch seconds."""
    value = value.strip()
    if not value:
        return None
    if re.match(r"^\d{4}-\d{2}-\d{2}T", value):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    if re.fullmatch(r"\d{9,11}(\.\d+)?", value):  # epoch seconds (e.g. GitHub x-ratelimit-reset)
        return float(value)
    seconds = parse_duration(value)
    return now + seconds if seconds is not None else None


def decide_cooldown(
    headers: Mapping[str, str],
    *,
    now: float,
    reset_headers: list[str],
    default_cooldown: float,
    max_cooldown: float,
    level: int,
    body_deadline: float | None = None,
) -> CooldownDecision:
    """Decide when a rate-limited account frees up.

    Args:
        headers: the 429 response's headers (case-insensitive mapping).
        now: the current time (epoch seconds).
        reset_headers: the provider's reset header names.
        default_cooldown: base of the exponential default.
        max_cooldown: the longest any cooldown lasts: the exponential default's cap, and the point
            at which an account whose provider asked for longer is probed again.
        level: how many 429s without reset info came in a row before this one.
        body_deadline: a deadline found in the response body, if any.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    ra = lower.get("retry-after")
    if ra is not None:
        until = parse_retry_after(ra, now)
        if until is not None and until > now - 1:
            return _capped(until, now, "retry-after", max_cooldown)
    ms = lower.get("retry-after-ms")
    if ms is not None:
        try:
            millis = float(ms)
        except ValueError:
            millis = -1.0
        # Like a bad Retry-After: "NaN" would become a NaN deadline (pool.json then no longer
        # validates, and formatting it raises), "inf" or a negative value is no information.
        if math.isfinite(millis) and millis >= 0:
            return _capped(now + millis / 1000, now, "retry-after-ms", max_cooldown)
    deadlines = [(d, name) for name in reset_headers
                 if (v := lower.get(name.lower())) is not None and (d := parse_reset(v, now)) is not None and d > now]
    if body_deadline is not None and body_deadline > now:
        deadlines.append((body_deadline, "body"))
    if deadlines:
        until, name = max(deadlines)
        return _capped(until, now, name, max_cooldown)
    seconds = min(default_cooldown * (2 ** min(level, 20)), max_cooldown)
    return CooldownDecision(now + seconds, "default", True)


def latest_reset(headers: Mapping[str, str], reset_headers: list[str], now: float) -> float | None:
    """The latest future reset among the provider's reset headers of any answer (for strategies)."""
    lower = {k.lower(): v for k, v in headers.items()}
    found = [d for name in reset_headers
             if (v := lower.get(name.lower())) is not None and (d := parse_reset(v, now)) is not None and d > now]
    return _clamp(max(found), now) if found else None


_NOT_A_NUMBER = -math.inf  # sentinel: the text is not a plain number at all


def _number(value: str) -> float | None:
    """A plain number, None for a non-finite one, or ``_NOT_A_NUMBER`` for any other text.

    float() also accepts "nan" and "inf": garbage, not a delay (a NaN deadline cannot be stored).
    """
    try:
        seconds = float(value)
    except ValueError:
        return _NOT_A_NUMBER
    return seconds if math.isfinite(seconds) else None


def _clamp(until: float, now: float) -> float:
    return min(max(until, now), now + MAX_HONOURED)


def _capped(until: float, now: float, source: str, max_cooldown: float) -> CooldownDecision:
    cap = now + min(max_cooldown, MAX_HONOURED)
    if until > cap:
        return CooldownDecision(cap, source, False, capped=True)
    return CooldownDecision(_clamp(until, now), source, False)
