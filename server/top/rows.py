"""What ``authpool top`` shows in each cell, from an account's view, its activity and the time.

Pure functions: text in, text out, so the table's content is tested without a terminal.
"""

from __future__ import annotations

from typing import Any

from authpool.events import Activity

__all__ = ["COLUMNS", "account_cells", "bar", "countdown", "provider_line", "sparkline"]

# (title, width): fits an 80-column terminal with the error column cut (the table scrolls sideways).
COLUMNS: tuple[tuple[str, int], ...] = (
    ("account", 18), ("state", 13), ("until", 6), ("quota", 10), ("token", 7), ("req/min", 10), ("429", 3),
    ("ref", 3), ("last error", 40),
)
_SPARK = "▁▂▃▄▅▆▇█"
SPARK_MINUTES = 10


def sparkline(values: list[int]) -> str:
    """One character per value, scaled to the largest (blank for none at all)."""
    top = max(values, default=0)
    if top == 0:
        return " " * len(values)
    return "".join(" " if v == 0 else _SPARK[min(len(_SPARK) - 1, (v * len(_SPARK) - 1) // top)] for v in values)


def bar(used: float, width: int = 5) -> str:
    """A share (0..1) as a bar of ``width`` cells."""
    filled = round(max(0.0, min(1.0, used)) * width)
    return "█" * filled + "░" * (width - filled)


def countdown(until: float | None, now: float) -> str:
    """Time left until ``until``: 42s, 3m05, 2h10, 3d (blank when passed or unknown)."""
    if until is None or until <= now:
        return ""
    left = int(until - now)
    if left < 60:
        return f"{left}s"
    if left < 3600:
        return f"{left // 60}m{left % 60:02d}"
    if left < 86400:
        return f"{left // 3600}h{left % 3600 // 60:02d}"
    return f"{left // 86400}d"


def account_cells(view: dict[str, Any], activity: Activity, now: float) -> tuple[str, ...]:
    """The row of one account (``account_view``): name, state, cooldown left, busiest quota window,
    token expiry, requests per minute (last ten), 429s and token calls in the last hour, last error."""
    state = view["state"]
    if view["refresh_failing"]:
        state = "renew failing"
    windows = view["windows"]
    quota = ""
    if windows:
        name, w = max(windows.items(), key=lambda kv: kv[1]["used_percent"])
        quota = f"{name} {bar(w['used_percent'] / 100)}"
    account_id = view["id"]
    return (
        view["name"],
        state,
        countdown(view["cooling_until"], now) if state == "cooling" else "",
        quota,
        _token(view, now),
        sparkline(activity.series(account_id, "requests", now, SPARK_MINUTES)),
        str(activity.total(account_id, "rate_limited", now) or ""),
        str(activity.total(account_id, "refreshes", now) or ""),
        (view["last_error"] or "").splitlines()[0] if view["last_error"] else "",
    )


def _token(view: dict[str, Any], now: float) -> str:
    """An OAuth login's access token: time left, or expired; an API key says so."""
    if view["kind"] != "oauth":
        return "key"
    expires = view["token_expires_at"]
    return "expired" if expires is not None and expires <= now else countdown(expires, now)


def provider_line(p: dict[str, Any], now: float) -> str:
    """A provider's summary (an entry of ``pool_status``): ready, cooling (next free), dead, disabled."""
    parts = [f"{p['ready']} ready"]
    if p["cooling"]:
        nxt = countdown(p["next_free_at"], now)
        parts.append(f"{p['cooling']} cooling" + (f" (next in {nxt})" if nxt else ""))
    if p["refresh_failing"]:
        parts.append(f"{p['refresh_failing']} failing to renew")
    if p["needs_reauth"]:
        parts.append(f"{p['needs_reauth']} need re-auth")
    if p["disabled"]:
        parts.append(f"{p['disabled']} disabled")
    return f"{p['provider']}: " + " · ".join(parts)
