"""``authpool status``: per provider, how many accounts are ready, cooling (until when), need re-auth."""

from __future__ import annotations

import argparse
import json
import time

from authpool import Pool
from authpool.accounts import describe_windows, pool_status
from authpool.server.cli.format import relative

__all__ = ["add_parser", "cmd_status"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``status`` to the CLI's subcommands."""
    p = sub.add_parser("status", help="per provider: accounts ready, cooling (until when), needs-reauth, counters")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    """Print the pool's status per provider (``--json``: the library's report as is)."""
    pool = Pool.open()
    report = pool_status(pool.accounts())
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
              f"{prov['needs_reauth']} need re-auth{failing}, {prov['disabled']} disabled{extra}")
        for a in prov["accounts"]:
            until = a["cooling_until"]
            state = f"cooling {relative(until, now)}" if a["state"] == "cooling" and until else a["state"]
            state = a["refresh_failing"] or state
            c = a["counters"]
            windows = describe_windows(a, now)
            print(f"  {a['name']:<32} {state:<18} requests {c['requests']}, 429s {c['rate_limited']}, "
                  f"401/403s {c['unauthorized']}, refreshes {c['refreshes']}, failures {c['failures']}"
                  + (f"; usage {windows}" if windows else ""))
    return 0
