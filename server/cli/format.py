"""How the CLI shows times, tables and account states to a person."""

from __future__ import annotations

from authpool.accounts import Account

__all__ = ["describe_state", "print_table", "relative"]


def describe_state(a: Account, now: float) -> str:
    """The account's state in a few words: ``ready``, ``cooling in 3m``, the refresh failure, ..."""
    state = a.state(now)
    if state == "cooling":
        return f"cooling {relative(a.cooldown_until(now=now), now)}"
    if state == "refresh-failing" and (failing := a.failing_refresh()) is not None:
        return failing.describe()
    return state


def relative(ts: float | None, now: float) -> str:
    """``ts`` relative to ``now``: ``in 42s``, ``3m ago``, ``in 1.5h``, ``2.0d ago``; ``-`` for None."""
    if ts is None:
        return "-"
    delta = ts - now
    span = abs(delta)
    if span < 60:
        text = f"{span:.0f}s"
    elif span < 3600:
        text = f"{span / 60:.0f}m"
    elif span < 86400:
        text = f"{span / 3600:.1f}h"
    else:
        text = f"{span / 86400:.1f}d"
    return f"in {text}" if delta >= 0 else f"{text} ago"


def print_table(rows: list[list[str]]) -> None:
    """Print ``rows`` (the first is the header) as left-aligned columns."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
