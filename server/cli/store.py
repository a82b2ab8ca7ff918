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
    where.add_argument("--to", metavar="URL", nargs="?", const="",
                       help="into the team store at URL (postgresql://user@host:port/db; default: AUTHPOOL_STORE "
                            "or [store] url). A password goes in PGPASSWORD or ~/.pgpass, never on the command line")
    where.add_argument("--from", dest="source", metavar="URL", nargs="?", const="",
                       help="from the team store at URL (default: AUTHPOOL_STORE or [store] url) into the local store")
    p.set_defaults(handler=cmd_store_copy)


def cmd_store_copy(args: argparse.Namespace) -> int:
    """Copy the local pool into a team store (``--to``) or a team store into the local pool (``--from``)."""
    from authpool.storage.localstore import Store
    from authpool.storage.selection import open_team_store, store_url
    from authpool.transfer import copy_pool

    home = Home.open()
    given = args.to if args.to is not None else args.source
    url = given or store_url(home)
    if not url:
        raise UsageError("name the team store: --to/--from postgresql://user@host:port/dbname, or set AUTHPOOL_STORE")
    if not url.startswith(("postgresql://", "postgres://")):
        raise UsageError("store copy takes a team store URL: postgresql://user@host:port/dbname")
    if given and _has_password(given):
        raise UsageError("keep the database password off the command line (other users can read it there): put it "
                         "in PGPASSWORD or ~/.pgpass, or in AUTHPOOL_STORE and run `authpool store copy --to`")
    local = Pool(home, Store(home))
    team = Pool(home, open_team_store(url))
    source, target = (local, team) if args.to is not None else (team, local)
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


def _has_password(url: str) -> bool:
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).password is not None or "password=" in url
    except ValueError:
        return False
