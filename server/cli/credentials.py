"""``authpool secrets move``: where the pool's secrets are kept, changed explicitly and recorded."""

from __future__ import annotations

import argparse

from authpool import Pool

__all__ = ["add_parser", "cmd_secrets_move"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``secrets`` and its actions to the CLI's subcommands."""
    secrets = sub.add_parser("secrets", help="where the pool's secrets are kept")
    sec_sub = secrets.add_subparsers(title="secrets commands", metavar="ACTION")
    p = sec_sub.add_parser("move", help="move every secret to another credential store and record it")
    p.add_argument("target", help="'vault' (encrypted file), 'os' (the best working OS store), or a keyring "
                                  "backend class such as keyring.backends.SecretService.Keyring")
    p.set_defaults(handler=cmd_secrets_move)


def cmd_secrets_move(args: argparse.Namespace) -> int:
    """Move every secret to ``args.target``; every process then uses it."""
    source, destination, moved = Pool.open().move_secrets(args.target)
    if moved == 0 and source == destination:
        print(f"secrets are already in {destination}")
    else:
        print(f"moved {moved} secret(s) from {source} to {destination}; every process now uses {destination}")
    return 0
