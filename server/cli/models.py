"""``authpool models PROVIDER``: the provider's model list, fetched through the pool and cached in the home."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import anyio

from authpool import Pool
from authpool.catalog import ModelList, list_models
from authpool.server.cli.format import print_table, relative

__all__ = ["add_parser", "cmd_models"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``models`` to the CLI's subcommands."""
    p = sub.add_parser("models", help="a provider's models (fetched through the pool, cached for a day)",
                       description="List the models PROVIDER offers: fetched through the pool with one of its "
                                   "accounts (it rotates like any request) and cached in the home.")
    p.add_argument("provider", metavar="PROVIDER")
    p.add_argument("--refresh", action="store_true", help="ask the provider again instead of using the cached copy")
    p.add_argument("--namespace", metavar="N", help="fetch with this sub-pool's accounts")
    p.add_argument("--json", action="store_true", help="the list as JSON")
    p.set_defaults(handler=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
    """Print the list: one model per line (id, name, limits), or ``--json``."""
    pool = Pool.open()
    try:
        listing: ModelList = anyio.run(lambda: list_models(pool, args.provider, refresh=args.refresh,
                                                           namespace=args.namespace))
    finally:
        pool.close()
    if args.json:
        print(json.dumps(dataclasses.asdict(listing), indent=2))
        return 0
    now = time.time()
    source = (f"fetched just now by {listing.account}" if not listing.cached
              else f"cached {relative(listing.fetched_at, now)}, kept until {relative(listing.expires_at, now)}; "
                   "--refresh asks again")
    print(f"authpool: {len(listing.models)} models of {listing.provider} ({source})", file=sys.stderr)
    rows = [["MODEL", "NAME", "INPUT TOKENS", "OUTPUT TOKENS"]]
    rows += [[m.id, m.display_name or "", str(m.input_token_limit or ""), str(m.output_token_limit or "")]
             for m in listing.models]
    if len(rows) > 1:
        print_table(rows)
    return 0
