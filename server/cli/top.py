"""``authpool top``: the pool live in the terminal (Textual, from the ``authpool[top]`` extra)."""

from __future__ import annotations

import argparse
import importlib.util
import sys

from authpool import Pool
from authpool.server.cli.errors import UsageError

__all__ = ["add_parser", "cmd_top"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``top`` to the CLI's subcommands."""
    p = sub.add_parser("top", help="the pool live: states, cooldowns, quota, activity (keys: e d r / q)")
    p.add_argument("--poll", type=float, default=0.5, metavar="S", help="seconds between redraws (default 0.5)")
    p.set_defaults(handler=cmd_top)


def cmd_top(args: argparse.Namespace) -> int:
    """Run the terminal view until ``q`` (or Ctrl-C)."""
    if importlib.util.find_spec("textual") is None:
        raise UsageError("authpool top needs Textual: pip install 'authpool[top]'")
    if not 0.05 <= args.poll <= 60:
        raise UsageError("--poll must be between 0.05 and 60 seconds")
    if not sys.stdout.isatty():
        raise UsageError("authpool top draws on a terminal; scripts can use `authpool status --json` "
                         "or `authpool log -f`")
    from authpool.server.top.app import TopApp

    pool = Pool.open()
    try:
        TopApp(pool, poll=args.poll).run()
    finally:
        pool.close()
    return 0
