"""``authpool store copy``: move a pool between the local store and a team store, all or nothing."""

from __future__ import annotations

import argparse

from authpool import Pool
from authpool.home import Home
from authpool.server.cli.errors import UsageError

__all__ = ["add_parser", "cmd_store_copy"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``store`` and its actions to the CLI's subcommands."""
    store = sub.add_parser("store", help="where the pool's metadata and secrets live (local or a team's PostgreSQL)")
    store_sub = store.add_subparsers(title="store commands", metavar="ACTION")
    p = store_sub.add_parser("copy", help="copy every account (metadata and secret) between this home's local "
                                          "store and a team store; nothing is half-copied")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--to", metavar="URL", help="into the team store at URL (postgresql://user@host:port/db)")
    where.add_argument("--from", dest="source", metavar="URL", help="from the team store at URL into the local store")
    p.set_defaults(handler=cmd_store_copy)


def cmd_store_copy(args: argparse.Namespace) -> int:
    """Copy the local pool into a team store (``--to``) or a team store into the local pool (``--from``)."""
    from authpool.storage.filestore import Store
    from authpool.storage.selection import open_team_store
    from authpool.transfer import copy_pool

    url = args.to or args.source
    if not url.startswith(("postgresql://", "postgres://")):
        raise UsageError("store copy takes a team store URL: postgresql://user@host:port/dbname")
    home = Home.open()
    local = Pool(home, Store(home))
    team = Pool(home, open_team_store(url))
    source, target = (local, team) if args.to else (team, local)
    try:
        report = copy_pool(source, target)
    finally:
        source.close()
        target.close()
        closer = getattr(team.store, "close", None)
        if callable(closer):
            closer()
    print(f"copied {len(report.copied)} account(s) from {source.store.location} to {target.store.location}")
    if report.disabled:
        print(f"disabled {len(report.disabled)} OAuth login(s) in {source.store.location} "
              f"({', '.join(report.disabled)}): a refresh token must be rotated by one pool only")
    return 0
