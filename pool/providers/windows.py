"""A subscription's usage windows, read from the headers of any answer (no extra call).

Anthropic's subscription logins report ``anthropic-ratelimit-unified-{5h,7d}-{utilization,reset,status}``
(utilization a fraction 0..1, reset in epoch seconds); the Codex backend behind a ChatGPT login
reports ``x-codex-{primary,secondary}-{used-percent,window-minutes,reset-at,reset-after-seconds}``
(percent 0..100, minutes, epoch seconds or seconds from now). Both are public knowledge from the
official clients (see docs/providers.md). Windows are named by their length: ``5h``, ``7d``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from authpool.accounts.model import QuotaWindow

__all__ = ["read_windows", "window_name"]


def window_name(seconds: float | None, fallback: str) -> str:
    """``5h``, ``7d``: a window named by its length (whole days or hours), else ``fallback``."""
    if seconds is None or seconds <= 0:
        return fallback
    if seconds % 86400 == 0:
        return f"{int(seconds // 86400)}d"
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    return f"{int(seconds // 60)}m"


def read_windows(headers: Mapping[str, str], now: float) -> dict[str, QuotaWindow]:
    """Every usage window the answer's headers report, by name."""
    lower = {k.lower(): v for k, v in headers.items()}
    out: dict[str, QuotaWindow] = {}
    for name, length in (("5h", 5 * 3600.0), ("7d", 7 * 86400.0)):
        prefix = f"anthropic-ratelimit-unified-{name}-"
        used = _number(lower.get(prefix + "utilization"))
        if used is None:
            continue
        out[name] = QuotaWindow(used=max(0.0, used), resets_at=_epoch(lower.get(prefix + "reset")),
                                window_seconds=length, status=_word(lower.get(prefix + "status")), seen_at=now)
    for which in ("primary", "secondary"):
        prefix = f"x-codex-{which}-"
        percent = _number(lower.get(prefix + "used-percent"))
        if percent is None:
            continue
        minutes = _number(lower.get(prefix + "window-minutes"))
        seconds = minutes * 60 if minutes is not None and minutes > 0 else None
        resets_at = _epoch(lower.get(prefix + "reset-at"))
        after = _number(lower.get(prefix + "reset-after-seconds"))
        if resets_at is None and after is not None and after >= 0:
            resets_at = now + after
        out[window_name(seconds, which)] = QuotaWindow(used=max(0.0, percent / 100), resets_at=resets_at,
                                                       window_seconds=seconds, seen_at=now)
    return out


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _epoch(value: str | None) -> float | None:
    number = _number(value)
    if number is None or number <= 0:
        return None
    return number / 1000 if number > 1e12 else number


def _word(value: str | None) -> str | None:
    value = (value or "").strip()
    return value[:40] if value and value.isprintable() else None
