"""``authpool status``: per provider, how many accounts are ready, cooling (until when), need re-auth.

A summary whatever the pool's size: counts, not every account (``accounts list`` pages through those).
"""

from __future__ import annotations

import argparse
import json
import shlex
import time

from authpool import Pool
from authpool.accounts import pool_status
from authpool.server.cli.format import relative

__all__ = ["add_parser", "cmd_status"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``status`` to the CLI's subcommands."""
    p = sub.add_parser("status", help="per provider: accounts ready, cooling (until when), needing re-auth; "
                                      "the accounts that need you")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    """Print the pool's summary per provider (``--json``: the library's report as is): counts by state, the
    next account to free up, and the accounts that need a person (capped; `accounts list --state` shows all)."""
    pool = Pool.open()
    report = pool_status(pool.store.read().accounts)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    if not report["providers"]:
        print(f"no accounts yet in {pool.home.path}; add one with `authpool accounts add-key PROVIDER --label NAME`")
        return 0
    now = time.time()
    for prov in report["providers"]:
        nxt = prov["next_free_at"]
        extra = f", next frees up {relative(nxt, now)}" if nxt and not prov["ready"] else ""
        failing = f", {prov['refresh_failing']} failing to renew" if prov["refresh_failing"] else ""
        print(f"{prov['provider']}: {prov['ready']} ready, {prov['cooling']} cooling, "
              f"{prov['needs_reauth']} need re-auth{failing}, {prov['disabled']} disabled "
              f"({prov['total']} account{'s' if prov['total'] != 1 else ''}){extra}")
        for a in prov["attention"]:
            detail = f": {a['detail']}" if a["detail"] else ""
            fix = f"; fix: {a['fix']}" if a["fix"] else ""
            print(f"  {a['name']} {a['state']}{detail}{fix}")
        if prov["attention_more"]:
            more = shlex.join(["authpool", "accounts", "list", "--provider", prov["provider"],
                               "--state", "needs-reauth"])
            print(f"  ... and {prov['attention_more']} more: {more} (or --state refresh-failing)")
    return 0
