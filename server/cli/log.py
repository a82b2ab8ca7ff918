"""``authpool log``: read the event log (``events.jsonl`` in the home), or follow it with ``-f``."""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import deque
from datetime import datetime

from authpool import Home
from authpool.events import Event, EventFilter, follow_events, read_events
from authpool.events.event import KINDS
from authpool.server.cli.errors import UsageError

__all__ = ["add_parser", "cmd_log", "format_event", "parse_since"]

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``log`` to the CLI's subcommands."""
    p = sub.add_parser("log", help="what happened: attempts, cooldowns, refreshes, logins, state changes")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing events as they happen (Ctrl-C ends)")
    p.add_argument("--account", metavar="ID", help="only this account (id or provider/label)")
    p.add_argument("--provider", metavar="P", help="only this provider's accounts")
    p.add_argument("--since", metavar="T",
                   help="from a time (2026-12-02T10:00, local) or that long ago (30s, 10m, 2h, 1d)")
    p.add_argument("--kind", action="append", choices=sorted(KINDS), help="only events of this kind (repeatable)")
    p.add_argument("-n", "--lines", type=int, metavar="N", help="only the last N events (before following)")
    p.add_argument("--json", action="store_true", help="one JSON object per line, as stored")
    p.set_defaults(handler=cmd_log)


def cmd_log(args: argparse.Namespace) -> int:
    """Print the events that pass the filters, oldest first; ``-f`` then waits for new ones."""
    if args.lines is not None and args.lines < 0:
        raise UsageError("--lines must be 0 or more")
    since = parse_since(args.since, time.time()) if args.since else None
    want = EventFilter(account=args.account, provider=args.provider, since=since,
                       kinds=frozenset(args.kind) if args.kind else None)
    path = Home.open().events_file
    show = (lambda e: e.to_json()) if args.json else format_event
    if args.follow:
        # One reader from the start: the events written while the old ones print are not missed.
        # Until it has caught up, the last --lines events are held back, then printed at once.
        held: deque[Event] | None = deque(maxlen=args.lines) if args.lines is not None else None

        def caught_up() -> None:
            nonlocal held
            if held is not None:
                for e in held:
                    print(show(e), flush=True)
                held = None

        for event in follow_events(path, want, on_idle=caught_up):
            if held is not None:
                held.append(event)
            else:
                print(show(event), flush=True)
        return 0
    events = list(read_events(path, want))
    if args.lines is not None:
        events = events[len(events) - args.lines:] if args.lines else []
    for event in events:
        print(show(event))
    if not events and not args.json:
        print(f"no events{' match' if (args.account or args.provider or since or args.kind) else ' yet'} in {path}",
              file=sys.stderr)
    return 0


def parse_since(text: str, now: float) -> float:
    """``--since``: an ISO time (local unless it names its zone) or a span back from ``now``.

    Raises:
        UsageError: neither.
    """
    text = text.strip()
    m = _RELATIVE.match(text)
    if m:
        return now - float(m.group(1)) * _UNIT[m.group(2)]
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise UsageError(f"--since {text!r}: give a time (2026-12-02T10:00) or a span (30s, 10m, 2h, 1d)") from None


def _printable(text: str) -> str:
    """``text`` with anything a terminal would act on (escape sequences, control characters) shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def format_event(e: Event) -> str:
    """One event as one line for people: time, kind, account, what happened, how long, until when."""
    when = datetime.fromtimestamp(e.at).strftime("%Y-%m-%d %H:%M:%S")
    who = e.account or e.provider or "-"
    what = e.outcome or ""
    if e.status is not None:
        what += f" {e.status}"
    parts = [when, f"{e.kind:<9}", f"{who:<28}", what.strip()]
    if e.latency_ms is not None:
        parts.append(f"{e.latency_ms:.0f} ms")
    if e.model:
        parts.append(f"model {e.model}")
    if e.until is not None:
        parts.append(f"until {datetime.fromtimestamp(e.until).strftime('%H:%M:%S')}")
    if e.detail:
        parts.append(f"({e.detail})")
    if e.pid:
        parts.append(f"[pid {e.pid}]")
    return _printable("  ".join(parts))
